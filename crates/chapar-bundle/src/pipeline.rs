//! Moves chunking, hashing, parity and chunk writes onto a second thread,
//! so encryption on the calling thread never waits for them.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use chapar_format::{ChunkSink, Chunked, Geometry, ParamError, StripeWriter};

/// Bytes handed to the worker per message.
const BLOCK: usize = 1024 * 1024;
/// Blocks in flight: bounds memory to about `DEPTH × BLOCK`. Deep enough
/// that encryption keeps going while the worker codes a stripe's parity.
const DEPTH: usize = 8;

/// A `Write` whose bytes are chunked by a worker thread.
pub(crate) struct ChunkingPipe<S: ChunkSink + Send + 'static> {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<JoinHandle<io::Result<(Chunked, S)>>>,
}

impl<S: ChunkSink + Send + 'static> ChunkingPipe<S> {
    pub(crate) fn new(geometry: Geometry, sink: S) -> Result<Self, ParamError> {
        let mut writer = StripeWriter::new(geometry, sink)?;
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        // Emptied buffers come back for reuse so steady state allocates nothing.
        let (free_tx, free) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let worker = std::thread::Builder::new()
            .name("chapar-chunker".into())
            .spawn(move || {
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
        match self.worker.take().map(JoinHandle::join) {
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
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("chunking thread panicked")),
            None => Err(io::Error::other("chunking thread already stopped")),
        }
    }
}

impl<S: ChunkSink + Send + 'static> Write for ChunkingPipe<S> {
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

impl<S: ChunkSink + Send + 'static> Drop for ChunkingPipe<S> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
