//! The per-recipient sealed header.
//!
//! Each recipient gets a small age file, encrypted to that recipient alone,
//! inside the public descriptor. It holds the recipient's own random
//! `ack_secret` (revealing it later is the receipt), the BLAKE3 of the
//! bundle's ciphertext (binding the header to this bundle, so a header
//! copied into a forged descriptor cannot be used to extract a receipt for
//! the real bundle), the file count, total size and the sender's note.

use std::io::{Read, Write};

use zeroize::Zeroizing;

use crate::error::DecodeError;
use crate::wire::{Reader, Writer};

/// Magic bytes that open a sealed header's plaintext.
pub const HEADER_MAGIC: &[u8; 8] = b"chapar/H";
/// Version of the sealed header plaintext.
pub const HEADER_VERSION: u8 = 1;
/// Longest note, in bytes of UTF-8 (keeps the descriptor under 16 KiB).
pub const MAX_NOTE_BYTES: usize = 1024;
/// Largest sealed header (age file) a descriptor may carry.
pub const MAX_SEALED_HEADER: usize = 1600;
const MAX_PLAINTEXT: usize = 8 + 1 + 32 + 32 + 8 + 8 + 2 + MAX_NOTE_BYTES;

/// A recipient's secret receipt token; wiped from memory when dropped.
#[derive(Clone)]
pub struct AckSecret(Zeroizing<[u8; 32]>);

impl AckSecret {
    /// A fresh random secret.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes[..]);
        Self(bytes)
    }

    /// Wraps known bytes (a receipt received from the network).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw secret. Reveal it only as a receipt.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// `BLAKE3(secret)`, the value the descriptor lists.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.0[..]).as_bytes()
    }
}

impl std::fmt::Debug for AckSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckSecret(..)")
    }
}

/// What one recipient learns from its sealed header.
#[derive(Debug, Clone)]
pub struct HeaderContents {
    /// This recipient's receipt secret.
    pub ack_secret: AckSecret,
    /// BLAKE3 of the bundle's ciphertext; must equal the descriptor's.
    pub ciphertext_blake3: [u8; 32],
    /// Number of files in the payload.
    pub file_count: u64,
    /// Total plaintext bytes of those files.
    pub total_size: u64,
    /// The sender's note.
    pub note: String,
}

impl HeaderContents {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(HEADER_MAGIC, HEADER_VERSION);
        w.bytes(self.ack_secret.expose())
            .bytes(&self.ciphertext_blake3)
            .u64(self.file_count)
            .u64(self.total_size)
            .u16(self.note.len() as u16)
            .bytes(self.note.as_bytes());
        Zeroizing::new(w.buf)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "sealed header";
        let mut r = Reader::new(bytes, WHAT);
        r.header(HEADER_MAGIC, HEADER_VERSION)?;
        let ack_secret = AckSecret::from_bytes(r.array()?);
        let ciphertext_blake3 = r.array()?;
        let file_count = r.u64()?;
        let total_size = r.u64()?;
        let note_len = usize::from(r.u16()?);
        if note_len > MAX_NOTE_BYTES {
            return Err(DecodeError::TooLarge {
                what: "note",
                size: note_len as u64,
                max: MAX_NOTE_BYTES as u64,
            });
        }
        let note = std::str::from_utf8(r.bytes(note_len)?)
            .map_err(|_| DecodeError::invalid(WHAT, "note is not UTF-8"))?
            .to_owned();
        r.finish()?;
        Ok(Self {
            ack_secret,
            ciphertext_blake3,
            file_count,
            total_size,
            note,
        })
    }

    /// Encrypts these contents to one recipient as a binary age file.
    pub fn seal(&self, recipient: &age::x25519::Recipient) -> Result<Vec<u8>, DecodeError> {
        if self.note.len() > MAX_NOTE_BYTES {
            return Err(DecodeError::TooLarge {
                what: "note",
                size: self.note.len() as u64,
                max: MAX_NOTE_BYTES as u64,
            });
        }
        let plaintext = self.encode();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                .map_err(|e| DecodeError::invalid("sealed header", e.to_string()))?;
        let mut out = Vec::with_capacity(plaintext.len() + 256);
        let io = |e: std::io::Error| DecodeError::invalid("sealed header", e.to_string());
        let mut writer = encryptor.wrap_output(&mut out).map_err(io)?;
        writer.write_all(&plaintext).map_err(io)?;
        writer.finish().map_err(io)?;
        Ok(out)
    }

    /// Tries to open a sealed header with any of `identities`.
    ///
    /// `Ok(None)`: well-formed but for someone else. `Err`: not a valid
    /// sealed header, or it opened but its plaintext is malformed.
    pub fn open(
        sealed: &[u8],
        identities: &[age::x25519::Identity],
    ) -> Result<Option<Self>, DecodeError> {
        const WHAT: &str = "sealed header";
        if sealed.len() > MAX_SEALED_HEADER {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                size: sealed.len() as u64,
                max: MAX_SEALED_HEADER as u64,
            });
        }
        let decryptor = age::Decryptor::new(sealed)
            .map_err(|e| DecodeError::invalid(WHAT, format!("not an age file: {e}")))?;
        let reader = match decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) {
            Ok(reader) => reader,
            Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
            Err(e) => return Err(DecodeError::invalid(WHAT, e.to_string())),
        };
        let mut plaintext = Zeroizing::new(Vec::with_capacity(256));
        reader
            .take(MAX_PLAINTEXT as u64 + 1)
            .read_to_end(&mut plaintext)
            .map_err(|e| DecodeError::invalid(WHAT, e.to_string()))?;
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                size: plaintext.len() as u64,
                max: MAX_PLAINTEXT as u64,
            });
        }
        Self::decode(&plaintext).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_addressed_key_opens_it() {
        let alice = age::x25519::Identity::generate();
        let bob = age::x25519::Identity::generate();
        let contents = HeaderContents {
            ack_secret: AckSecret::random(),
            ciphertext_blake3: [7; 32],
            file_count: 3,
            total_size: 12345,
            note: "x-rays, ward 4".into(),
        };
        let sealed = contents.seal(&alice.to_public()).expect("seals");
        assert!(
            sealed.len() < 600,
            "sealed header is {} bytes",
            sealed.len()
        );
        let opened = HeaderContents::open(&sealed, std::slice::from_ref(&alice))
            .expect("valid")
            .expect("addressed to alice");
        assert_eq!(opened.ack_secret.expose(), contents.ack_secret.expose());
        assert_eq!(opened.note, contents.note);
        assert_eq!(opened.total_size, 12345);
        assert!(HeaderContents::open(&sealed, &[bob])
            .expect("valid")
            .is_none());
        assert!(HeaderContents::open(b"garbage", &[alice]).is_err());
    }
}
