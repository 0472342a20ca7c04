//! Rebuilding a bundle's missing chunks from the parity the store holds,
//! so a store that received most of a bundle (a damaged USB stick, a
//! relay that vanished mid-transfer) can complete it without a new copy.

use std::collections::HashSet;

use chapar_format::{
    read_index, rebuild_stripe, BundleId, ChunkId, Descriptor, Layout, Slot, StripeEncoder,
};

use crate::error::StoreError;
use crate::store::Store;

/// What a parity repair achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParityRepair {
    /// Chunks rebuilt and stored.
    pub rebuilt: usize,
    /// Stripes that lost more chunks than their parity covers.
    pub unrecoverable_stripes: usize,
}

/// The slots of one stripe: its data chunks, then its parity chunks.
fn stripe_slots(layout: &Layout, stripe: usize) -> Vec<Slot> {
    layout
        .stripe_data(stripe)
        .map(Slot::Data)
        .chain((0..layout.parity_per_stripe()).map(|index| Slot::Parity { stripe, index }))
        .collect()
}

/// How many of a stripe's chunks are in `missing`.
fn lost_in_stripe(
    layout: &Layout,
    ids: &[ChunkId],
    stripe: usize,
    missing: &HashSet<ChunkId>,
) -> usize {
    stripe_slots(layout, stripe)
        .into_iter()
        .filter(|slot| missing.contains(&ids[layout.position(*slot)]))
        .count()
}

/// Whether every stripe of a stream lost no more chunks than its parity
/// covers. Pure: it judges by ids alone.
fn parity_covers(layout: &Layout, ids: &[ChunkId], missing: &HashSet<ChunkId>) -> bool {
    ids.len() == layout.total_chunks()
        && (0..layout.stripes())
            .all(|s| lost_in_stripe(layout, ids, s, missing) <= layout.parity_per_stripe())
}

impl Store {
    /// Rebuilds every missing chunk of the bundle that its stripe's parity
    /// allows (index and payload, data and parity chunks alike), verifies
    /// each against its id, and stores it. Only stripes that lack a chunk
    /// are read.
    pub fn repair_from_parity(&self, id: &BundleId) -> Result<ParityRepair, StoreError> {
        let mut report = ParityRepair::default();
        if !self.record(id)?.index_known {
            return Ok(report);
        }
        let descriptor = Descriptor::decode(&self.descriptor(id)?)?;
        let bad = |e: chapar_format::ParamError| StoreError::Database(e.to_string());
        let index_layout = descriptor.index_layout().map_err(bad)?;
        let missing: HashSet<ChunkId> = self.missing_chunks(id)?.into_iter().collect();
        self.repair_stream(
            &index_layout,
            &descriptor.index_chunks,
            &missing,
            &mut report,
        )?;
        let payload_ids = match read_index(&descriptor, &self) {
            Ok((ids, _)) => ids,
            Err(_) => return Ok(report),
        };
        let payload_layout = descriptor.payload_layout().map_err(bad)?;
        self.repair_stream(&payload_layout, &payload_ids, &missing, &mut report)?;
        Ok(report)
    }

    /// Whether [`Store::repair_from_parity`] would complete the bundle:
    /// every stripe lacks no more chunks than its parity covers. Reads no
    /// chunk but the index, so it is cheap to ask whenever a bundle stalls.
    pub fn parity_can_complete(&self, id: &BundleId) -> Result<bool, StoreError> {
        if !self.record(id)?.index_known {
            // Index chunks that never came are rebuilt from the index's
            // own parity here, once nothing else will bring them.
            self.learn_index(id)?;
            if !self.record(id)?.index_known {
                return Ok(false);
            }
        }
        let missing: HashSet<ChunkId> = self.missing_chunks(id)?.into_iter().collect();
        if missing.is_empty() {
            return Ok(false);
        }
        let descriptor = Descriptor::decode(&self.descriptor(id)?)?;
        let bad = |e: chapar_format::ParamError| StoreError::Database(e.to_string());
        if !parity_covers(
            &descriptor.index_layout().map_err(bad)?,
            &descriptor.index_chunks,
            &missing,
        ) {
            return Ok(false);
        }
        let Ok((payload_ids, _)) = read_index(&descriptor, &self) else {
            return Ok(false);
        };
        Ok(parity_covers(
            &descriptor.payload_layout().map_err(bad)?,
            &payload_ids,
            &missing,
        ))
    }

    fn repair_stream(
        &self,
        layout: &Layout,
        ids: &[ChunkId],
        missing: &HashSet<ChunkId>,
        report: &mut ParityRepair,
    ) -> Result<(), StoreError> {
        if ids.len() != layout.total_chunks() {
            return Err(StoreError::Database(format!(
                "{} chunk ids for a layout of {}",
                ids.len(),
                layout.total_chunks()
            )));
        }
        for stripe in 0..layout.stripes() {
            if lost_in_stripe(layout, ids, stripe, missing) == 0 {
                continue;
            }
            let data_range = layout.stripe_data(stripe);
            let slots = stripe_slots(layout, stripe);
            let mut present: Vec<Option<Vec<u8>>> = Vec::with_capacity(slots.len());
            for slot in &slots {
                let id = ids[layout.position(*slot)];
                present.push(match self.get_chunk(&id) {
                    Ok(bytes) => bytes,
                    Err(StoreError::ChunkCorrupt { .. }) => None,
                    Err(e) => return Err(e),
                });
            }
            let lost = present.iter().filter(|p| p.is_none()).count();
            if lost == 0 {
                continue;
            }
            if lost > layout.parity_per_stripe() {
                report.unrecoverable_stripes += 1;
                continue;
            }
            let n = data_range.len();
            let (data, parity) = present.split_at(n);
            let lens: Vec<usize> = data_range.clone().map(|i| layout.data_len(i)).collect();
            let shard_len = layout.shard_len(stripe);
            let mut full: Vec<Vec<u8>> =
                data.iter().map(|d| d.clone().unwrap_or_default()).collect();
            if data.iter().any(Option::is_none) {
                let restored =
                    rebuild_stripe(layout.data_per_stripe(), shard_len, data, &lens, parity)
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                for (pos, bytes) in restored {
                    full[pos] = bytes;
                }
            }
            let mut rebuilt: Vec<(ChunkId, Vec<u8>)> = Vec::new();
            for (pos, d) in data.iter().enumerate() {
                if d.is_none() {
                    rebuilt.push((ids[layout.position(slots[pos])], full[pos].clone()));
                }
            }
            if parity.iter().any(Option::is_none) {
                let mut encoder =
                    StripeEncoder::new(layout.data_per_stripe(), layout.parity_per_stripe());
                encoder
                    .begin(shard_len)
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                for chunk in &full {
                    encoder
                        .add(chunk)
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                }
                let mut index = 0;
                encoder
                    .finish(|shard| {
                        if parity[index].is_none() {
                            rebuilt.push((ids[layout.position(slots[n + index])], shard.to_vec()));
                        }
                        index += 1;
                    })
                    .map_err(|e| StoreError::Database(e.to_string()))?;
            }
            // put_chunks verifies every rebuilt chunk against its id.
            let put = self.put_chunks(rebuilt)?;
            if !put.mismatched.is_empty() {
                return Err(StoreError::ChunkMismatch {
                    id: put.mismatched[0],
                });
            }
            report.rebuilt += put.stored.len();
        }
        Ok(())
    }
}
