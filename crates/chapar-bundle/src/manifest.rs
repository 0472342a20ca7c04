//! The manifest that ends every payload archive.
//!
//! Two entries close the tar archive: `chapar-manifest.json` (every file's
//! path, size, BLAKE3 and SHA-256, and the note) and
//! `chapar-manifest.sha256` (the same SHA-256 sums in `sha256sum` format,
//! so `sha256sum -c chapar-manifest.sha256` checks an archive unpacked with
//! plain `tar x`). They come last so that sealing reads each file once.

use serde::{Deserialize, Serialize};

/// Archive name of the JSON manifest.
pub const MANIFEST_JSON: &str = "chapar-manifest.json";
/// Archive name of the `sha256sum`-format checksum list.
pub const MANIFEST_SHA256: &str = "chapar-manifest.sha256";
/// The `format` field of this version of the manifest.
pub const MANIFEST_FORMAT: &str = "chapar-manifest/1";
/// Most bytes the note can add to a manifest (JSON escaping of the
/// 1024-byte note, at worst six bytes per byte).
pub(crate) const MAX_NOTE_IN_MANIFEST: u64 = 6 * 1024;
/// Largest manifest accepted when opening (about 250,000 files).
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// The list of files in a bundle, with their plaintext hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The sender's note (may be empty).
    pub note: String,
    /// `BLAKE3(ack_secret)` of every recipient, hex, sorted: the same list
    /// as the descriptor's. Sealed inside the payload so that a recipient
    /// can tell a forged or altered descriptor from the sender's.
    pub ack_hashes: Vec<String>,
    /// Every regular file, in archive order.
    pub files: Vec<ManifestEntry>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Relative path inside the archive, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the contents, hex.
    pub blake3: String,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
}

impl Manifest {
    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The checksum list in GNU `sha256sum` format (names with a newline or
    /// backslash are escaped and the line starts with `\`, as coreutils does).
    pub fn sha256sums(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            if f.path.contains(['\n', '\\', '\r']) {
                let escaped = f
                    .path
                    .replace('\\', "\\\\")
                    .replace('\n', "\\n")
                    .replace('\r', "\\r");
                out.push_str(&format!("\\{}  {escaped}\n", f.sha256));
            } else {
                out.push_str(&format!("{}  {}\n", f.sha256, f.path));
            }
        }
        out
    }
}
