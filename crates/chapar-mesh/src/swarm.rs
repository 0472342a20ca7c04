//! The one task that owns the libp2p `Swarm`. Everything else talks to it
//! through a bounded command channel and hears from it through events.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, identify, kad, mdns, ping, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::metrics::NodeStats;

/// Requests to the swarm task.
#[derive(Debug)]
pub(crate) enum Command {
    Dial(Multiaddr),
    Publish {
        topic: &'static str,
        data: Vec<u8>,
    },
    Validate {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    /// Cut a misbehaving peer off and keep it off for a while.
    Ban {
        peer: PeerId,
        for_how_long: Duration,
    },
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Shutdown,
}

/// What the swarm task reports.
#[derive(Debug)]
pub(crate) enum SwarmNews {
    PeerUp(PeerId),
    PeerDown(PeerId),
    /// Where a connected peer can be reached again (for the peer book).
    PeerReachable {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Gossip {
        id: MessageId,
        source: PeerId,
        topic: String,
        data: Vec<u8>,
    },
}

/// Redial state of one known peer.
struct Redial {
    /// Every address it was given at, dialed together: a relay may be
    /// reachable by a share string, a bridge line and a plain address,
    /// and only some of them get through a censor.
    addrs: Vec<Multiaddr>,
    next: Instant,
    backoff: Duration,
    /// Peers we were told to keep are retried at least every minute;
    /// peers remembered from the book back off further.
    max_backoff: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Addresses kept for redialing one peer.
const MAX_REDIAL_ADDRS: usize = 8;
/// Longest wait between redials of a configured peer: a link that comes
/// back (a satellite window opening) is in use again within ~2 s. Dialing
/// a handful of configured peers that often costs next to nothing.
pub(crate) const CONFIGURED_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait between redials of a peer remembered from the book.
pub(crate) const REMEMBERED_MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Gossip score below which a peer is cut off (libp2p's graylist default).
const GRAYLIST: f64 = -80.0;

pub(crate) struct SwarmTask {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) news: mpsc::Sender<SwarmNews>,
    /// Peers to keep coming back to, and how patiently.
    pub(crate) known: Vec<(Multiaddr, Duration)>,
    /// Peers found through Kademlia or mDNS are dialed while fewer than
    /// this many are connected.
    pub(crate) target_peers: usize,
    pub(crate) ban_for: Duration,
    /// Treat listen addresses as external addresses.
    pub(crate) advertise_listen_addrs: bool,
    pub(crate) stats: NodeStats,
    pub(crate) metrics: libp2p::metrics::Metrics,
    /// Listen addresses the scarce link arrives on (`NodeConfig::scarce_listen`).
    pub(crate) scarce_listen: Vec<Multiaddr>,
    /// Told which peers came across the scarce link.
    pub(crate) seeder: std::sync::Arc<std::sync::Mutex<crate::seed::Seeder>>,
}

impl SwarmTask {
    /// A peer that connected through a listen address the scarce link
    /// arrives on is across it, for the super-seeder, from then on (also
    /// when a later connection is one this node dialed).
    fn note_far_side(&self, peer: PeerId, endpoint: &libp2p::core::ConnectedPoint) {
        let libp2p::core::ConnectedPoint::Listener { local_addr, .. } = endpoint else {
            return;
        };
        let bare = |a: &Multiaddr| -> Multiaddr {
            a.iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect()
        };
        if self
            .scarce_listen
            .iter()
            .any(|a| bare(a) == bare(local_addr))
        {
            if let Ok(mut s) = self.seeder.lock() {
                s.on_far_side(peer);
            }
        }
    }
}

/// The peer a multiaddr ends at: the last `/p2p/` (a relayed address
/// names the relay first and the target last).
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

fn add_to_kad(swarm: &mut Swarm<Behaviour>, peer: PeerId, addr: Multiaddr) {
    if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
        kad.add_address(&peer, addr);
    }
}

fn jittered(d: Duration) -> Duration {
    // ±25 % so that a crowd of nodes does not redial in lockstep.
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(factor)
}

impl State {
    /// Keeps redialing `peer`, at `addr` too if it already was at others.
    fn redial_at(&mut self, peer: PeerId, addr: Multiaddr, next: Instant, max_backoff: Duration) {
        let r = self.redials.entry(peer).or_insert_with(|| Redial {
            addrs: Vec::new(),
            next,
            backoff: MIN_BACKOFF,
            max_backoff,
        });
        if !r.addrs.contains(&addr) && r.addrs.len() < MAX_REDIAL_ADDRS {
            r.addrs.push(addr);
        }
        r.next = r.next.min(next);
        r.max_backoff = r.max_backoff.min(max_backoff);
    }
}

#[derive(Default)]
struct State {
    redials: HashMap<PeerId, Redial>,
    banned: HashMap<PeerId, Instant>,
    /// Peers reported up (a banned peer's refused connection never is).
    up: std::collections::HashSet<PeerId>,
    bootstrapped: bool,
}

impl SwarmTask {
    pub(crate) async fn run(mut self) {
        let mut state = State::default();
        for (addr, max_backoff) in std::mem::take(&mut self.known) {
            match peer_of(&addr) {
                Some(peer) => {
                    add_to_kad(&mut self.swarm, peer, addr.clone());
                    state.redial_at(peer, addr, Instant::now(), max_backoff);
                }
                None => {
                    let _ = self.swarm.dial(addr);
                }
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(c) => self.on_command(c, &mut state),
                },
                event = self.swarm.select_next_some() => {
                    self.metrics.record(&event);
                    self.on_event(event, &mut state).await;
                }
                _ = tick.tick() => self.redial(&mut state),
            }
        }
    }

    fn redial(&mut self, state: &mut State) {
        let now = Instant::now();
        state.banned.retain(|_, until| *until > now);
        for (peer, r) in state.redials.iter_mut() {
            if r.next <= now && !self.swarm.is_connected(peer) && !state.banned.contains_key(peer) {
                tracing::debug!(%peer, addrs = ?r.addrs, "redialing");
                let opts = DialOpts::peer_id(*peer)
                    .addresses(r.addrs.clone())
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
                r.next = now + jittered(r.backoff);
                r.backoff = (r.backoff * 2).min(r.max_backoff);
            }
        }
    }

    fn ban(&mut self, peer: PeerId, for_how_long: Duration, state: &mut State) {
        let now = Instant::now();
        // Messages already on their way from a banned peer do not ban it
        // again (nor extend its ban).
        if state.banned.get(&peer).is_some_and(|until| *until > now) {
            return;
        }
        tracing::warn!(%peer, "cutting off a misbehaving peer");
        self.stats.peers_banned.inc();
        state.banned.insert(peer, now + for_how_long);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_command(&mut self, command: Command, state: &mut State) {
        match command {
            Command::Dial(addr) => {
                if let Some(peer) = peer_of(&addr) {
                    let next = Instant::now() + MIN_BACKOFF;
                    state.redial_at(peer, addr.clone(), next, CONFIGURED_MAX_BACKOFF);
                }
                if let Err(e) = self.swarm.dial(addr) {
                    tracing::debug!(error = %e, "dial failed");
                }
            }
            Command::Publish { topic, data } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), data);
                if let Err(e) = result {
                    // No subscribed peer yet is normal: the sync carries it.
                    tracing::debug!(topic, error = %e, "gossip not published");
                }
            }
            Command::Validate {
                id,
                source,
                acceptance,
            } => self.validate(id, source, acceptance, state),
            Command::Ban { peer, for_how_long } => self.ban(peer, for_how_long, state),
            Command::ListenAddrs(reply) => {
                let local = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .filter_map(|a| a.clone().with_p2p(local).ok())
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown => {}
        }
    }

    fn validate(
        &mut self,
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
        state: &mut State,
    ) {
        let rejected = matches!(acceptance, MessageAcceptance::Reject);
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        let _ = gossip.report_message_validation_result(&id, &source, acceptance);
        if !rejected {
            return;
        }
        self.stats.gossip_rejected.inc();
        let score = gossip.peer_score(&source).unwrap_or(0.0);
        tracing::debug!(peer = %source, score, "rejected gossip");
        // Gossipsub only ignores a graylisted peer; we cut it off.
        if score < GRAYLIST {
            self.ban(source, self.ban_for, state);
        }
    }

    async fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>, state: &mut State) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                let relayed = address.iter().any(|p| p == Protocol::P2pCircuit);
                let hidden = chapar_transport::is_hidden_transport(&address);
                if self.advertise_listen_addrs && !relayed && !hidden {
                    // Identify tells every peer these anyway; as external
                    // addresses they also go into relay reservations (which
                    // libp2p refuses without one) and get AutoNAT-tested.
                    // AutoNAT alone would never confirm a LAN or loopback
                    // address, which is what a blackout leaves.
                    self.swarm.add_external_address(address.clone());
                }
                if let Ok(full) = address.with_p2p(local) {
                    tracing::info!(address = %full, "listening");
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if state.banned.contains_key(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if let Some(r) = state.redials.get_mut(&peer_id) {
                    r.backoff = MIN_BACKOFF;
                }
                self.note_far_side(peer_id, &endpoint);
                if endpoint.is_dialer() && !endpoint.is_relayed() {
                    let addr = endpoint.get_remote_address().clone();
                    add_to_kad(&mut self.swarm, peer_id, addr.clone());
                    let _ = self.news.try_send(SwarmNews::PeerReachable {
                        peer: peer_id,
                        addrs: vec![addr],
                    });
                }
                if state.up.insert(peer_id) {
                    tracing::info!(%peer_id, relayed = endpoint.is_relayed(), "peer connected");
                    self.stats.peers_connected.inc();
                    let _ = self.news.send(SwarmNews::PeerUp(peer_id)).await;
                    self.bootstrap_once(state);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if !state.up.remove(&peer_id) {
                    return;
                }
                tracing::info!(%peer_id, "peer disconnected");
                self.stats.peers_connected.dec();
                if let Some(r) = state.redials.get_mut(&peer_id) {
                    // A link that returns resumes quickly.
                    r.next = Instant::now() + jittered(MIN_BACKOFF);
                }
                let _ = self.news.send(SwarmNews::PeerDown(peer_id)).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event, state),
            _ => {}
        }
    }

    fn bootstrap_once(&mut self, state: &mut State) {
        if !state.bootstrapped {
            // Later bootstraps run on Kademlia's own five-minute timer.
            state.bootstrapped = match self.swarm.behaviour_mut().kad.as_mut() {
                Some(kad) => kad.bootstrap().is_ok(),
                None => true,
            };
        }
    }

    /// Dials a peer found by discovery while we have room for more.
    fn consider(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, state: &State) {
        let room = self.swarm.connected_peers().count() < self.target_peers;
        if room
            && peer != *self.swarm.local_peer_id()
            && !self.swarm.is_connected(&peer)
            && !state.banned.contains_key(&peer)
        {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .extend_addresses_through_behaviour()
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent, state: &mut State) {
        match event {
            // A failed ping does not close a connection by itself; a dead
            // link (timeout) must be closed so the redial can replace it.
            // A peer that does not speak ping is not thereby dead.
            BehaviourEvent::Ping(e) => {
                self.metrics.record(&e);
                if let ping::Event {
                    peer,
                    connection,
                    result: Err(err @ (ping::Failure::Timeout | ping::Failure::Other { .. })),
                } = e
                {
                    tracing::debug!(%peer, error = %err, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            }
            BehaviourEvent::Identify(e) => {
                self.metrics.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    self.identified(peer_id, info);
                }
            }
            BehaviourEvent::Kad(e) => {
                self.metrics.record(&e);
                if let kad::Event::RoutingUpdated {
                    peer, addresses, ..
                } = e
                {
                    self.consider(peer, addresses.into_vec(), state);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "found on the local network");
                    add_to_kad(&mut self.swarm, peer, addr.clone());
                    self.consider(peer, vec![addr], state);
                }
            }
            BehaviourEvent::Gossipsub(e) => self.on_gossip(e),
            BehaviourEvent::Relay(e) => {
                self.metrics.record(&e);
                tracing::debug!(event = ?e, "relay server");
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "reachable through a relay");
            }
            BehaviourEvent::Dcutr(e) => {
                self.metrics.record(&e);
                match e.result {
                    Ok(_) => {
                        tracing::info!(peer = %e.remote_peer_id, "direct connection by hole punching")
                    }
                    Err(err) => {
                        tracing::debug!(peer = %e.remote_peer_id, error = %err, "hole punching failed")
                    }
                }
            }
            BehaviourEvent::AutonatClient(autonat::v2::client::Event {
                tested_addr,
                result,
                ..
            }) => match result {
                Ok(()) => tracing::info!(address = %tested_addr, "address confirmed reachable"),
                Err(e) => {
                    tracing::debug!(address = %tested_addr, error = %e, "address not reachable")
                }
            },
            _ => {}
        }
    }

    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        tracing::debug!(%peer, agent = %info.agent_version, "identified");
        let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(|a| !a.iter().any(|p| p == Protocol::P2pCircuit))
            .take(crate::peerbook::MAX_ADDRS)
            .collect();
        if speaks_kad {
            for addr in &addrs {
                add_to_kad(&mut self.swarm, peer, addr.clone());
            }
        }
        if !addrs.is_empty() {
            let _ = self.news.try_send(SwarmNews::PeerReachable { peer, addrs });
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        self.metrics.record(&event);
        if let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        {
            let news = SwarmNews::Gossip {
                id: message_id,
                source: propagation_source,
                topic: message.topic.into_string(),
                data: message.data,
            };
            // Bounded: when validation lags, gossip waits, then the
            // sync carries what was dropped.
            if self.news.try_send(news).is_err() {
                tracing::debug!("gossip validation queue full; message left unvalidated");
            }
        }
    }
}
