//! The durable chunk store every Chapar node runs on.
//!
//! A data directory holds chunks as files under a sharded,
//! content-addressed folder and bookkeeping in a redb database:
//!
//! ```text
//! DATA_DIR/
//!   LOCK              held (flock) by the one process using the directory
//!   meta.redb         descriptors, bundle records, acknowledged chunks,
//!                     receipts, tombstones, quota, peer book
//!   chunks/ab/ab…     verified chunk bytes, named by BLAKE3
//!   tmp/              chunks being written (cleared at open)
//!   quarantine/       chunks that failed verification, kept for inspection
//! ```
//!
//! Rules it keeps (argued in `docs/STORE.md`):
//! * a chunk is verified against its id before it is written, and again
//!   every time it is read; a bad one is quarantined, never served;
//! * a chunk is *acknowledged* (recorded in the database) only after its
//!   bytes and name are durable, so `kill -9` at any instant loses nothing
//!   acknowledged and leaves nothing corrupt that could be served;
//! * a byte quota is enforced by evicting whole bundles in a documented
//!   order, never the node's own or incoming bundles, and never silently;
//! * a receipt is checked by preimage; when every recipient has receipted,
//!   the bundle is tombstoned and its chunks freed.
//!
//! [`Store`] is synchronous; [`StoreHandle`] runs it from async code.
#![forbid(unsafe_code)]

mod buffers;
mod chunks;
mod error;
mod handle;
mod maintenance;
pub mod quota;
mod record;
mod repair;
mod seal;
mod store;
mod tables;
mod transfer;

pub use buffers::ChunkBuffers;
pub use error::StoreError;
pub use handle::StoreHandle;
pub use maintenance::{FsckReport, GcReport, ReceiptOutcome};
pub use record::{BundleRecord, Role};
pub use repair::ParityRepair;
pub use seal::seal_into;
pub use store::{now, BundleStatus, PeerEntry, PutReport, Store};
pub use transfer::{export_folder, import_folder, ExportReport, ImportReport};
