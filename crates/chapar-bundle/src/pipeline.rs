//! Moves chunk work onto a second thread: chunking, hashing, parity and
//! writes when sealing ([`ChunkingPipe`]), fetching and verifying chunks
//! when opening ([`ReadAhead`]), so the cipher on the calling thread never
//! waits for them.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{JoinHandle, Scope, ScopedJoinHandle};

use chapar_format::{ChunkSink, Chunked, Geometry, ParamError, StripeWriter};

/// Bytes handed to the worker per message.
const BLOCK: usize = 1024 * 1024;
/// Blocks in flight: bounds memory to about `DEPTH × BLOCK`. Three keep
/// encryption going while the worker codes a stripe's parity: eight
/// sealed 256 MiB about 5 % faster and peaked 4–5 MiB higher, and the
/// sender's peak is the seal's (docs/BENCHMARKS.md).
const DEPTH: usize = 3;

/// A `Write` whose bytes are chunked by a worker thread (scoped, so the
/// sink may borrow).
pub(crate) struct ChunkingPipe<'scope, S: ChunkSink + Send + 'scope> {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<ScopedJoinHandle<'scope, io::Result<(Chunked, S)>>>,
}

impl<'scope, S: ChunkSink + Send + 'scope> ChunkingPipe<'scope, S> {
    pub(crate) fn new<'env>(
        scope: &'scope Scope<'scope, 'env>,
        geometry: Geometry,
        sink: S,
    ) -> Result<Self, ParamError> {
        let mut writer = StripeWriter::new(geometry, sink)?;
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        // Emptied buffers come back for reuse so steady state allocates nothing.
        let (free_tx, free) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let worker = std::thread::Builder::new()
            .name("chapar-chunker".into())
            .spawn_scoped(scope, move || {
                for mut block in rx {
                    writer.write_all(&block)?;
                    block.clear();
                    let _ = free_tx.try_send(block);
                }
                writer.finish()
            })
            .map_err(|e| ParamError(format!("cannot start chunking thread: {e}")))?;
        Ok(Self {
            buf: Vec::with_capacity(BLOCK),
            tx: Some(tx),
            free,
            worker: Some(worker),
        })
    }

    fn send(&mut self) -> io::Result<()> {
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK));
        let block = std::mem::replace(&mut self.buf, next);
        let sent = self.tx.as_ref().map(|tx| tx.send(block));
        match sent {
            Some(Ok(())) => Ok(()),
            // The worker stopped: its own error explains why.
            _ => Err(self.join_error()),
        }
    }

    fn join_error(&mut self) -> io::Error {
        self.tx = None;
        match self.worker.take().map(ScopedJoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("chunking thread panicked"),
            _ => io::Error::other("chunking thread stopped"),
        }
    }

    /// Sends the last bytes and waits for the worker's result.
    pub(crate) fn finish(mut self) -> io::Result<(Chunked, S)> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.tx = None;
        match self.worker.take().map(ScopedJoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("chunking thread panicked")),
            None => Err(io::Error::other("chunking thread already stopped")),
        }
    }
}

impl<'scope, S: ChunkSink + Send + 'scope> Write for ChunkingPipe<'scope, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (BLOCK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOCK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'scope, S: ChunkSink + Send + 'scope> Drop for ChunkingPipe<'scope, S> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A `Read` whose source is read on a worker thread, a few blocks ahead,
/// so that fetching and verifying chunks overlaps with decryption.
pub(crate) struct ReadAhead<R: Read + Send + 'static> {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Read blocks going back to the worker, so it does not map and fault
    /// in a fresh megabyte for each.
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
    worker: Option<JoinHandle<R>>,
}

impl<R: Read + Send + 'static> ReadAhead<R> {
    pub(crate) fn spawn(mut inner: R) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (free, freed) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let worker = std::thread::Builder::new()
            .name("chapar-read-ahead".into())
            .spawn(move || loop {
                let mut block = freed.try_recv().unwrap_or_default();
                block.resize(BLOCK, 0);
                let mut filled = 0;
                let result = loop {
                    match inner.read(&mut block[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == BLOCK {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                block.truncate(filled);
                let last = filled < BLOCK || result.is_err();
                let stopped = match result {
                    Err(e) => tx.send(Err(e)).is_err(),
                    Ok(()) if filled > 0 => tx.send(Ok(block)).is_err(),
                    Ok(()) => false,
                };
                if last || stopped {
                    return inner;
                }
            })?;
        Ok(Self {
            rx,
            free,
            current: Vec::new(),
            offset: 0,
            worker: Some(worker),
        })
    }

    /// Stops reading and hands back the source (to ask it what it saw).
    pub(crate) fn finish(mut self) -> Option<R> {
        // Unblock a worker waiting to send, then wait for it.
        let (_, dead) = sync_channel(1);
        self.rx = dead;
        self.worker.take().and_then(|w| w.join().ok())
    }
}

impl<R: Read + Send + 'static> Read for ReadAhead<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.offset == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    let used = std::mem::replace(&mut self.current, block);
                    let _ = self.free.try_send(used);
                    self.offset = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The worker has sent everything: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.offset);
        out[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl<R: Read + Send + 'static> Drop for ReadAhead<R> {
    fn drop(&mut self) {
        let (_, dead) = sync_channel(1);
        self.rx = dead;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks are reused once read: what comes out must still be exactly
    /// the source, a short last block included, whatever size the reads.
    #[test]
    fn read_ahead_yields_the_source_exactly_while_reusing_its_blocks() {
        let source: Vec<u8> = (0..(3 * BLOCK + 12_345) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for read_size in [1, 4096, BLOCK - 1, BLOCK, 2 * BLOCK + 7] {
            let mut reader = ReadAhead::spawn(io::Cursor::new(source.clone())).expect("spawn");
            let mut out = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = reader.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out.len(), source.len(), "reads of {read_size}");
            assert!(out == source, "reads of {read_size}: bytes differ");
        }
    }
}
