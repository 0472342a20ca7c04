//! Typed errors of the format crate.

use std::io;

use crate::id::ChunkId;

/// Bytes that do not decode as the structure they claim to be.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("{what} is truncated")]
    Truncated {
        /// Which structure.
        what: &'static str,
    },
    /// The first eight bytes are not this structure's magic.
    #[error("{what} does not start with the Chapar magic bytes")]
    BadMagic {
        /// Which structure.
        what: &'static str,
    },
    /// A version this build does not know; kept as an error, never guessed at.
    #[error("{what} has version {found}, which this build of Chapar does not understand")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version byte found.
        found: u8,
    },
    /// Bytes left over after the last field.
    #[error("{what} has {count} unexpected trailing bytes")]
    TrailingBytes {
        /// Which structure.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// Larger than the format allows.
    #[error("{what} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Which structure.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A field holds a value the format forbids.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which structure.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Not 64 hex digits.
    #[error("not a 64-digit hex id")]
    BadHexId,
}

impl DecodeError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

/// Why a bundle (or its index) cannot be rebuilt from the chunks at hand.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// Some stripes lost more chunks than their parity can replace.
    #[error("{}", describe_losses(.losses))]
    TooManyMissing {
        /// Every stripe that cannot be rebuilt.
        losses: Vec<StripeLoss>,
    },
    /// Reed–Solomon produced a chunk that does not hash to its id: the
    /// surviving chunks disagree (a forged or inconsistent bundle).
    #[error("stripe {stripe}: parity rebuilt chunk {chunk} with the wrong hash; the bundle's chunks are inconsistent")]
    RepairMismatch {
        /// The stripe.
        stripe: usize,
        /// The chunk that came out wrong.
        chunk: ChunkId,
    },
    /// All chunks verified but the whole does not hash to the descriptor's
    /// value. Cannot happen with honest chunks; reported, never ignored.
    #[error("the rebuilt ciphertext does not match the descriptor's BLAKE3 ({expected})")]
    CiphertextMismatch {
        /// The descriptor's hash, hex.
        expected: String,
    },
    /// The index decoded but contradicts the descriptor.
    #[error("chunk index: {0}")]
    Index(#[from] DecodeError),
    /// Reading a chunk failed for a reason other than absence.
    #[error("reading chunk {chunk}: {source}")]
    Source {
        /// The chunk being read.
        chunk: ChunkId,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The erasure coder refused its input (a bug or a forged layout).
    #[error("erasure coding failed: {0}")]
    Erasure(String),
}

/// How badly one stripe is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeLoss {
    /// Which part of the bundle: the payload or the chunk index.
    pub part: Part,
    /// Stripe number within that part, from 0.
    pub stripe: usize,
    /// Chunks of the stripe that are missing or corrupt.
    pub lost: usize,
    /// How many the stripe's parity can replace.
    pub parity: usize,
}

/// The two erasure-coded parts of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The chunk index (ids of every payload chunk).
    Index,
    /// The encrypted payload.
    Payload,
}

fn describe_losses(losses: &[StripeLoss]) -> String {
    let total: usize = losses.iter().map(|l| l.lost).sum();
    let stripes: Vec<String> = losses
        .iter()
        .map(|l| {
            let part = match l.part {
                Part::Index => "index stripe",
                Part::Payload => "stripe",
            };
            format!(
                "{part} {} lost {} of its chunks, parity covers {}",
                l.stripe, l.lost, l.parity
            )
        })
        .collect();
    format!(
        "too many chunks missing or corrupt to rebuild the bundle: {total} chunks in {} stripe(s) ({})",
        losses.len(),
        stripes.join("; ")
    )
}

/// Parameters that cannot make a valid bundle.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid bundle parameters: {0}")]
pub struct ParamError(pub String);
