//! The one task that owns the libp2p `Swarm`. Everything else talks to it
//! through a bounded command channel and hears from it through events.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::behaviour::{Behaviour, BehaviourEvent};

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
    Shutdown,
}

/// What the swarm task reports.
#[derive(Debug)]
pub(crate) enum SwarmNews {
    PeerUp(PeerId),
    PeerDown(PeerId),
    Gossip {
        id: MessageId,
        source: PeerId,
        topic: String,
        data: Vec<u8>,
    },
}

/// Redial state of one known peer address.
struct Redial {
    addr: Multiaddr,
    next: Instant,
    backoff: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub(crate) struct SwarmTask {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) news: mpsc::Sender<SwarmNews>,
    /// Peers we were told about and keep coming back to.
    pub(crate) known: Vec<Multiaddr>,
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn jittered(d: Duration) -> Duration {
    // ±25 % so that a crowd of nodes does not redial in lockstep.
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(factor)
}

impl SwarmTask {
    pub(crate) async fn run(mut self) {
        let mut redials: HashMap<PeerId, Redial> = HashMap::new();
        let mut banned: HashMap<PeerId, Instant> = HashMap::new();
        for addr in std::mem::take(&mut self.known) {
            match peer_of(&addr) {
                Some(peer) => {
                    redials.insert(
                        peer,
                        Redial {
                            addr: addr.clone(),
                            next: Instant::now(),
                            backoff: MIN_BACKOFF,
                        },
                    );
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
                    Some(c) => self.on_command(c, &mut redials, &mut banned),
                },
                event = self.swarm.select_next_some() => {
                    self.on_event(event, &mut redials, &banned).await;
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    banned.retain(|_, until| *until > now);
                    for (peer, r) in redials.iter_mut() {
                        if r.next <= now && !self.swarm.is_connected(peer) && !banned.contains_key(peer) {
                            tracing::debug!(%peer, addr = %r.addr, "redialing");
                            let _ = self.swarm.dial(r.addr.clone());
                            r.next = now + jittered(r.backoff);
                            r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
    }

    fn on_command(
        &mut self,
        command: Command,
        redials: &mut HashMap<PeerId, Redial>,
        banned: &mut HashMap<PeerId, Instant>,
    ) {
        match command {
            Command::Dial(addr) => {
                if let Some(peer) = peer_of(&addr) {
                    redials.insert(
                        peer,
                        Redial {
                            addr: addr.clone(),
                            next: Instant::now() + MIN_BACKOFF,
                            backoff: MIN_BACKOFF,
                        },
                    );
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
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Ban { peer, for_how_long } => {
                tracing::warn!(%peer, "cutting off a misbehaving peer");
                banned.insert(peer, Instant::now() + for_how_long);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::ListenAddrs(reply) => {
                let local = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with(Protocol::P2p(local)))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Shutdown => {}
        }
    }

    async fn on_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        redials: &mut HashMap<PeerId, Redial>,
        banned: &HashMap<PeerId, Instant>,
    ) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                tracing::info!(address = %address.with(Protocol::P2p(local)), "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if banned.contains_key(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if let Some(r) = redials.get_mut(&peer_id) {
                    r.backoff = MIN_BACKOFF;
                }
                if num_established.get() == 1 {
                    tracing::info!(%peer_id, "peer connected");
                    let _ = self.news.send(SwarmNews::PeerUp(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::info!(%peer_id, "peer disconnected");
                if let Some(r) = redials.get_mut(&peer_id) {
                    // A link that returns resumes quickly.
                    r.next = Instant::now() + jittered(MIN_BACKOFF);
                }
                let _ = self.news.send(SwarmNews::PeerDown(peer_id)).await;
            }
            // A failed ping does not close a connection by itself; a dead
            // link (timeout) must be closed so the redial can replace it.
            // A peer that does not speak ping is not thereby dead.
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e @ (ping::Failure::Timeout | ping::Failure::Other { .. })),
            })) => {
                tracing::debug!(%peer, error = %e, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) => {
                tracing::debug!(%peer_id, agent = %info.agent_version, "identified");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
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
            _ => {}
        }
    }
}
