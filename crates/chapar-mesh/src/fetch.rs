//! The requester side of chunk transfer: one long-lived stream per peer,
//! with requests pipelined on it.
//!
//! A session has three parts that run at once, so that neither the link
//! nor the disk waits for the other:
//! * the **requester** writes each batch's `ChunkRequest` as soon as the
//!   replicator hands it over (the server reads the next request while it
//!   is still answering the last);
//! * the **reader** takes the answers in order, batch by batch, each batch
//!   within the bytes reserved for it;
//! * the **committer** (its own task) hands each batch that has arrived to
//!   the store in one group commit, then reports it to the replicator.
//!
//! Memory stays bounded however the link and the disk race each other: a
//! batch's bytes are reserved in the replicator's in-flight budget until
//! its answers have arrived, and then, until they are committed, in the
//! node's commit backlog (one for all sessions): a reader finding the
//! backlog full waits, and so stops taking bytes off the link. Freeing the
//! link's budget on arrival, not on commit, is what keeps the link busy
//! while the disk flushes. When the link fails or the peer breaks the
//! protocol, every batch not yet answered is reported failed, so it is
//! planned again.
//!
//! A link can also stall without failing: a satellite window closes, and
//! TCP waits for it to reopen. The session records since when its reader
//! has waited on the link with nothing arriving ([`Session::silent_for`]),
//! so the replicator can give up on it (by dropping the [`Session`]: the
//! read under way fails, and every batch not answered comes back failed)
//! and ask a peer that holds the same chunks.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use chapar_format::ChunkId;
use chapar_store::{ChunkBuffers, StoreHandle};
use chapar_wire::{Message, CHUNK_PROTOCOL};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::framing::{read_message_into, write_message, FrameError};
use crate::metrics::NodeStats;
use crate::protocols::{failed_link, PeerFault, IDLE};

/// A session with nothing to ask for this long closes its stream (the
/// server would drop it after [`IDLE`] anyway).
const SESSION_IDLE: Duration = Duration::from_secs(30);

/// Chunks asked of a peer in one request, with the bytes reserved for
/// their answers.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) ids: Vec<ChunkId>,
    pub(crate) bytes: u64,
}

/// What a batch brought.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub(crate) stored: Vec<ChunkId>,
    pub(crate) missing: Vec<ChunkId>,
    pub(crate) bytes: u64,
}

/// What a session tells the replicator.
pub(crate) enum Report {
    /// A batch's answers are in: its reserved `bytes` are free for more
    /// requests (its chunks, `received` bytes, are still to be committed).
    Arrived {
        peer: PeerId,
        bytes: u64,
        received: u64,
    },
    /// How a batch ended, once per batch. Its `bytes` are what it still
    /// holds of the budget (0 once `Arrived` was reported).
    Done(PeerId, Batch, Result<Fetched, PeerFault>),
}

/// What every session of a node shares.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) store: StoreHandle,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) reports: mpsc::Sender<Report>,
    /// Bytes that have arrived and are not yet committed, across sessions.
    pub(crate) backlog: Arc<Semaphore>,
    /// Counted as each group is committed, before anyone hears of it, so
    /// that a bundle seen complete has its chunks counted.
    pub(crate) stats: NodeStats,
}

/// Most bytes that may wait for a commit, across all sessions.
pub(crate) const COMMIT_BACKLOG: u32 = 8 * 1024 * 1024;

/// The replicator's end of a session with one peer: where it sends the
/// peer's batches. Dropping it abandons the session: its stream is
/// dropped and every batch not yet answered comes back failed.
pub(crate) struct Session {
    batches: mpsc::Sender<Batch>,
    listening: Listening,
    /// Never sent on: dropping it is what tells the session to stop.
    _abandon: oneshot::Sender<()>,
}

impl Session {
    /// Queues a batch; a full or ended session hands it back.
    pub(crate) fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        self.batches
            .try_send(batch)
            .map_err(|refused| match refused {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            })
    }

    /// Whether the session has ended (its stream failed or idled out).
    pub(crate) fn is_closed(&self) -> bool {
        self.batches.is_closed()
    }

    /// How long the session has waited on the link for answers with not a
    /// byte arriving (zero unless it is waiting on the link).
    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        self.listening.silent_for(now)
    }
}

/// Since when a session has waited on the link with nothing arriving:
/// `None` while it is not waiting on the link (nothing asked, or waiting
/// for the disk).
#[derive(Clone, Default)]
struct Listening(Arc<Mutex<Option<Instant>>>);

impl Listening {
    fn set(&self, since: Option<Instant>) {
        if let Ok(mut s) = self.0.lock() {
            *s = since;
        }
    }

    fn silent_for(&self, now: Instant) -> Duration {
        let since = self.0.lock().ok().and_then(|s| *s);
        since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// A reader that marks every read that brings bytes as a sign of life,
/// and fails every read once the session is abandoned: the batch being
/// read then ends as a failed one, keeping what had arrived of it.
struct Watched<R> {
    inner: R,
    listening: Listening,
    /// Resolves when the [`Session`] is dropped; `None` once it has.
    abandoned: Option<oneshot::Receiver<()>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(abandoned) = &mut self.abandoned {
            if Pin::new(abandoned).poll(cx).is_ready() {
                self.abandoned = None;
            }
        }
        if self.abandoned.is_none() {
            return Poll::Ready(Err(std::io::Error::other(
                "given up on: the peer sent nothing for too long",
            )));
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.listening.set(Some(Instant::now()));
        }
        polled
    }
}

/// Batches queued in a session at most. The in-flight budget bounds them
/// first, unless chunks are tiny.
const QUEUED_BATCHES: usize = 64;

/// Starts a session with `peer`; its stream opens when the first batch
/// arrives.
pub(crate) fn start(context: Context, peer: PeerId) -> Session {
    let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
    let (abandon, abandoned) = oneshot::channel();
    // Opening the stream is waiting on the link too.
    let listening = Listening(Arc::new(Mutex::new(Some(Instant::now()))));
    tokio::spawn(run(context, peer, rx, (listening.clone(), abandoned)));
    Session {
        batches: tx,
        listening,
        _abandon: abandon,
    }
}

/// A batch that has been answered (perhaps only in part), on its way to
/// the store.
struct Arrived {
    batch: Batch,
    chunks: Vec<(ChunkId, Vec<u8>)>,
    missing: Vec<ChunkId>,
    fault: Option<PeerFault>,
    /// Its place in the commit backlog, freed once committed.
    backlog: Option<OwnedSemaphorePermit>,
}

async fn run(
    context: Context,
    peer: PeerId,
    mut batches: mpsc::Receiver<Batch>,
    (listening, mut abandoned): (Listening, oneshot::Receiver<()>),
) {
    let Context {
        store,
        mut control,
        reports,
        backlog,
        stats,
    } = context;
    let opening = crate::replicator::open_stream(&mut control, peer, CHUNK_PROTOCOL);
    let opened = tokio::select! {
        opened = opening => opened,
        _ = &mut abandoned => Err(failed_link()),
    };
    let stream = match opened {
        Ok(stream) => stream,
        Err(fault) => {
            batches.close();
            let mut first = Some(fault);
            while let Some(batch) = batches.recv().await {
                let fault = first.take().unwrap_or_else(failed_link);
                let _ = reports.send(Report::Done(peer, batch, Err(fault))).await;
            }
            return;
        }
    };
    let (arrivals, arrived) = mpsc::channel(QUEUED_BATCHES);
    let buffers = store.buffers().clone();
    let committer = tokio::spawn(commit_all(store, stats, peer, arrived, reports.clone()));
    let (reading, mut writing) = stream.split();
    listening.set(None);
    let mut reading = Watched {
        inner: reading,
        listening: listening.clone(),
        abandoned: Some(abandoned),
    };
    let (asked_tx, mut asked) = mpsc::channel(QUEUED_BATCHES);
    let outcome = futures::future::try_join(
        request_all(&mut writing, &mut batches, asked_tx),
        read_all(
            (&mut reading, &buffers),
            &mut asked,
            &arrivals,
            &backlog,
            (peer, &reports),
        ),
    )
    .await;
    if let Err(fault) = &outcome {
        tracing::debug!(%peer, %fault, "chunk session ended");
    }
    // Whatever was asked and not answered, or not yet asked, goes back.
    batches.close();
    asked.close();
    while let Some(batch) = asked.recv().await {
        let _ = reports
            .send(Report::Done(peer, batch, Err(failed_link())))
            .await;
    }
    while let Some(batch) = batches.recv().await {
        let _ = reports
            .send(Report::Done(peer, batch, Err(failed_link())))
            .await;
    }
    drop(arrivals);
    let _ = committer.await;
}

/// Writes a request for each batch as it comes; ends (closing our half of
/// the stream) when the session has been idle for [`SESSION_IDLE`].
async fn request_all(
    writing: &mut WriteHalf<Stream>,
    batches: &mut mpsc::Receiver<Batch>,
    asked: mpsc::Sender<Batch>,
) -> Result<(), PeerFault> {
    loop {
        let batch = match tokio::time::timeout(SESSION_IDLE, batches.recv()).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(_) => {
                // Close first, so nothing sent from now on is left behind.
                batches.close();
                match batches.recv().await {
                    Some(batch) => batch,
                    None => break,
                }
            }
        };
        let request = Message::ChunkRequest(batch.ids.clone());
        // Queued before it is written: if the write fails, it is in the
        // queue of batches to report failed.
        if asked.send(batch).await.is_err() {
            break;
        }
        write_message(writing, &request)
            .await
            .map_err(FrameError::from)?;
        writing.flush().await.map_err(FrameError::from)?;
    }
    let _ = writing.close().await;
    Ok(())
}

/// Reads the answers to each batch asked, in order, and passes them on.
async fn read_all(
    (reading, buffers): (&mut Watched<ReadHalf<Stream>>, &ChunkBuffers),
    asked: &mut mpsc::Receiver<Batch>,
    arrivals: &mpsc::Sender<Arrived>,
    backlog: &Arc<Semaphore>,
    (peer, reports): (PeerId, &mpsc::Sender<Report>),
) -> Result<(), PeerFault> {
    while let Some(batch) = asked.recv().await {
        reading.listening.set(Some(Instant::now()));
        let mut arrived = read_batch(reading, buffers, batch).await;
        reading.listening.set(None);
        let weight: usize = arrived.chunks.iter().map(|(_, b)| b.len()).sum();
        let places = u32::try_from(weight)
            .unwrap_or(u32::MAX)
            .min(COMMIT_BACKLOG);
        // Waiting here, with the budget still held, is what slows the
        // requests down when the disk falls behind.
        arrived.backlog = backlog.clone().acquire_many_owned(places).await.ok();
        let bytes = std::mem::take(&mut arrived.batch.bytes);
        let _ = reports
            .send(Report::Arrived {
                peer,
                bytes,
                received: weight as u64,
            })
            .await;
        // The fault itself travels with the batch, to be reported after
        // what did arrive is stored; this only ends the session.
        let stop = arrived.fault.is_some();
        let _ = arrivals.send(arrived).await;
        if stop {
            return Err(failed_link());
        }
    }
    Ok(())
}

/// Reads the answers to one batch. A peer whose answers would weigh more
/// than the bytes reserved for them is cut off as it does, before the
/// bytes are held (they are checked only when stored).
async fn read_batch(
    reading: &mut Watched<ReadHalf<Stream>>,
    buffers: &ChunkBuffers,
    batch: Batch,
) -> Arrived {
    let mut chunks = Vec::with_capacity(batch.ids.len());
    let mut missing = Vec::new();
    let mut fault = None;
    let mut weight = 0u64;
    for expected in &batch.ids {
        let room = usize::try_from(batch.bytes.saturating_sub(weight)).unwrap_or(usize::MAX);
        let max = (1 + 32 + room).min(Message::MAX_CHUNK_FRAME);
        match read_message_into(reading, max, IDLE, Some(buffers)).await {
            Ok(Some(Message::ChunkData { id, bytes })) if id == *expected => {
                weight += bytes.len() as u64;
                chunks.push((id, bytes));
            }
            Ok(Some(Message::ChunkMissing(id))) if id == *expected => missing.push(id),
            Ok(None) => {
                fault = Some(failed_link());
                break;
            }
            Ok(Some(_)) => {
                fault = Some(PeerFault::Unexpected);
                break;
            }
            Err(e) => {
                fault = Some(e.into());
                break;
            }
        }
    }
    Arrived {
        batch,
        chunks,
        missing,
        fault,
        backlog: None,
    }
}

/// Stores the batches as they arrive and reports each. Batches that
/// arrived while the last commit ran go to the store together, in one
/// group commit, so a slow disk costs fewer flushes rather than stalling
/// the link.
async fn commit_all(
    store: StoreHandle,
    stats: NodeStats,
    peer: PeerId,
    mut arrived: mpsc::Receiver<Arrived>,
    reports: mpsc::Sender<Report>,
) {
    while let Some(first) = arrived.recv().await {
        let mut group = vec![first];
        while let Ok(more) = arrived.try_recv() {
            group.push(more);
        }
        for (batch, result) in commit(&store, &stats, group).await {
            let _ = reports.send(Report::Done(peer, batch, result)).await;
        }
    }
}

/// Hands what arrived to the store (which checks each chunk against its
/// id, once), keeping what verified even when a peer then failed or lied;
/// a chunk that did not match is the fault of the batch it came in.
async fn commit(
    store: &StoreHandle,
    stats: &NodeStats,
    group: Vec<Arrived>,
) -> Vec<(Batch, Result<Fetched, PeerFault>)> {
    let mut chunks = Vec::new();
    let mut kept = Vec::with_capacity(group.len());
    let mut permits = Vec::new();
    for a in group {
        let sizes: Vec<(ChunkId, u64)> = a
            .chunks
            .iter()
            .map(|(id, b)| (*id, b.len() as u64))
            .collect();
        chunks.extend(a.chunks);
        kept.push((a.batch, sizes, a.missing, a.fault));
        permits.extend(a.backlog);
    }
    let stored = store.put_chunks(chunks).await;
    drop(permits);
    let report = match stored {
        Ok(report) => report,
        Err(e) => {
            let refused = || PeerFault::Frame(FrameError::Io(std::io::Error::other(e.to_string())));
            return kept
                .into_iter()
                .map(|(b, ..)| (b, Err(refused())))
                .collect();
        }
    };
    let bad: HashSet<ChunkId> = report.mismatched.iter().copied().collect();
    let stored: HashSet<ChunkId> = report.stored.iter().copied().collect();
    kept.into_iter()
        .map(|(batch, sizes, missing, fault)| {
            let mut fetched = Fetched {
                // What a peer said it lacks is remembered only from an
                // exchange that ended well.
                missing: if fault.is_none() { missing } else { Vec::new() },
                ..Fetched::default()
            };
            let mut lied = None;
            for (id, len) in sizes {
                if bad.contains(&id) {
                    lied.get_or_insert(id);
                    continue;
                }
                stats.chunks_fetched.inc();
                stats.bytes_fetched.inc_by(len);
                fetched.bytes += len;
                if stored.contains(&id) {
                    fetched.stored.push(id);
                }
            }
            let result = match (lied, fault) {
                (Some(id), _) => Err(PeerFault::BadChunk(id)),
                (None, Some(f)) => Err(f),
                (None, None) => Ok(fetched),
            };
            (batch, result)
        })
        .collect()
}
