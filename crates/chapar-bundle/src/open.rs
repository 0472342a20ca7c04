//! Opening: chunks → verified, repaired ciphertext → age → tar → checked files.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use age::x25519::Identity;
use chapar_format::{
    read_index, rebuild_error, scan, AckSecret, BundleId, ChunkSource, Descriptor, HeaderContents,
    Part, Reassembler, RebuildError, Repair,
};
use sha2::Digest;

use crate::durable::{BackgroundSync, WriteBehind};
use crate::error::BundleError;
use crate::folder::{BundleFolder, StagingDir};
use crate::manifest::{
    Manifest, ManifestEntry, MANIFEST_FORMAT, MANIFEST_JSON, MANIFEST_SHA256, MAX_MANIFEST_BYTES,
};
use crate::pipeline::ReadAhead;

/// Longest GNU long name accepted. The archive is read in raw mode and
/// long names are read here, bounded: the `tar` crate would read them (and
/// PAX records, which Chapar never writes) wholly into memory, whatever
/// size a hostile header claims.
const MAX_LONG_NAME: u64 = 64 * 1024;

/// What opening a bundle produced.
#[derive(Debug)]
pub struct Opened {
    /// The bundle id.
    pub bundle_id: BundleId,
    /// The sender's note.
    pub note: String,
    /// The verified manifest.
    pub manifest: Manifest,
    /// Chunks rebuilt from parity on the way.
    pub repairs: Vec<Repair>,
    /// This recipient's receipt secret (reveal only as a receipt).
    pub ack_secret: AckSecret,
}

/// Finds the sealed header addressed to one of `identities` and checks it
/// belongs to this descriptor.
pub fn find_header(
    descriptor: &Descriptor,
    identities: &[Identity],
) -> Result<HeaderContents, BundleError> {
    for sealed in &descriptor.sealed_headers {
        // A malformed header may be someone else's forgery; keep looking.
        if let Ok(Some(contents)) = HeaderContents::open(sealed, identities) {
            if contents.ciphertext_blake3 != descriptor.ciphertext_blake3 {
                return Err(BundleError::HeaderMismatch);
            }
            if !descriptor.has_ack_hash(&contents.ack_secret.hash()) {
                return Err(BundleError::HeaderMismatch);
            }
            return Ok(contents);
        }
    }
    Err(BundleError::NotAddressed)
}

/// Rebuilds the index and returns a verified reader over the ciphertext.
/// Fails early, naming the stripes, when too many chunks are absent.
pub fn ciphertext_reader<S: ChunkSource>(
    descriptor: &Descriptor,
    source: S,
) -> Result<Reassembler<S>, BundleError> {
    let (ids, index_repairs) = read_index(descriptor, &source)?;
    let layout = descriptor.payload_layout()?;
    let losses = scan(&layout, &ids, Part::Payload, &source)?;
    if !losses.is_empty() {
        return Err(RebuildError::TooManyMissing { losses }.into());
    }
    let mut reader = Reassembler::new(
        layout,
        ids,
        Part::Payload,
        source,
        Some(descriptor.ciphertext_blake3),
    )?;
    reader.note_repairs(index_repairs);
    Ok(reader)
}

/// Marks errors that came from below the archive (chunks or age) so they
/// are not mistaken for a malformed archive.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PayloadError(io::Error);

struct Tagged<R>(R);

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::other(PayloadError(e)))
    }
}

/// Turns an error from the archive layer into the most precise cause.
fn classify(e: io::Error) -> BundleError {
    let e = match e.get_ref().and_then(|i| i.downcast_ref::<PayloadError>()) {
        Some(_) => match e.into_inner().map(|i| i.downcast::<PayloadError>()) {
            Some(Ok(payload)) => payload.0,
            _ => return BundleError::BadArchive("lost error".into()),
        },
        None => return BundleError::BadArchive(e.to_string()),
    };
    match rebuild_error(e) {
        Ok(rebuild) => BundleError::Rebuild(rebuild),
        Err(age) => BundleError::Decrypt(age.to_string()),
    }
}

/// Opens a bundle folder into `out` (absent or empty). Files are extracted
/// into a hidden folder beside `out` and renamed onto it only after every
/// file matched the manifest.
pub fn open_folder(
    bundle: &Path,
    identities: &[Identity],
    out: &Path,
) -> Result<Opened, BundleError> {
    let folder = BundleFolder::new(bundle);
    let (descriptor, bytes) = folder.read_descriptor()?;
    open_from_source(&descriptor, BundleId::of(&bytes), folder, identities, out)
}

/// Opens a bundle whose chunks come from any [`ChunkSource`].
pub fn open_from_source<S: ChunkSource + Send + 'static>(
    descriptor: &Descriptor,
    bundle_id: BundleId,
    source: S,
    identities: &[Identity],
    out: &Path,
) -> Result<Opened, BundleError> {
    let header = find_header(descriptor, identities)?;
    let staging = StagingDir::beside(out)?;
    let mut ciphertext =
        ReadAhead::spawn(ciphertext_reader(descriptor, source)?).map_err(BundleError::io(out))?;
    let (manifest, drained) = {
        let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(
            256 * 1024,
            Tagged(&mut ciphertext),
        ))
        .map_err(|e| match e {
            age::DecryptError::Io(io) => classify(io),
            other => BundleError::Decrypt(other.to_string()),
        })?;
        let plaintext = decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => BundleError::NotAddressed,
                other => BundleError::Decrypt(other.to_string()),
            })?;
        let mut plaintext = Tagged(plaintext);
        let manifest = unpack(&mut plaintext, staging.path(), true)?;
        // Read to the very end: age checks its final segment and the
        // reassembler checks the whole ciphertext's BLAKE3 only there.
        let drained = io::copy(&mut plaintext, &mut io::sink()).map_err(classify)?;
        (manifest, drained)
    };
    let repairs = ciphertext
        .finish()
        .map(|reader| reader.repairs().to_vec())
        .unwrap_or_default();
    if drained > 1024 * 1024 {
        return Err(BundleError::BadArchive(format!(
            "{drained} bytes follow the end of the archive"
        )));
    }
    if manifest.files.len() as u64 != header.file_count
        || manifest.total_size() != header.total_size
        || manifest.note != header.note
    {
        return Err(BundleError::ManifestMismatch(
            "the file count, total size or note differs from the sealed header".into(),
        ));
    }
    let sealed_hashes: Vec<String> = descriptor.ack_hashes.iter().map(hex::encode).collect();
    if manifest.ack_hashes != sealed_hashes {
        return Err(BundleError::DescriptorMismatch);
    }
    staging.commit(out)?;
    Ok(Opened {
        bundle_id,
        note: header.note,
        manifest,
        repairs,
        ack_secret: header.ack_secret,
    })
}

/// Splits an archive path into safe components, or refuses it.
fn safe_components(path: &str) -> Result<Vec<&str>, BundleError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let parts: Vec<&str> = trimmed.split('/').collect();
    let unsafe_part = |p: &&str| p.is_empty() || *p == "." || *p == ".." || p.contains('\0');
    if path.starts_with('/') || parts.iter().any(unsafe_part) {
        return Err(BundleError::UnsafePath { path: path.into() });
    }
    Ok(parts)
}

fn entry_kind(t: tar::EntryType) -> String {
    match t {
        tar::EntryType::Symlink => "symlink".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        other => format!("{other:?} entry"),
    }
}

/// Extracts a payload archive into the folder `dest` with every check of
/// `chapar open` (safe paths, regular files and folders only, bounded
/// names, nothing after the manifest) and verifies each file against the
/// manifest that closes the archive. On error, `dest` may hold a partial
/// extraction: callers extract into a staging folder. Files are not
/// flushed to stable storage (`chapar open` does that).
pub fn unpack_archive<R: Read>(reader: R, dest: &Path) -> Result<Manifest, BundleError> {
    unpack(reader, dest, false)
}

/// [`unpack_archive`], optionally flushing every file and folder to stable
/// storage (in the background, while extraction goes on) before returning.
fn unpack<R: Read>(reader: R, dest: &Path, durable: bool) -> Result<Manifest, BundleError> {
    let mut syncer = match durable {
        true => Some(BackgroundSync::new().map_err(BundleError::io(dest))?),
        false => None,
    };
    let manifest = unpack_entries(reader, dest, &mut syncer)?;
    if let Some(syncer) = syncer {
        syncer.finish(dest).map_err(BundleError::io(dest))?;
    }
    Ok(manifest)
}

fn unpack_entries<R: Read>(
    reader: R,
    dest: &Path,
    syncer: &mut Option<BackgroundSync>,
) -> Result<Manifest, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut found = Vec::new();
    let mut manifest_bytes = None;
    let mut sums_bytes = None;
    let mut long_name: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(classify)?.raw(true) {
        let mut entry = entry.map_err(classify)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            if long_name.is_some() {
                return Err(BundleError::BadArchive(
                    "two long names for one entry".into(),
                ));
            }
            long_name = Some(read_long_name(&mut entry)?);
            continue;
        }
        let raw = long_name
            .take()
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let path = std::str::from_utf8(&raw)
            .map_err(|_| BundleError::BadArchive("an entry name is not UTF-8".into()))?
            .to_owned();
        // The manifest closes the archive: only its checksum list may follow.
        if manifest_bytes.is_some() && path != MANIFEST_SHA256 {
            return Err(BundleError::BadArchive(format!(
                "{path:?} follows the manifest"
            )));
        }
        let parts = safe_components(&path)?;
        let target: PathBuf = parts.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(BundleError::io(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let rel = parts.join("/");
                if rel == MANIFEST_SHA256 && manifest_bytes.is_none() {
                    return Err(BundleError::BadArchive(format!(
                        "{MANIFEST_SHA256} comes before {MANIFEST_JSON}"
                    )));
                }
                if rel == MANIFEST_JSON || rel == MANIFEST_SHA256 {
                    let mut bytes = Vec::new();
                    (&mut entry)
                        .take(MAX_MANIFEST_BYTES + 1)
                        .read_to_end(&mut bytes)
                        .map_err(classify)?;
                    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                        return Err(BundleError::BadArchive("manifest too large".into()));
                    }
                    let file = write_new(&target, &bytes)?;
                    if let Some(s) = syncer {
                        s.push(file).map_err(BundleError::io(&target))?;
                    }
                    if rel == MANIFEST_JSON {
                        manifest_bytes = Some(bytes);
                    } else {
                        sums_bytes = Some(bytes);
                    }
                    continue;
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(BundleError::io(parent))?;
                }
                let mtime = entry.header().mtime().ok();
                let (file, listed) = extract_file(&mut entry, &target, rel, mtime)?;
                found.push(listed);
                if let Some(s) = syncer {
                    s.push(file).map_err(BundleError::io(&target))?;
                }
            }
            other => {
                return Err(BundleError::UnsupportedEntry {
                    path,
                    kind: entry_kind(other),
                })
            }
        }
    }
    let manifest_bytes = manifest_bytes
        .ok_or_else(|| BundleError::ManifestMismatch("the archive has no manifest".into()))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BundleError::ManifestMismatch(format!("unreadable manifest: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BundleError::ManifestMismatch(format!(
            "unknown manifest format {:?}",
            manifest.format
        )));
    }
    if manifest.files != found {
        return Err(BundleError::ManifestMismatch(describe_difference(
            &manifest.files,
            &found,
        )));
    }
    if sums_bytes.as_deref() != Some(manifest.sha256sums().as_bytes()) {
        return Err(BundleError::ManifestMismatch(format!(
            "{MANIFEST_SHA256} disagrees with {MANIFEST_JSON}"
        )));
    }
    Ok(manifest)
}

/// Reads a GNU long-name entry's data, refusing one larger than
/// [`MAX_LONG_NAME`] before reading it.
fn read_long_name<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<u8>, BundleError> {
    let size = entry.header().entry_size().map_err(classify)?;
    if size > MAX_LONG_NAME {
        return Err(BundleError::BadArchive(format!(
            "a long file name entry claims {size} bytes, more than {MAX_LONG_NAME}"
        )));
    }
    let mut name = Vec::with_capacity(size as usize);
    entry
        .take(MAX_LONG_NAME)
        .read_to_end(&mut name)
        .map_err(classify)?;
    while name.last() == Some(&0) {
        name.pop();
    }
    Ok(name)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<File, BundleError> {
    let mut f = File::create_new(path).map_err(|e| duplicate_or_io(path, e))?;
    f.write_all(bytes).map_err(BundleError::io(path))?;
    Ok(f)
}

fn duplicate_or_io(path: &Path, e: io::Error) -> BundleError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        BundleError::BadArchive(format!("{} appears twice", path.display()))
    } else {
        BundleError::Io {
            path: path.into(),
            source: e,
        }
    }
}

fn extract_file<R: Read>(
    entry: &mut R,
    target: &Path,
    rel: String,
    mtime: Option<u64>,
) -> Result<(File, ManifestEntry), BundleError> {
    let mut file = File::create_new(target).map_err(|e| duplicate_or_io(target, e))?;
    let mut blake3 = blake3::Hasher::new();
    let mut sha256 = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    let mut write_behind = WriteBehind::default();
    loop {
        let n = entry.read(&mut buf).map_err(classify)?;
        if n == 0 {
            break;
        }
        blake3.update(&buf[..n]);
        sha256.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(BundleError::io(target))?;
        size += n as u64;
        write_behind.wrote(&file, size);
    }
    if let Some(secs) = mtime {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        // Keeping the original time is a courtesy; failing to is not fatal.
        let _ = file.set_modified(when);
    }
    let listed = ManifestEntry {
        path: rel,
        size,
        blake3: blake3.finalize().to_hex().to_string(),
        sha256: hex::encode(sha256.finalize()),
    };
    Ok((file, listed))
}

fn describe_difference(expected: &[ManifestEntry], found: &[ManifestEntry]) -> String {
    for e in expected {
        match found.iter().find(|f| f.path == e.path) {
            None => return format!("{:?} is listed but missing from the archive", e.path),
            Some(f) if f != e => return format!("{:?} does not match its manifest hashes", e.path),
            Some(_) => {}
        }
    }
    if let Some(extra) = found
        .iter()
        .find(|f| !expected.iter().any(|e| e.path == f.path))
    {
        return format!("{:?} is in the archive but not in the manifest", extra.path);
    }
    "the archive's order differs from the manifest".into()
}

/// What reassembling produced.
#[derive(Debug)]
pub struct Reassembled {
    /// The bundle id.
    pub bundle_id: BundleId,
    /// Bytes written.
    pub size: u64,
    /// BLAKE3 of the file (equal to the descriptor's).
    pub blake3: [u8; 32],
    /// Chunks rebuilt from parity.
    pub repairs: Vec<Repair>,
}

/// Rebuilds and verifies the age ciphertext into `out` (no key needed); the
/// file opens with stock `age -d`.
pub fn reassemble_to_file(bundle: &Path, out: &Path) -> Result<Reassembled, BundleError> {
    let folder = BundleFolder::new(bundle);
    let (descriptor, bytes) = folder.read_descriptor()?;
    if fs::symlink_metadata(out).is_ok() {
        return Err(BundleError::OutputExists { path: out.into() });
    }
    let mut reader = ciphertext_reader(&descriptor, &folder)?;
    let mut tmp = tempfile_beside(out)?;
    let copied = io::copy(&mut reader, &mut tmp.1);
    let size = match copied {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp.0);
            return Err(match rebuild_error(e) {
                Ok(rebuild) => BundleError::Rebuild(rebuild),
                Err(io) => BundleError::Io {
                    path: out.into(),
                    source: io,
                },
            });
        }
    };
    let finish = tmp
        .1
        .sync_all()
        .and_then(|()| rename_no_replace(&tmp.0, out));
    if let Err(e) = finish {
        let _ = fs::remove_file(&tmp.0);
        return Err(match e.kind() {
            io::ErrorKind::AlreadyExists => BundleError::OutputExists { path: out.into() },
            _ => BundleError::Io {
                path: out.into(),
                source: e,
            },
        });
    }
    Ok(Reassembled {
        bundle_id: BundleId::of(&bytes),
        size,
        blake3: descriptor.ciphertext_blake3,
        repairs: reader.repairs().to_vec(),
    })
}

/// Renames without ever replacing what is at `to` (`RENAME_NOREPLACE`;
/// where a file system lacks it, a check just before a plain rename).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

fn tempfile_beside(out: &Path) -> Result<(PathBuf, File), BundleError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle.age".into());
    let suffix: u64 = rand::random();
    let path = out.with_file_name(format!(".{name}.chapar-partial-{suffix:016x}"));
    let file = File::create_new(&path).map_err(BundleError::io(&path))?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_path(name).expect("name");
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn extract_bytes(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let dir = tempfile::tempdir().expect("tempdir");
        unpack_archive(bytes, dir.path())
    }

    #[test]
    fn a_long_name_claiming_gigabytes_is_refused_without_reading_it() {
        let mut bytes = header(b'L', "././@LongLink", 10 * 1024 * 1024 * 1024);
        bytes.extend([0u8; 1024]);
        let err = extract_bytes(&bytes).expect_err("refused");
        assert!(err.to_string().contains("long file name"), "{err}");
    }

    #[test]
    fn pax_and_long_link_entries_are_refused() {
        for kind in [b'x', b'g', b'K'] {
            let mut bytes = header(kind, "pax", 10);
            bytes.extend([b'a'; 512]);
            bytes.extend([0u8; 1024]);
            let err = extract_bytes(&bytes).expect_err("refused");
            assert!(
                matches!(err, BundleError::UnsupportedEntry { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn long_names_written_by_the_sealer_are_read_back() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file.txt", "folder".repeat(40));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).expect("append");
        let bytes = b.into_inner().expect("finish");
        let dir = tempfile::tempdir().expect("tempdir");
        // No manifest: extraction completes, then reports it missing.
        let err = unpack_archive(&bytes[..], dir.path()).expect_err("no manifest");
        assert!(matches!(err, BundleError::ManifestMismatch(_)), "{err:?}");
        assert_eq!(fs::read(dir.path().join(&long)).expect("extracted"), b"abc");
    }
}
