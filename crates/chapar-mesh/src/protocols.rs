//! The two stream protocols: inventory sync and chunk transfer, both
//! sides of each.

use std::collections::HashSet;

use chapar_format::{BundleId, ChunkId, Descriptor};
use chapar_store::{Role, StoreError, StoreHandle};
use chapar_wire::{
    Inventory, InventoryEntry, Message, ReceiptMessage, SyncResponse, MAX_DESCRIPTORS_PER_RESPONSE,
    MAX_RECEIPTS,
};
use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};

use crate::gate::{expiry_is_sane, DescriptorGate};

use crate::framing::{read_message, write_message, FrameError};

/// A peer broke a protocol rule; it gets cut off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerFault {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unexpected message")]
    Unexpected,
    #[error("sent chunk {0} whose bytes do not match its id")]
    BadChunk(ChunkId),
    #[error("sent an invalid descriptor")]
    BadDescriptor,
    #[error("sent a forged receipt")]
    ForgedReceipt,
}

impl PeerFault {
    /// Faults that prove bad intent or a broken peer, as opposed to a
    /// link that failed.
    pub(crate) fn is_misbehaviour(&self) -> bool {
        !matches!(self, PeerFault::Frame(FrameError::Io(_)))
    }
}

/// Largest chunk request: type, count and 256 ids.
const MAX_REQUEST_FRAME: usize = 1 + 2 + 32 * chapar_wire::MAX_CHUNKS_PER_REQUEST;

/// How long a peer may keep us waiting for its next frame. Silence is a
/// failed link, not misbehaviour, but it must not hold a stream forever.
pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the next frame, giving up after [`IDLE`] without progress.
async fn next<S: futures::AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<Message>, PeerFault> {
    Ok(read_message(stream, max, IDLE).await?)
}

/// A stream that ended or failed: a failed link, not misbehaviour.
pub(crate) fn failed_link() -> PeerFault {
    PeerFault::Frame(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
}

/// What this node holds, for the sync.
pub(crate) async fn our_inventory(store: &StoreHandle) -> Result<Inventory, StoreError> {
    store
        .call(|s| {
            Ok(Inventory {
                bundles: s
                    .bundles()?
                    .into_iter()
                    .take(chapar_wire::MAX_INVENTORY_ENTRIES)
                    .map(|b| InventoryEntry {
                        bundle: b.id,
                        complete: b.record.complete(),
                        held: b.record.held_chunks,
                    })
                    .collect(),
            })
        })
        .await
}

/// Builds the response to a peer's inventory: our inventory, descriptors
/// it lacks, receipts for bundles it holds.
async fn respond_to(store: &StoreHandle, theirs: &Inventory) -> Result<SyncResponse, StoreError> {
    let theirs: HashSet<BundleId> = theirs.bundles.iter().map(|e| e.bundle).collect();
    store
        .call(move |s| {
            let mut response = SyncResponse::default();
            for b in s
                .bundles()?
                .into_iter()
                .take(chapar_wire::MAX_INVENTORY_ENTRIES)
            {
                response.inventory.bundles.push(InventoryEntry {
                    bundle: b.id,
                    complete: b.record.complete(),
                    held: b.record.held_chunks,
                });
                if !theirs.contains(&b.id)
                    && response.descriptors.len() < MAX_DESCRIPTORS_PER_RESPONSE
                {
                    response.descriptors.push(s.descriptor(&b.id)?);
                }
            }
            for id in &theirs {
                for secret in s.receipts(id)? {
                    if response.receipts.len() < MAX_RECEIPTS {
                        response.receipts.push(ReceiptMessage {
                            bundle: *id,
                            secret,
                        });
                    }
                }
            }
            Ok(response)
        })
        .await
}

/// Takes in what a peer told us: descriptors and receipts, each verified.
/// New descriptors pass the flood cap first.
pub(crate) async fn absorb(
    store: &StoreHandle,
    response: &SyncResponse,
    peer: PeerId,
    gate: &DescriptorGate,
) -> Result<usize, PeerFault> {
    let mut new = 0;
    let now = store.call(|s| Ok(s.now())).await.unwrap_or(0);
    for bytes in &response.descriptors {
        let Ok(descriptor) = Descriptor::decode(bytes) else {
            return Err(PeerFault::BadDescriptor);
        };
        // A stale or far-future expiry may be a clock apart, not malice.
        let known = store.record(BundleId::of(bytes)).await.is_ok();
        if known || !expiry_is_sane(&descriptor, now) || !gate.admit(peer) {
            continue;
        }
        match store.add_bundle(bytes.clone(), Role::Relaying).await {
            Ok((_, true)) => new += 1,
            Ok((_, false)) => gate.unadmit(),
            Err(e) => {
                gate.unadmit();
                if !matches!(
                    e,
                    StoreError::Tombstoned { .. } | StoreError::Expired { .. }
                ) {
                    tracing::warn!(error = %e, "could not store a descriptor");
                }
            }
        }
    }
    for receipt in &response.receipts {
        match store
            .add_receipt(receipt.bundle, receipt.secret.clone())
            .await
        {
            Ok(_) | Err(StoreError::UnknownBundle { .. }) => {}
            Err(StoreError::WrongPreimage { .. }) => return Err(PeerFault::ForgedReceipt),
            Err(e) => tracing::warn!(error = %e, "could not store a receipt"),
        }
    }
    Ok(new)
}

/// Initiator side: send our inventory, take in the answer.
pub(crate) async fn sync_out(
    store: &StoreHandle,
    mut stream: Stream,
    peer: PeerId,
    gate: &DescriptorGate,
) -> Result<SyncResponse, PeerFault> {
    let ours = our_inventory(store)
        .await
        .map_err(|e| PeerFault::Frame(FrameError::Io(std::io::Error::other(e))))?;
    write_message(&mut stream, &Message::SyncRequest(ours))
        .await
        .map_err(FrameError::from)?;
    let response = match next(&mut stream, Message::MAX_SYNC_FRAME).await? {
        Some(Message::SyncResponse(r)) => r,
        // A stream that ends early is a link that failed (yamux reports a
        // reset or a closed connection as a clean end), not misbehaviour.
        None => return Err(failed_link()),
        Some(_) => return Err(PeerFault::Unexpected),
    };
    let _ = stream.close().await;
    absorb(store, &response, peer, gate).await?;
    Ok(response)
}

/// Responder side: answer one sync request; returns the peer's inventory.
pub(crate) async fn sync_in(
    store: &StoreHandle,
    mut stream: Stream,
) -> Result<Inventory, PeerFault> {
    let theirs = match next(&mut stream, Message::MAX_SYNC_FRAME).await? {
        Some(Message::SyncRequest(inv)) => inv,
        None => return Err(failed_link()),
        Some(_) => return Err(PeerFault::Unexpected),
    };
    let response = respond_to(store, &theirs)
        .await
        .map_err(|e| PeerFault::Frame(FrameError::Io(std::io::Error::other(e))))?;
    write_message(&mut stream, &Message::SyncResponse(response))
        .await
        .map_err(FrameError::from)?;
    let _ = stream.close().await;
    Ok(theirs)
}

/// What a chunk stream served.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Served {
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
}

/// Server side of chunk transfer: answer requests until the peer closes.
///
/// Each chunk is read from the store while the one before it is being
/// written, so the link does not wait on the disk. (Requests pipelined by
/// the requester wait in the stream until their turn.)
pub(crate) async fn serve_chunks(
    store: &StoreHandle,
    (peer, mut stream): (PeerId, Stream),
    seeder: &std::sync::Mutex<crate::seed::Seeder>,
    stats: &crate::metrics::NodeStats,
) -> Result<Served, PeerFault> {
    let mut served = Served::default();
    while let Some(message) = next(&mut stream, MAX_REQUEST_FRAME).await? {
        let Message::ChunkRequest(ids) = message else {
            return Err(PeerFault::Unexpected);
        };
        let load = |id: ChunkId| {
            let store = store.clone();
            tokio::spawn(async move { store.get_chunk(id).await.ok().flatten() })
        };
        let mut ahead = ids.first().map(|id| load(*id));
        for (i, id) in ids.iter().enumerate() {
            let held = match ahead.take() {
                Some(task) => task.await.ok().flatten(),
                None => None,
            };
            ahead = ids.get(i + 1).map(|next| load(*next));
            if let Some(bytes) = answer(&mut stream, (peer, *id), held, (seeder, store)).await? {
                // Counted as each goes: a stream may stay open a while.
                stats.chunks_served.inc();
                stats.bytes_served.inc_by(bytes as u64);
                served.chunks += 1;
                served.bytes += bytes as u64;
            }
        }
        stream.flush().await.map_err(FrameError::from)?;
    }
    Ok(served)
}

/// Sends one answer: the chunk, if it is held here and the super-seeder
/// lets it leave now, else `ChunkMissing`. Returns the bytes sent.
async fn answer(
    writing: &mut Stream,
    (peer, id): (PeerId, ChunkId),
    held: Option<Vec<u8>>,
    (seeder, store): (&std::sync::Mutex<crate::seed::Seeder>, &StoreHandle),
) -> Result<Option<usize>, PeerFault> {
    // Only a chunk held here counts as sent: asking the seeder first
    // would mark as gone a chunk this node does not have yet.
    let allowed = held.is_some()
        && seeder
            .lock()
            .map(|mut s| s.allow(&id, &peer, std::time::Instant::now()))
            .unwrap_or(true);
    let (reply, sent) = match held {
        Some(bytes) if allowed => {
            let n = bytes.len();
            (Message::ChunkData { id, bytes }, Some(n))
        }
        _ => (Message::ChunkMissing(id), None),
    };
    write_message(writing, &reply)
        .await
        .map_err(FrameError::from)?;
    if let Message::ChunkData { bytes, .. } = reply {
        store.buffers().give(bytes);
    }
    if allowed {
        if let Ok(mut s) = seeder.lock() {
            s.finished(&id, &peer, std::time::Instant::now());
        }
    }
    Ok(sent)
}
