//! The descriptor: the small public record that travels ahead of a bundle.
//!
//! It names no recipient and no file and carries no plaintext: sizes, the
//! stripe geometry, the ids of the chunk-index chunks, the BLAKE3 of the
//! whole ciphertext, a coarse expiry, a priority, the hashes of the
//! recipients' ack secrets and one sealed header per recipient. Its encoding
//! is canonical (one valid byte string per value) so the bundle id,
//! `BLAKE3(encoded descriptor)`, is well defined. See `docs/FORMAT.md`.

use crate::error::{DecodeError, ParamError};
use crate::id::{BundleId, ChunkId};
use crate::index;
use crate::layout::{Geometry, Layout};
use crate::sealed::MAX_SEALED_HEADER;
use crate::wire::{Reader, Writer};

/// Magic bytes that open an encoded descriptor.
pub const DESCRIPTOR_MAGIC: &[u8; 8] = b"chapar/D";
/// Version of the descriptor encoding.
pub const DESCRIPTOR_VERSION: u8 = 1;
/// Hard limit on an encoded descriptor: it must fit comfortably in a gossip message.
pub const MAX_DESCRIPTOR_SIZE: usize = 16 * 1024;
/// Most recipients one bundle may have.
pub const MAX_RECIPIENTS: usize = 8;
/// Most chunks (data and parity) the chunk index may occupy.
pub const MAX_INDEX_CHUNKS: usize = 64;
/// Expiry times are rounded up to a whole multiple of this (one hour), so
/// they say little about when a bundle was sealed.
pub const EXPIRY_GRANULARITY_SECS: u64 = 3600;

const WHAT: &str = "descriptor";

/// A bundle's public descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Higher goes first when relays choose what to replicate.
    pub priority: u8,
    /// Unix time (seconds, a multiple of one hour) after which relays drop the bundle.
    pub expires_at: u64,
    /// Bytes of age ciphertext.
    pub ciphertext_size: u64,
    /// BLAKE3 of the whole ciphertext, so `b3sum bundle.age` checks a rebuilt file.
    pub ciphertext_blake3: [u8; 32],
    /// Chunk size and stripe shape, shared by payload and index.
    pub geometry: Geometry,
    /// Bytes of the encoded chunk index.
    pub index_size: u32,
    /// Ids of the index's chunks (data and parity, in layout order).
    pub index_chunks: Vec<ChunkId>,
    /// `BLAKE3(ack_secret)` of each recipient, sorted ascending so their
    /// order says nothing about the order of the sealed headers.
    pub ack_hashes: Vec<[u8; 32]>,
    /// One age-encrypted [`crate::HeaderContents`] per recipient.
    pub sealed_headers: Vec<Vec<u8>>,
}

/// Checks, before sealing, that a payload of `ciphertext_size` bytes fits
/// the format with this geometry (its index must fit in
/// [`MAX_INDEX_CHUNKS`] chunks). Returns the number of index chunks.
pub fn check_capacity(geometry: Geometry, ciphertext_size: u64) -> Result<usize, ParamError> {
    let payload = geometry.layout(ciphertext_size)?;
    let index_size = index::encoded_len(payload.total_chunks() as u64);
    let index = geometry.layout(index_size)?;
    if index_size > u64::from(u32::MAX) || index.total_chunks() > MAX_INDEX_CHUNKS {
        return Err(ParamError(format!(
            "a {ciphertext_size}-byte bundle needs a chunk index of {} chunks, more than {MAX_INDEX_CHUNKS}; use a larger chunk size",
            index.total_chunks()
        )));
    }
    Ok(index.total_chunks())
}

impl Descriptor {
    /// The payload's layout.
    pub fn payload_layout(&self) -> Result<Layout, ParamError> {
        self.geometry.layout(self.ciphertext_size)
    }

    /// The chunk index's layout.
    pub fn index_layout(&self) -> Result<Layout, ParamError> {
        self.geometry.layout(u64::from(self.index_size))
    }

    /// The bundle id: BLAKE3 of the canonical encoding.
    pub fn id(&self) -> Result<BundleId, ParamError> {
        Ok(BundleId::of(&self.encode()?))
    }

    /// Whether `hash` is one of this bundle's ack hashes.
    pub fn has_ack_hash(&self, hash: &[u8; 32]) -> bool {
        self.ack_hashes.binary_search(hash).is_ok()
    }

    /// Checks every rule of the format; both encode and decode call it.
    pub fn validate(&self) -> Result<(), ParamError> {
        let payload = self.payload_layout()?;
        let expected_index = index::encoded_len(payload.total_chunks() as u64);
        if u64::from(self.index_size) != expected_index {
            return Err(ParamError(format!(
                "index size {} does not match the {} payload chunks (expected {expected_index})",
                self.index_size,
                payload.total_chunks()
            )));
        }
        let index = self.index_layout()?;
        if index.total_chunks() > MAX_INDEX_CHUNKS {
            return Err(ParamError(format!(
                "the chunk index needs {} chunks, more than {MAX_INDEX_CHUNKS}; use a larger chunk size",
                index.total_chunks()
            )));
        }
        if index.total_chunks() != self.index_chunks.len() {
            return Err(ParamError(format!(
                "{} index chunk ids where the layout needs {}",
                self.index_chunks.len(),
                index.total_chunks()
            )));
        }
        let n = self.sealed_headers.len();
        if n == 0 || n > MAX_RECIPIENTS {
            return Err(ParamError(format!(
                "{n} recipients; a bundle has 1 to {MAX_RECIPIENTS}"
            )));
        }
        if self.ack_hashes.len() != n {
            return Err(ParamError(format!(
                "{} ack hashes for {n} sealed headers",
                self.ack_hashes.len()
            )));
        }
        if !self.ack_hashes.windows(2).all(|w| w[0] < w[1]) {
            return Err(ParamError("ack hashes are not sorted and distinct".into()));
        }
        if let Some(h) = self
            .sealed_headers
            .iter()
            .find(|h| h.is_empty() || h.len() > MAX_SEALED_HEADER)
        {
            return Err(ParamError(format!(
                "a sealed header of {} bytes (1..={MAX_SEALED_HEADER} allowed)",
                h.len()
            )));
        }
        if !self.expires_at.is_multiple_of(EXPIRY_GRANULARITY_SECS) {
            return Err(ParamError(
                "expiry is not a whole multiple of one hour".into(),
            ));
        }
        Ok(())
    }

    /// The canonical encoding. Fails if the descriptor breaks a rule or
    /// would exceed [`MAX_DESCRIPTOR_SIZE`].
    pub fn encode(&self) -> Result<Vec<u8>, ParamError> {
        self.validate()?;
        let mut w = Writer::new(DESCRIPTOR_MAGIC, DESCRIPTOR_VERSION);
        w.u8(self.priority)
            .u64(self.expires_at)
            .u64(self.ciphertext_size)
            .bytes(&self.ciphertext_blake3)
            .u32(self.geometry.chunk_size)
            .u8(self.geometry.data_per_stripe)
            .u8(self.geometry.parity_per_stripe)
            .u32(self.index_size)
            .u8(self.index_chunks.len() as u8);
        for id in &self.index_chunks {
            w.bytes(id.as_bytes());
        }
        w.u8(self.sealed_headers.len() as u8);
        for hash in &self.ack_hashes {
            w.bytes(hash);
        }
        for header in &self.sealed_headers {
            w.u16(header.len() as u16).bytes(header);
        }
        if w.buf.len() > MAX_DESCRIPTOR_SIZE {
            return Err(ParamError(format!(
                "descriptor would be {} bytes, over the {MAX_DESCRIPTOR_SIZE}-byte limit; use fewer recipients or a shorter note",
                w.buf.len()
            )));
        }
        Ok(w.buf)
    }

    /// Decodes and validates untrusted bytes. Never panics; rejects
    /// anything that would not re-encode to exactly these bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_DESCRIPTOR_SIZE {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                size: bytes.len() as u64,
                max: MAX_DESCRIPTOR_SIZE as u64,
            });
        }
        let mut r = Reader::new(bytes, WHAT);
        r.header(DESCRIPTOR_MAGIC, DESCRIPTOR_VERSION)?;
        let priority = r.u8()?;
        let expires_at = r.u64()?;
        let ciphertext_size = r.u64()?;
        let ciphertext_blake3 = r.array()?;
        let geometry = Geometry {
            chunk_size: r.u32()?,
            data_per_stripe: r.u8()?,
            parity_per_stripe: r.u8()?,
        };
        let index_size = r.u32()?;
        let index_count = usize::from(r.u8()?);
        let mut index_chunks = Vec::with_capacity(index_count);
        for _ in 0..index_count {
            index_chunks.push(ChunkId(r.array()?));
        }
        let recipients = usize::from(r.u8()?);
        if recipients > MAX_RECIPIENTS {
            return Err(DecodeError::invalid(
                WHAT,
                format!("{recipients} recipients, more than {MAX_RECIPIENTS}"),
            ));
        }
        let mut ack_hashes = Vec::with_capacity(recipients);
        for _ in 0..recipients {
            ack_hashes.push(r.array()?);
        }
        let mut sealed_headers = Vec::with_capacity(recipients);
        for _ in 0..recipients {
            let len = usize::from(r.u16()?);
            sealed_headers.push(r.bytes(len)?.to_vec());
        }
        r.finish()?;
        let descriptor = Self {
            priority,
            expires_at,
            ciphertext_size,
            ciphertext_blake3,
            geometry,
            index_size,
            index_chunks,
            ack_hashes,
            sealed_headers,
        };
        descriptor
            .validate()
            .map_err(|e| DecodeError::invalid(WHAT, e.0))?;
        Ok(descriptor)
    }
}
