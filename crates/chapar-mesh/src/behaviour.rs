//! The libp2p behaviours a Chapar node runs, combined.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, gossipsub, identify, identity, ping};

/// Protocol version announced by identify.
pub const IDENTIFY_PROTOCOL: &str = "/chapar/id/1";

/// Everything a node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Connection caps (total and per peer).
    pub limits: connection_limits::Behaviour,
    /// Who the peer is and where it listens.
    pub identify: identify::Behaviour,
    /// Liveness; failures close the connection (the swarm loop does that).
    pub ping: ping::Behaviour,
    /// Descriptor and receipt gossip.
    pub gossipsub: gossipsub::Behaviour,
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
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        Self {
            total: 256,
            per_peer: 2,
        }
    }
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        caps: ConnectionCaps,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        // Anonymous gossip: a signed message would name the node that
        // published it — the sender of a descriptor, the recipient of a
        // receipt — to the whole mesh. The payloads verify themselves
        // (descriptor decoding, receipt preimages), and their content is
        // their message id.
        let gossip_config = gossipsub::ConfigBuilder::default()
            .max_transmit_size(chapar_wire::MAX_GOSSIP_MESSAGE)
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .validate_messages()
            .heartbeat_interval(Duration::from_secs(1))
            .build()?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)?;
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(caps.total))
            .with_max_established_per_peer(Some(caps.per_peer));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(10)),
            ),
            gossipsub,
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
