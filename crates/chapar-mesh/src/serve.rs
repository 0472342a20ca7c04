//! The inbound side: accept sync and chunk streams and serve them, within
//! a cap on streams at once, in all and per peer, so one greedy or hostile
//! peer cannot take every slot from the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chapar_store::StoreHandle;
use futures::StreamExt;
use libp2p::PeerId;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::metrics::NodeStats;
use crate::protocols::{serve_chunks, sync_in, PeerFault};
use crate::seed::Seeder;
use crate::swarm::Command;

/// Slots for streams being served.
#[derive(Debug, Clone)]
pub(crate) struct StreamPermits {
    total: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
    max_per_peer: usize,
}

/// A held slot; dropping it frees the slot.
pub(crate) struct StreamPermit {
    _total: OwnedSemaphorePermit,
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.per_peer.lock() {
            if let Some(n) = counts.get_mut(&self.peer) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.peer);
                }
            }
        }
    }
}

impl StreamPermits {
    pub(crate) fn new(total: usize, max_per_peer: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            max_per_peer,
        }
    }

    /// A slot for one more stream from `peer`, if there is one.
    pub(crate) fn try_acquire(&self, peer: PeerId) -> Option<StreamPermit> {
        let mut counts = self.per_peer.lock().ok()?;
        if counts.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            return None;
        }
        let total = self.total.clone().try_acquire_owned().ok()?;
        *counts.entry(peer).or_insert(0) += 1;
        Some(StreamPermit {
            _total: total,
            per_peer: self.per_peer.clone(),
            peer,
        })
    }
}

/// What the servers share.
#[derive(Clone)]
pub(crate) struct Servers {
    pub(crate) store: StoreHandle,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) ban_for: Duration,
    pub(crate) permits: StreamPermits,
    pub(crate) stats: NodeStats,
    pub(crate) seeder: Arc<Mutex<Seeder>>,
}

pub(crate) async fn report_fault(
    commands: &mpsc::Sender<Command>,
    peer: PeerId,
    fault: &PeerFault,
    for_how_long: Duration,
) {
    if fault.is_misbehaviour() {
        tracing::warn!(%peer, %fault, "peer broke the protocol");
        let _ = commands.send(Command::Ban { peer, for_how_long }).await;
    } else {
        tracing::debug!(%peer, %fault, "stream failed");
    }
}

impl Servers {
    pub(crate) async fn serve_sync(
        self,
        mut incoming: libp2p_stream::IncomingStreams,
        inventories: mpsc::Sender<(PeerId, chapar_wire::Inventory)>,
    ) {
        while let Some((peer, stream)) = incoming.next().await {
            let Some(permit) = self.permits.try_acquire(peer) else {
                tracing::debug!(%peer, "too many inbound streams; dropping one");
                continue;
            };
            let (this, inventories) = (self.clone(), inventories.clone());
            tokio::spawn(async move {
                match sync_in(&this.store, stream).await {
                    Ok(inv) => {
                        let _ = inventories.send((peer, inv)).await;
                    }
                    Err(fault) => report_fault(&this.commands, peer, &fault, this.ban_for).await,
                }
                drop(permit);
            });
        }
    }

    pub(crate) async fn serve_chunk_requests(self, mut incoming: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = incoming.next().await {
            let Some(permit) = self.permits.try_acquire(peer) else {
                tracing::debug!(%peer, "too many inbound streams; dropping one");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                match serve_chunks(&this.store, (peer, stream), &this.seeder, &this.stats).await {
                    Ok(served) => {
                        tracing::debug!(%peer, bytes = served.bytes, "served chunks");
                    }
                    Err(fault) => report_fault(&this.commands, peer, &fault, this.ban_for).await,
                }
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_cap_each_peer_and_the_total() {
        let permits = StreamPermits::new(3, 2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let a1 = permits.try_acquire(a).expect("first");
        let _a2 = permits.try_acquire(a).expect("second");
        assert!(permits.try_acquire(a).is_none(), "per-peer cap");
        let _b1 = permits.try_acquire(b).expect("other peer");
        assert!(permits.try_acquire(PeerId::random()).is_none(), "total cap");
        drop(a1);
        assert!(permits.try_acquire(a).is_some(), "freed on drop");
    }
}
