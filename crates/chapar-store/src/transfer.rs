//! Sneakernet: taking in a bundle folder (whole or partial) and writing
//! out what the store holds of a bundle as a bundle folder.

use std::path::Path;

use chapar_bundle::{write_bundle_folder, BundleFolder};
use chapar_format::{BundleId, ChunkId, ChunkSink, ChunkSource, MAX_CHUNK_SIZE};

use crate::error::StoreError;
use crate::record::Role;
use crate::store::Store;

/// Chunks per group commit when importing.
pub(crate) const IMPORT_BATCH: usize = 64;

/// What an import took in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The bundle.
    pub bundle_id: Option<BundleId>,
    /// Whether the store did not know the bundle before.
    pub new_bundle: bool,
    /// Chunks newly stored.
    pub stored: usize,
    /// Chunks the store already had.
    pub already: usize,
    /// Chunks still missing after the import: absent from the folder (or
    /// corrupt there) and not rebuildable from parity.
    pub missing: Vec<ChunkId>,
    /// Chunks in the folder whose bytes do not match their id (not taken).
    pub corrupt: Vec<ChunkId>,
    /// Chunks the folder lacked (or held corrupt) that were rebuilt from
    /// parity instead.
    pub rebuilt: usize,
    /// Whether the chunk index could be read (so every chunk id is known).
    pub index_known: bool,
    /// Whether the store now holds every chunk of the bundle.
    pub complete: bool,
}

/// Verifies and takes in a bundle folder: the descriptor, then every chunk
/// that matches its id. Partial folders are fine: what is valid is taken,
/// what is missing or corrupt is reported. `on_commit` hears each group of
/// chunks as it becomes durable and acknowledged.
pub fn import_folder(
    store: &Store,
    folder: &Path,
    role: Role,
    mut on_commit: impl FnMut(&[ChunkId]),
) -> Result<ImportReport, StoreError> {
    let folder = BundleFolder::new(folder);
    let (_, descriptor_bytes) = folder.read_descriptor()?;
    let (id, new_bundle) = store.add_bundle(&descriptor_bytes, role)?;
    let mut report = ImportReport {
        bundle_id: Some(id),
        new_bundle,
        ..ImportReport::default()
    };
    // Two passes: the index chunks first (the store learns every other
    // chunk id from them), then whatever is still missing.
    for _ in 0..2 {
        let wanted = store.missing_chunks(&id)?;
        for group in wanted.chunks(IMPORT_BATCH) {
            let chunks = group
                .iter()
                .filter(|c| !report.corrupt.contains(c))
                .filter_map(|c| match folder.get(c, MAX_CHUNK_SIZE as usize) {
                    Ok(Some(bytes)) => Some((*c, bytes)),
                    _ => None,
                });
            let put = store.put_chunks(chunks)?;
            report.stored += put.stored.len();
            report.already += put.duplicates;
            report.corrupt.extend(put.mismatched);
            on_commit(&put.stored);
        }
        if store.record(&id)?.index_known {
            if report.index_known {
                break;
            }
            report.index_known = true;
        } else {
            break;
        }
    }
    if !store.record(&id)?.complete() {
        let repair = store.repair_from_parity(&id)?;
        report.rebuilt = repair.rebuilt;
        if repair.rebuilt > 0 {
            tracing::info!(bundle = %id, rebuilt = repair.rebuilt, "rebuilt missing chunks from parity");
        }
    }
    let record = store.record(&id)?;
    report.index_known = record.index_known;
    report.complete = record.complete();
    let corrupt: std::collections::HashSet<ChunkId> = report.corrupt.iter().copied().collect();
    report.missing = store
        .missing_chunks(&id)?
        .into_iter()
        .filter(|c| !corrupt.contains(c))
        .collect();
    Ok(report)
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Chunks written.
    pub chunks: usize,
    /// Known chunks the store does not hold (the folder lacks them too).
    pub missing: usize,
    /// Whether the folder holds the whole bundle.
    pub complete: bool,
}

/// Writes what the store holds of a bundle as a new bundle folder at `out`
/// (the sneakernet format; a complete one opens with `chapar open`).
pub fn export_folder(store: &Store, id: &BundleId, out: &Path) -> Result<ExportReport, StoreError> {
    let descriptor_bytes = store.descriptor(id)?;
    let record = store.record(id)?;
    let known = store.known_chunks(id)?;
    let mut failure = None;
    let report = write_bundle_folder(out, |sink| {
        let mut report = ExportReport::default();
        for c in &known {
            match store.get_chunk(c) {
                Ok(Some(bytes)) => {
                    sink.put(c, &bytes)
                        .map_err(|e| chapar_bundle::BundleError::Io {
                            path: out.into(),
                            source: e,
                        })?;
                    report.chunks += 1;
                }
                // Missing, or corrupt (now quarantined): the folder lacks it.
                Ok(None) | Err(StoreError::ChunkCorrupt { .. }) => report.missing += 1,
                Err(e) => {
                    failure = Some(e);
                    return Err(chapar_bundle::BundleError::BadArchive(
                        "store read failed".into(),
                    ));
                }
            }
        }
        report.complete = record.index_known && report.missing == 0;
        Ok((descriptor_bytes, report))
    });
    match (report, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => Ok(r?),
    }
}
