//! `chapar receive`: run a node, find the bundles addressed to this
//! machine's keys among every descriptor the mesh carries (by trying each
//! sealed header locally: relays learn nothing of who received what),
//! fetch them, open each into `OUT_DIR/<bundle id>/`, and send the receipt
//! back. Bundles that arrived by `chapar import` are opened the same way.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chapar_bundle::{find_header, open_from_source, BundleError};
use chapar_format::{BundleId, ChunkId, ChunkSource, Descriptor};
use chapar_mesh::{Fetch, NodeHandle};
use chapar_store::{Role, Store, StoreHandle};
use chapar_wire::ReceiptMessage;
use serde_json::{json, Value};

use crate::args::ReceiveArgs;
use crate::commands::Report;
use crate::net::{interrupted, progress_mode, runtime, start_node, TICK};
use crate::progress::Progress;

pub(crate) type Identities = Arc<Vec<age::x25519::Identity>>;

/// The store as a chunk source for opening, owned so it can move to a
/// blocking thread.
struct StoreChunks(Arc<Store>);

impl ChunkSource for StoreChunks {
    fn get(&self, id: &ChunkId, max_len: usize) -> std::io::Result<Option<Vec<u8>>> {
        (&*self.0).get(id, max_len)
    }

    fn get_into(
        &self,
        id: &ChunkId,
        max_len: usize,
        buffer: Vec<u8>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        (&*self.0).get_into(id, max_len, buffer)
    }

    fn contains(&self, id: &ChunkId) -> std::io::Result<bool> {
        (&*self.0).contains(id)
    }
}

/// What the receiver keeps track of between looks at the store.
#[derive(Default)]
pub(crate) struct Inbox {
    /// Not addressed to us (or unreadable): never looked at again.
    not_ours: HashSet<BundleId>,
    opened: HashSet<BundleId>,
    pub(crate) opened_reports: Vec<Value>,
}

pub(crate) struct Receiver {
    pub(crate) store: StoreHandle,
    pub(crate) node: NodeHandle,
    pub(crate) identities: Identities,
    pub(crate) out: PathBuf,
}

impl Receiver {
    /// One look at the store: mark newly found bundles as ours, open the
    /// ones now complete. Returns how many were opened.
    pub(crate) async fn look(&self, inbox: &mut Inbox, progress: &mut Progress) -> Result<usize> {
        let bundles = self.store.call(|s| s.bundles()).await?;
        let mut opened = 0;
        for b in bundles {
            if inbox.not_ours.contains(&b.id) || inbox.opened.contains(&b.id) {
                continue;
            }
            if b.record.role != Role::Receiving && !self.claim(b.id, inbox, progress).await? {
                continue;
            }
            if !b.record.complete() {
                progress.update_fetch(
                    b.id,
                    u64::from(b.record.held_chunks),
                    u64::from(b.record.known_chunks),
                );
                continue;
            }
            // A bundle that will not open (a forged header around someone
            // else's chunks, a disk error) is reported and set aside; it
            // must not stop the receiver from opening the others.
            match self.open(b.id, inbox, progress).await {
                Ok(()) => opened += 1,
                Err(e) => {
                    progress.event(
                        &format!("bundle {} could not be opened: {e:#}; setting it aside", b.id.to_hex()),
                        json!({ "event": "failed", "bundle_id": b.id.to_hex(), "error": format!("{e:#}") }),
                    );
                    inbox.not_ours.insert(b.id);
                }
            }
        }
        Ok(opened)
    }

    /// Tries the bundle's sealed headers against our keys; if one opens,
    /// marks the bundle as being received here (so it is fetched).
    async fn claim(&self, id: BundleId, inbox: &mut Inbox, progress: &Progress) -> Result<bool> {
        let bytes = self.store.call(move |s| s.descriptor(&id)).await?;
        let identities = self.identities.clone();
        let decoded = Descriptor::decode(&bytes);
        let ours = match decoded {
            Ok(d) => tokio::task::spawn_blocking(move || find_header(&d, &identities)).await?,
            Err(_) => Err(BundleError::NotAddressed),
        };
        match ours {
            Ok(_) => {
                self.store.add_bundle(bytes, Role::Receiving).await?;
                progress.event(
                    &format!("bundle {} is addressed to you; receiving it", id.to_hex()),
                    json!({ "event": "addressed", "bundle_id": id.to_hex() }),
                );
                Ok(true)
            }
            Err(BundleError::NotAddressed) => {
                inbox.not_ours.insert(id);
                Ok(false)
            }
            Err(e) => {
                progress.event(
                    &format!("bundle {}: {e}; ignoring it", id.to_hex()),
                    json!({ "event": "refused", "bundle_id": id.to_hex(), "error": e.to_string() }),
                );
                inbox.not_ours.insert(id);
                Ok(false)
            }
        }
    }

    /// Opens a complete bundle into `OUT_DIR/<id>` (unless an earlier run
    /// did) and sends the receipt.
    async fn open(&self, id: BundleId, inbox: &mut Inbox, progress: &Progress) -> Result<()> {
        let bytes = self.store.call(move |s| s.descriptor(&id)).await?;
        let descriptor = Descriptor::decode(&bytes)?;
        let dest = self.out.join(id.to_hex());
        let identities = self.identities.clone();
        let source = StoreChunks(self.store.store().clone());
        let already = dest.exists();
        let (secret, summary) = tokio::task::spawn_blocking(move || {
            if already {
                let header = find_header(&descriptor, &identities)?;
                return Ok::<_, BundleError>((header.ack_secret, None));
            }
            let opened = open_from_source(&descriptor, id, source, &identities, &dest)?;
            let summary = (
                opened.manifest.files.len(),
                opened.manifest.total_size(),
                opened.note.clone(),
                opened.repairs.len(),
            );
            Ok((opened.ack_secret, Some(summary)))
        })
        .await??;
        self.store.add_receipt(id, secret.clone()).await?;
        self.node
            .announce_receipt(&ReceiptMessage { bundle: id, secret })
            .await;
        let dest = self.out.join(id.to_hex());
        if let Some((files, bytes, note, repairs)) = summary {
            progress.event(
                &format!(
                    "opened bundle {} into {}: {files} file(s), {}, every file verified{}; receipt sent{}",
                    id.to_hex(),
                    dest.display(),
                    bytesize::ByteSize(bytes),
                    if repairs > 0 { format!(" ({repairs} chunk(s) rebuilt from parity)") } else { String::new() },
                    if note.is_empty() { String::new() } else { format!("\nnote from the sender: {note}") },
                ),
                json!({ "event": "opened", "bundle_id": id.to_hex(), "files": files, "bytes": bytes, "out": dest }),
            );
            inbox.opened_reports.push(json!({
                "bundle_id": id.to_hex(), "out": dest, "files": files, "bytes": bytes, "note": note,
            }));
        }
        inbox.opened.insert(id);
        Ok(())
    }
}

pub fn receive(a: ReceiveArgs) -> Result<Report> {
    let dir = crate::store_commands::data_dir(&a.data)?;
    let identities = crate::commands::load_identities(&a.identities)?;
    std::fs::create_dir_all(&a.output).with_context(|| format!("{}", a.output.display()))?;
    let store = StoreHandle::new(Store::open(&dir)?);
    let mut progress = Progress::new(progress_mode(a.net.progress), 0);
    let rt = runtime()?;
    let (inbox, stopped) = rt.block_on(async {
        let node = start_node(&dir, store.clone(), &a.net, Fetch::Receiving).await?;
        let receiver = Receiver {
            store,
            node: node.clone(),
            identities: Arc::new(identities),
            out: a.output.clone(),
        };
        let mut inbox = Inbox::default();
        let mut tick = tokio::time::interval(TICK);
        let stop = interrupted();
        tokio::pin!(stop);
        let stopped = loop {
            tokio::select! {
                _ = &mut stop => break true,
                _ = tick.tick() => {}
            }
            let opened = receiver.look(&mut inbox, &mut progress).await?;
            if a.once && opened > 0 {
                // Give the receipt a moment to reach a peer by gossip; the
                // sync would carry it later, but this node is leaving.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                break false;
            }
        };
        node.shutdown().await;
        anyhow::Ok((inbox, stopped))
    })?;
    progress.finish();
    Ok(summary(&a.output, inbox, stopped))
}

fn summary(out: &Path, inbox: Inbox, stopped: bool) -> Report {
    let mut stdout = String::new();
    for r in &inbox.opened_reports {
        stdout.push_str(&format!(
            "{}\n",
            r.get("out").and_then(Value::as_str).unwrap_or_default()
        ));
    }
    let stderr = format!(
        "{} bundle(s) opened into {}{}\n",
        inbox.opened_reports.len(),
        out.display(),
        if stopped { "; stopped" } else { "" }
    );
    Report {
        stdout,
        stderr,
        json: json!({ "ok": true, "opened": inbox.opened_reports }),
    }
}
