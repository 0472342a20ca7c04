//! Content addresses: chunk ids and bundle ids are BLAKE3 hashes.

use std::fmt;
use std::str::FromStr;

use crate::error::DecodeError;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id of these bytes: their BLAKE3 hash.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex, as `b3sum` prints it.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..16])
            }
        }

        impl FromStr for $name {
            type Err = DecodeError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| DecodeError::BadHexId)?;
                Ok(Self(out))
            }
        }
    };
}

hash_id!(
    /// A chunk's address: `BLAKE3(chunk bytes)`.
    ChunkId
);
hash_id!(
    /// A bundle's address: `BLAKE3(canonical descriptor bytes)`, so
    /// `b3sum descriptor.chapar` prints it.
    BundleId
);

impl ChunkId {
    /// Whether `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        // blake3::Hash compares in constant time; not secret here, but cheap.
        blake3::hash(bytes) == blake3::Hash::from_bytes(self.0)
    }
}
