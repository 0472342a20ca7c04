//! The links a censor sees.
//!
//! A censor that filters with DPI and probes servers can single out plain
//! libp2p by its first bytes (`/multistream/1.0.0`, `/noise`), by QUIC's
//! `libp2p` ALPN, and by answering a probe. This crate gives a node links
//! that show none of that:
//!
//! - [`camouflage`]: HTTPS with a decoy website; a WebSocket behind a
//!   secret path carries libp2p's usual upgrade inside TLS.
//! - [`pt`]: Tor's pluggable transports (obfs4 and others) as managed
//!   proxies, spoken to by the Pluggable Transport specification.
//! - [`probe`]: a censor's active probes, to check a relay with.
//! - [`share`]: the one string a relay hands out for each such listener,
//!   and the multiaddrs they stand for inside the node.
//!
//! Each transport is a libp2p [`Transport`](libp2p::core::Transport) that
//! claims only its own multiaddr forms; [`upgraded`] adds Noise and Yamux
//! so that it plugs into a `SwarmBuilder` with `with_other_transport`.
//! What each shows a censor, and what is known to block it, is in
//! `docs/SECURITY.md`, "What a censor sees".
#![forbid(unsafe_code)]

mod addr;
pub mod camouflage;
pub mod probe;
pub mod pt;
pub mod share;
mod tls;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::{identity, noise, yamux, PeerId};

pub use addr::is_hidden_transport;
pub use share::{parse_peer_addr, ShareAddr, ShareError};

/// `transport` with libp2p's usual upgrade on top (multistream, Noise,
/// Yamux), ready for `SwarmBuilder::with_other_transport`.
pub fn upgraded<T>(
    transport: T,
    key: &identity::Keypair,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    Ok(transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key).map_err(Box::new)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}
