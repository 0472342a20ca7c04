//! Durability without stalls: files are flushed to stable storage by a
//! background thread while the caller keeps encrypting or extracting, so
//! disk and CPU work overlap instead of adding up.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Files waiting to be flushed; bounds the dirty data queued behind the disk.
const QUEUE: usize = 64;

/// A background `fdatasync` queue.
pub struct BackgroundSync {
    tx: Option<SyncSender<File>>,
    worker: Option<JoinHandle<io::Result<()>>>,
}

impl BackgroundSync {
    /// Starts the flushing thread.
    pub fn new() -> io::Result<Self> {
        let (tx, rx) = sync_channel::<File>(QUEUE);
        let worker = std::thread::Builder::new()
            .name("chapar-fsync".into())
            .spawn(move || {
                let mut first_error = None;
                for file in rx {
                    // Starts writeback now without waiting for it or for a
                    // journal commit (and drops the pages from the cache:
                    // these files are not read again soon). `finish`
                    // then waits once for all of it.
                    let kick = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
                    if let Err(e) = kick {
                        first_error.get_or_insert(e.into());
                    }
                }
                first_error.map_or(Ok(()), Err)
            })?;
        Ok(Self {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Queues a written file to be flushed (blocks while the queue is full).
    pub fn push(&mut self, file: File) -> io::Result<()> {
        match self.tx.as_ref().map(|tx| tx.send(file)) {
            Some(Ok(())) => Ok(()),
            _ => Err(io::Error::other("the fsync thread stopped")),
        }
    }

    /// Waits until every queued file, and everything else written to the
    /// file system holding `anchor`, is on stable storage (one `syncfs`:
    /// one journal commit instead of one per file).
    pub fn finish(mut self, anchor: &Path) -> io::Result<()> {
        self.tx = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            _ => return Err(io::Error::other("the fsync thread panicked")),
        }
        rustix::fs::syncfs(File::open(anchor)?)?;
        Ok(())
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Flushes a folder's entries (new names) to stable storage.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Keeps a large file being written from filling the page cache: every
/// [`WriteBehind::WINDOW`] bytes it starts writeback of what was just
/// written and drops what has been written back since the last window.
///
/// Opening a 1 GiB bundle otherwise left 1 GiB of the output in the page
/// cache until the end, pushing other files out; and on these VMs, where
/// the host backs guest memory only on first touch, page cache taken from
/// memory not used before cost 2.7 s of system time per GiB against 0.2 s
/// reused (docs/BENCHMARKS.md). Pages dropped here are reused by the next
/// window.
#[derive(Debug, Default)]
pub(crate) struct WriteBehind {
    dropped_to: u64,
}

impl WriteBehind {
    const WINDOW: u64 = 8 * 1024 * 1024;

    /// Call after each write, with the bytes written to `file` so far.
    pub(crate) fn wrote(&mut self, file: &File, written: u64) {
        if written.saturating_sub(self.dropped_to) < Self::WINDOW {
            return;
        }
        // The window before the last is (usually) written back by now;
        // the last one's writeback starts here, and it is dropped next
        // time. Advice only: failing to follow it loses nothing.
        let from = self.dropped_to.saturating_sub(Self::WINDOW);
        let _ = rustix::fs::fadvise(
            file,
            from,
            std::num::NonZeroU64::new(written - from),
            rustix::fs::Advice::DontNeed,
        );
        self.dropped_to = written;
    }
}
