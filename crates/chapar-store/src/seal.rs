//! Sealing straight into the store: each chunk is written once, into the
//! store's staging area, and moved into place when the bundle's descriptor
//! is known, instead of being sealed into a folder and copied in.
//!
//! Until then the chunks are only staged: a crash while sealing leaves
//! nothing but temporary files, which the next open clears.

use std::collections::HashMap;
use std::path::PathBuf;

use chapar_bundle::{seal_paths, SealOptions, Sealed};
use chapar_format::{ChunkId, ChunkSink};

use crate::chunks::Staged;
use crate::error::StoreError;
use crate::record::Role;
use crate::store::Store;
use crate::transfer::{ImportReport, IMPORT_BATCH};

/// Seals `inputs` for `opts`' recipients into `store`, as a bundle with
/// `role`; returns what was sealed and what the store took in (complete,
/// unless the disk failed).
pub fn seal_into(
    store: &Store,
    inputs: &[PathBuf],
    opts: &SealOptions,
    role: Role,
) -> Result<(Sealed, ImportReport), StoreError> {
    let sink = StagingSink {
        store,
        staged: HashMap::new(),
        failed: None,
    };
    let (sealed, mut sink) = seal_paths(inputs, opts, sink)?;
    if let Some(e) = sink.failed.take() {
        return Err(e);
    }
    let (id, new_bundle) = store.add_bundle(&sealed.descriptor_bytes, role)?;
    let mut report = ImportReport {
        bundle_id: Some(id),
        new_bundle,
        ..ImportReport::default()
    };
    // Two passes, as an import: the index chunks first (the store learns
    // every other chunk id from them), then the rest.
    for pass in 0..2 {
        for group in store.missing_chunks(&id)?.chunks(IMPORT_BATCH) {
            let batch: Vec<(ChunkId, u32, Staged)> = group
                .iter()
                .filter_map(|c| sink.staged.remove(c).map(|(len, s)| (*c, len, s)))
                .collect();
            let put = store.put_staged(batch)?;
            report.stored += put.stored.len();
            report.already += put.duplicates;
        }
        report.index_known = store.record(&id)?.index_known;
        if pass == 0 && !report.index_known {
            break;
        }
    }
    let record = store.record(&id)?;
    report.complete = record.complete();
    report.missing = store.missing_chunks(&id)?;
    Ok((sealed, report))
}

/// Stages each chunk the sealer makes; what is left when it is dropped
/// (not taken into the store) is deleted.
struct StagingSink<'a> {
    store: &'a Store,
    staged: HashMap<ChunkId, (u32, Staged)>,
    /// The first store error; the sealer only knows I/O errors.
    failed: Option<StoreError>,
}

impl ChunkSink for StagingSink<'_> {
    fn put(&mut self, id: &ChunkId, bytes: &[u8]) -> std::io::Result<()> {
        // The same bytes twice (identical chunks) are staged once.
        if self.staged.contains_key(id) {
            return Ok(());
        }
        let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
        match self.store.stage_chunk(id, bytes) {
            Ok(staged) => {
                self.staged.insert(*id, (len, staged));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.failed.get_or_insert(e);
                Err(std::io::Error::other(message))
            }
        }
    }
}

impl Drop for StagingSink<'_> {
    fn drop(&mut self) {
        let left: Vec<Staged> = self.staged.drain().map(|(_, (_, s))| s).collect();
        self.store.discard_staged(left);
    }
}
