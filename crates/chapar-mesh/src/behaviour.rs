//! The libp2p behaviours a Chapar node runs, combined.

use std::time::Duration;

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, identity, kad, mdns, ping, relay,
    PeerId, StreamProtocol,
};

/// Protocol version announced by identify.
pub const IDENTIFY_PROTOCOL: &str = "/chapar/id/1";

/// Our own Kademlia protocol: Chapar relays form their own DHT rather
/// than join the IPFS one, whose peers could not serve us anyway.
pub const KAD_PROTOCOL: &str = "/chapar/kad/1";

/// Everything a node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Connection caps (total and per peer).
    pub limits: connection_limits::Behaviour,
    /// Who the peer is and where it listens (off in stealth: it would
    /// name Chapar and its version to every peer).
    pub identify: Toggle<identify::Behaviour>,
    /// Liveness; failures close the connection (the swarm loop does that).
    pub ping: ping::Behaviour,
    /// Peer routing, so a relay finds relays beyond the ones it was told of.
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// Local discovery (off with `--no-mdns`).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Descriptor and receipt gossip.
    pub gossipsub: gossipsub::Behaviour,
    /// Relay v2 server: carries circuits for peers that cannot be reached directly.
    pub relay: Toggle<relay::Behaviour>,
    /// Relay v2 client: listens and dials through relays.
    pub relay_client: relay::client::Behaviour,
    /// Hole punching over a relayed connection (off in stealth).
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// Asks peers whether our addresses are reachable (off in stealth).
    pub autonat_client: Toggle<autonat::v2::client::Behaviour>,
    /// Answers such questions for peers (off in stealth: a peer could make
    /// us dial any address it names, in plain sight of a censor).
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Raw streams for inventory sync and chunk transfer.
    pub stream: libp2p_stream::Behaviour,
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCaps {
    /// Established connections in all.
    pub total: u32,
    /// Established connections with one peer.
    pub per_peer: u32,
    /// Connections being set up, each way.
    pub pending: u32,
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        Self {
            total: 256,
            per_peer: 2,
            pending: 64,
        }
    }
}

/// Limits of the relay v2 server. libp2p's defaults (2 minutes and
/// 128 KiB per circuit) would cut a bulk transfer after a few chunks.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// How long one circuit may last (at most `u32::MAX` seconds).
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry; 0 means no limit.
    pub max_circuit_bytes: u64,
    /// Circuits at once.
    pub max_circuits: usize,
    /// Circuits at once per peer.
    pub max_circuits_per_peer: usize,
    /// Reservations held at once.
    pub max_reservations: usize,
    /// How long a reservation lasts before it must be renewed.
    pub reservation_duration: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 0,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_reservations: 128,
            reservation_duration: Duration::from_secs(3600),
        }
    }
}

/// Which optional behaviours run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub caps: ConnectionCaps,
    pub kademlia: bool,
    pub mdns: bool,
    /// Let identify remember peers' listen addresses for later dials.
    pub dial_learned_addrs: bool,
    /// `None`: this node does not relay for others.
    pub relay: Option<RelayLimits>,
    /// Dial-only and quiet: no identify, AutoNAT or hole punching.
    pub stealth: bool,
    /// Identify sends only external addresses, never listen addresses
    /// (set when a listener must not be announced).
    pub hide_listen_addrs: bool,
}

/// Gossip score: a peer that forwards invalid descriptors or forged
/// receipts loses score; below the graylist threshold the swarm task cuts
/// it off. Delivery-rate penalties are off: our topics are quiet, and an
/// honest peer with nothing to say must not look like a bad one.
fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams {
        // Many honest nodes may share one address (a NAT, loopback in a demo).
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    for topic in [chapar_wire::DESCRIPTOR_TOPIC, chapar_wire::RECEIPT_TOPIC] {
        let topic_params = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            // No credit that good behaviour can bank against later abuse:
            // libp2p's default time-in-mesh bonus reaches +1900 within two
            // seconds and would let a peer send dozens of invalid messages.
            time_in_mesh_weight: 0.0,
            first_message_deliveries_weight: 0.5,
            first_message_deliveries_cap: 20.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            // P4 grows with the square of the count: four invalid messages
            // take a peer past the graylist threshold (−80) even with the
            // most first-delivery credit it can hold (+10).
            invalid_message_deliveries_weight: -10.0,
            invalid_message_deliveries_decay: 0.9,
            ..Default::default()
        };
        params
            .topics
            .insert(gossipsub::IdentTopic::new(topic).hash(), topic_params);
    }
    (params, gossipsub::PeerScoreThresholds::default())
}

fn gossip() -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    // Anonymous gossip: a signed message would name the node that
    // published it — the sender of a descriptor, the recipient of a
    // receipt — to the whole mesh. The payloads verify themselves
    // (descriptor decoding, receipt preimages), and their content is
    // their message id.
    let config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(chapar_wire::MAX_GOSSIP_MESSAGE)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .validate_messages()
        .heartbeat_interval(Duration::from_secs(1))
        .build()?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)?;
    let (params, thresholds) = peer_score();
    gossipsub.with_peer_score(params, thresholds)?;
    Ok(gossipsub)
}

fn relay_server(peer: PeerId, limits: RelayLimits) -> relay::Behaviour {
    let config = relay::Config {
        max_circuit_duration: limits
            .max_circuit_duration
            .min(Duration::from_secs(u64::from(u32::MAX))),
        max_circuit_bytes: limits.max_circuit_bytes,
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_reservations: limits.max_reservations,
        reservation_duration: limits.reservation_duration,
        ..Default::default()
    };
    let mut server = relay::Behaviour::new(peer, config);
    // Without this the server stays silent until AutoNAT confirms a public
    // address, which a relay on a LAN or behind a port forward never gets.
    server.set_status(Some(relay::Status::Enable));
    server
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        options: Options,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let peer = key.public().to_peer_id();
        let caps = options.caps;
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(caps.total))
            .with_max_established_per_peer(Some(caps.per_peer))
            .with_max_pending_incoming(Some(caps.pending))
            .with_max_pending_outgoing(Some(caps.pending));
        let kad = options.kademlia.then(|| {
            let mut config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config);
            // Relays answer routing queries even before an external address
            // is confirmed: inside a blackout AutoNAT may never confirm one.
            kad.set_mode(Some(kad::Mode::Server));
            kad
        });
        let mdns = if options.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
        } else {
            None
        };
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            identify: Toggle::from((!options.stealth).then(|| {
                identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("chapar/{}", env!("CARGO_PKG_VERSION")))
                        .with_hide_listen_addrs(options.hide_listen_addrs)
                        .with_cache_size(if options.dial_learned_addrs { 100 } else { 0 }),
                )
            })),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(10)),
            ),
            kad: Toggle::from(kad),
            mdns: Toggle::from(mdns),
            gossipsub: gossip()?,
            relay: Toggle::from(options.relay.map(|l| relay_server(peer, l))),
            relay_client,
            dcutr: Toggle::from((!options.stealth).then(|| dcutr::Behaviour::new(peer))),
            autonat_client: Toggle::from(
                (!options.stealth).then(autonat::v2::client::Behaviour::default),
            ),
            autonat_server: Toggle::from(
                (!options.stealth).then(autonat::v2::server::Behaviour::default),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
