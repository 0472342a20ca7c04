//! Sealing files into a Chapar bundle and opening one, on the local file
//! system, with no network: the offline half of Chapar.
//!
//! * [`seal_to_folder`] — files and folders → tar → age (to 1–8 X25519
//!   recipients) → content-addressed, erasure-coded chunks + descriptor,
//!   written as a [`BundleFolder`] (also the sneakernet format).
//! * [`open_folder`] — verify every chunk, rebuild lost ones from parity,
//!   decrypt, extract safely, check every file against the manifest.
//! * [`reassemble_to_file`] — rebuild the plain age file, no key needed.
//! * [`keys`] — identity files as `age-keygen` writes them.
//!
//! Streaming throughout: memory does not grow with the bundle. The format
//! itself lives in `chapar-format`.
#![forbid(unsafe_code)]

pub mod durable;
mod error;
mod folder;
pub mod keys;
pub mod manifest;
mod open;
mod pack;
mod pipeline;
mod seal;

pub use error::BundleError;
pub use folder::{
    read_chunk_file, read_chunk_file_into, write_bundle_folder, BundleFolder, FolderSink,
    CHUNKS_DIR, DESCRIPTOR_FILE,
};
pub use open::{
    ciphertext_reader, find_header, open_folder, open_from_source, reassemble_to_file,
    unpack_archive, Opened, Reassembled,
};
pub use pack::{plan, Plan};
pub use seal::{
    seal_paths, seal_stream, seal_to_folder, SealOptions, Sealed, DEFAULT_EXPIRY, DEFAULT_PRIORITY,
};
