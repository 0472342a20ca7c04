//! `chapar send`: seal into this machine's store, then run a node that
//! hands the bundles to the mesh until the `--until` stage is reached.
//! Stopped at any point, a later `chapar send --data-dir DIR` (with no
//! files) picks up the bundles sealed here that are not done yet.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use chapar_format::{BundleId, Descriptor};
use chapar_mesh::{Fetch, NodeHandle};
use chapar_store::{Role, Store, StoreError, StoreHandle};
use serde_json::json;

use crate::args::{SendArgs, Until};
use crate::commands::{seal_options, Report};
use crate::net::{interrupted, progress_mode, runtime, start_node, TICK};
use crate::progress::{Progress, SendStage};

/// Seals `paths` into the store (each chunk written once) and returns the
/// new bundle's id, file count and input bytes.
pub(crate) fn seal_into_store(
    store: &Store,
    opts: &chapar_bundle::SealOptions,
    paths: &[PathBuf],
) -> Result<(BundleId, u64, u64)> {
    let (sealed, report) = chapar_store::seal_into(store, paths, opts, Role::Sealed)?;
    if !report.complete {
        bail!("the sealed bundle is incomplete in the store (disk trouble?)");
    }
    Ok((sealed.bundle_id, sealed.file_count, sealed.total_size))
}

/// Bundles sealed here that are still in the store (not yet delivered to all).
fn sealed_bundles(store: &Store) -> Result<Vec<BundleId>> {
    Ok(store
        .bundles()?
        .into_iter()
        .filter(|b| b.record.role == Role::Sealed)
        .map(|b| b.id)
        .collect())
}

/// Where one bundle stands. `before` is the last view of it: once every
/// receipt is in, the store keeps only a tombstone, and the counts come
/// from there.
pub(crate) async fn stage_of(
    node: &NodeHandle,
    store: &StoreHandle,
    id: BundleId,
    before: Option<&SendStage>,
) -> SendStage {
    let record = store.record(id).await;
    let tombstoned = matches!(record, Err(StoreError::UnknownBundle { .. }))
        && store
            .call(move |s| s.is_tombstoned(&id))
            .await
            .unwrap_or(false);
    let holders = node.holders(&id);
    let (served, total) = node.handed_off(&id).unwrap_or((0, 0));
    let total = match (&record, before) {
        (Ok(r), _) => r.known_chunks as usize,
        (Err(_), Some(b)) => b.total_chunks.max(total),
        (Err(_), None) => total,
    };
    // A restart forgets what left in an earlier run; what peers hold
    // tells the rest.
    let in_mesh = holders.iter().map(|h| h.chunks as usize).max().unwrap_or(0);
    let any_complete = holders.iter().any(|h| h.complete);
    let handed_off = if any_complete || tombstoned {
        total
    } else {
        served.max(in_mesh).min(total)
    };
    let (receipted, recipients) = match (&record, before) {
        (Ok(r), _) => (r.receipt_count() as usize, usize::from(r.recipients)),
        (Err(_), Some(b)) => (b.receipted, b.recipients),
        (Err(_), None) => (0, 0),
    };
    let replicas = holders.iter().filter(|h| h.complete).count();
    SendStage {
        id,
        total_chunks: total,
        handed_off,
        replicas: replicas.max(before.map_or(0, |b| b.replicas)),
        receipted: if tombstoned { recipients } else { receipted },
        recipients,
        tombstoned,
    }
}

fn reached(stage: &SendStage, until: Until, replicas: usize) -> bool {
    match until {
        Until::HandedOff => stage.total_chunks > 0 && stage.handed_off >= stage.total_chunks,
        Until::Replicated => stage.replicas >= replicas || stage.delivered(),
        Until::Delivered => stage.delivered(),
    }
}

pub fn send(a: SendArgs) -> Result<Report> {
    let dir: PathBuf = crate::store_commands::data_dir(&a.data)?;
    let store = Store::open(&dir)?;
    store.collect_garbage(chapar_store::now())?;
    let mut sealed_now = None;
    if !a.paths.is_empty() {
        sealed_now = Some(seal_into_store(
            &store,
            &seal_options(&a.sealing)?,
            &a.paths,
        )?);
    }
    let bundles = match sealed_now {
        Some((id, _, _)) => vec![id],
        None => sealed_bundles(&store)?,
    };
    if bundles.is_empty() {
        bail!(
            "nothing to send: give files to seal, or a data directory with bundles sealed by an earlier `chapar send`"
        );
    }
    let mode = progress_mode(a.net.progress);
    let mut progress = Progress::new(mode, a.replicas);
    if let Some((id, files, bytes)) = sealed_now {
        progress.sealed(id, files, bytes);
    }
    let store = StoreHandle::new(store);
    let rt = runtime()?;
    let (stages, finished) = rt.block_on(async {
        let node = start_node(&dir, store.clone(), &a.net, Fetch::Nothing).await?;
        let mut announced = false;
        let mut last: Vec<SendStage> = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        let stop = interrupted();
        tokio::pin!(stop);
        let outcome = loop {
            tokio::select! {
                _ = &mut stop => break (current(&node, &store, &bundles, &last).await, false),
                _ = tick.tick() => {}
            }
            if !announced && !node.connected_peers().await.is_empty() {
                announce(&node, &store, &bundles).await;
                announced = true;
            }
            let stages = current(&node, &store, &bundles, &last).await;
            if progress.update_send(&stages) {
                record_progress(&dir, &stages);
            }
            last.clone_from(&stages);
            if stages.iter().all(|s| reached(s, a.until, a.replicas)) {
                break (stages, true);
            }
        };
        node.shutdown().await;
        anyhow::Ok(outcome)
    })?;
    progress.finish();
    report(&dir, &stages, finished, a.until)
}

/// The file where `send` leaves its last view of each bundle's stages,
/// for `chapar status` (the store itself cannot know what peers hold).
pub(crate) const SEND_PROGRESS_FILE: &str = "send-progress.json";

/// Writes the stages beside the store, atomically (a status reader never
/// sees half a file). A failure only costs `status` its detail.
fn record_progress(dir: &Path, stages: &[SendStage]) {
    let mut all = serde_json::Map::new();
    for s in stages {
        let mut stage = s.to_json();
        stage["as_of"] = json!(chapar_store::now());
        all.insert(s.id.to_hex(), stage);
    }
    let tmp = dir.join(format!("{SEND_PROGRESS_FILE}.tmp"));
    let written = std::fs::write(&tmp, serde_json::Value::Object(all).to_string())
        .and_then(|()| std::fs::rename(&tmp, dir.join(SEND_PROGRESS_FILE)));
    if let Err(e) = written {
        tracing::debug!(error = %e, "could not record send progress");
    }
}

async fn current(
    node: &NodeHandle,
    store: &StoreHandle,
    bundles: &[BundleId],
    before: &[SendStage],
) -> Vec<SendStage> {
    let mut out = Vec::with_capacity(bundles.len());
    for id in bundles {
        let last = before.iter().find(|s| s.id == *id);
        out.push(stage_of(node, store, *id, last).await);
    }
    out
}

/// Gossips the descriptors once a peer is there to hear them (the sync
/// carries them anyway; gossip reaches relays beyond the first hop sooner).
async fn announce(node: &NodeHandle, store: &StoreHandle, bundles: &[BundleId]) {
    for id in bundles {
        let id = *id;
        if let Ok(bytes) = store.call(move |s| s.descriptor(&id)).await {
            if Descriptor::decode(&bytes).is_ok() {
                node.announce(bytes).await;
            }
        }
    }
}

fn report(dir: &Path, stages: &[SendStage], finished: bool, until: Until) -> Result<Report> {
    let until_name = match until {
        Until::HandedOff => "handed-off",
        Until::Replicated => "replicated",
        Until::Delivered => "delivered",
    };
    let mut stdout = String::new();
    for s in stages {
        stdout.push_str(&format!(
            "{}  handed off {}/{} chunks, on {} relay(s) whole, receipts {}/{}\n",
            s.id.to_hex(),
            s.handed_off,
            s.total_chunks,
            s.replicas,
            s.receipted,
            s.recipients
        ));
    }
    let stderr = if finished {
        format!("done: every bundle is {until_name}\n")
    } else {
        format!(
            "stopped before every bundle was {until_name}; run `chapar send --data-dir {}` to resume\n",
            dir.display()
        )
    };
    let bundles: Vec<_> = stages.iter().map(SendStage::to_json).collect();
    Ok(Report {
        stdout,
        stderr,
        json: json!({ "ok": finished, "until": until_name, "bundles": bundles }),
    })
}
