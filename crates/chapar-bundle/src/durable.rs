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
