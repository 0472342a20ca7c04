//! An in-memory chunk store shared by the format tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;

use chapar_format::{ChunkId, ChunkSink, ChunkSource};

/// Chunks held in a map, keyed by id.
#[derive(Default, Clone)]
pub struct MemoryChunks {
    /// The stored chunks.
    pub chunks: HashMap<ChunkId, Vec<u8>>,
}

impl ChunkSink for MemoryChunks {
    fn put(&mut self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        assert!(id.matches(bytes), "sink given a chunk under the wrong id");
        self.chunks.insert(*id, bytes.to_vec());
        Ok(())
    }
}

impl ChunkSource for MemoryChunks {
    fn get(&self, id: &ChunkId, _max_len: usize) -> io::Result<Option<Vec<u8>>> {
        Ok(self.chunks.get(id).cloned())
    }

    /// Fills the reader's old buffer as the real sources do, so every
    /// format test also checks that no stale bytes survive its reuse.
    fn get_into(
        &self,
        id: &ChunkId,
        _max_len: usize,
        mut buffer: Vec<u8>,
    ) -> io::Result<Option<Vec<u8>>> {
        let Some(bytes) = self.chunks.get(id) else {
            return Ok(None);
        };
        buffer.clear();
        buffer.extend_from_slice(bytes);
        Ok(Some(buffer))
    }

    fn contains(&self, id: &ChunkId) -> io::Result<bool> {
        Ok(self.chunks.contains_key(id))
    }
}
