//! The bundle folder: the on-disk (and sneakernet) form of a bundle.
//!
//! ```text
//! BUNDLE_DIR/
//!   descriptor.chapar          canonical descriptor bytes; b3sum of it = bundle id
//!   chunks/ab/ab12…ef          every chunk, named by its BLAKE3 in hex,
//!                              sharded by the first two hex digits
//! ```
//!
//! Sharding keeps folders small enough for FAT32 USB sticks (which hold
//! only a few thousand long names per folder). The descriptor is written
//! last, atomically, so a folder without one is visibly incomplete.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chapar_format::{ChunkId, ChunkSink, ChunkSource, Descriptor, MAX_DESCRIPTOR_SIZE};

use crate::durable::BackgroundSync;
use crate::error::BundleError;

/// File name of the descriptor inside a bundle folder.
pub const DESCRIPTOR_FILE: &str = "descriptor.chapar";
/// Folder of chunks inside a bundle folder.
pub const CHUNKS_DIR: &str = "chunks";

/// A bundle folder on disk.
#[derive(Debug, Clone)]
pub struct BundleFolder {
    root: PathBuf,
}

impl BundleFolder {
    /// The folder at `root` (nothing is read yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the chunk with this id.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(CHUNKS_DIR).join(&hex[..2]).join(hex)
    }

    /// Path of the descriptor.
    pub fn descriptor_path(&self) -> PathBuf {
        self.root.join(DESCRIPTOR_FILE)
    }

    /// Reads and decodes the descriptor, returning it with its exact bytes.
    pub fn read_descriptor(&self) -> Result<(Descriptor, Vec<u8>), BundleError> {
        let path = self.descriptor_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BundleError::NotABundle {
                    path: self.root.clone(),
                })
            }
            Err(e) => return Err(BundleError::Io { path, source: e }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_DESCRIPTOR_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(BundleError::io(&path))?;
        let descriptor =
            Descriptor::decode(&bytes).map_err(|source| BundleError::Decode { path, source })?;
        Ok((descriptor, bytes))
    }

    /// Writes the descriptor atomically (temp file, fsync, rename, fsync folder).
    pub fn write_descriptor(&self, bytes: &[u8]) -> Result<(), BundleError> {
        let path = self.descriptor_path();
        let tmp = self.root.join(".descriptor.chapar.tmp");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.root)?.sync_all()
        };
        write().map_err(BundleError::io(&path))
    }

    /// A sink that writes chunks into this folder; call
    /// [`FolderSink::finish`] to make them durable.
    pub fn sink(&self) -> Result<FolderSink, BundleError> {
        Ok(FolderSink {
            folder: self.clone(),
            made_shards: [false; 256],
            syncer: BackgroundSync::new().map_err(BundleError::io(&self.root))?,
        })
    }
}

/// Creates the bundle folder `out` (absent or empty) atomically: `fill`
/// writes chunks into a hidden staging folder, then the descriptor is
/// written and the folder renamed onto `out`. On any error nothing
/// appears at `out`.
pub fn write_bundle_folder<T>(
    out: &Path,
    fill: impl FnOnce(&mut FolderSink) -> Result<(Vec<u8>, T), BundleError>,
) -> Result<T, BundleError> {
    let staging = StagingDir::beside(out)?;
    let folder = BundleFolder::new(staging.path());
    let mut sink = folder.sink()?;
    let (descriptor_bytes, result) = fill(&mut sink)?;
    sink.finish()?;
    folder.write_descriptor(&descriptor_bytes)?;
    staging.commit(out)?;
    Ok(result)
}

/// Writes chunks into a [`BundleFolder`], flushing them in the background.
pub struct FolderSink {
    folder: BundleFolder,
    made_shards: [bool; 256],
    syncer: BackgroundSync,
}

impl FolderSink {
    /// Waits until every chunk written, and the folders naming them, are
    /// on stable storage.
    pub fn finish(self) -> Result<(), BundleError> {
        let root = self.folder.root.clone();
        self.syncer.finish(&root).map_err(BundleError::io(&root))
    }
}

impl ChunkSink for FolderSink {
    fn put(&mut self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        let path = self.folder.chunk_path(id);
        let shard = usize::from(id.as_bytes()[0]);
        if !self.made_shards[shard] {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            self.made_shards[shard] = true;
        }
        let mut file = File::create(&path)?;
        file.write_all(bytes)?;
        self.syncer.push(file)
    }
}

/// Reads a chunk file, at most `max_len + 1` bytes (so an overlong file
/// shows as corrupt without being read whole); `None` if it is absent.
pub fn read_chunk_file(path: &Path, max_len: usize) -> io::Result<Option<Vec<u8>>> {
    read_chunk_file_into(path, max_len, Vec::new())
}

/// [`read_chunk_file`] into `buffer` (emptied first), so a caller that
/// reads many chunks can reuse one allocation.
pub fn read_chunk_file_into(
    path: &Path,
    max_len: usize,
    mut buffer: Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata().map_or(0, |m| m.len());
    buffer.clear();
    buffer.reserve_exact(size.min(max_len as u64 + 1) as usize);
    file.take(max_len as u64 + 1).read_to_end(&mut buffer)?;
    Ok(Some(buffer))
}

impl ChunkSource for BundleFolder {
    fn get(&self, id: &ChunkId, max_len: usize) -> io::Result<Option<Vec<u8>>> {
        read_chunk_file(&self.chunk_path(id), max_len)
    }

    fn get_into(
        &self,
        id: &ChunkId,
        max_len: usize,
        buffer: Vec<u8>,
    ) -> io::Result<Option<Vec<u8>>> {
        read_chunk_file_into(&self.chunk_path(id), max_len, buffer)
    }

    fn contains(&self, id: &ChunkId) -> io::Result<bool> {
        match fs::metadata(self.chunk_path(id)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A fresh hidden folder beside `target` for work in progress, renamed
/// onto `target` only when complete; removed on drop unless kept.
pub(crate) struct StagingDir {
    path: PathBuf,
    keep: bool,
}

impl StagingDir {
    /// Creates the staging folder. `target` must not exist, or be an empty folder.
    pub(crate) fn beside(target: &Path) -> Result<Self, BundleError> {
        check_output_free(target)?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        fs::create_dir_all(&parent).map_err(BundleError::io(&parent))?;
        let suffix: u64 = rand::random();
        let path = parent.join(format!(".{name}.chapar-partial-{suffix:016x}"));
        fs::create_dir(&path).map_err(BundleError::io(&path))?;
        Ok(Self { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished folder onto `target`.
    pub(crate) fn commit(mut self, target: &Path) -> Result<(), BundleError> {
        check_output_free(target)?;
        if target.is_dir() {
            fs::remove_dir(target).map_err(BundleError::io(target))?;
        }
        fs::rename(&self.path, target).map_err(BundleError::io(target))?;
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(BundleError::io(parent))?;
        }
        self.keep = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Fails unless `target` is absent or an empty folder.
pub(crate) fn check_output_free(target: &Path) -> Result<(), BundleError> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BundleError::Io {
            path: target.into(),
            source: e,
        }),
        Ok(m) if m.is_dir() => {
            let mut entries = fs::read_dir(target).map_err(BundleError::io(target))?;
            if entries.next().is_none() {
                Ok(())
            } else {
                Err(BundleError::OutputExists {
                    path: target.into(),
                })
            }
        }
        Ok(_) => Err(BundleError::OutputExists {
            path: target.into(),
        }),
    }
}
