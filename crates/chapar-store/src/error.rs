//! Errors of the chunk store.

use std::io;
use std::path::PathBuf;

use chapar_format::{BundleId, ChunkId};

/// Everything the store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the data directory.
    #[error("{path}: another Chapar process is using this data directory")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The metadata database failed or is damaged.
    #[error("metadata database: {0}")]
    Database(String),
    /// A data directory written by a newer Chapar.
    #[error("the data directory has format version {found}; this build understands {supported}")]
    UnsupportedVersion {
        /// Version found on disk.
        found: u64,
        /// Version this build writes.
        supported: u64,
    },
    /// Bytes that do not hash to the id they were given under.
    #[error("chunk {id}: bytes do not match the id")]
    ChunkMismatch {
        /// The claimed id.
        id: ChunkId,
    },
    /// A stored chunk failed verification on read; it was quarantined.
    #[error("chunk {id} is corrupt on disk (bit rot?); it was quarantined and marked missing")]
    ChunkCorrupt {
        /// The chunk.
        id: ChunkId,
    },
    /// A chunk no bundle in this store asks for.
    #[error("chunk {id} belongs to no bundle this store holds")]
    Unwanted {
        /// The chunk.
        id: ChunkId,
    },
    /// The bundle is unknown here.
    #[error("bundle {id} is not in this store")]
    UnknownBundle {
        /// The bundle.
        id: BundleId,
    },
    /// The bundle was delivered to all its recipients and is not taken again.
    #[error("bundle {id} was delivered to every recipient and is tombstoned")]
    Tombstoned {
        /// The bundle.
        id: BundleId,
    },
    /// The bundle's expiry has passed.
    #[error("bundle {id} has expired")]
    Expired {
        /// The bundle.
        id: BundleId,
    },
    /// A descriptor that does not decode.
    #[error("descriptor: {0}")]
    Descriptor(#[from] chapar_format::DecodeError),
    /// A receipt whose secret is not the preimage of any of the bundle's ack hashes.
    #[error("receipt for bundle {id} does not match any of its recipients")]
    WrongPreimage {
        /// The bundle.
        id: BundleId,
    },
    /// Storing would pass the quota and nothing may be evicted.
    #[error("quota full: {needed} more bytes needed, {used} of {quota} used, and nothing can be evicted (own and incoming bundles are never evicted)")]
    QuotaFull {
        /// Bytes that did not fit.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// Errors from reading or writing bundle folders.
    #[error(transparent)]
    Bundle(#[from] chapar_bundle::BundleError),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// A short stable name for scripts (`--json` output).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Locked { .. } => "locked",
            Self::Database(_) => "database",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::ChunkMismatch { .. } => "chunk_mismatch",
            Self::ChunkCorrupt { .. } => "chunk_corrupt",
            Self::Unwanted { .. } => "unwanted_chunk",
            Self::UnknownBundle { .. } => "unknown_bundle",
            Self::Tombstoned { .. } => "tombstoned",
            Self::Expired { .. } => "expired",
            Self::Descriptor(_) => "malformed",
            Self::WrongPreimage { .. } => "wrong_preimage",
            Self::QuotaFull { .. } => "quota_full",
            Self::Bundle(e) => e.kind(),
        }
    }
}

macro_rules! database_errors {
    ($($t:ty),*) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Database(e.to_string())
            }
        })*
    };
}

database_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
