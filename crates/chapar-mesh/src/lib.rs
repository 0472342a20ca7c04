//! The Chapar node runtime on rust-libp2p: a node gossips descriptors and
//! receipts, syncs its inventory with every peer it meets (so nothing
//! depends on having been online when something was announced), and
//! fetches the chunks it lacks — from several peers at once, verified
//! before they are stored — into its [`chapar_store::Store`].
//!
//! One task owns the libp2p `Swarm`; the protocol servers and the
//! replicator talk to it through a bounded command channel. The wire
//! format is `chapar-wire`; the protocols are specified in
//! `docs/PROTOCOL.md`.
#![deny(unsafe_code)] // one audited exception: allocator.rs

mod allocator;
mod behaviour;
mod fetch;
mod framing;
mod gate;
mod keyfile;
mod metrics;
mod node;
pub mod pace;
pub mod peerbook;
pub mod plan;
mod protocols;
pub mod ratelimit;
mod replicator;
pub mod seed;
mod serve;
mod stall;
mod swarm;

pub use allocator::keep_large_buffers_out_of_the_heap;
pub use behaviour::{ConnectionCaps, RelayLimits};
pub use gate::MAX_LIFETIME;
pub use keyfile::{load_or_create_node_key, NODE_KEY_FILE};
pub use metrics::{serve_metrics, NodeStats};
pub use node::{start, MeshError, NodeConfig, NodeHandle, PeerHolding};
pub use plan::{Holding, Limits};
pub use ratelimit::Rate;
pub use replicator::Fetch;
