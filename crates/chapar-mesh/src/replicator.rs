//! The replicator: keeps each connected peer's inventory fresh, validates
//! gossip, and fetches what this node lacks from whoever holds it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chapar_format::{BundleId, ChunkId, Descriptor};
use chapar_store::{Role, StoreError, StoreHandle};
use chapar_wire::{ReceiptMessage, DESCRIPTOR_TOPIC, RECEIPT_TOPIC, SYNC_PROTOCOL};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fetch::{self, Batch, Fetched, Report, Session};
use crate::framing::FrameError;
use crate::gate::{expiry_is_sane, DescriptorGate};
use crate::metrics::NodeStats;
use crate::pace::Pace;
use crate::peerbook::PeerRecord;
use crate::plan::{bench, plan, Holding, Limits, Want};
use crate::protocols::{sync_out, PeerFault};
use crate::seed::Seeder;
use crate::serve::report_fault;
use crate::stall::Stalls;
use crate::swarm::{Command, SwarmNews};

/// Bytes asked for in one request: the unit of a group commit. Several
/// are in flight per peer, so the link stays busy while an earlier batch
/// is being written to disk.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// How often a peer's entry in the peer book is rewritten while it stays.
const PEERBOOK_REFRESH: Duration = Duration::from_secs(600);
/// Peers the peer book holds at most (a restart redials the 64 seen
/// last). Anyone who connects and names its addresses is written there,
/// so without a bound a stream of throwaway identities would grow it,
/// and the books below, without end.
const PEERBOOK_KEEP: usize = 512;
/// Disconnected peers whose pace is kept for their return, beyond which
/// they are forgotten.
const PACE_KEPT: usize = 256;

/// What the replicator hears from the tasks it starts.
enum Outcome {
    Synced(PeerId, Result<chapar_wire::Inventory, PeerFault>),
    Fetched(PeerId, Batch, Result<Fetched, PeerFault>),
    Repaired(BundleId, Result<chapar_store::ParityRepair, StoreError>),
}

struct PeerState {
    holdings: HashMap<BundleId, Holding>,
    last_sync: Option<Instant>,
    syncing: bool,
}

/// The descriptor fields planning needs, decoded once per bundle.
#[derive(Clone, Copy)]
struct BundleMeta {
    priority: u8,
    expires_at: u64,
    chunk_size: u32,
}

/// Decides what to sync and fetch, and from whom.
pub(crate) struct Replicator {
    pub(crate) store: StoreHandle,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) sync_interval: Duration,
    pub(crate) limits: Limits,
    pub(crate) ban_for: Duration,
    pub(crate) gate: Arc<DescriptorGate>,
    pub(crate) stats: NodeStats,
    pub(crate) fetch: Fetch,
    pub(crate) seeder: Arc<std::sync::Mutex<Seeder>>,
    /// Seed every complete bundle, not only those sealed here.
    pub(crate) seed_everything: bool,
    /// What each connected peer holds, for the node's handle.
    pub(crate) holdings: Arc<std::sync::Mutex<PeerHoldings>>,
}

/// What each connected peer last said it holds: whether all of a
/// bundle, and how many of its chunks.
pub(crate) type PeerHoldings = HashMap<PeerId, HashMap<BundleId, (Holding, u32)>>;

/// Which bundles a node fetches chunks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Every bundle it learns of (a relay).
    All,
    /// Only bundles addressed to this node's keys (marked `Receiving` in
    /// the store by whoever holds the keys).
    Receiving,
    /// None (a sender that only hands off).
    Nothing,
}

impl Fetch {
    fn wants(self, role: Role) -> bool {
        match self {
            Fetch::All => true,
            Fetch::Receiving => role == Role::Receiving,
            Fetch::Nothing => false,
        }
    }
}

/// What the store holds, as the metrics show it.
struct StoreGauges {
    bundles: usize,
    complete: usize,
    held_chunks: u64,
    /// Chunks of bundles this node wants and does not hold yet.
    lag_chunks: u64,
}

impl StoreGauges {
    fn of(bundles: &[chapar_store::BundleStatus], fetch: Fetch) -> Self {
        let mut g = StoreGauges {
            bundles: bundles.len(),
            complete: 0,
            held_chunks: 0,
            lag_chunks: 0,
        };
        for b in bundles {
            let r = &b.record;
            g.held_chunks += u64::from(r.held_chunks);
            if r.complete() {
                g.complete += 1;
            } else if fetch.wants(r.role) {
                g.lag_chunks += u64::from(r.known_chunks.saturating_sub(r.held_chunks));
            }
        }
        g
    }
}

/// The replicator's working state.
#[derive(Default)]
struct Books {
    peers: HashMap<PeerId, PeerState>,
    /// Chunks asked for: of which peer, and the bundle they belong to.
    in_flight: HashMap<ChunkId, (PeerId, BundleId)>,
    in_flight_bytes: HashMap<PeerId, u64>,
    /// (peer, chunk) pairs a peer said it does not hold.
    not_there: HashSet<(PeerId, ChunkId)>,
    /// Chunks a peer holding the whole bundle declined to send (it is
    /// super-seeding: another peer got that chunk), until when. Unlike
    /// `not_there`, this outlives the peer's next inventory, so the chunk
    /// is fetched from whoever got it rather than asked of the seeder
    /// again.
    declined: HashMap<(PeerId, ChunkId), Instant>,
    /// Peers given up on for going silent, until when: they are asked
    /// only for bundles no other peer holds whole.
    benched: HashMap<PeerId, Instant>,
    /// Bundles already reported complete.
    completed: HashSet<BundleId>,
    meta: HashMap<BundleId, BundleMeta>,
    peerbook_written: HashMap<PeerId, Instant>,
    /// The chunk session with each peer chunks are being fetched from.
    sessions: HashMap<PeerId, Session>,
    /// Bundles nothing is fetched for, and their parity-repair checks.
    stalls: Stalls,
    /// How fast each peer answers: sizes its batches and budget. Kept
    /// when it disconnects, for the next window, while few are kept.
    pace: HashMap<PeerId, Pace>,
}

/// How long a chunk a seeding peer declined is sought elsewhere first.
const DECLINED_FOR: Duration = Duration::from_secs(30);
/// A peer that has sent not a byte of what it was asked for in this long
/// is silent: its link has stalled (a window closed, and TCP waits).
const SILENT_AFTER: Duration = Duration::from_secs(2);
/// How long a peer given up on for silence is asked only for what no
/// one else holds whole.
const BENCHED_FOR: Duration = Duration::from_secs(10);

impl Books {
    /// Frees bytes of a peer's in-flight budget.
    fn release_bytes(&mut self, peer: PeerId, bytes: u64) {
        if let Some(b) = self.in_flight_bytes.get_mut(&peer) {
            *b = b.saturating_sub(bytes);
        }
    }

    /// Frees what a batch reserved; returns the bundle of each of its
    /// chunks. A chunk asked again of another peer since stays reserved
    /// for that one.
    fn release(&mut self, peer: PeerId, batch: &Batch) -> Vec<(ChunkId, BundleId)> {
        self.release_bytes(peer, batch.bytes);
        let mut bundles = Vec::with_capacity(batch.ids.len());
        for c in &batch.ids {
            let Some((asked_of, bundle)) = self.in_flight.get(c).copied() else {
                continue;
            };
            if asked_of == peer {
                self.in_flight.remove(c);
            }
            bundles.push((*c, bundle));
        }
        bundles
    }

    /// Times an answer from `peer` (`received` bytes of chunks, 0 for a
    /// batch that failed) for its pace.
    fn answered(&mut self, peer: PeerId, received: u64) {
        let busy = self.in_flight_bytes.get(&peer).is_some_and(|b| *b > 0);
        self.pace
            .entry(peer)
            .or_default()
            .answered(received, busy, Instant::now().into_std());
    }

    /// Whether `peer`'s peer-book record is due for a write; if so, notes
    /// it as written now.
    fn peerbook_due(&mut self, peer: PeerId) -> bool {
        let written = &mut self.peerbook_written;
        if written
            .get(&peer)
            .is_some_and(|t| t.elapsed() < PEERBOOK_REFRESH)
        {
            return false;
        }
        if written.len() >= PEERBOOK_KEEP {
            written.retain(|_, t| t.elapsed() < PEERBOOK_REFRESH);
            if written.len() >= 4 * PEERBOOK_KEEP {
                // Identities churning this fast are not worth the memory;
                // forgetting costs at most one early rewrite per peer.
                written.clear();
            }
        }
        written.insert(peer, Instant::now());
        true
    }

    /// Forgets the pace of disconnected peers once more than
    /// [`PACE_KEPT`] are kept.
    fn forget_paces(&mut self) {
        if self.pace.len() > PACE_KEPT {
            let connected = &self.peers;
            self.pace.retain(|p, _| connected.contains_key(p));
        }
    }

    /// Whether `peer` said it holds the whole of `bundle`.
    fn holds_whole(&self, peer: &PeerId, bundle: &BundleId) -> bool {
        self.peers
            .get(peer)
            .and_then(|s| s.holdings.get(bundle))
            .is_some_and(|h| *h == Holding::Complete)
    }
}

/// Opens a stream, giving up after 30 s (libp2p sets no limit).
pub(crate) async fn open_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: &'static str,
) -> Result<libp2p::Stream, PeerFault> {
    let failed = |e: String| PeerFault::Frame(FrameError::Io(std::io::Error::other(e)));
    match tokio::time::timeout(
        Duration::from_secs(30),
        control.open_stream(peer, StreamProtocol::new(protocol)),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("timed out opening a stream".into())),
    }
}

impl Replicator {
    pub(crate) async fn run(
        self,
        mut news: mpsc::Receiver<SwarmNews>,
        mut inventories: mpsc::Receiver<(PeerId, chapar_wire::Inventory)>,
    ) {
        let (done_tx, mut done) = mpsc::channel::<Outcome>(256);
        let (reports_tx, mut reports) = mpsc::channel::<Report>(256);
        let sessions = fetch::Context {
            store: self.store.clone(),
            control: self.control.clone(),
            reports: reports_tx,
            backlog: Arc::new(tokio::sync::Semaphore::new(fetch::COMMIT_BACKLOG as usize)),
            stats: self.stats.clone(),
        };
        let mut books = Books::default();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                n = news.recv() => match n {
                    None => break,
                    Some(n) => {
                        let new_peer = matches!(n, SwarmNews::PeerUp(_));
                        self.on_news(n, &mut books).await;
                        if new_peer {
                            // Sync with a peer the moment it arrives.
                            self.start_syncs(&mut books, &done_tx);
                        }
                    }
                },
                Some((peer, inventory)) = inventories.recv() => self.learn(&mut books, peer, &inventory),
                Some(outcome) = done.recv() => {
                    self.on_outcome(outcome, &mut books).await;
                    // A sync may have shown new holdings: plan at once.
                    self.start_fetches(&mut books, &sessions, &done_tx).await;
                }
                Some(report) = reports.recv() => {
                    match report {
                        Report::Arrived { peer, bytes, received } => {
                            books.release_bytes(peer, bytes);
                            books.answered(peer, received);
                        }
                        Report::Done(peer, batch, result) => {
                            self.on_outcome(Outcome::Fetched(peer, batch, result), &mut books).await;
                        }
                    }
                    // Refill the pipeline now rather than at the next tick.
                    self.start_fetches(&mut books, &sessions, &done_tx).await;
                }
                _ = tick.tick() => {
                    self.abandon_silent(&mut books);
                    self.start_syncs(&mut books, &done_tx);
                    self.start_fetches(&mut books, &sessions, &done_tx).await;
                }
            }
        }
    }

    async fn on_news(&self, news: SwarmNews, books: &mut Books) {
        match news {
            SwarmNews::PeerUp(peer) => {
                books.peers.insert(
                    peer,
                    PeerState {
                        holdings: HashMap::new(),
                        last_sync: None,
                        syncing: false,
                    },
                );
            }
            SwarmNews::PeerDown(peer) => {
                books.peers.remove(&peer);
                books.sessions.remove(&peer);
                books.not_there.retain(|(p, _)| *p != peer);
                if let Ok(mut h) = self.holdings.lock() {
                    h.remove(&peer);
                }
                books.forget_paces();
            }
            SwarmNews::PeerReachable { peer, addrs } => self.remember(peer, addrs, books).await,
            SwarmNews::Gossip {
                id,
                source,
                topic,
                data,
            } => {
                let acceptance = self.validate_gossip(source, &topic, data).await;
                let _ = self
                    .commands
                    .send(Command::Validate {
                        id,
                        source,
                        acceptance,
                    })
                    .await;
            }
        }
    }

    /// Writes where a peer was reached to the peer book, at most every
    /// [`PEERBOOK_REFRESH`] per peer (each write is a durable commit).
    async fn remember(&self, peer: PeerId, addrs: Vec<libp2p::Multiaddr>, books: &mut Books) {
        if !books.peerbook_due(peer) {
            return;
        }
        let result = self
            .store
            .call(move |s| {
                let record = PeerRecord {
                    last_seen: s.now(),
                    addrs,
                };
                s.put_peer(&peer.to_bytes(), &record.encode(), PEERBOOK_KEEP, |r| {
                    PeerRecord::decode(r).map_or(0, |p| p.last_seen)
                })
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(%peer, error = %e, "could not write the peer book");
        }
    }

    async fn validate_gossip(
        &self,
        source: PeerId,
        topic: &str,
        data: Vec<u8>,
    ) -> MessageAcceptance {
        match topic {
            DESCRIPTOR_TOPIC => self.validate_descriptor(source, data).await,
            RECEIPT_TOPIC => match ReceiptMessage::decode(&data) {
                Err(_) => MessageAcceptance::Reject,
                Ok(r) => match self.store.add_receipt(r.bundle, r.secret).await {
                    Ok(_) => MessageAcceptance::Accept,
                    Err(StoreError::WrongPreimage { .. }) => MessageAcceptance::Reject,
                    Err(_) => MessageAcceptance::Ignore,
                },
            },
            _ => MessageAcceptance::Reject,
        }
    }

    async fn validate_descriptor(&self, source: PeerId, data: Vec<u8>) -> MessageAcceptance {
        let Ok(descriptor) = Descriptor::decode(&data) else {
            return MessageAcceptance::Reject;
        };
        let now = self.store.call(|s| Ok(s.now())).await.unwrap_or(0);
        if descriptor.expires_at > now + crate::gate::MAX_LIFETIME.as_secs() {
            return MessageAcceptance::Reject;
        }
        if !expiry_is_sane(&descriptor, now) {
            // Expired here; perhaps not by the clock of the peer that sent it.
            return MessageAcceptance::Ignore;
        }
        if self.store.record(BundleId::of(&data)).await.is_ok() {
            return MessageAcceptance::Accept;
        }
        if !self.gate.admit(source) {
            tracing::debug!(peer = %source, "descriptor refused by the flood cap");
            return MessageAcceptance::Ignore;
        }
        match self.store.add_bundle(data, Role::Relaying).await {
            Ok(_) => MessageAcceptance::Accept,
            Err(_) => {
                self.gate.unadmit();
                MessageAcceptance::Ignore
            }
        }
    }

    fn start_syncs(&self, books: &mut Books, done: &mpsc::Sender<Outcome>) {
        for (peer, state) in books.peers.iter_mut() {
            let due = state
                .last_sync
                .is_none_or(|t| t.elapsed() >= self.sync_interval);
            if !due || state.syncing {
                continue;
            }
            state.syncing = true;
            let (peer, store, mut control, done, gate) = (
                *peer,
                self.store.clone(),
                self.control.clone(),
                done.clone(),
                self.gate.clone(),
            );
            tokio::spawn(async move {
                let result = match open_stream(&mut control, peer, SYNC_PROTOCOL).await {
                    Ok(stream) => sync_out(&store, stream, peer, &gate)
                        .await
                        .map(|r| r.inventory),
                    Err(e) => Err(e),
                };
                let _ = done.send(Outcome::Synced(peer, result)).await;
            });
        }
    }

    /// What this node lacks, bundle by bundle; also refreshes the gauges.
    async fn wants(&self, books: &mut Books) -> Vec<Want> {
        let known: HashSet<BundleId> = books.meta.keys().copied().collect();
        let fetch = self.fetch;
        let seeder = self.seeder.clone();
        let seed_everything = self.seed_everything;
        let scan = self
            .store
            .call(move |s| {
                let mut incomplete = Vec::new();
                let mut fresh = Vec::new();
                let bundles = s.bundles()?;
                for b in &bundles {
                    if b.record.role == Role::Sealed || (seed_everything && b.record.index_known) {
                        track_seeded(s, &seeder, b)?;
                    }
                    if b.record.complete() {
                        continue;
                    }
                    if !fetch.wants(b.record.role) {
                        continue;
                    }
                    if !known.contains(&b.id) {
                        fresh.push((b.id, Descriptor::decode(&s.descriptor(&b.id)?)?));
                    }
                    incomplete.push((b.id, s.missing_chunks(&b.id)?));
                }
                Ok((StoreGauges::of(&bundles, fetch), incomplete, fresh))
            })
            .await;
        let Ok((gauges, incomplete, fresh)) = scan else {
            return Vec::new();
        };
        for (id, d) in fresh {
            books.meta.insert(
                id,
                BundleMeta {
                    priority: d.priority,
                    expires_at: d.expires_at,
                    chunk_size: d.geometry.chunk_size,
                },
            );
        }
        self.show(&gauges);
        let wants: Vec<Want> = incomplete
            .into_iter()
            .filter_map(|(bundle, missing)| {
                let m = books.meta.get(&bundle)?;
                Some(Want {
                    bundle,
                    priority: m.priority,
                    expires_at: m.expires_at,
                    missing,
                    chunk_size: m.chunk_size,
                })
            })
            .collect();
        let live: HashSet<BundleId> = wants.iter().map(|w| w.bundle).collect();
        books.meta.retain(|id, _| live.contains(id));
        wants
    }

    async fn start_fetches(
        &self,
        books: &mut Books,
        sessions: &fetch::Context,
        done: &mpsc::Sender<Outcome>,
    ) {
        // Scanned even when no peer holds anything: the scan also starts
        // super-seeding a bundle sealed here before its first chunk leaves.
        let mut wants = self.wants(books).await;
        let lacking_now: Vec<(BundleId, usize)> =
            wants.iter().map(|w| (w.bundle, w.missing.len())).collect();
        if !wants.is_empty() && books.peers.values().any(|p| !p.holdings.is_empty()) {
            self.request(books, &mut wants, sessions);
        }
        self.repair_stalled(books, &lacking_now, done);
    }

    /// Rebuilds from parity each bundle that nothing is being fetched for
    /// (no peer offers what it lacks: the holder died, a seeder declined,
    /// the only link is down) when parity covers every chunk it lacks.
    /// Parity is there for exactly this, and it saves the scarce link the
    /// chunks lost with a peer that vanished.
    fn repair_stalled(
        &self,
        books: &mut Books,
        lacking: &[(BundleId, usize)],
        done: &mpsc::Sender<Outcome>,
    ) {
        let busy: HashSet<BundleId> = books.in_flight.values().map(|(_, b)| *b).collect();
        let due = books.stalls.due(lacking, &busy, Instant::now().into_std());
        for id in due {
            let (store, done) = (self.store.clone(), done.clone());
            tokio::spawn(async move {
                let result = store
                    .call(move |s| {
                        if s.parity_can_complete(&id)? {
                            s.repair_from_parity(&id)
                        } else {
                            Ok(chapar_store::ParityRepair::default())
                        }
                    })
                    .await;
                let _ = done.send(Outcome::Repaired(id, result)).await;
            });
        }
    }

    /// Gives up on the requests of each peer that has been silent for
    /// [`SILENT_AFTER`] (its link stalled without closing: a satellite
    /// window shut, and TCP waits for it) when another connected peer,
    /// not silent, holds the whole bundle of one of those chunks. Its
    /// session is dropped, so its batches come back failed and are asked
    /// of others, and it is benched for [`BENCHED_FOR`] (asked only for
    /// bundles no one else holds whole), so that new requests do not wait
    /// on it in turn.
    ///
    /// Only whole holders count: a partial one may lack the very chunks,
    /// and then the silent peer's link was the only way. Bytes of the
    /// dropped stream still crossing that link are lost, but the chunks
    /// were coming the other way anyway.
    fn abandon_silent(&self, books: &mut Books) {
        let now = std::time::Instant::now();
        let silent: Vec<PeerId> = books
            .sessions
            .iter()
            .filter(|(_, s)| s.silent_for(now) >= SILENT_AFTER)
            .map(|(p, _)| *p)
            .collect();
        // Neither a silent peer nor one benched earlier is a way round.
        let unsure: HashSet<PeerId> = silent.iter().chain(books.benched.keys()).copied().collect();
        for peer in &silent {
            let asked: Vec<(ChunkId, BundleId)> = books
                .in_flight
                .iter()
                .filter(|(_, (p, _))| p == peer)
                .map(|(c, (_, b))| (*c, *b))
                .collect();
            let elsewhere = |(c, b): &(ChunkId, BundleId)| {
                books.peers.keys().any(|q| {
                    !unsure.contains(q)
                        && books.holds_whole(q, b)
                        && !books.declined.contains_key(&(*q, *c))
                })
            };
            if !asked.iter().any(elsewhere) {
                continue;
            }
            tracing::info!(%peer, chunks = asked.len(), "asking others for chunks a silent peer has not sent");
            self.stats.requests_abandoned.inc();
            books.benched.insert(*peer, Instant::now() + BENCHED_FOR);
            books.sessions.remove(peer);
        }
    }

    /// Plans and sends chunk requests to the peers that hold what is wanted.
    fn request(&self, books: &mut Books, wants: &mut [Want], sessions: &fetch::Context) {
        let now = Instant::now();
        books.declined.retain(|_, until| *until > now);
        books.benched.retain(|_, until| *until > now);
        let mut lacking = books.not_there.clone();
        lacking.extend(books.declined.keys().copied());
        let mut holdings: HashMap<PeerId, HashMap<BundleId, Holding>> = books
            .peers
            .iter()
            .map(|(p, s)| (*p, s.holdings.clone()))
            .collect();
        bench(&mut holdings, &books.benched.keys().copied().collect());
        // A chunk every holder said it lacks waits for a fresh inventory.
        for w in wants.iter_mut() {
            w.missing.retain(|c| {
                holdings
                    .iter()
                    .any(|(p, h)| h.contains_key(&w.bundle) && !lacking.contains(&(*p, *c)))
            });
        }
        let budgets: HashMap<PeerId, u64> = holdings
            .keys()
            .map(|p| {
                let pace = books.pace.get(p).cloned().unwrap_or_default();
                (*p, pace.budget(self.limits.per_peer_bytes))
            })
            .collect();
        let asked: HashSet<ChunkId> = books.in_flight.keys().copied().collect();
        let requests = plan(
            wants,
            &holdings,
            (&asked, &books.in_flight_bytes),
            &lacking,
            self.limits,
            &budgets,
        );
        let chunk_size: HashMap<ChunkId, u64> = wants
            .iter()
            .flat_map(|w| w.missing.iter().map(move |c| (*c, u64::from(w.chunk_size))))
            .collect();
        let bundle_of: HashMap<ChunkId, BundleId> = wants
            .iter()
            .flat_map(|w| w.missing.iter().map(move |c| (*c, w.bundle)))
            .collect();
        for (peer, ids) in requests {
            let pace = books.pace.entry(peer).or_default();
            let batch_bytes = pace.batch_bytes(BATCH_BYTES);
            let was_idle = books.in_flight_bytes.get(&peer).is_none_or(|b| *b == 0);
            pace.asked(was_idle, now.into_std());
            for (ids, bytes) in batches(&ids, &chunk_size, batch_bytes) {
                for c in &ids {
                    if let Some(b) = bundle_of.get(c) {
                        books.in_flight.insert(*c, (peer, *b));
                    }
                }
                *books.in_flight_bytes.entry(peer).or_default() += bytes;
                self.dispatch(books, peer, Batch { ids, bytes }, sessions);
            }
        }
    }

    /// Hands a batch to the peer's chunk session, starting one if there is
    /// none or the last has ended.
    fn dispatch(&self, books: &mut Books, peer: PeerId, batch: Batch, sessions: &fetch::Context) {
        let start = || fetch::start(sessions.clone(), peer);
        let session = books.sessions.entry(peer).or_insert_with(start);
        if session.is_closed() {
            *session = start();
        }
        if let Err(batch) = session.try_send(batch) {
            // Full, or ended just now: the reservation goes back, and the
            // chunks are planned again.
            books.release(peer, &batch);
        }
    }

    fn learn(&self, books: &mut Books, peer: PeerId, inventory: &chapar_wire::Inventory) {
        let Some(state) = books.peers.get_mut(&peer) else {
            return;
        };
        state.holdings = inventory
            .bundles
            .iter()
            .filter(|e| e.held > 0)
            .map(|e| {
                let h = if e.complete {
                    Holding::Complete
                } else {
                    Holding::Partial
                };
                (e.bundle, h)
            })
            .collect();
        let counted: HashMap<BundleId, (Holding, u32)> = inventory
            .bundles
            .iter()
            .filter_map(|e| Some((e.bundle, (*state.holdings.get(&e.bundle)?, e.held))))
            .collect();
        let changed = self
            .holdings
            .lock()
            .map(|mut h| h.insert(peer, counted.clone()).as_ref() != Some(&counted))
            .unwrap_or(true);
        // What it said it lacked may have arrived since, but only if its
        // counts moved: asking again at every sync would keep a bundle
        // whose last chunks nobody holds looking busy, and never stalled.
        if changed {
            books.not_there.retain(|(p, _)| *p != peer);
        }
    }

    fn show(&self, gauges: &StoreGauges) {
        self.gate
            .known_bundles
            .store(gauges.bundles, Ordering::Relaxed);
        self.stats.bundles.set(gauges.bundles as i64);
        self.stats.bundles_complete.set(gauges.complete as i64);
        self.stats.chunks_held.set(gauges.held_chunks as i64);
        self.stats
            .replication_lag_chunks
            .set(gauges.lag_chunks as i64);
    }

    /// Logs each bundle once, when this node comes to hold all of it. The
    /// gauges are set first, so whoever reads the log line and then scrapes
    /// the metrics sees the completion there too.
    async fn report_completions(&self, books: &mut Books) {
        let fetch = self.fetch;
        let Ok((gauges, complete)) = self
            .store
            .call(move |s| {
                let bundles = s.bundles()?;
                let complete: Vec<BundleId> = bundles
                    .iter()
                    .filter(|b| b.record.complete())
                    .map(|b| b.id)
                    .collect();
                Ok((StoreGauges::of(&bundles, fetch), complete))
            })
            .await
        else {
            return;
        };
        self.show(&gauges);
        for id in complete {
            if books.completed.insert(id) {
                tracing::info!(bundle = %id, "bundle complete");
            }
        }
    }

    async fn on_outcome(&self, outcome: Outcome, books: &mut Books) {
        match outcome {
            Outcome::Synced(peer, result) => {
                if let Some(state) = books.peers.get_mut(&peer) {
                    state.syncing = false;
                    state.last_sync = Some(Instant::now());
                }
                match result {
                    Ok(inv) => self.learn(books, peer, &inv),
                    Err(fault) => report_fault(&self.commands, peer, &fault, self.ban_for).await,
                }
            }
            Outcome::Repaired(bundle, result) => {
                books.stalls.finished(&bundle);
                match result {
                    Ok(r) if r.rebuilt > 0 => {
                        tracing::info!(%bundle, rebuilt = r.rebuilt, "rebuilt chunks no peer could supply from parity");
                        self.stats.chunks_rebuilt.inc_by(r.rebuilt as u64);
                        self.report_completions(books).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%bundle, error = %e, "parity repair failed"),
                }
            }
            Outcome::Fetched(peer, batch, result) => {
                let batch_bundles = books.release(peer, &batch);
                match result {
                    Ok(fetched) => {
                        tracing::debug!(%peer, stored = fetched.stored.len(), bytes = fetched.bytes, "fetched chunks");
                        for c in fetched.missing {
                            let bundle =
                                batch_bundles.iter().find(|(x, _)| *x == c).map(|(_, b)| *b);
                            if bundle.is_some_and(|b| books.holds_whole(&peer, &b)) {
                                books
                                    .declined
                                    .insert((peer, c), Instant::now() + DECLINED_FOR);
                            } else {
                                books.not_there.insert((peer, c));
                            }
                        }
                        if !fetched.stored.is_empty() {
                            self.report_completions(books).await;
                        }
                    }
                    Err(fault) => {
                        // The time it hung is not the link's rate.
                        books.answered(peer, 0);
                        if fault.is_misbehaviour() {
                            books.peers.remove(&peer);
                            books.sessions.remove(&peer);
                        }
                        report_fault(&self.commands, peer, &fault, self.ban_for).await;
                    }
                }
            }
        }
    }
}

/// Lets the super-seeder know every chunk of a bundle it seeds.
fn track_seeded(
    store: &chapar_store::Store,
    seeder: &std::sync::Mutex<Seeder>,
    bundle: &chapar_store::BundleStatus,
) -> Result<(), StoreError> {
    let known = seeder.lock().map(|s| s.knows(&bundle.id)).unwrap_or(true);
    if known || !bundle.record.index_known {
        return Ok(());
    }
    let chunks = store.known_chunks(&bundle.id)?;
    if let Ok(mut s) = seeder.lock() {
        s.track(bundle.id, &chunks);
    }
    Ok(())
}

/// Splits one peer's request into streams of at most [`BATCH_BYTES`] (and
/// the protocol's id limit); returns each batch with its reserved bytes.
fn batches(
    ids: &[ChunkId],
    chunk_size: &HashMap<ChunkId, u64>,
    batch_bytes: u64,
) -> Vec<(Vec<ChunkId>, u64)> {
    let mut out: Vec<(Vec<ChunkId>, u64)> = Vec::new();
    for id in ids {
        let size = chunk_size.get(id).copied().unwrap_or(0);
        match out.last_mut() {
            Some((batch, bytes))
                if *bytes + size <= batch_bytes
                    && batch.len() < chapar_wire::MAX_CHUNKS_PER_REQUEST =>
            {
                batch.push(*id);
                *bytes += size;
            }
            _ => out.push((vec![*id], size)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_book_writes_are_spaced_and_their_count_is_bounded() {
        let mut books = Books::default();
        let first = PeerId::random();
        assert!(books.peerbook_due(first));
        assert!(!books.peerbook_due(first), "rewritten within the refresh");
        // A stream of throwaway identities: each is written once, and the
        // count in memory stays bounded.
        for _ in 0..(4 * PEERBOOK_KEEP + 100) {
            assert!(books.peerbook_due(PeerId::random()));
            assert!(books.peerbook_written.len() <= 4 * PEERBOOK_KEEP);
        }
    }

    #[test]
    fn paces_of_departed_peers_are_kept_only_while_few() {
        let mut books = Books::default();
        let connected = PeerId::random();
        books.peers.insert(
            connected,
            PeerState {
                holdings: HashMap::new(),
                last_sync: None,
                syncing: false,
            },
        );
        books.pace.insert(connected, Pace::default());
        for _ in 1..PACE_KEPT {
            books.pace.insert(PeerId::random(), Pace::default());
        }
        books.forget_paces();
        assert_eq!(books.pace.len(), PACE_KEPT, "at the bound: all kept");
        books.pace.insert(PeerId::random(), Pace::default());
        books.forget_paces();
        assert_eq!(books.pace.keys().collect::<Vec<_>>(), vec![&connected]);
    }

    #[test]
    fn batches_respect_the_byte_budget() {
        let ids: Vec<ChunkId> = (0..7u8).map(|i| ChunkId::of(&[i])).collect();
        let sizes: HashMap<ChunkId, u64> = ids.iter().map(|c| (*c, BATCH_BYTES / 2)).collect();
        let out = batches(&ids, &sizes, BATCH_BYTES);
        assert_eq!(
            out.iter().map(|(b, _)| b.len()).collect::<Vec<_>>(),
            vec![2, 2, 2, 1]
        );
        assert!(out.iter().all(|(_, bytes)| *bytes <= BATCH_BYTES));
        let small: HashMap<ChunkId, u64> = ids.iter().map(|c| (*c, 4096)).collect();
        assert_eq!(batches(&ids, &small, BATCH_BYTES).len(), 1);
    }
}
