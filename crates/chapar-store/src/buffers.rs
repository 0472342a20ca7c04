//! Chunk buffers kept for reuse.
//!
//! A node moves chunks of up to 1 MiB at hundreds of MB/s, and each chunk
//! crosses a buffer on its way: read from a file to be served, or read off
//! the link to be stored. Large buffers are deliberately kept out of
//! malloc's heaps (`chapar_mesh::keep_large_buffers_out_of_the_heap`), so a
//! buffer freshly allocated is a fresh mapping: the kernel zeroes and maps
//! it a page at a time as it is filled, and unmaps it when it is freed.
//! Profiling a relay receiving 320 MiB found about 1.5 page faults per page
//! of data, a fifth of its CPU time. Handing buffers back here when a chunk
//! is sent or stored turns that into reuse; the few kept are memory the
//! node held at its peak anyway.

use std::sync::{Arc, Mutex};

/// Buffers kept at most. A relay has at most a few MiB of chunks in flight
/// and waiting for the disk at once (the replicator's budget and the
/// commit backlog), so this many covers its steady state.
const KEPT: usize = 16;

/// Smaller buffers come cheaply from malloc. Larger ones than the default
/// chunk size are not kept: bundles with chunks of up to 16 MiB are
/// allowed, and keeping 16 of those (or of a hostile peer's oversized
/// frames) would hold 256 MiB for nothing.
const KEPT_CAPACITY: std::ops::RangeInclusive<usize> =
    64 * 1024..=chapar_format::DEFAULT_CHUNK_SIZE as usize + 64;

/// A pool of chunk-sized buffers, shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct ChunkBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl ChunkBuffers {
    /// An empty buffer, with the capacity of one used before if any is
    /// kept (its old bytes are gone: its length is zero).
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default()
    }

    /// Gives a buffer back for reuse; kept only if chunk-sized and the
    /// pool is not full.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if !KEPT_CAPACITY.contains(&buffer.capacity()) {
            return;
        }
        buffer.clear();
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() < KEPT {
                kept.push(buffer);
            }
        }
    }

    /// Buffers kept now.
    pub fn kept(&self) -> usize {
        self.0.lock().map_or(0, |kept| kept.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_buffer_given_back_is_taken_again_empty_with_its_capacity() {
        let pool = ChunkBuffers::default();
        let mut chunk = Vec::with_capacity(1 << 20);
        chunk.extend_from_slice(&[7u8; 1000]);
        let at = chunk.as_ptr();
        pool.give(chunk);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 1 << 20);
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert!(pool.take().capacity() == 0, "the pool is empty again");
    }

    #[test]
    fn small_oversized_and_surplus_buffers_are_not_kept() {
        let pool = ChunkBuffers::default();
        pool.give(Vec::with_capacity(100));
        pool.give(Vec::with_capacity(16 << 20));
        assert_eq!(pool.kept(), 0);
        for _ in 0..KEPT + 5 {
            pool.give(Vec::with_capacity(1 << 20));
        }
        assert_eq!(pool.kept(), KEPT);
    }
}
