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
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the next frame, giving up after [`IDLE`] without progress.
async fn next(stream: &mut Stream, max: usize) -> Result<Option<Message>, PeerFault> {
    Ok(read_message(stream, max, IDLE).await?)
}

fn eof() -> PeerFault {
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
        None => return Err(eof()),
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
        None => return Err(eof()),
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
pub(crate) async fn serve_chunks(
    store: &StoreHandle,
    mut stream: Stream,
    seeder: &std::sync::Mutex<crate::seed::Seeder>,
) -> Result<Served, PeerFault> {
    let mut served = Served::default();
    while let Some(message) = next(&mut stream, MAX_REQUEST_FRAME).await? {
        let Message::ChunkRequest(ids) = message else {
            return Err(PeerFault::Unexpected);
        };
        for id in ids {
            // Only a chunk held here counts as sent: asking the seeder
            // first would mark as gone a chunk this node does not have yet.
            let held = match store.get_chunk(id).await {
                Ok(Some(bytes)) => Some(bytes),
                _ => None,
            };
            let allowed = held.is_some()
                && seeder
                    .lock()
                    .map(|mut s| s.allow(&id, std::time::Instant::now()))
                    .unwrap_or(true);
            let reply = match held {
                Some(bytes) if allowed => {
                    served.chunks += 1;
                    served.bytes += bytes.len() as u64;
                    Message::ChunkData { id, bytes }
                }
                _ => Message::ChunkMissing(id),
            };
            write_message(&mut stream, &reply)
                .await
                .map_err(FrameError::from)?;
            if allowed {
                if let Ok(mut s) = seeder.lock() {
                    s.finished(&id, std::time::Instant::now());
                }
            }
        }
        stream.flush().await.map_err(FrameError::from)?;
    }
    Ok(served)
}

/// What a fetch brought.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// Chunks received and verified (stored or already held).
    pub(crate) received: usize,
    pub(crate) stored: Vec<ChunkId>,
    pub(crate) missing: Vec<ChunkId>,
    pub(crate) bytes: u64,
}

/// Requester side: ask for `ids`, store what comes (the store verifies
/// each chunk against its id, once), and report a peer whose chunk did not
/// match as a fault: nothing more is taken from it.
///
/// `budget` is the most the answers may weigh in all (each chunk at most
/// its bundle's chunk size): a peer that sends more is cut off as it does,
/// before the bytes are held, since they are checked only when stored.
pub(crate) async fn fetch_chunks(
    store: &StoreHandle,
    mut stream: Stream,
    ids: Vec<ChunkId>,
    budget: u64,
) -> Result<Fetched, PeerFault> {
    write_message(&mut stream, &Message::ChunkRequest(ids.clone()))
        .await
        .map_err(FrameError::from)?;
    let mut fetched = Fetched::default();
    let mut arrived = Vec::with_capacity(ids.len());
    let mut fault = None;
    let mut weight = 0u64;
    for expected in &ids {
        let room = usize::try_from(budget.saturating_sub(weight)).unwrap_or(usize::MAX);
        let max = (1 + 32 + room).min(Message::MAX_CHUNK_FRAME);
        match next(&mut stream, max).await {
            Ok(Some(Message::ChunkData { id, bytes })) if id == *expected => {
                weight += bytes.len() as u64;
                arrived.push((id, bytes));
            }
            Ok(Some(Message::ChunkMissing(id))) if id == *expected => fetched.missing.push(id),
            Ok(None) => {
                fault = Some(eof());
                break;
            }
            Ok(Some(_)) => {
                fault = Some(PeerFault::Unexpected);
                break;
            }
            Err(e) => {
                fault = Some(e);
                break;
            }
        }
    }
    let _ = stream.close().await;
    let sizes: Vec<(ChunkId, u64)> = arrived
        .iter()
        .map(|(id, b)| (*id, b.len() as u64))
        .collect();
    // Keep what verified even when the peer then failed or lied.
    let report = store
        .put_chunks(arrived)
        .await
        .map_err(|e| PeerFault::Frame(FrameError::Io(std::io::Error::other(e))))?;
    let bad: HashSet<ChunkId> = report.mismatched.iter().copied().collect();
    for (id, len) in sizes {
        if !bad.contains(&id) {
            fetched.received += 1;
            fetched.bytes += len;
        }
    }
    fetched.stored = report.stored;
    if let Some(id) = report.mismatched.first() {
        return Err(PeerFault::BadChunk(*id));
    }
    match fault {
        Some(f) => Err(f),
        None => Ok(fetched),
    }
}
