//! Where every chunk of an erasure-coded byte stream sits.
//!
//! A stream of `size` bytes is cut into data chunks of `chunk_size` bytes
//! (the last one shorter). Consecutive data chunks form stripes of
//! `data_per_stripe`; each stripe gets `parity_per_stripe` Reed–Solomon
//! parity chunks. All of this follows from four numbers, so the descriptor
//! and index carry only those numbers and the chunk ids.

use crate::error::ParamError;

/// Smallest chunk size the format accepts.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk size the format accepts (bounds a peer's memory per chunk).
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Most data chunks one stripe may have.
pub const MAX_DATA_PER_STRIPE: u8 = 64;
/// Most parity chunks one stripe may have.
pub const MAX_PARITY_PER_STRIPE: u8 = 32;
/// Default data chunks per stripe.
pub const DEFAULT_DATA_PER_STRIPE: u8 = 16;
/// Default parity chunks per stripe.
pub const DEFAULT_PARITY_PER_STRIPE: u8 = 4;

/// The chunking and striping parameters shared by a bundle's payload and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per data chunk (even, within the limits above).
    pub chunk_size: u32,
    /// Data chunks per stripe.
    pub data_per_stripe: u8,
    /// Parity chunks per stripe.
    pub parity_per_stripe: u8,
}

impl Default for Geometry {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            data_per_stripe: DEFAULT_DATA_PER_STRIPE,
            parity_per_stripe: DEFAULT_PARITY_PER_STRIPE,
        }
    }
}

impl Geometry {
    /// Checks the limits; every decoder and encoder calls this first.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(ParamError(format!(
                "chunk size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes",
                self.chunk_size
            )));
        }
        if !self.chunk_size.is_multiple_of(2) {
            return Err(ParamError(format!(
                "chunk size {} is odd; Reed–Solomon needs an even size",
                self.chunk_size
            )));
        }
        if !(1..=MAX_DATA_PER_STRIPE).contains(&self.data_per_stripe) {
            return Err(ParamError(format!(
                "{} data chunks per stripe is outside 1..={MAX_DATA_PER_STRIPE}",
                self.data_per_stripe
            )));
        }
        if self.parity_per_stripe > MAX_PARITY_PER_STRIPE {
            return Err(ParamError(format!(
                "{} parity chunks per stripe is more than {MAX_PARITY_PER_STRIPE}",
                self.parity_per_stripe
            )));
        }
        Ok(())
    }

    /// The layout of a stream of `size` bytes under this geometry.
    pub fn layout(self, size: u64) -> Result<Layout, ParamError> {
        self.validate()?;
        if size == 0 {
            return Err(ParamError("an erasure-coded stream cannot be empty".into()));
        }
        Ok(Layout {
            geometry: self,
            size,
        })
    }
}

/// The geometry applied to a stream of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    geometry: Geometry,
    size: u64,
}

/// One chunk's place in a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Data chunk: its number in the stream.
    Data(usize),
    /// Parity chunk `index` of `stripe`.
    Parity {
        /// Stripe number.
        stripe: usize,
        /// Parity number within the stripe.
        index: usize,
    },
}

impl Layout {
    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Stream size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn chunk_size(&self) -> u64 {
        u64::from(self.geometry.chunk_size)
    }

    /// Number of data chunks.
    pub fn data_chunks(&self) -> usize {
        self.size.div_ceil(self.chunk_size()) as usize
    }

    /// Number of stripes.
    pub fn stripes(&self) -> usize {
        self.data_chunks()
            .div_ceil(usize::from(self.geometry.data_per_stripe))
    }

    /// Parity chunks per stripe.
    pub fn parity_per_stripe(&self) -> usize {
        usize::from(self.geometry.parity_per_stripe)
    }

    /// Data chunks per (full) stripe.
    pub fn data_per_stripe(&self) -> usize {
        usize::from(self.geometry.data_per_stripe)
    }

    /// Every chunk, data and parity.
    pub fn total_chunks(&self) -> usize {
        self.data_chunks() + self.stripes() * self.parity_per_stripe()
    }

    /// Bytes in data chunk `i`.
    pub fn data_len(&self, i: usize) -> usize {
        let start = i as u64 * self.chunk_size();
        (self.size - start).min(self.chunk_size()) as usize
    }

    /// The data chunks of `stripe`, as a range of data-chunk numbers.
    pub fn stripe_data(&self, stripe: usize) -> std::ops::Range<usize> {
        let dps = self.data_per_stripe();
        let start = stripe * dps;
        start..(start + dps).min(self.data_chunks())
    }

    /// Shard length of `stripe`: its first data chunk's length rounded up
    /// to even. Every parity chunk of the stripe has this length.
    pub fn shard_len(&self, stripe: usize) -> usize {
        let first = self.data_len(stripe * self.data_per_stripe());
        first + first % 2
    }

    /// Bytes of parity chunks in the whole layout.
    pub fn parity_bytes(&self) -> u64 {
        (0..self.stripes())
            .map(|s| (self.shard_len(s) * self.parity_per_stripe()) as u64)
            .sum()
    }

    /// Position in the index order (stripe by stripe: data, then parity).
    pub fn position(&self, slot: Slot) -> usize {
        let per = self.data_per_stripe() + self.parity_per_stripe();
        match slot {
            Slot::Data(i) => {
                let stripe = i / self.data_per_stripe();
                stripe * per + i % self.data_per_stripe()
            }
            Slot::Parity { stripe, index } => stripe * per + self.stripe_data(stripe).len() + index,
        }
    }

    /// The slot at an index position; the inverse of [`Layout::position`].
    pub fn slot(&self, position: usize) -> Slot {
        let per = self.data_per_stripe() + self.parity_per_stripe();
        let stripe = position / per;
        let within = position % per;
        let data = self.stripe_data(stripe);
        if within < data.len() {
            Slot::Data(data.start + within)
        } else {
            Slot::Parity {
                stripe,
                index: within - data.len(),
            }
        }
    }

    /// Length in bytes of the chunk in `slot`.
    pub fn chunk_len(&self, slot: Slot) -> usize {
        match slot {
            Slot::Data(i) => self.data_len(i),
            Slot::Parity { stripe, .. } => self.shard_len(stripe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(chunk_size: u32, dps: u8, parity: u8) -> Geometry {
        Geometry {
            chunk_size,
            data_per_stripe: dps,
            parity_per_stripe: parity,
        }
    }

    #[test]
    fn positions_and_slots_are_inverse_over_ragged_last_stripe() {
        let layout = geometry(1024, 4, 2).layout(1024 * 9 + 7).expect("valid");
        assert_eq!(layout.data_chunks(), 10);
        assert_eq!(layout.stripes(), 3);
        assert_eq!(layout.total_chunks(), 16);
        for p in 0..layout.total_chunks() {
            assert_eq!(layout.position(layout.slot(p)), p);
        }
        assert_eq!(layout.stripe_data(2), 8..10);
        assert_eq!(
            layout.slot(14),
            Slot::Parity {
                stripe: 2,
                index: 0
            }
        );
        assert_eq!(layout.data_len(8), 1024);
        assert_eq!(layout.data_len(9), 7);
        assert_eq!(layout.shard_len(2), 1024);
    }

    #[test]
    fn single_short_chunk_has_even_shard() {
        let layout = geometry(1024, 16, 4).layout(7).expect("valid");
        assert_eq!(layout.data_chunks(), 1);
        assert_eq!(layout.data_len(0), 7);
        assert_eq!(layout.shard_len(0), 8);
        assert_eq!(layout.parity_bytes(), 32);
    }

    #[test]
    fn exact_multiple_has_no_empty_chunk() {
        let layout = geometry(1024, 2, 1).layout(4096).expect("valid");
        assert_eq!(layout.data_chunks(), 4);
        assert_eq!(layout.data_len(3), 1024);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(geometry(1023, 16, 4).validate().is_err());
        assert!(geometry(1025, 16, 4).validate().is_err());
        assert!(geometry(4096, 0, 4).validate().is_err());
        assert!(geometry(4096, 16, 33).validate().is_err());
        assert!(geometry(MAX_CHUNK_SIZE + 2, 16, 4).validate().is_err());
        assert!(geometry(4096, 16, 0).validate().is_ok());
        assert!(geometry(4096, 16, 4).layout(0).is_err());
    }
}
