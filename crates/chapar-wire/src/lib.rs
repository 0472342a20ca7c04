//! The messages Chapar nodes exchange, as bytes: pure encoders and
//! bounded decoders, no sockets, so they can be fuzzed and reused.
//! The specification is `docs/PROTOCOL.md`.
//!
//! * Gossip (gossipsub): a [descriptor](chapar_format::Descriptor) as its
//!   canonical bytes on [`DESCRIPTOR_TOPIC`]; a [`ReceiptMessage`] on
//!   [`RECEIPT_TOPIC`].
//! * Streams (`libp2p-stream`): length-prefixed [`Message`] frames on
//!   [`SYNC_PROTOCOL`] (one inventory exchange per stream) and
//!   [`CHUNK_PROTOCOL`] (pipelined chunk requests).
//!
//! Every decoder bounds every count and length before allocating, and
//! returns a typed [`WireError`] on anything malformed. A peer that sends
//! one is cut off by the mesh, not obeyed.
#![forbid(unsafe_code)]

mod frame;
mod message;

pub use frame::{frame_length, FRAME_HEADER};
pub use message::{
    Inventory, InventoryEntry, Message, ReceiptMessage, SyncResponse, WireError,
    MAX_CHUNKS_PER_REQUEST, MAX_DESCRIPTORS_PER_RESPONSE, MAX_INVENTORY_ENTRIES, MAX_RECEIPTS,
};

/// Gossipsub topic carrying descriptors.
pub const DESCRIPTOR_TOPIC: &str = "chapar/descriptors/1";
/// Gossipsub topic carrying receipts.
pub const RECEIPT_TOPIC: &str = "chapar/receipts/1";
/// Stream protocol for the inventory sync (anti-entropy).
pub const SYNC_PROTOCOL: &str = "/chapar/sync/1";
/// Stream protocol for chunk transfer.
pub const CHUNK_PROTOCOL: &str = "/chapar/chunks/1";
/// Largest gossip message any node sends or accepts (every node must agree;
/// descriptors are at most 16 KiB, so this leaves room).
pub const MAX_GOSSIP_MESSAGE: usize = 64 * 1024;
