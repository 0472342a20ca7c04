//! The Chapar sealed-bundle format, as pure logic: no files, no sockets,
//! no async runtime, so that every node can reuse it and every decoder can
//! be fuzzed.
//!
//! A bundle is an age v1 file (the *payload*: a tar archive encrypted to
//! one or more X25519 recipients) cut into content-addressed chunks and
//! protected by Reed–Solomon parity, plus a small public [`Descriptor`]
//! that travels ahead of it. The full specification, with byte layouts, is
//! `docs/FORMAT.md`; this crate is its reference implementation.
//!
//! * [`Geometry`] / [`Layout`] — where every chunk of a stream sits.
//! * [`StripeWriter`] — chunks, hashes and erasure-codes a stream as it is written.
//! * [`Reassembler`] — reads a stream back, verifying every chunk and
//!   rebuilding lost or corrupt ones from parity.
//! * [`Descriptor`], [`HeaderContents`], [`index`] — the encodings, each
//!   with a magic, a version and a bounded, never-panicking decoder.
#![forbid(unsafe_code)]

mod chunker;
mod descriptor;
mod erasure;
mod error;
mod id;
pub mod index;
mod layout;
mod reassemble;
mod sealed;
pub mod wire;

pub use chunker::{write_index, ChunkSink, Chunked, StripeWriter};
pub use descriptor::{
    check_capacity, Descriptor, DESCRIPTOR_MAGIC, DESCRIPTOR_VERSION, EXPIRY_GRANULARITY_SECS,
    MAX_DESCRIPTOR_SIZE, MAX_INDEX_CHUNKS, MAX_RECIPIENTS,
};
pub use erasure::{mask_parity, parity_mask, rebuild_stripe, StripeEncoder, MASK_LEN};
pub use error::{DecodeError, ParamError, Part, RebuildError, StripeLoss};
pub use id::{BundleId, ChunkId};
pub use layout::{
    Geometry, Layout, Slot, DEFAULT_CHUNK_SIZE, DEFAULT_DATA_PER_STRIPE, DEFAULT_PARITY_PER_STRIPE,
    MAX_CHUNK_SIZE, MAX_DATA_PER_STRIPE, MAX_PARITY_PER_STRIPE, MIN_CHUNK_SIZE,
};
pub use reassemble::{read_index, rebuild_error, scan, ChunkSource, Damage, Reassembler, Repair};
pub use sealed::{AckSecret, HeaderContents, MAX_NOTE_BYTES, MAX_SEALED_HEADER};
