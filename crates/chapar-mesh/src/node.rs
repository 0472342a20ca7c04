//! A running node: how it is configured, how it starts (the swarm task,
//! the protocol servers and the replicator), and the handle the rest of
//! the program holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chapar_format::BundleId;
use chapar_store::StoreHandle;
use chapar_wire::{ReceiptMessage, CHUNK_PROTOCOL, DESCRIPTOR_TOPIC, RECEIPT_TOPIC, SYNC_PROTOCOL};
use libp2p::gossipsub::IdentTopic;
use libp2p::metrics::Registry;
use libp2p::{identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use chapar_transport::camouflage::{CamouflageTransport, ServerSide};
use chapar_transport::pt::{PtClientConfig, PtTransport};
use chapar_transport::{is_hidden_transport, upgraded};

use crate::behaviour::{Behaviour, ConnectionCaps, Options, RelayLimits};
use crate::gate::DescriptorGate;
use crate::metrics::{render, NodeStats};
use crate::peerbook::PeerRecord;
use crate::plan::Holding;
use crate::plan::Limits;
use crate::ratelimit::Rate;
use crate::replicator::{Fetch, PeerHoldings, Replicator};
use crate::seed::Seeder;
use crate::serve::{Servers, StreamPermits};
use crate::swarm::{peer_of, Command, SwarmTask, CONFIGURED_MAX_BACKOFF, REMEMBERED_MAX_BACKOFF};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's identity (persist it to keep the peer id).
    pub keypair: identity::Keypair,
    /// Addresses to listen on (TCP, QUIC, WebSocket, or `/p2p-circuit`
    /// through a relay).
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to and keep redialing (with `/p2p/<id>`).
    pub peers: Vec<Multiaddr>,
    /// How often each connected peer's inventory is synced again.
    pub sync_interval: Duration,
    /// Bytes in flight while fetching.
    pub limits: Limits,
    /// Connection caps.
    pub caps: ConnectionCaps,
    /// Streams served at once (sync and chunk streams together).
    pub max_inbound_streams: usize,
    /// Streams served at once to one peer.
    pub max_inbound_streams_per_peer: usize,
    /// How long a peer that served a bad chunk or broke a protocol stays cut off.
    pub ban: Duration,
    /// Peer routing by Kademlia (our own DHT, `/chapar/kad/1`).
    pub kademlia: bool,
    /// Discover peers on the local network by mDNS.
    pub mdns: bool,
    /// Dial peers at addresses they announced (identify), not only at the
    /// addresses configured or found by discovery. Tests and the demo turn
    /// it off so that a modelled link cannot be bypassed on loopback.
    pub dial_learned_addrs: bool,
    /// Relay circuits for others, within these limits (`None`: do not).
    pub relay: Option<RelayLimits>,
    /// Peers found by discovery are dialed while fewer than this many are connected.
    pub target_peers: usize,
    /// Redial peers remembered in the store's peer book.
    pub use_peer_book: bool,
    /// New descriptors taken in from one peer.
    pub descriptor_rate: Rate,
    /// Bundles tracked at most; new descriptors beyond are refused.
    pub max_bundles: usize,
    /// A QUIC connection silent for this long is dropped.
    pub quic_idle_timeout: Duration,
    /// Which bundles this node fetches chunks of.
    pub fetch: Fetch,
    /// This node's uplink is the scarce link (a gateway on a satellite
    /// window): super-seed every complete bundle, not only those sealed
    /// here, so each chunk crosses once and the far side shares it.
    pub scarce_uplink: bool,
    /// The listen addresses the scarce link reaches this node on. Given,
    /// only peers that connect through one of them count as across it:
    /// the gateway's own country side is served freely. Empty: every peer
    /// does.
    pub scarce_listen: Vec<Multiaddr>,
    /// Least time between two sends of one chunk while super-seeding.
    pub resend_after: Duration,
    /// Offer the addresses we listen on as this node's external addresses
    /// (in relay reservations, to AutoNAT) without waiting for AutoNAT to
    /// confirm them, which it never does for LAN addresses. Camouflaged
    /// and bridge listeners are never offered.
    pub advertise_listen_addrs: bool,
    /// What a camouflaged HTTPS listener (`/IP/tcp/PORT/tls/http`) serves;
    /// needed only to listen on one (any node can dial them).
    pub camouflage: Option<Arc<ServerSide>>,
    /// Where pluggable-transport client programs are and keep their state
    /// (for dialing bridge lines).
    pub pluggable: PtClientConfig,
    /// Dial-only and quiet, for a machine on the censored side: no
    /// identify (it names Chapar and its version), no AutoNAT, no hole
    /// punching, no peer book; with `listen` empty, `mdns` and `kademlia`
    /// off, nothing a censor can probe or a peer can make it dial.
    pub stealth: bool,
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
            max_inbound_streams_per_peer: 8,
            ban: Duration::from_secs(600),
            kademlia: true,
            mdns: true,
            dial_learned_addrs: true,
            relay: Some(RelayLimits::default()),
            target_peers: 12,
            use_peer_book: true,
            descriptor_rate: Rate {
                burst: 256,
                per_second: 2.0,
            },
            max_bundles: 20_000,
            quic_idle_timeout: Duration::from_secs(60),
            advertise_listen_addrs: true,
            fetch: Fetch::All,
            scarce_uplink: false,
            scarce_listen: Vec::new(),
            resend_after: Duration::from_secs(15),
            camouflage: None,
            pluggable: PtClientConfig::default(),
            stealth: false,
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

/// What one connected peer holds of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHolding {
    /// The peer.
    pub peer: PeerId,
    /// Whether it holds every chunk.
    pub complete: bool,
    /// Chunks it holds.
    pub chunks: u32,
}

/// The handle to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    stats: NodeStats,
    registry: Arc<Registry>,
    seeder: Arc<Mutex<Seeder>>,
    holdings: Arc<Mutex<PeerHoldings>>,
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

    /// Every metric (libp2p's and the node's) in the OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        render(&self.registry)
    }

    /// Of a bundle sealed here: (distinct chunks that have left this node,
    /// chunks in all). `None` for other bundles, or before the node has
    /// looked at it (within a fraction of a second of starting).
    pub fn handed_off(&self, bundle: &BundleId) -> Option<(usize, usize)> {
        self.seeder.lock().ok()?.handed_off(bundle)
    }

    /// The connected peers that hold some or all of a bundle, as their
    /// last inventory said.
    pub fn holders(&self, bundle: &BundleId) -> Vec<PeerHolding> {
        let Ok(holdings) = self.holdings.lock() else {
            return Vec::new();
        };
        holdings
            .iter()
            .filter_map(|(peer, held)| {
                let (holding, chunks) = held.get(bundle)?;
                Some(PeerHolding {
                    peer: *peer,
                    complete: *holding == Holding::Complete,
                    chunks: *chunks,
                })
            })
            .collect()
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Listen addresses, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::ListenAddrs(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Peers connected now.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::ConnectedPeers(tx))
            .await
            .is_err()
        {
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

/// Peers remembered in the store, most recently seen first, at most this many.
const PEER_BOOK_REDIALS: usize = 64;
/// Peers not seen for this long are not redialed.
const PEER_BOOK_HORIZON: u64 = 30 * 24 * 3600;

/// The peer book's addresses worth redialing (one per peer, the best).
async fn remembered_peers(store: &StoreHandle, me: PeerId) -> Vec<Multiaddr> {
    let entries = store.call(|s| Ok((s.peers()?, s.now()))).await;
    let Ok((entries, now)) = entries else {
        return Vec::new();
    };
    let mut found: Vec<(u64, Multiaddr)> = entries
        .into_iter()
        .filter_map(|(peer, record)| {
            let peer = PeerId::from_bytes(&peer).ok()?;
            let record = PeerRecord::decode(&record).ok()?;
            let addr = record.addrs.into_iter().next()?;
            let fresh = record.last_seen + PEER_BOOK_HORIZON >= now;
            if peer == me || !fresh {
                return None;
            }
            Some((record.last_seen, addr.with_p2p(peer).ok()?))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
        .into_iter()
        .take(PEER_BOOK_REDIALS)
        .map(|(_, a)| a)
        .collect()
}

type Swarm = libp2p::Swarm<Behaviour>;

async fn build_swarm(config: &NodeConfig, registry: &mut Registry) -> Result<Swarm, MeshError> {
    let err = |e: &dyn std::fmt::Display| MeshError::Libp2p(e.to_string());
    let options = Options {
        caps: config.caps,
        kademlia: config.kademlia,
        mdns: config.mdns,
        dial_learned_addrs: config.dial_learned_addrs,
        relay: config.relay,
        stealth: config.stealth,
        hide_listen_addrs: config.listen.iter().any(is_hidden_transport),
    };
    let camouflage = config.camouflage.clone();
    let pluggable = config.pluggable.clone();
    let quic_idle = u32::try_from(config.quic_idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_quic_config(|mut c| {
            // The default 10 s would drop a connection over any satellite stall.
            c.max_idle_timeout = quic_idle;
            c.keep_alive_interval = Duration::from_secs(5);
            c
        })
        .with_other_transport(|key| upgraded(CamouflageTransport::new(camouflage), key))
        .map_err(|e| err(&e))?
        .with_other_transport(|key| upgraded(PtTransport::new(pluggable), key))
        .map_err(|e| err(&e))?
        .with_dns()
        .map_err(|e| err(&e))?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| Behaviour::new(key, relay_client, options))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .with_connection_timeout(Duration::from_secs(30))
        .build();
    Ok(swarm)
}

/// Starts a node over `store`: listens, dials its peers (and those its
/// peer book remembers), and from then on syncs, serves and replicates
/// until shut down.
pub async fn start(config: NodeConfig, store: StoreHandle) -> Result<NodeHandle, MeshError> {
    let err = |e: &dyn std::fmt::Display| MeshError::Libp2p(e.to_string());
    let mut registry = Registry::default();
    let mut swarm = build_swarm(&config, &mut registry).await?;
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

    let stats = NodeStats::default();
    let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
    stats.register(&mut registry);
    let mut known: Vec<(Multiaddr, Duration)> = config
        .peers
        .iter()
        .map(|a| (a.clone(), CONFIGURED_MAX_BACKOFF))
        .collect();
    if config.use_peer_book && !config.stealth {
        for addr in remembered_peers(&store, peer_id).await {
            if !known.iter().any(|(k, _)| peer_of(k) == peer_of(&addr)) {
                known.push((addr, REMEMBERED_MAX_BACKOFF));
            }
        }
    }

    let mut seeder = Seeder::new(config.resend_after);
    if !config.scarce_listen.is_empty() {
        seeder.only_far_side();
    }
    let seeder = Arc::new(Mutex::new(seeder));
    let (command_tx, command_rx) = mpsc::channel(256);
    let (news_tx, news_rx) = mpsc::channel(1024);
    let (inventory_tx, inventory_rx) = mpsc::channel(256);
    tokio::spawn(
        SwarmTask {
            swarm,
            commands: command_rx,
            news: news_tx,
            known,
            target_peers: config.target_peers,
            ban_for: config.ban,
            advertise_listen_addrs: config.advertise_listen_addrs,
            stats: stats.clone(),
            metrics: libp2p_metrics,
            scarce_listen: config.scarce_listen.clone(),
            seeder: seeder.clone(),
        }
        .run(),
    );
    let holdings = Arc::new(Mutex::new(PeerHoldings::default()));
    let handle = NodeHandle {
        commands: command_tx.clone(),
        peer_id,
        stats: stats.clone(),
        registry: Arc::new(registry),
        seeder: seeder.clone(),
        holdings: holdings.clone(),
    };
    let servers = Servers {
        store: store.clone(),
        commands: command_tx.clone(),
        ban_for: config.ban,
        permits: StreamPermits::new(
            config.max_inbound_streams,
            config.max_inbound_streams_per_peer,
        ),
        stats: stats.clone(),
        seeder: seeder.clone(),
    };
    tokio::spawn(servers.clone().serve_sync(sync_incoming, inventory_tx));
    tokio::spawn(servers.serve_chunk_requests(chunk_incoming));
    let gate = DescriptorGate::new(
        config.descriptor_rate,
        config.max_bundles,
        stats.descriptors_refused.clone(),
    );
    tokio::spawn(
        Replicator {
            store,
            control,
            commands: command_tx,
            sync_interval: config.sync_interval,
            limits: config.limits,
            ban_for: config.ban,
            gate: Arc::new(gate),
            stats,
            fetch: config.fetch,
            seeder,
            seed_everything: config.scarce_uplink,
            holdings,
        }
        .run(news_rx, inventory_rx),
    );
    Ok(handle)
}
