//! A running node: the swarm task, the protocol servers and the
//! replicator, and the handle the rest of the program holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chapar_format::{BundleId, ChunkId, Descriptor};
use chapar_store::{StoreError, StoreHandle};
use chapar_wire::{ReceiptMessage, CHUNK_PROTOCOL, DESCRIPTOR_TOPIC, RECEIPT_TOPIC, SYNC_PROTOCOL};
use futures::StreamExt;
use libp2p::gossipsub::{IdentTopic, MessageAcceptance};
use libp2p::{identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::behaviour::{Behaviour, ConnectionCaps};
use crate::plan::{plan, Holding, Limits, Want};
use crate::protocols::{fetch_chunks, serve_chunks, sync_in, sync_out, PeerFault};
use crate::swarm::{Command, SwarmNews, SwarmTask};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's identity (persist it to keep the peer id).
    pub keypair: identity::Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to and keep redialing (with `/p2p/<id>`).
    pub peers: Vec<Multiaddr>,
    /// How often each connected peer's inventory is synced again.
    pub sync_interval: Duration,
    /// Bytes in flight while fetching.
    pub limits: Limits,
    /// Connection caps.
    pub caps: ConnectionCaps,
    /// Streams served at once, per protocol.
    pub max_inbound_streams: usize,
    /// How long a peer that served a bad chunk or broke a protocol stays cut off.
    pub ban: Duration,
}

impl NodeConfig {
    /// A config with every default, listening on `listen`.
    pub fn new(keypair: identity::Keypair, listen: Vec<Multiaddr>) -> Self {
        Self {
            keypair,
            listen,
            peers: Vec::new(),
            sync_interval: Duration::from_secs(10),
            limits: Limits::default(),
            caps: ConnectionCaps::default(),
            max_inbound_streams: 32,
            ban: Duration::from_secs(600),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Setting up libp2p failed.
    #[error("libp2p: {0}")]
    Libp2p(String),
}

/// Counters of what a node moved (for metrics and tests).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Chunks received from peers and verified (a chunk fetched twice
    /// counts twice).
    pub chunks_fetched: std::sync::atomic::AtomicU64,
    /// Their bytes.
    pub bytes_fetched: std::sync::atomic::AtomicU64,
    /// Bytes of chunks served to peers.
    pub bytes_served: std::sync::atomic::AtomicU64,
}

/// The handle to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    stats: Arc<NodeStats>,
}

impl NodeHandle {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// What the node has moved so far.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Listen addresses, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::ListenAddrs(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Connects to a peer and keeps redialing it when the link drops.
    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.commands.send(Command::Dial(addr)).await;
    }

    /// Gossips a descriptor (the sync carries it too, so a dropped one is not lost).
    pub async fn announce(&self, descriptor: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::Publish {
                topic: DESCRIPTOR_TOPIC,
                data: descriptor,
            })
            .await;
    }

    /// Gossips a receipt.
    pub async fn announce_receipt(&self, receipt: &ReceiptMessage) {
        let _ = self
            .commands
            .send(Command::Publish {
                topic: RECEIPT_TOPIC,
                data: receipt.encode().to_vec(),
            })
            .await;
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// Starts a node over `store`: listens, dials its peers, and from then on
/// syncs, serves and replicates until shut down.
pub async fn start(config: NodeConfig, store: StoreHandle) -> Result<NodeHandle, MeshError> {
    let err = |e: &dyn std::fmt::Display| MeshError::Libp2p(e.to_string());
    let caps = config.caps;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_behaviour(|key| Behaviour::new(key, caps))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for topic in [DESCRIPTOR_TOPIC, RECEIPT_TOPIC] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| err(&e))?;
    }
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| err(&e))?;
    }
    let peer_id = *swarm.local_peer_id();
    let mut control = swarm.behaviour().stream.new_control();
    let sync_incoming = control
        .accept(StreamProtocol::new(SYNC_PROTOCOL))
        .map_err(|e| err(&e))?;
    let chunk_incoming = control
        .accept(StreamProtocol::new(CHUNK_PROTOCOL))
        .map_err(|e| err(&e))?;

    let (command_tx, command_rx) = mpsc::channel(256);
    let (news_tx, news_rx) = mpsc::channel(1024);
    let (inventory_tx, inventory_rx) = mpsc::channel(256);
    tokio::spawn(
        SwarmTask {
            swarm,
            commands: command_rx,
            news: news_tx,
            known: config.peers.clone(),
        }
        .run(),
    );
    let stats = Arc::new(NodeStats::default());
    let handle = NodeHandle {
        commands: command_tx.clone(),
        peer_id,
        stats: stats.clone(),
    };
    let permits = Arc::new(Semaphore::new(config.max_inbound_streams));
    tokio::spawn(serve_sync(
        sync_incoming,
        store.clone(),
        inventory_tx.clone(),
        command_tx.clone(),
        config.ban,
        permits.clone(),
    ));
    tokio::spawn(serve_chunk_requests(
        chunk_incoming,
        store.clone(),
        command_tx.clone(),
        config.ban,
        permits,
        stats.clone(),
    ));
    tokio::spawn(
        Replicator {
            store,
            control,
            commands: command_tx,
            config,
            peers: HashMap::new(),
            in_flight: HashSet::new(),
            in_flight_bytes: HashMap::new(),
            not_there: HashSet::new(),
            completed: HashSet::new(),
            stats,
        }
        .run(news_rx, inventory_rx),
    );
    Ok(handle)
}

/// Opens a stream, giving up after 30 s (libp2p sets no limit).
async fn open_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: &'static str,
) -> Result<libp2p::Stream, String> {
    match tokio::time::timeout(
        Duration::from_secs(30),
        control.open_stream(peer, StreamProtocol::new(protocol)),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out opening a stream".into()),
    }
}

async fn ban(
    commands: &mpsc::Sender<Command>,
    peer: PeerId,
    fault: &PeerFault,
    for_how_long: Duration,
) {
    tracing::warn!(%peer, %fault, "peer broke the protocol");
    let _ = commands.send(Command::Ban { peer, for_how_long }).await;
}

async fn serve_sync(
    mut incoming: libp2p_stream::IncomingStreams,
    store: StoreHandle,
    inventories: mpsc::Sender<(PeerId, chapar_wire::Inventory)>,
    commands: mpsc::Sender<Command>,
    ban_for: Duration,
    permits: Arc<Semaphore>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many inbound streams; dropping one");
            continue;
        };
        let (store, inventories, commands) = (store.clone(), inventories.clone(), commands.clone());
        tokio::spawn(async move {
            match sync_in(&store, stream).await {
                Ok(inv) => {
                    let _ = inventories.send((peer, inv)).await;
                }
                Err(fault) if fault.is_misbehaviour() => {
                    ban(&commands, peer, &fault, ban_for).await
                }
                Err(fault) => tracing::debug!(%peer, %fault, "sync stream failed"),
            }
            drop(permit);
        });
    }
}

async fn serve_chunk_requests(
    mut incoming: libp2p_stream::IncomingStreams,
    store: StoreHandle,
    commands: mpsc::Sender<Command>,
    ban_for: Duration,
    permits: Arc<Semaphore>,
    stats: Arc<NodeStats>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many inbound streams; dropping one");
            continue;
        };
        let (store, commands, stats) = (store.clone(), commands.clone(), stats.clone());
        tokio::spawn(async move {
            match serve_chunks(&store, stream).await {
                Ok(bytes) => {
                    stats
                        .bytes_served
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(%peer, bytes, "served chunks")
                }
                Err(fault) if fault.is_misbehaviour() => {
                    ban(&commands, peer, &fault, ban_for).await
                }
                Err(fault) => tracing::debug!(%peer, %fault, "chunk stream failed"),
            }
            drop(permit);
        });
    }
}

/// What the replicator hears from the tasks it starts.
enum Outcome {
    Synced(PeerId, Result<chapar_wire::Inventory, PeerFault>),
    Fetched(
        PeerId,
        Vec<ChunkId>,
        u64,
        Result<crate::protocols::Fetched, PeerFault>,
    ),
}

struct PeerState {
    holdings: HashMap<BundleId, Holding>,
    last_sync: Option<Instant>,
    syncing: bool,
}

/// Decides what to sync and fetch, and from whom.
struct Replicator {
    store: StoreHandle,
    control: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
    config: NodeConfig,
    peers: HashMap<PeerId, PeerState>,
    in_flight: HashSet<ChunkId>,
    in_flight_bytes: HashMap<PeerId, u64>,
    /// (peer, chunk) pairs a peer said it does not hold.
    not_there: HashSet<(PeerId, ChunkId)>,
    /// Bundles already reported complete.
    completed: HashSet<BundleId>,
    stats: Arc<NodeStats>,
}

impl Replicator {
    async fn run(
        mut self,
        mut news: mpsc::Receiver<SwarmNews>,
        mut inventories: mpsc::Receiver<(PeerId, chapar_wire::Inventory)>,
    ) {
        let (done_tx, mut done) = mpsc::channel::<Outcome>(256);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                n = news.recv() => match n {
                    None => break,
                    Some(SwarmNews::PeerUp(peer)) => {
                        self.peers.insert(peer, PeerState { holdings: HashMap::new(), last_sync: None, syncing: false });
                    }
                    Some(SwarmNews::PeerDown(peer)) => {
                        self.peers.remove(&peer);
                        self.not_there.retain(|(p, _)| *p != peer);
                    }
                    Some(SwarmNews::Gossip { id, source, topic, data }) => {
                        let acceptance = self.validate_gossip(&topic, data).await;
                        let _ = self.commands.send(Command::Validate { id, source, acceptance }).await;
                    }
                },
                Some((peer, inventory)) = inventories.recv() => self.learn(peer, &inventory),
                Some(outcome) = done.recv() => self.on_outcome(outcome).await,
                _ = tick.tick() => {
                    self.start_syncs(&done_tx);
                    self.start_fetches(&done_tx).await;
                }
            }
        }
    }

    async fn validate_gossip(&self, topic: &str, data: Vec<u8>) -> MessageAcceptance {
        match topic {
            DESCRIPTOR_TOPIC => {
                if Descriptor::decode(&data).is_err() {
                    return MessageAcceptance::Reject;
                }
                match self
                    .store
                    .add_bundle(data, chapar_store::Role::Relaying)
                    .await
                {
                    Ok(_) => MessageAcceptance::Accept,
                    Err(StoreError::Tombstoned { .. } | StoreError::Expired { .. }) => {
                        MessageAcceptance::Ignore
                    }
                    Err(_) => MessageAcceptance::Ignore,
                }
            }
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

    fn learn(&mut self, peer: PeerId, inventory: &chapar_wire::Inventory) {
        if let Some(state) = self.peers.get_mut(&peer) {
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
            // What it said it lacked may have arrived since.
            self.not_there.retain(|(p, _)| *p != peer);
        }
    }

    fn start_syncs(&mut self, done: &mpsc::Sender<Outcome>) {
        let interval = self.config.sync_interval;
        for (peer, state) in self.peers.iter_mut() {
            let due = state.last_sync.is_none_or(|t| t.elapsed() >= interval);
            if !due || state.syncing {
                continue;
            }
            state.syncing = true;
            let (peer, store, mut control, done) = (
                *peer,
                self.store.clone(),
                self.control.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let result = match open_stream(&mut control, peer, SYNC_PROTOCOL).await {
                    Ok(stream) => sync_out(&store, stream).await.map(|r| r.inventory),
                    Err(e) => Err(PeerFault::Frame(crate::framing::FrameError::Io(
                        std::io::Error::other(e),
                    ))),
                };
                let _ = done.send(Outcome::Synced(peer, result)).await;
            });
        }
    }

    async fn wants(&self) -> Vec<Want> {
        self.store
            .call(|s| {
                let mut wants = Vec::new();
                for b in s.bundles()? {
                    if b.record.complete() {
                        continue;
                    }
                    let d = Descriptor::decode(&s.descriptor(&b.id)?)?;
                    wants.push(Want {
                        bundle: b.id,
                        priority: d.priority,
                        expires_at: d.expires_at,
                        missing: s.missing_chunks(&b.id)?,
                        chunk_size: d.geometry.chunk_size,
                    });
                }
                Ok(wants)
            })
            .await
            .unwrap_or_default()
    }

    async fn start_fetches(&mut self, done: &mpsc::Sender<Outcome>) {
        if self.peers.values().all(|p| p.holdings.is_empty()) {
            return;
        }
        let mut wants = self.wants().await;
        if wants.is_empty() {
            return;
        }
        let holdings: HashMap<PeerId, HashMap<BundleId, Holding>> = self
            .peers
            .iter()
            .map(|(p, s)| (*p, s.holdings.clone()))
            .collect();
        // Chunks a peer said it lacks are not asked of it again until its
        // next inventory: drop them from that peer's view by filtering wants
        // per peer is costly; instead skip chunks nobody else may have.
        for w in &mut wants {
            w.missing.retain(|c| {
                holdings
                    .iter()
                    .any(|(p, h)| h.contains_key(&w.bundle) && !self.not_there.contains(&(*p, *c)))
            });
        }
        let requests = plan(
            &wants,
            &holdings,
            &self.in_flight,
            &self.in_flight_bytes,
            &self.not_there,
            self.config.limits,
        );
        let chunk_size: HashMap<ChunkId, u64> = wants
            .iter()
            .flat_map(|w| w.missing.iter().map(move |c| (*c, u64::from(w.chunk_size))))
            .collect();
        for (peer, mut ids) in requests {
            ids.retain(|c| !self.not_there.contains(&(peer, *c)));
            for batch in ids.chunks(chapar_wire::MAX_CHUNKS_PER_REQUEST) {
                let batch = batch.to_vec();
                let bytes: u64 = batch
                    .iter()
                    .map(|c| chunk_size.get(c).copied().unwrap_or(0))
                    .sum();
                self.in_flight.extend(batch.iter().copied());
                *self.in_flight_bytes.entry(peer).or_default() += bytes;
                let (store, mut control, done) =
                    (self.store.clone(), self.control.clone(), done.clone());
                tokio::spawn(async move {
                    let result = match open_stream(&mut control, peer, CHUNK_PROTOCOL).await {
                        Ok(stream) => fetch_chunks(&store, stream, batch.clone()).await,
                        Err(e) => Err(PeerFault::Frame(crate::framing::FrameError::Io(
                            std::io::Error::other(e),
                        ))),
                    };
                    let _ = done
                        .send(Outcome::Fetched(peer, batch, bytes, result))
                        .await;
                });
            }
        }
    }

    /// Logs each bundle once, when this node comes to hold all of it.
    async fn report_completions(&mut self) {
        let complete: Vec<BundleId> = self
            .store
            .call(|s| {
                Ok(s.bundles()?
                    .into_iter()
                    .filter(|b| b.record.complete())
                    .map(|b| b.id)
                    .collect())
            })
            .await
            .unwrap_or_default();
        for id in complete {
            if self.completed.insert(id) {
                tracing::info!(bundle = %id, "bundle complete");
            }
        }
    }

    async fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Synced(peer, result) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.syncing = false;
                    state.last_sync = Some(Instant::now());
                }
                match result {
                    Ok(inv) => self.learn(peer, &inv),
                    Err(fault) if fault.is_misbehaviour() => {
                        ban(&self.commands, peer, &fault, self.config.ban).await
                    }
                    Err(fault) => tracing::debug!(%peer, %fault, "sync failed"),
                }
            }
            Outcome::Fetched(peer, batch, bytes, result) => {
                for c in &batch {
                    self.in_flight.remove(c);
                }
                if let Some(b) = self.in_flight_bytes.get_mut(&peer) {
                    *b = b.saturating_sub(bytes);
                }
                match result {
                    Ok(fetched) => {
                        tracing::debug!(%peer, stored = fetched.stored.len(), bytes = fetched.bytes, "fetched chunks");
                        self.not_there
                            .extend(fetched.missing.into_iter().map(|c| (peer, c)));
                        let relaxed = std::sync::atomic::Ordering::Relaxed;
                        self.stats
                            .chunks_fetched
                            .fetch_add(fetched.received as u64, relaxed);
                        self.stats.bytes_fetched.fetch_add(fetched.bytes, relaxed);
                        self.report_completions().await;
                    }
                    Err(fault) if fault.is_misbehaviour() => {
                        self.peers.remove(&peer);
                        ban(&self.commands, peer, &fault, self.config.ban).await;
                    }
                    Err(fault) => tracing::debug!(%peer, %fault, "fetch failed"),
                }
            }
        }
    }
}
