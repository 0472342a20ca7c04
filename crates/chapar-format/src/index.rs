//! The chunk index: the ids of every payload chunk, in layout order.
//!
//! It is too large for the descriptor (an 11 GB bundle has ~14,000 ids), so
//! it travels as ordinary erasure-coded chunks whose ids the descriptor lists.

use crate::error::DecodeError;
use crate::id::ChunkId;
use crate::wire::{Reader, Writer};

/// Magic bytes that open an encoded chunk index.
pub const INDEX_MAGIC: &[u8; 8] = b"chapar/I";
/// Version of the chunk index encoding.
pub const INDEX_VERSION: u8 = 1;
/// Encoded size of an index with no entries.
pub const INDEX_OVERHEAD: u64 = 8 + 1 + 4;

/// Encoded size of an index of `entries` ids.
pub fn encoded_len(entries: u64) -> u64 {
    INDEX_OVERHEAD.saturating_add(entries.saturating_mul(32))
}

/// Encodes the ids of every payload chunk (data and parity, stripe by stripe).
pub fn encode(ids: &[ChunkId]) -> Vec<u8> {
    let mut w = Writer::new(INDEX_MAGIC, INDEX_VERSION);
    w.u32(ids.len() as u32);
    for id in ids {
        w.bytes(id.as_bytes());
    }
    w.buf
}

/// Decodes an index that must hold exactly `expected` ids (the number the
/// descriptor's layout implies).
pub fn decode(bytes: &[u8], expected: usize) -> Result<Vec<ChunkId>, DecodeError> {
    const WHAT: &str = "chunk index";
    if bytes.len() as u64 != encoded_len(expected as u64) {
        return Err(DecodeError::invalid(
            WHAT,
            format!(
                "{} bytes where the descriptor implies {}",
                bytes.len(),
                encoded_len(expected as u64)
            ),
        ));
    }
    let mut r = Reader::new(bytes, WHAT);
    r.header(INDEX_MAGIC, INDEX_VERSION)?;
    let count = r.u32()? as usize;
    if count != expected {
        return Err(DecodeError::invalid(
            WHAT,
            format!("lists {count} chunks, the descriptor implies {expected}"),
        ));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(ChunkId(r.array()?));
    }
    r.finish()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_wrong_count() {
        let ids = vec![ChunkId::of(b"a"), ChunkId::of(b"b")];
        let bytes = encode(&ids);
        assert_eq!(bytes.len() as u64, encoded_len(2));
        assert_eq!(decode(&bytes, 2).expect("decodes"), ids);
        assert!(decode(&bytes, 3).is_err());
        assert!(decode(&bytes[..bytes.len() - 1], 2).is_err());
    }
}
