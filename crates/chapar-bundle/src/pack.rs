//! Turning input paths into a tar archive, streaming, hashing every file
//! once as it goes into the archive.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::Digest;

use crate::error::BundleError;
use crate::manifest::{Manifest, ManifestEntry, MANIFEST_FORMAT, MANIFEST_JSON, MANIFEST_SHA256};

/// One thing to put in the archive.
#[derive(Debug, Clone)]
pub(crate) struct PlannedEntry {
    /// Where to read it.
    source: PathBuf,
    /// Its path in the archive (`/`-separated, relative).
    archive_path: String,
    kind: PlannedKind,
    mtime: u64,
}

#[derive(Debug, Clone, Copy)]
enum PlannedKind {
    File { size: u64 },
    Folder,
}

/// What will be sealed, checked before a single byte is encrypted.
#[derive(Debug, Clone)]
pub struct Plan {
    entries: Vec<PlannedEntry>,
}

impl Plan {
    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, PlannedKind::File { .. }))
            .count() as u64
    }

    /// An upper bound on the archive's size in bytes: headers, GNU
    /// long-name entries, padding, the manifest and the end marker.
    pub fn archive_size_bound(&self) -> u64 {
        let entries: u64 = self
            .entries
            .iter()
            .map(|e| {
                let data = match e.kind {
                    PlannedKind::File { size } => size.div_ceil(512) * 512,
                    PlannedKind::Folder => 0,
                };
                // header, plus a long-name header and the name (with "/"
                // and NUL) in whole blocks when it does not fit
                let name = 1024 + (e.archive_path.len() as u64 + 2).div_ceil(512) * 512;
                data + name
            })
            .sum();
        let manifest = self.manifest_size_bound();
        entries + 2 * (manifest.div_ceil(512) * 512 + 1024) + 10240
    }

    /// An upper bound on the manifest JSON (or checksum list): per file its
    /// path (JSON escapes a control character as six bytes) and hashes.
    pub fn manifest_size_bound(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| 6 * (e.archive_path.len() as u64) + 400)
            .sum::<u64>()
            + 64 * 1024
            + crate::manifest::MAX_NOTE_IN_MANIFEST
    }

    /// Total bytes of the regular files.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                PlannedKind::File { size } => size,
                PlannedKind::Folder => 0,
            })
            .sum()
    }
}

fn mtime_of(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn utf8_name(path: &Path) -> Result<String, BundleError> {
    let name = path
        .file_name()
        .ok_or_else(|| BundleError::NoName { path: path.into() })?;
    name.to_str()
        .map(str::to_owned)
        .ok_or_else(|| BundleError::NonUtf8Name { path: path.into() })
}

/// Walks the inputs and checks every rule: only regular files and folders,
/// symlinks only to files inside their input, UTF-8 names, unique
/// top-level names.
pub fn plan(inputs: &[PathBuf]) -> Result<Plan, BundleError> {
    let mut entries = Vec::new();
    let mut top_names = HashSet::new();
    for input in inputs {
        let meta = fs::metadata(input).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BundleError::InputMissing {
                path: input.clone(),
            },
            _ => BundleError::Io {
                path: input.clone(),
                source: e,
            },
        })?;
        let canonical = fs::canonicalize(input).map_err(BundleError::io(input))?;
        let name = utf8_name(&canonical)?;
        if name == MANIFEST_JSON || name == MANIFEST_SHA256 {
            return Err(BundleError::ReservedName { name });
        }
        if !top_names.insert(name.clone()) {
            return Err(BundleError::DuplicateName { name });
        }
        if meta.is_dir() {
            entries.push(PlannedEntry {
                source: canonical.clone(),
                archive_path: name.clone(),
                kind: PlannedKind::Folder,
                mtime: mtime_of(&meta),
            });
            walk(&canonical, &canonical, &name, &mut entries)?;
        } else if meta.is_file() {
            entries.push(PlannedEntry {
                source: canonical,
                archive_path: name,
                kind: PlannedKind::File { size: meta.len() },
                mtime: mtime_of(&meta),
            });
        } else {
            return Err(BundleError::SpecialFile {
                path: input.clone(),
            });
        }
    }
    Ok(Plan { entries })
}

fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<PlannedEntry>,
) -> Result<(), BundleError> {
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(BundleError::io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(BundleError::io(dir))?;
    children.sort();
    for path in children {
        let name = utf8_name(&path)?;
        let archive_path = format!("{prefix}/{name}");
        let lmeta = fs::symlink_metadata(&path).map_err(BundleError::io(&path))?;
        let meta = if lmeta.file_type().is_symlink() {
            let target = fs::canonicalize(&path)
                .map_err(|_| BundleError::DanglingSymlink { path: path.clone() })?;
            if !target.starts_with(root) {
                return Err(BundleError::SymlinkOutside { path, target });
            }
            let meta = fs::metadata(&target).map_err(BundleError::io(&target))?;
            if meta.is_dir() {
                return Err(BundleError::SymlinkToFolder { path });
            }
            meta
        } else {
            lmeta
        };
        if meta.is_dir() {
            out.push(PlannedEntry {
                source: path.clone(),
                archive_path: archive_path.clone(),
                kind: PlannedKind::Folder,
                mtime: mtime_of(&meta),
            });
            walk(root, &path, &archive_path, out)?;
        } else if meta.is_file() {
            out.push(PlannedEntry {
                source: path,
                archive_path,
                kind: PlannedKind::File { size: meta.len() },
                mtime: mtime_of(&meta),
            });
        } else {
            return Err(BundleError::SpecialFile { path });
        }
    }
    Ok(())
}

/// Reads exactly `limit` bytes at most and hashes them on the way.
struct HashingReader<R> {
    inner: io::Take<R>,
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.blake3.update(&buf[..n]);
        self.sha256.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32, mtime: u64) -> tar::Header {
    // GNU headers with zeroed owner fields: the archive must not carry the
    // sender's user name or uid.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

const READ_BUFFER: usize = 256 * 1024;

/// Writes the archive of `plan` followed by the manifest into `out`;
/// returns the manifest.
pub(crate) fn write_archive<W: Write>(
    plan: &Plan,
    note: &str,
    ack_hashes: &[[u8; 32]],
    out: W,
) -> Result<(Manifest, W), BundleError> {
    let mut builder = tar::Builder::new(out);
    let mut files = Vec::new();
    let archive_err = |e: io::Error| BundleError::Io {
        path: PathBuf::from("<archive>"),
        source: e,
    };
    for entry in &plan.entries {
        match entry.kind {
            PlannedKind::Folder => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755, entry.mtime);
                builder
                    .append_data(&mut h, format!("{}/", entry.archive_path), io::empty())
                    .map_err(archive_err)?;
            }
            PlannedKind::File { size } => {
                let file = File::open(&entry.source).map_err(BundleError::io(&entry.source))?;
                let mut reader = BufReader::with_capacity(
                    READ_BUFFER,
                    HashingReader {
                        inner: file.take(size),
                        blake3: blake3::Hasher::new(),
                        sha256: sha2::Sha256::new(),
                        read: 0,
                    },
                );
                let mut h = header(tar::EntryType::Regular, size, 0o644, entry.mtime);
                builder
                    .append_data(&mut h, &entry.archive_path, &mut reader)
                    .map_err(|e| BundleError::Io {
                        path: entry.source.clone(),
                        source: e,
                    })?;
                let hashing = reader.into_inner();
                let grew = hashing.inner.into_inner().read(&mut [0u8; 1]).unwrap_or(0);
                if hashing.read != size || grew > 0 {
                    return Err(BundleError::FileChanged {
                        path: entry.source.clone(),
                        expected: size,
                        read: hashing.read + grew as u64,
                    });
                }
                files.push(ManifestEntry {
                    path: entry.archive_path.clone(),
                    size,
                    blake3: hashing.blake3.finalize().to_hex().to_string(),
                    sha256: hex::encode(hashing.sha256.finalize()),
                });
            }
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        note: note.into(),
        ack_hashes: ack_hashes.iter().map(hex::encode).collect(),
        files,
    };
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BundleError::BadArchive(format!("manifest: {e}")))?;
    let sums = manifest.sha256sums();
    for (name, bytes) in [
        (MANIFEST_JSON, &json[..]),
        (MANIFEST_SHA256, sums.as_bytes()),
    ] {
        let mut h = header(tar::EntryType::Regular, bytes.len() as u64, 0o644, now);
        builder
            .append_data(&mut h, name, bytes)
            .map_err(archive_err)?;
    }
    let out = builder.into_inner().map_err(archive_err)?;
    Ok((manifest, out))
}
