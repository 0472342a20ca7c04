//! Where chunk bytes live. What is *acknowledged* is decided by the
//! metadata database; these only hold bytes, and every byte read back is
//! verified by the store before it is served.
//!
//! On disk a chunk is `chunks/ab/<64 hex>`. It is written as a temporary
//! file under `tmp/`, made durable, renamed into place, and the rename made
//! durable — all before the database records it. A crash at any instant
//! therefore leaves at worst a stray temporary file or an unrecorded
//! ("orphan") chunk file, never a recorded chunk without its bytes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chapar_format::ChunkId;

/// A chunk written but not yet durable and visible.
pub(crate) enum Staged {
    /// A temporary file (still open) and where it goes.
    File {
        tmp: PathBuf,
        id: ChunkId,
        file: File,
    },
    /// Bytes for the in-memory store.
    Memory { id: ChunkId, bytes: Vec<u8> },
}

/// Storage for chunk bytes.
pub(crate) trait ChunkFiles: Send + Sync {
    /// Writes a chunk somewhere invisible; `publish` makes it durable and visible.
    fn stage(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<Staged>;
    /// Makes staged chunks durable and visible, all or (after a crash) some.
    fn publish(&self, staged: Vec<Staged>) -> io::Result<()>;
    /// Throws staged chunks away (the batch failed).
    fn discard(&self, staged: Vec<Staged>);
    /// Reads up to `max_len + 1` bytes of a chunk (unverified) into
    /// `buffer`, `None` if absent.
    fn read(&self, id: &ChunkId, max_len: usize, buffer: Vec<u8>) -> io::Result<Option<Vec<u8>>>;
    /// Deletes a chunk (absent is fine).
    fn remove(&self, id: &ChunkId) -> io::Result<()>;
    /// Moves a damaged chunk aside for inspection.
    fn quarantine(&self, id: &ChunkId) -> io::Result<()>;
    /// Every chunk present.
    fn list(&self) -> io::Result<Vec<ChunkId>>;
    /// Removes temporary files left by a crash; returns how many.
    fn clear_staging(&self) -> io::Result<usize>;
    /// From now on, drops chunks from the page cache once they are durable.
    fn drop_once_durable(&mut self) {}
}

/// Chunk files under a data directory.
pub(crate) struct FsChunks {
    chunks: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    // Opened once, before any write: `syncfs` reports write-back errors
    // that happened since its descriptor was opened, so a descriptor opened
    // late could miss an early failure.
    fs_handle: File,
    drop_once_durable: bool,
}

impl FsChunks {
    pub(crate) fn new(root: &Path) -> io::Result<Self> {
        let (chunks, tmp, quarantine) = (
            root.join("chunks"),
            root.join("tmp"),
            root.join("quarantine"),
        );
        for dir in [&chunks, &tmp, &quarantine] {
            fs::create_dir_all(dir)?;
        }
        let fs_handle = File::open(root)?;
        fs_handle.sync_all()?;
        Ok(Self {
            chunks,
            tmp,
            quarantine,
            fs_handle,
            drop_once_durable: false,
        })
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks.join(&hex[..2]).join(hex)
    }
}

impl ChunkFiles for FsChunks {
    fn stage(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<Staged> {
        let suffix: u64 = rand::random();
        let tmp = self.tmp.join(format!("{}.{suffix:016x}", id.to_hex()));
        let mut f = File::create_new(&tmp)?;
        f.write_all(bytes)?;
        // Start writeback now; `publish` waits for it once for the batch.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        Ok(Staged::File {
            tmp,
            id: *id,
            file: f,
        })
    }

    fn publish(&self, staged: Vec<Staged>) -> io::Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        // 1. Every temporary file's bytes on stable storage (one journal
        //    commit for the whole batch instead of one fsync per file).
        rustix::fs::syncfs(&self.fs_handle)?;
        // 2. Rename into place, creating shard folders as needed.
        for s in staged {
            if let Staged::File { tmp, id, file } = s {
                if self.drop_once_durable {
                    // Clean now, so this drops its pages.
                    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
                }
                let dest = self.path(&id);
                if let Some(shard) = dest.parent() {
                    if !shard.exists() {
                        fs::create_dir_all(shard)?;
                    }
                }
                fs::rename(&tmp, &dest)?;
            }
        }
        // 3. The renames themselves on stable storage.
        rustix::fs::syncfs(&self.fs_handle)?;
        Ok(())
    }

    fn discard(&self, staged: Vec<Staged>) {
        for s in staged {
            if let Staged::File { tmp, .. } = s {
                let _ = fs::remove_file(tmp);
            }
        }
    }

    fn read(&self, id: &ChunkId, max_len: usize, buffer: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        chapar_bundle::read_chunk_file_into(&self.path(id), max_len, buffer)
    }

    fn remove(&self, id: &ChunkId) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn quarantine(&self, id: &ChunkId) -> io::Result<()> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dest = self.quarantine.join(format!("{}.{stamp}", id.to_hex()));
        match fs::rename(self.path(id), dest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&self) -> io::Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.chunks)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let name = entry?.file_name();
                // Anything not named like a chunk is ignored, not guessed at.
                if let Some(id) = name.to_str().and_then(|n| n.parse::<ChunkId>().ok()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    fn clear_staging(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.tmp)? {
            fs::remove_file(entry?.path())?;
            n += 1;
        }
        Ok(n)
    }

    fn drop_once_durable(&mut self) {
        self.drop_once_durable = true;
    }
}

/// Chunks in memory, for tests and ephemeral nodes.
#[derive(Default)]
pub(crate) struct MemChunks {
    chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
}

impl MemChunks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Vec<u8>>> {
        // A panic while holding the lock cannot leave a half-written map
        // entry (inserts are single operations), so the data is still sound.
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChunkFiles for MemChunks {
    fn stage(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<Staged> {
        Ok(Staged::Memory {
            id: *id,
            bytes: bytes.to_vec(),
        })
    }

    fn publish(&self, staged: Vec<Staged>) -> io::Result<()> {
        let mut map = self.map();
        for s in staged {
            if let Staged::Memory { id, bytes } = s {
                map.insert(id, bytes);
            }
        }
        Ok(())
    }

    fn discard(&self, _staged: Vec<Staged>) {}

    fn read(&self, id: &ChunkId, _max_len: usize, _buffer: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        Ok(self.map().get(id).cloned())
    }

    fn remove(&self, id: &ChunkId) -> io::Result<()> {
        self.map().remove(id);
        Ok(())
    }

    fn quarantine(&self, id: &ChunkId) -> io::Result<()> {
        self.remove(id)
    }

    fn list(&self) -> io::Result<Vec<ChunkId>> {
        Ok(self.map().keys().copied().collect())
    }

    fn clear_staging(&self) -> io::Result<usize> {
        Ok(0)
    }
}
