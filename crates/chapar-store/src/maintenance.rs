//! Receipts, expiry and fsck: keeping the store honest over time.

use chapar_format::{AckSecret, BundleId, ChunkId, Descriptor};
use redb::{ReadableDatabase, ReadableMultimapTable, ReadableTable};

use crate::error::StoreError;
use crate::record::BundleRecord;
use crate::store::Store;
use crate::tables::*;

/// What a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// A recipient's first receipt; `delivered` when it was the last one
    /// missing (the bundle is then tombstoned and its chunks freed).
    Recorded {
        /// Every recipient has now receipted.
        delivered: bool,
    },
    /// This recipient had receipted before.
    Duplicate,
    /// The bundle was already delivered to everyone.
    AlreadyDelivered,
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Bundles removed because they expired.
    pub expired: Vec<BundleId>,
    /// Tombstones dropped because their bundle's expiry passed.
    pub tombstones_lapsed: usize,
}

/// What fsck found (and, with repair, fixed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Acknowledged chunks re-read and verified.
    pub checked: usize,
    /// Acknowledged chunks whose bytes no longer match their id.
    pub corrupt: Vec<ChunkId>,
    /// Acknowledged chunks whose file is gone.
    pub missing: Vec<ChunkId>,
    /// Chunk files the database does not acknowledge (left by a crash or an
    /// interrupted removal). Harmless: never served.
    pub orphans: Vec<ChunkId>,
    /// Orphans that were intact and wanted, and so were taken back in (repair).
    pub adopted: Vec<ChunkId>,
    /// Bundles whose counters disagreed with the chunks present.
    pub miscounted: Vec<BundleId>,
    /// Whether the used-bytes total disagreed with the chunks present.
    pub used_bytes_wrong: bool,
    /// Whether the findings were repaired.
    pub repaired: bool,
}

impl FsckReport {
    /// Damage (not mere leftovers): corrupt or missing acknowledged chunks,
    /// or wrong counters.
    pub fn damaged(&self) -> bool {
        !self.corrupt.is_empty()
            || !self.missing.is_empty()
            || !self.miscounted.is_empty()
            || self.used_bytes_wrong
    }
}

impl Store {
    /// Records a receipt: `secret` must be the preimage of one of the
    /// bundle's ack hashes. When every recipient has receipted, the bundle
    /// is tombstoned (kept out until it expires) and its chunks are freed.
    pub fn add_receipt(
        &self,
        id: &BundleId,
        secret: &AckSecret,
    ) -> Result<ReceiptOutcome, StoreError> {
        if self.is_tombstoned(id)? {
            return Ok(ReceiptOutcome::AlreadyDelivered);
        }
        let descriptor = Descriptor::decode(&self.descriptor(id)?)?;
        let position = descriptor
            .ack_hashes
            .binary_search(&secret.hash())
            .map_err(|_| StoreError::WrongPreimage { id: *id })?;
        let _writing = self.write_guard();
        let txn = self.db().begin_write()?;
        let (outcome, delivered) = {
            let mut bundles = txn.open_table(BUNDLES)?;
            let raw = bundles.get(&id.0)?.map(|v| v.value().to_vec());
            let mut rec = BundleRecord::decode(&raw.ok_or(StoreError::UnknownBundle { id: *id })?)?;
            let bit = 1u8 << position;
            let duplicate = rec.receipted & bit != 0;
            rec.receipted |= bit;
            let delivered = rec.receipt_count() == u32::from(rec.recipients);
            if !duplicate {
                bundles.insert(&id.0, &rec.encode()[..])?;
            }
            let outcome = match duplicate {
                true => ReceiptOutcome::Duplicate,
                false => ReceiptOutcome::Recorded { delivered },
            };
            (outcome, delivered)
        };
        txn.open_multimap_table(RECEIPTS)?
            .insert(&id.0, secret.expose())?;
        txn.commit()?;
        // Also on a duplicate: a crash may have come between the last
        // receipt and the removal it triggers.
        if delivered {
            tracing::info!(bundle = %id, "delivered to every recipient; freeing its chunks");
            self.remove_bundle_locked(id, Some(descriptor.expires_at))?;
        }
        Ok(outcome)
    }

    /// Receipts (revealed ack secrets) recorded for a bundle.
    pub fn receipts(&self, id: &BundleId) -> Result<Vec<AckSecret>, StoreError> {
        let r = self.db().begin_read()?;
        let m = r.open_multimap_table(RECEIPTS)?;
        let mut out = Vec::new();
        for v in m.get(&id.0)? {
            out.push(AckSecret::from_bytes(*v?.value()));
        }
        Ok(out)
    }

    /// Removes expired bundles (whatever their role: the mesh has dropped
    /// them) and lapsed tombstones.
    pub fn collect_garbage(&self, now: u64) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        for b in self.bundles()? {
            if b.record.expires_at <= now {
                self.remove_bundle(&b.id, None)?;
                report.expired.push(b.id);
            }
        }
        let lapsed: Vec<BundleId> = self
            .tombstones()?
            .into_iter()
            .filter(|(_, until)| *until <= now)
            .map(|(id, _)| id)
            .collect();
        if !lapsed.is_empty() {
            let txn = self.db().begin_write()?;
            {
                let mut t = txn.open_table(TOMBSTONES)?;
                let mut receipts = txn.open_multimap_table(RECEIPTS)?;
                for id in &lapsed {
                    t.remove(&id.0)?;
                    receipts.remove_all(&id.0)?;
                }
            }
            txn.commit()?;
        }
        report.tombstones_lapsed = lapsed.len();
        Ok(report)
    }

    /// Re-verifies every acknowledged chunk against its id and the books
    /// against the files. With `repair`: corrupt chunks are quarantined and
    /// marked missing, vanished ones marked missing, intact wanted orphans
    /// adopted, other orphans removed, counters recomputed.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let mut report = FsckReport::default();
        let acknowledged: Vec<(ChunkId, u32)> = {
            let r = self.db().begin_read()?;
            let t = r.open_table(CHUNKS)?;
            t.iter()?
                .map(|e| e.map(|(k, v)| (ChunkId(*k.value()), v.value())))
                .collect::<Result<_, _>>()?
        };
        // One buffer for every chunk checked.
        let mut buffer = Vec::new();
        for (id, len) in &acknowledged {
            report.checked += 1;
            let bytes = self
                .files()
                .read(id, *len as usize, std::mem::take(&mut buffer))
                .map_err(StoreError::io(self.chunk_label(id)))?;
            match bytes {
                None => report.missing.push(*id),
                Some(b) => {
                    if b.len() != *len as usize || !id.matches(&b) {
                        report.corrupt.push(*id);
                    }
                    buffer = b;
                }
            }
        }
        let on_disk = self.files().list().map_err(StoreError::io(
            self.root().unwrap_or(std::path::Path::new(".")),
        ))?;
        let acked: std::collections::HashSet<ChunkId> =
            acknowledged.iter().map(|(id, _)| *id).collect();
        report.orphans = on_disk
            .into_iter()
            .filter(|id| !acked.contains(id))
            .collect();
        report.orphans.sort();

        if repair {
            for id in &report.corrupt {
                self.files()
                    .quarantine(id)
                    .map_err(StoreError::io(self.chunk_label(id)))?;
            }
            let lost: Vec<ChunkId> = report
                .corrupt
                .iter()
                .chain(&report.missing)
                .copied()
                .collect();
            self.forget_chunks(&lost)?;
            for id in report.orphans.clone() {
                let bytes = self
                    .files()
                    .read(&id, chapar_format::MAX_CHUNK_SIZE as usize, Vec::new())
                    .map_err(StoreError::io(self.chunk_label(&id)))?;
                let adopted = match bytes {
                    Some(b) if id.matches(&b) => !self.put_chunks([(id, &b)])?.stored.is_empty(),
                    _ => false,
                };
                if adopted {
                    report.adopted.push(id);
                } else {
                    self.files()
                        .remove(&id)
                        .map_err(StoreError::io(self.chunk_label(&id)))?;
                }
            }
        }
        self.check_counters(repair, &mut report)?;
        report.repaired = repair;
        Ok(report)
    }

    /// Recomputes every bundle's held counts and the used-bytes total
    /// from the chunks table; reports (and with `repair` fixes) differences.
    fn check_counters(&self, repair: bool, report: &mut FsckReport) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        {
            let chunks = txn.open_table(CHUNKS)?;
            let by_bundle = txn.open_multimap_table(BUNDLE_CHUNKS)?;
            let mut bundles = txn.open_table(BUNDLES)?;
            let ids: Vec<[u8; 32]> = bundles
                .iter()?
                .map(|e| e.map(|(k, _)| *k.value()))
                .collect::<Result<_, _>>()?;
            for id in ids {
                let Some(raw) = bundles.get(&id)?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let mut rec = BundleRecord::decode(&raw)?;
                let (mut known, mut held, mut bytes) = (0u32, 0u32, 0u64);
                for c in by_bundle.get(&id)? {
                    known += 1;
                    if let Some(len) = chunks.get(c?.value())? {
                        held += 1;
                        bytes += u64::from(len.value());
                    }
                }
                if (rec.known_chunks, rec.held_chunks, rec.held_bytes) != (known, held, bytes) {
                    report.miscounted.push(BundleId(id));
                    rec.known_chunks = known;
                    rec.held_chunks = held;
                    rec.held_bytes = bytes;
                    bundles.insert(&id, &rec.encode()[..])?;
                }
            }
            let total: u64 = chunks
                .iter()?
                .map(|e| e.map(|(_, v)| u64::from(v.value())))
                .sum::<Result<u64, _>>()?;
            let mut meta = txn.open_table(META)?;
            let used = meta.get(USED_BYTES)?.map_or(0, |v| v.value());
            if used != total {
                report.used_bytes_wrong = true;
                meta.insert(USED_BYTES, total)?;
            }
        }
        if repair {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(())
    }
}
