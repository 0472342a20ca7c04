//! Errors of sealing and opening bundles.

use std::io;
use std::path::PathBuf;

use chapar_format::{DecodeError, ParamError, RebuildError};

/// Everything that can go wrong sealing, opening or reading a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An input path does not exist.
    #[error("{path}: no such file or folder")]
    InputMissing {
        /// The input path.
        path: PathBuf,
    },
    /// A device, socket or FIFO among the inputs.
    #[error("{path}: is a special file (device, socket or FIFO); only regular files and folders can be sealed")]
    SpecialFile {
        /// The offending path.
        path: PathBuf,
    },
    /// A symlink that leads outside the folder being sealed.
    #[error("{path}: symlink points outside the input ({target}); copy the file in or pass it as its own input")]
    SymlinkOutside {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A symlink to a folder (not followed, to avoid loops and duplicates).
    #[error("{path}: symlink to a folder is not sealed; pass the folder itself as an input")]
    SymlinkToFolder {
        /// The link.
        path: PathBuf,
    },
    /// A dangling symlink.
    #[error("{path}: symlink points to nothing")]
    DanglingSymlink {
        /// The link.
        path: PathBuf,
    },
    /// An input with no name to put in the archive (such as `/`).
    #[error(
        "{path}: has no name to use in the archive; seal the files and folders inside it instead"
    )]
    NoName {
        /// The input.
        path: PathBuf,
    },
    /// A file name that is not valid UTF-8 (the manifest is JSON).
    #[error("{path}: file name is not valid UTF-8; rename it before sealing")]
    NonUtf8Name {
        /// The path.
        path: PathBuf,
    },
    /// Two inputs with the same name at the top of the archive.
    #[error("two inputs are both named {name:?}; each top-level name must be unique")]
    DuplicateName {
        /// The clashing name.
        name: String,
    },
    /// An input uses a name the archive reserves.
    #[error("an input is named {name:?}, which the archive reserves for its manifest")]
    ReservedName {
        /// The reserved name.
        name: String,
    },
    /// A file changed size while it was being sealed.
    #[error(
        "{path}: file changed while it was being sealed (expected {expected} bytes, read {read})"
    )]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Size when planned.
        expected: u64,
        /// Bytes actually read.
        read: u64,
    },
    /// Refused to overwrite an existing key file.
    #[error("{path}: already exists; refusing to overwrite a key file")]
    KeyExists {
        /// The path.
        path: PathBuf,
    },
    /// An identity file that is not a list of age X25519 secret keys.
    #[error("{path}: line {line}: {reason}")]
    BadIdentity {
        /// The identity file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An identity file with no keys in it.
    #[error("{path}: contains no age secret key (AGE-SECRET-KEY-1…)")]
    NoIdentities {
        /// The identity file.
        path: PathBuf,
    },
    /// A recipient that is not an `age1…` X25519 public key.
    #[error("{value:?} is not an age X25519 recipient (age1…): {reason}")]
    BadRecipient {
        /// The text given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// Parameters that cannot make a bundle.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// A structure failed to decode.
    #[error("{path}: {source}")]
    Decode {
        /// The file it came from.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: DecodeError,
    },
    /// The folder has no descriptor.
    #[error("{path}: not a bundle folder (no descriptor.chapar)")]
    NotABundle {
        /// The folder.
        path: PathBuf,
    },
    /// The chunks cannot be rebuilt.
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    /// None of the given keys opens any sealed header.
    #[error("this bundle is not addressed to the given key(s)")]
    NotAddressed,
    /// The descriptor's receipt hashes differ from those sealed inside the payload.
    #[error("the descriptor's receipt hashes differ from those sealed inside the payload: the descriptor was forged or altered")]
    DescriptorMismatch,
    /// The sealed header does not belong to this descriptor.
    #[error("the sealed header names a different ciphertext than the descriptor: forged or mixed-up bundle")]
    HeaderMismatch,
    /// The age layer refused the payload (truncated, tampered, wrong key).
    #[error("decrypting the payload failed: {0}")]
    Decrypt(String),
    /// An archive entry would land outside the output folder.
    #[error("archive entry {path:?} would be written outside the output folder; refusing to open")]
    UnsafePath {
        /// The entry's path.
        path: String,
    },
    /// An archive entry of a type Chapar never writes.
    #[error("archive entry {path:?} is a {kind}, which a bundle may not contain")]
    UnsupportedEntry {
        /// The entry's path.
        path: String,
        /// Its type.
        kind: String,
    },
    /// The payload is not a well-formed archive.
    #[error("the payload archive is malformed: {0}")]
    BadArchive(String),
    /// Extracted files disagree with the manifest.
    #[error("manifest check failed: {0}")]
    ManifestMismatch(String),
    /// The output already exists.
    #[error("{path}: already exists; Chapar never overwrites, so give a new path (or an empty folder for a folder)")]
    OutputExists {
        /// The path.
        path: PathBuf,
    },
}

impl BundleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// A short stable name for scripts (`--json` output).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::InputMissing { .. } => "input_missing",
            Self::SpecialFile { .. } => "special_file",
            Self::SymlinkOutside { .. } => "symlink_outside",
            Self::SymlinkToFolder { .. } => "symlink_to_folder",
            Self::DanglingSymlink { .. } => "dangling_symlink",
            Self::NoName { .. } => "no_name",
            Self::NonUtf8Name { .. } => "non_utf8_name",
            Self::DuplicateName { .. } => "duplicate_name",
            Self::ReservedName { .. } => "reserved_name",
            Self::FileChanged { .. } => "file_changed",
            Self::KeyExists { .. } => "key_exists",
            Self::BadIdentity { .. } => "bad_identity",
            Self::NoIdentities { .. } => "no_identities",
            Self::BadRecipient { .. } => "bad_recipient",
            Self::Params(_) => "invalid_parameters",
            Self::Decode { .. } => "malformed",
            Self::NotABundle { .. } => "not_a_bundle",
            Self::Rebuild(RebuildError::TooManyMissing { .. }) => "too_many_missing",
            Self::Rebuild(RebuildError::CiphertextMismatch { .. }) => "ciphertext_mismatch",
            Self::Rebuild(_) => "rebuild_failed",
            Self::NotAddressed => "not_addressed",
            Self::HeaderMismatch => "header_mismatch",
            Self::DescriptorMismatch => "descriptor_mismatch",
            Self::Decrypt(_) => "decrypt_failed",
            Self::UnsafePath { .. } => "unsafe_path",
            Self::UnsupportedEntry { .. } => "unsupported_entry",
            Self::BadArchive(_) => "bad_archive",
            Self::ManifestMismatch(_) => "manifest_mismatch",
            Self::OutputExists { .. } => "output_exists",
        }
    }
}
