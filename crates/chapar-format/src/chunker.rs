//! Cuts a byte stream into content-addressed data chunks and adds the
//! parity chunks of each stripe, as the bytes arrive.

use std::io::{self, Write};

use crate::erasure::StripeEncoder;
use crate::error::ParamError;
use crate::id::ChunkId;
use crate::index;
use crate::layout::Geometry;

/// Where finished chunks go: a bundle folder, a store, memory in tests.
pub trait ChunkSink {
    /// Stores one chunk. `id` is already `BLAKE3(bytes)`.
    fn put(&mut self, id: &ChunkId, bytes: &[u8]) -> io::Result<()>;
}

impl<T: ChunkSink + ?Sized> ChunkSink for &mut T {
    fn put(&mut self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        (**self).put(id, bytes)
    }
}

/// The result of chunking a stream.
#[derive(Debug, Clone)]
pub struct Chunked {
    /// Every chunk id in layout order (stripe by stripe: data, then parity).
    pub ids: Vec<ChunkId>,
    /// Bytes of the stream.
    pub size: u64,
    /// BLAKE3 of the whole stream.
    pub blake3: [u8; 32],
}

/// A `Write` that chunks, hashes and erasure-codes everything written to it.
pub struct StripeWriter<S: ChunkSink> {
    geometry: Geometry,
    sink: S,
    buf: Vec<u8>,
    encoder: StripeEncoder,
    ids: Vec<ChunkId>,
    in_stripe: usize,
    size: u64,
    whole: blake3::Hasher,
}

impl<S: ChunkSink> StripeWriter<S> {
    /// A writer with this geometry, sending chunks to `sink`.
    pub fn new(geometry: Geometry, sink: S) -> Result<Self, ParamError> {
        geometry.validate()?;
        Ok(Self {
            geometry,
            sink,
            buf: Vec::with_capacity(geometry.chunk_size as usize),
            encoder: StripeEncoder::new(
                usize::from(geometry.data_per_stripe),
                usize::from(geometry.parity_per_stripe),
            ),
            ids: Vec::new(),
            in_stripe: 0,
            size: 0,
            whole: blake3::Hasher::new(),
        })
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.emit_chunk(&buf);
        self.buf = buf;
        self.buf.clear();
        result
    }

    fn emit_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        let id = ChunkId::of(chunk);
        self.whole.update(chunk);
        self.sink.put(&id, chunk)?;
        if self.in_stripe == 0 {
            let shard_len = chunk.len() + chunk.len() % 2;
            self.encoder.begin(shard_len).map_err(io::Error::other)?;
        }
        self.encoder.add(chunk).map_err(io::Error::other)?;
        self.ids.push(id);
        self.in_stripe += 1;
        if self.in_stripe == usize::from(self.geometry.data_per_stripe) {
            self.end_stripe()?;
        }
        Ok(())
    }

    fn end_stripe(&mut self) -> io::Result<()> {
        let Self {
            encoder, sink, ids, ..
        } = self;
        let mut failed = None;
        encoder
            .finish(|parity| {
                if failed.is_some() {
                    return;
                }
                let id = ChunkId::of(parity);
                match sink.put(&id, parity) {
                    Ok(()) => ids.push(id),
                    Err(e) => failed = Some(e),
                }
            })
            .map_err(io::Error::other)?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.in_stripe = 0;
        Ok(())
    }

    /// Flushes the last chunk and stripe; returns the ids and hashes and
    /// hands back the sink.
    pub fn finish(mut self) -> io::Result<(Chunked, S)> {
        if !self.buf.is_empty() {
            self.flush_chunk()?;
        }
        if self.in_stripe > 0 {
            self.end_stripe()?;
        }
        if self.size == 0 {
            return Err(io::Error::other(ParamError(
                "cannot chunk an empty stream".into(),
            )));
        }
        let chunked = Chunked {
            ids: self.ids,
            size: self.size,
            blake3: *self.whole.finalize().as_bytes(),
        };
        Ok((chunked, self.sink))
    }
}

impl<S: ChunkSink> Write for StripeWriter<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let chunk_size = self.geometry.chunk_size as usize;
        // Whole chunks are hashed and coded straight from the caller's
        // buffer; only partial ones are copied.
        if self.buf.is_empty() && data.len() >= chunk_size {
            self.size += chunk_size as u64;
            self.emit_chunk(&data[..chunk_size])?;
            return Ok(chunk_size);
        }
        let n = (chunk_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == chunk_size {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encodes the chunk index of `payload_ids` and chunks it with the same
/// geometry. Returns the index's size and its chunk ids.
pub fn write_index<S: ChunkSink>(
    geometry: Geometry,
    payload_ids: &[ChunkId],
    sink: S,
) -> io::Result<(u32, Vec<ChunkId>)> {
    let bytes = index::encode(payload_ids);
    let size = u32::try_from(bytes.len())
        .map_err(|_| io::Error::other(ParamError("chunk index larger than 4 GiB".into())))?;
    let mut writer = StripeWriter::new(geometry, sink).map_err(io::Error::other)?;
    writer.write_all(&bytes)?;
    let (chunked, _) = writer.finish()?;
    Ok((size, chunked.ids))
}
