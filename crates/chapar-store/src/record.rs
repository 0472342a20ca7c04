//! What the store keeps about each bundle, and its fixed binary encoding
//! in the metadata database.

use crate::error::StoreError;

/// A bundle's role on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Passing through: kept within the quota, evictable.
    Relaying,
    /// Opened here by one of its recipients: evictable.
    Received,
    /// Being received for this node's own keys: never evicted.
    Receiving,
    /// Sealed on this node: never evicted.
    Sealed,
}

impl Role {
    /// Whether quota pressure may evict it.
    pub fn evictable(self) -> bool {
        matches!(self, Role::Relaying | Role::Received)
    }

    /// The name used in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Relaying => "relaying",
            Role::Received => "received",
            Role::Receiving => "receiving",
            Role::Sealed => "sealed",
        }
    }

    fn code(self) -> u8 {
        match self {
            Role::Relaying => 1,
            Role::Received => 2,
            Role::Receiving => 3,
            Role::Sealed => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Role::Relaying,
            2 => Role::Received,
            3 => Role::Receiving,
            4 => Role::Sealed,
            _ => return None,
        })
    }
}

/// The store's bookkeeping for one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleRecord {
    /// Role on this node.
    pub role: Role,
    /// When this store first took it (unix seconds).
    pub added_at: u64,
    /// Copied from the descriptor, for eviction decisions without decoding it.
    pub priority: u8,
    /// Copied from the descriptor.
    pub expires_at: u64,
    /// Number of recipients.
    pub recipients: u8,
    /// Bit `i` set: the recipient whose ack hash is `ack_hashes[i]` has receipted.
    pub receipted: u8,
    /// Whether the chunk index has been read (so every chunk id is known).
    pub index_known: bool,
    /// Chunks of the bundle known so far (index chunks, plus payload chunks
    /// once the index is known).
    pub known_chunks: u32,
    /// Of those, chunks present in the store.
    pub held_chunks: u32,
    /// Bytes of the chunks present.
    pub held_bytes: u64,
}

const VERSION: u8 = 1;
const LEN: usize = 1 + 1 + 8 + 1 + 8 + 1 + 1 + 1 + 4 + 4 + 8;

impl BundleRecord {
    /// How many recipients have receipted.
    pub fn receipt_count(&self) -> u32 {
        self.receipted.count_ones()
    }

    /// Whether every chunk is present (only meaningful once the index is known).
    pub fn complete(&self) -> bool {
        self.index_known && self.held_chunks == self.known_chunks
    }

    pub(crate) fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        let mut w = 0;
        let mut put = |bytes: &[u8]| {
            out[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
        };
        put(&[VERSION, self.role.code()]);
        put(&self.added_at.to_be_bytes());
        put(&[self.priority]);
        put(&self.expires_at.to_be_bytes());
        put(&[self.recipients, self.receipted, u8::from(self.index_known)]);
        put(&self.known_chunks.to_be_bytes());
        put(&self.held_chunks.to_be_bytes());
        put(&self.held_bytes.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = || {
            StoreError::Database(format!(
                "bundle record of {} bytes is malformed",
                bytes.len()
            ))
        };
        if bytes.len() != LEN || bytes[0] != VERSION {
            return Err(bad());
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            u32::from_be_bytes(b)
        };
        Ok(Self {
            role: Role::from_code(bytes[1]).ok_or_else(bad)?,
            added_at: u64_at(2),
            priority: bytes[10],
            expires_at: u64_at(11),
            recipients: bytes[19],
            receipted: bytes[20],
            index_known: bytes[21] != 0,
            known_chunks: u32_at(22),
            held_chunks: u32_at(26),
            held_bytes: u64_at(30),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = BundleRecord {
            role: Role::Receiving,
            added_at: 1_700_000_000,
            priority: 7,
            expires_at: 1_800_000_000,
            recipients: 3,
            receipted: 0b101,
            index_known: true,
            known_chunks: 1234,
            held_chunks: 1000,
            held_bytes: 99_999_999_999,
        };
        assert_eq!(BundleRecord::decode(&r.encode()).expect("decodes"), r);
        assert!(BundleRecord::decode(&[1, 2, 3]).is_err());
        assert_eq!(r.receipt_count(), 2);
    }
}
