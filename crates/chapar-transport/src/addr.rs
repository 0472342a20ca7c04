//! The internal multiaddrs this crate's transports claim, read into what
//! they mean. Anything else is left to libp2p's own transports.

use std::net::IpAddr;

use libp2p::multiaddr::{Multiaddr, Protocol};
use libp2p::PeerId;

const SHA2_256: u64 = 0x12;

/// Where to connect (or listen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetHost {
    Ip(IpAddr),
    Dns(String),
}

/// Which of our transports an address is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `/tls[/sni/NAME][/certhash/H]/http[/http-path/TOKEN]`.
    Https {
        sni: Option<String>,
        pin: Option<[u8; 32]>,
        token: Option<String>,
    },
    /// `/http[/http-path/TOKEN]`: the camouflaged listener behind a
    /// reverse proxy that terminates TLS.
    PlainHttp { token: Option<String> },
    /// `/http-path/pt:TRANSPORT;K=V…`: a pluggable-transport bridge.
    Pt {
        transport: String,
        args: Vec<(String, String)>,
    },
}

/// A parsed internal address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub host: TargetHost,
    pub port: u16,
    pub kind: Kind,
    pub peer: Option<PeerId>,
}

fn parse_pt(path: &str) -> Option<Kind> {
    let rest = path.strip_prefix("pt:")?;
    let mut parts = rest.split(';');
    let transport = parts.next()?.to_owned();
    let mut args = Vec::new();
    for part in parts {
        let (k, v) = part.split_once('=')?;
        args.push((k.to_owned(), v.to_owned()));
    }
    Some(Kind::Pt { transport, args })
}

impl Target {
    /// Reads `addr`, or `None` if it is not one of ours.
    pub(crate) fn parse(addr: &Multiaddr) -> Option<Target> {
        let mut it = addr.iter().peekable();
        let host = match it.next()? {
            Protocol::Ip4(a) => TargetHost::Ip(a.into()),
            Protocol::Ip6(a) => TargetHost::Ip(a.into()),
            Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n) => {
                TargetHost::Dns(n.into_owned())
            }
            _ => return None,
        };
        let Protocol::Tcp(port) = it.next()? else {
            return None;
        };
        let kind = match it.next()? {
            Protocol::Tls => {
                let mut sni = None;
                let mut pin = None;
                if let Some(Protocol::Sni(_)) = it.peek() {
                    if let Some(Protocol::Sni(n)) = it.next() {
                        sni = Some(n.into_owned());
                    }
                }
                if let Some(Protocol::Certhash(_)) = it.peek() {
                    if let Some(Protocol::Certhash(h)) = it.next() {
                        if h.code() != SHA2_256 {
                            return None;
                        }
                        pin = Some(<[u8; 32]>::try_from(h.digest()).ok()?);
                    }
                }
                let Protocol::Http = it.next()? else {
                    return None;
                };
                Kind::Https {
                    sni,
                    pin,
                    token: None,
                }
            }
            Protocol::Http => Kind::PlainHttp { token: None },
            Protocol::HttpPath(p) => parse_pt(&p)?,
            _ => return None,
        };
        let kind = match (kind, it.peek()) {
            (Kind::Https { sni, pin, .. }, Some(Protocol::HttpPath(_))) => {
                let Some(Protocol::HttpPath(t)) = it.next() else {
                    return None;
                };
                Kind::Https {
                    sni,
                    pin,
                    token: Some(t.into_owned()),
                }
            }
            (Kind::PlainHttp { .. }, Some(Protocol::HttpPath(_))) => {
                let Some(Protocol::HttpPath(t)) = it.next() else {
                    return None;
                };
                Kind::PlainHttp {
                    token: Some(t.into_owned()),
                }
            }
            (kind, _) => kind,
        };
        let peer = match it.next() {
            None => None,
            Some(Protocol::P2p(p)) => Some(p),
            Some(_) => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Target {
            host,
            port,
            kind,
            peer,
        })
    }
}

/// Whether `addr` is one a censor cannot single out: camouflaged HTTPS
/// or a pluggable-transport bridge. Such addresses are never announced
/// to peers (they would hand a sybil the relay's address for blocking).
pub fn is_hidden_transport(addr: &Multiaddr) -> bool {
    Target::parse(addr).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libp2p_s_own_addresses_are_not_ours() {
        for a in [
            "/ip4/127.0.0.1/tcp/4701",
            "/ip4/127.0.0.1/udp/4701/quic-v1",
            "/ip4/127.0.0.1/tcp/4701/ws",
            "/ip4/127.0.0.1/tcp/4701/tls/ws",
            "/dns/example.org/tcp/443/wss",
            "/ip4/127.0.0.1/tcp/4701/http-path/notapt",
        ] {
            let addr: Multiaddr = a.parse().expect("multiaddr");
            assert!(Target::parse(&addr).is_none(), "{a}");
        }
    }

    #[test]
    fn listen_forms_parse() {
        let tls: Multiaddr = "/ip4/0.0.0.0/tcp/443/tls/http".parse().expect("ma");
        assert!(matches!(
            Target::parse(&tls),
            Some(Target {
                port: 443,
                kind: Kind::Https { token: None, .. },
                ..
            })
        ));
        let plain: Multiaddr = "/ip4/127.0.0.1/tcp/8080/http".parse().expect("ma");
        assert!(matches!(
            Target::parse(&plain),
            Some(Target {
                kind: Kind::PlainHttp { token: None },
                ..
            })
        ));
    }
}
