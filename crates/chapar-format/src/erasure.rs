//! Reed–Solomon parity over one stripe, with `reed-solomon-simd`.
//!
//! Every stripe is coded as `data_per_stripe` shards of the stripe's shard
//! length. Short data chunks are zero-padded to it, and in a last stripe
//! with fewer data chunks the missing positions are all-zero shards. Those
//! zeros are never stored: both sides know them, so they never count as
//! lost.
//!
//! Parity shards are stored *masked*: their first [`MASK_LEN`] bytes are
//! XORed with a public constant per parity index. Without it, a stripe
//! with a single data chunk (a small bundle, or a small index) can produce
//! a parity shard byte-identical to that chunk or to another parity shard;
//! with content addressing, identical chunks share one id and protect
//! nothing. The mask makes every chunk of a stripe distinct.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::error::RebuildError;

/// How many leading bytes of a parity shard are masked.
pub const MASK_LEN: usize = 64;

/// The public mask of parity shard `index`: the first bytes of
/// `BLAKE3("chapar/parity-mask/1" || index as u16 big-endian)` in XOF mode.
pub fn parity_mask(index: usize) -> [u8; MASK_LEN] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"chapar/parity-mask/1");
    hasher.update(&(index as u16).to_be_bytes());
    let mut mask = [0u8; MASK_LEN];
    hasher.finalize_xof().fill(&mut mask);
    mask
}

/// Applies (or removes: XOR is its own inverse) the mask of parity `index`.
pub fn mask_parity(index: usize, shard: &mut [u8]) {
    for (b, m) in shard.iter_mut().zip(parity_mask(index)) {
        *b ^= m;
    }
}

fn erasure_err(e: reed_solomon_simd::Error) -> RebuildError {
    RebuildError::Erasure(e.to_string())
}

/// Computes the parity of one stripe, fed one data chunk at a time so the
/// stripe never has to sit in memory as a whole.
pub struct StripeEncoder {
    encoder: Option<ReedSolomonEncoder>,
    data_per_stripe: usize,
    parity: usize,
    shard_len: usize,
    added: usize,
    pad: Vec<u8>,
}

impl StripeEncoder {
    /// An encoder for stripes of `data_per_stripe` data and `parity` parity chunks.
    pub fn new(data_per_stripe: usize, parity: usize) -> Self {
        Self {
            encoder: None,
            data_per_stripe,
            parity,
            shard_len: 0,
            added: 0,
            pad: Vec::new(),
        }
    }

    /// Starts a stripe whose shards are `shard_len` bytes (even).
    pub fn begin(&mut self, shard_len: usize) -> Result<(), RebuildError> {
        self.added = 0;
        self.shard_len = shard_len;
        if self.parity == 0 {
            return Ok(());
        }
        match &mut self.encoder {
            Some(enc) => enc
                .reset(self.data_per_stripe, self.parity, shard_len)
                .map_err(erasure_err)?,
            None => {
                self.encoder = Some(
                    ReedSolomonEncoder::new(self.data_per_stripe, self.parity, shard_len)
                        .map_err(erasure_err)?,
                )
            }
        }
        Ok(())
    }

    /// Adds the next data chunk (at most `shard_len` bytes).
    pub fn add(&mut self, chunk: &[u8]) -> Result<(), RebuildError> {
        self.added += 1;
        let Some(enc) = &mut self.encoder else {
            return Ok(());
        };
        if self.parity == 0 {
            return Ok(());
        }
        if chunk.len() == self.shard_len {
            enc.add_original_shard(chunk).map_err(erasure_err)
        } else {
            self.pad.clear();
            self.pad.extend_from_slice(chunk);
            self.pad.resize(self.shard_len, 0);
            enc.add_original_shard(&self.pad).map_err(erasure_err)
        }
    }

    /// Pads the stripe with zero shards and emits its (masked) parity chunks.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) -> Result<(), RebuildError> {
        if self.parity == 0 {
            return Ok(());
        }
        let Some(enc) = &mut self.encoder else {
            return Err(RebuildError::Erasure("finish before begin".into()));
        };
        if self.added < self.data_per_stripe {
            self.pad.clear();
            self.pad.resize(self.shard_len, 0);
            for _ in self.added..self.data_per_stripe {
                enc.add_original_shard(&self.pad).map_err(erasure_err)?;
            }
        }
        let result = enc.encode().map_err(erasure_err)?;
        for (index, shard) in result.recovery_iter().enumerate() {
            self.pad.clear();
            self.pad.extend_from_slice(shard);
            mask_parity(index, &mut self.pad);
            emit(&self.pad);
        }
        Ok(())
    }
}

/// Rebuilds the missing data chunks of one stripe.
///
/// `data` holds the stripe's real data chunks in order (`None` where lost),
/// `parity` its stored (masked) parity chunks (`None` where lost); every present chunk must
/// already be verified. Returns the data chunks that were missing, trimmed
/// to `data_lens`, as `(position in stripe, bytes)`.
pub fn rebuild_stripe(
    data_per_stripe: usize,
    shard_len: usize,
    data: &[Option<Vec<u8>>],
    data_lens: &[usize],
    parity: &[Option<Vec<u8>>],
) -> Result<Vec<(usize, Vec<u8>)>, RebuildError> {
    let mut dec =
        ReedSolomonDecoder::new(data_per_stripe, parity.len(), shard_len).map_err(erasure_err)?;
    let mut padded = Vec::with_capacity(shard_len);
    for (i, chunk) in data.iter().enumerate() {
        if let Some(chunk) = chunk {
            padded.clear();
            padded.extend_from_slice(chunk);
            padded.resize(shard_len, 0);
            dec.add_original_shard(i, &padded).map_err(erasure_err)?;
        }
    }
    let zeros = vec![0u8; shard_len];
    for i in data.len()..data_per_stripe {
        dec.add_original_shard(i, &zeros).map_err(erasure_err)?;
    }
    for (i, chunk) in parity.iter().enumerate() {
        if let Some(chunk) = chunk {
            padded.clear();
            padded.extend_from_slice(chunk);
            mask_parity(i, &mut padded);
            dec.add_recovery_shard(i, &padded).map_err(erasure_err)?;
        }
    }
    let result = dec.decode().map_err(erasure_err)?;
    let mut out = Vec::new();
    for (i, chunk) in data.iter().enumerate() {
        if chunk.is_none() {
            let restored = result
                .restored_original(i)
                .ok_or_else(|| RebuildError::Erasure(format!("shard {i} not restored")))?;
            out.push((i, restored[..data_lens[i]].to_vec()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_lost_data_in_a_short_last_stripe() {
        let chunks: Vec<Vec<u8>> = vec![vec![1u8; 64], vec![2u8; 64], vec![3u8; 33]];
        let mut enc = StripeEncoder::new(16, 4);
        enc.begin(64).expect("begin");
        for c in &chunks {
            enc.add(c).expect("add");
        }
        let mut parity = Vec::new();
        enc.finish(|p| parity.push(Some(p.to_vec())))
            .expect("finish");
        assert_eq!(parity.len(), 4);
        let data = vec![None, Some(chunks[1].clone()), None];
        parity[0] = None;
        let rebuilt = rebuild_stripe(16, 64, &data, &[64, 64, 33], &parity).expect("rebuild");
        assert_eq!(
            rebuilt,
            vec![(0, chunks[0].clone()), (2, chunks[2].clone())]
        );
    }

    #[test]
    fn a_single_chunk_stripe_has_distinct_parity_chunks() {
        let chunk = vec![0xabu8; 128];
        let mut enc = StripeEncoder::new(16, 8);
        enc.begin(128).expect("begin");
        enc.add(&chunk).expect("add");
        let mut all = vec![chunk.clone()];
        enc.finish(|p| all.push(p.to_vec())).expect("finish");
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(
            distinct.len(),
            all.len(),
            "duplicate chunk contents in one stripe"
        );
    }
}
