//! The commands that work on a node's store: import, export, status, fsck.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use chapar_format::BundleId;
use chapar_store::{export_folder, import_folder, Role, Store};
use serde_json::{json, Value};

use crate::args::{DataDirArg, ExportArgs, FsckArgs, ImportArgs, RoleArg, StatusArgs};
use crate::commands::Report;

/// The data directory: `--data-dir`, `CHAPAR_DATA_DIR`, or the platform default.
pub(crate) fn data_dir(arg: &DataDirArg) -> Result<PathBuf> {
    if let Some(dir) = &arg.data_dir {
        return Ok(dir.clone());
    }
    directories::ProjectDirs::from("", "", "chapar")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home folder to put the data directory in; give --data-dir")
}

fn open(arg: &DataDirArg) -> Result<(Store, PathBuf)> {
    let dir = data_dir(arg)?;
    Ok((Store::open(&dir)?, dir))
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

pub fn import(a: ImportArgs) -> Result<Report> {
    let (store, dir) = open(&a.data)?;
    if let Some(q) = a.quota {
        store.set_quota(Some(q.as_u64()))?;
    }
    store.collect_garbage(chapar_store::now())?;
    let role = match a.role {
        RoleArg::Relaying => Role::Relaying,
        RoleArg::Sealed => Role::Sealed,
        RoleArg::Receiving => Role::Receiving,
    };
    let progress = a.progress;
    let r = import_folder(&store, &a.bundle, role, |committed| {
        if progress && !committed.is_empty() {
            let ids: Vec<String> = committed.iter().map(|c| c.to_hex()).collect();
            eprintln!("{}", json!({ "event": "committed", "chunks": ids }));
        }
    })?;
    let id = r.bundle_id.map(|i| i.to_hex()).unwrap_or_default();
    let missing: Vec<String> = r.missing.iter().map(|c| c.to_hex()).collect();
    let corrupt: Vec<String> = r.corrupt.iter().map(|c| c.to_hex()).collect();
    let mut stderr = format!(
        "imported bundle {id} into {}: {} new chunk(s), {} already held\n",
        dir.display(),
        r.stored,
        r.already
    );
    if !r.index_known {
        stderr.push_str("the chunk index could not be read from this folder: its other chunks are unknown until more arrive\n");
    }
    if r.rebuilt > 0 {
        stderr.push_str(&format!(
            "{} chunk(s) absent or corrupt in the folder were rebuilt from parity\n",
            r.rebuilt
        ));
    }
    if !r.missing.is_empty() || !r.corrupt.is_empty() {
        stderr.push_str(&format!(
            "{} chunk(s) corrupt in the folder (not taken); {} still missing\n",
            r.corrupt.len(),
            r.missing.len()
        ));
    }
    stderr.push_str(if r.complete {
        "the store now holds the whole bundle\n"
    } else {
        "the bundle is still incomplete here\n"
    });
    Ok(Report {
        stdout: format!("{id}\n"),
        stderr,
        json: json!({
            "ok": true,
            "bundle_id": id,
            "new_bundle": r.new_bundle,
            "stored": r.stored,
            "already": r.already,
            "missing": missing,
            "corrupt": corrupt,
            "rebuilt": r.rebuilt,
            "index_known": r.index_known,
            "complete": r.complete,
        }),
    })
}

pub fn export(a: ExportArgs) -> Result<Report> {
    let (store, _) = open(&a.data)?;
    let id: BundleId = a
        .bundle_id
        .parse()
        .with_context(|| format!("{:?} is not a bundle id (64 hex digits)", a.bundle_id))?;
    let r = export_folder(&store, &id, &a.output)?;
    Ok(Report {
        stdout: format!("{}\n", a.output.display()),
        stderr: format!(
            "wrote {} chunk(s) of bundle {id} to {}{}\n",
            r.chunks,
            a.output.display(),
            if r.complete {
                " (complete)".to_string()
            } else {
                format!(" (incomplete: {} chunk(s) not held here)", r.missing)
            }
        ),
        json: json!({
            "ok": true,
            "bundle_id": id.to_hex(),
            "chunks": r.chunks,
            "missing": r.missing,
            "complete": r.complete,
            "output": a.output,
        }),
    })
}

pub fn status(a: StatusArgs) -> Result<Report> {
    let (store, dir) = open(&a.data)?;
    let used = store.used_bytes()?;
    let quota = store.quota()?;
    let mut text = format!(
        "data directory {}\nused {}{}\n",
        dir.display(),
        ByteSize(used),
        quota.map_or(String::new(), |q| format!(" of a {} quota", ByteSize(q)))
    );
    let mut bundles = Vec::new();
    let sending: serde_json::Value = std::fs::read(dir.join(crate::send::SEND_PROGRESS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut list = store.bundles()?;
    list.sort_by_key(|b| (std::cmp::Reverse(b.record.priority), b.record.added_at));
    for b in &list {
        let r = &b.record;
        let chunks = if r.index_known {
            format!("{}/{}", r.held_chunks, r.known_chunks)
        } else {
            format!("{}/? (index not yet held)", r.held_chunks)
        };
        text.push_str(&format!(
            "{}  {:<9}  chunks {:<12}  {:>10}  priority {:>3}  expires {}  receipts {}/{}{}\n",
            b.id,
            r.role.as_str(),
            chunks,
            ByteSize(b.ciphertext_size).to_string(),
            r.priority,
            rfc3339(r.expires_at),
            r.receipt_count(),
            r.recipients,
            if r.complete() { "  complete" } else { "" }
        ));
        let mut entry = bundle_json(b);
        let stage = &sending[b.id.to_hex()];
        if r.role == chapar_store::Role::Sealed && stage.is_object() {
            text.push_str(&format!(
                "    sending: handed off {}/{} chunks, whole on {} relay(s), as of {}\n",
                stage["handed_off"],
                stage["chunks"],
                stage["replicas"],
                stage["as_of"].as_u64().map(rfc3339).unwrap_or_default()
            ));
            entry["sending"] = stage.clone();
        }
        if r.role == chapar_store::Role::Receiving {
            text.push_str(&format!(
                "    inbox: addressed to this machine's key; {}\n",
                if r.complete() {
                    "all here (chapar receive opens it)".to_string()
                } else {
                    format!("{}/{} chunks here", r.held_chunks, r.known_chunks)
                }
            ));
        }
        bundles.push(entry);
    }
    let tombstones = store.tombstones()?;
    for (id, until) in &tombstones {
        text.push_str(&format!(
            "{id}  delivered to every recipient (tombstone until {})\n",
            rfc3339(*until)
        ));
    }
    if list.is_empty() && tombstones.is_empty() {
        text.push_str("no bundles\n");
    }
    Ok(Report {
        stdout: text,
        stderr: String::new(),
        json: json!({
            "ok": true,
            "data_dir": dir,
            "used_bytes": used,
            "quota": quota,
            "bundles": bundles,
            "tombstones": tombstones
                .iter()
                .map(|(id, until)| json!({ "bundle_id": id.to_hex(), "until": until }))
                .collect::<Vec<_>>(),
        }),
    })
}

fn bundle_json(b: &chapar_store::BundleStatus) -> Value {
    let r = &b.record;
    json!({
        "bundle_id": b.id.to_hex(),
        "role": r.role.as_str(),
        "chunks_held": r.held_chunks,
        "chunks_known": r.known_chunks,
        "index_known": r.index_known,
        "complete": r.complete(),
        "bytes_held": r.held_bytes,
        "ciphertext_size": b.ciphertext_size,
        "priority": r.priority,
        "expires_at": r.expires_at,
        "receipts": r.receipt_count(),
        "recipients": r.recipients,
        "added_at": r.added_at,
    })
}

pub fn fsck(a: FsckArgs) -> Result<Report> {
    let (store, dir) = open(&a.data)?;
    if a.repair {
        store.collect_garbage(chapar_store::now())?;
    }
    let r = store.fsck(a.repair)?;
    let hexes = |v: &[chapar_format::ChunkId]| v.iter().map(|c| c.to_hex()).collect::<Vec<_>>();
    let json = json!({
        "ok": !r.damaged() || r.repaired,
        "checked": r.checked,
        "corrupt": hexes(&r.corrupt),
        "missing": hexes(&r.missing),
        "orphans": hexes(&r.orphans),
        "adopted": hexes(&r.adopted),
        "miscounted": r.miscounted.iter().map(|b| b.to_hex()).collect::<Vec<_>>(),
        "used_bytes_wrong": r.used_bytes_wrong,
        "damaged": r.damaged(),
        "repaired": r.repaired,
    });
    let summary = format!(
        "{}: checked {} chunk(s): {} corrupt, {} missing, {} orphan file(s){}{}\n",
        dir.display(),
        r.checked,
        r.corrupt.len(),
        r.missing.len(),
        r.orphans.len(),
        match (r.miscounted.len(), r.used_bytes_wrong) {
            (0, false) => String::new(),
            (0, true) => ", the used-bytes total is wrong".into(),
            (n, _) => format!(", {n} bundle(s) with wrong counters"),
        },
        match (r.damaged(), r.repaired) {
            (false, _) => String::new(),
            (true, true) => "; repaired".into(),
            (true, false) => "; run with --repair to fix".into(),
        }
    );
    // `"ok": false` (damage left in place) makes the exit code 1.
    Ok(Report {
        stdout: summary,
        stderr: String::new(),
        json,
    })
}
