//! The metadata database's tables (format version 1; see `docs/STORE.md`).

use redb::{MultimapTableDefinition, TableDefinition};

/// Version of the data directory's layout and tables.
pub(crate) const FORMAT_VERSION: u64 = 1;

/// Counters and settings: `format_version`, `used_bytes`, `quota`.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Bundle id → canonical descriptor bytes.
pub(crate) const DESCRIPTORS: TableDefinition<'_, &[u8; 32], &[u8]> =
    TableDefinition::new("descriptors");
/// Bundle id → encoded [`crate::BundleRecord`].
pub(crate) const BUNDLES: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("bundles");
/// Chunk id → length, for every chunk whose bytes are durable here
/// (the store's acknowledgement).
pub(crate) const CHUNKS: TableDefinition<'_, &[u8; 32], u32> = TableDefinition::new("chunks");
/// Bundle id → ids of its chunks known so far.
pub(crate) const BUNDLE_CHUNKS: MultimapTableDefinition<'_, &[u8; 32], &[u8; 32]> =
    MultimapTableDefinition::new("bundle_chunks");
/// Chunk id → bundles that want it (the reverse of `BUNDLE_CHUNKS`).
pub(crate) const CHUNK_BUNDLES: MultimapTableDefinition<'_, &[u8; 32], &[u8; 32]> =
    MultimapTableDefinition::new("chunk_bundles");
/// Bundle id → revealed ack secrets (receipts).
pub(crate) const RECEIPTS: MultimapTableDefinition<'_, &[u8; 32], &[u8; 32]> =
    MultimapTableDefinition::new("receipts");
/// Bundle id → expiry: delivered to every recipient; never fetched again.
pub(crate) const TOMBSTONES: TableDefinition<'_, &[u8; 32], u64> =
    TableDefinition::new("tombstones");
/// Peer id bytes → the mesh's record of that peer (opaque to the store).
pub(crate) const PEERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("peers");

pub(crate) const USED_BYTES: &str = "used_bytes";
pub(crate) const QUOTA: &str = "quota";
pub(crate) const VERSION_KEY: &str = "format_version";
