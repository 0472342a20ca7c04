//! Share strings: the one line a relay operator hands out for each of its
//! censorship-resistant listeners, and the libp2p addresses they stand for.
//!
//! Two forms (both specified in `docs/PROTOCOL.md`, "Share strings"):
//!
//! - camouflaged HTTPS: `https://HOST[:PORT]/TOKEN[?sni=NAME][&pin=SHA256]#PEER_ID`.
//!   It reads as a web link; the fragment (never sent by a browser) names
//!   the relay's libp2p identity, and `pin` (unpadded base64url of the
//!   SHA-256 of the relay's certificate) replaces certificate authorities
//!   for a self-signed certificate.
//! - a Tor pluggable-transport bridge line:
//!   `TRANSPORT HOST:PORT PEER_ID [KEY=VALUE ...]`, e.g.
//!   `obfs4 192.0.2.7:443 12D3KooW… cert=… iat-mode=0`, as Tor's bridge
//!   lines are, with a libp2p peer id where Tor has a fingerprint.
//!
//! Inside the node each becomes a multiaddr that only this crate's
//! transports dial (see [`ShareAddr::to_multiaddr`]). Parsing is pure:
//! every part is bounded and checked, and an error names the bad part.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use data_encoding::BASE64URL_NOPAD;
use libp2p::multiaddr::{Multiaddr, Protocol};
use libp2p::multihash::Multihash;
use libp2p::PeerId;

/// Multihash code of SHA2-256.
const SHA2_256: u64 = 0x12;
/// Longest share string or bridge line accepted (a QR code holds it easily).
pub const MAX_SHARE_LEN: usize = 1024;
/// Pluggable transports a bridge line may name: the Tor Project's
/// managed proxies that carry an arbitrary TCP stream.
pub const PT_TRANSPORTS: [&str; 5] = ["obfs4", "webtunnel", "snowflake", "meek_lite", "obfs3"];

/// Why a share string, bridge line or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// Longer than [`MAX_SHARE_LEN`].
    #[error("too long ({0} bytes, at most {MAX_SHARE_LEN})")]
    TooLong(usize),
    /// Not a multiaddr, an `https://` share string, or a bridge line.
    #[error("{0:?} is not a multiaddr (/ip4/…), a share string (https://…#PEER_ID) or a bridge line (obfs4 HOST:PORT PEER_ID cert=…)")]
    Unrecognised(String),
    /// One part is malformed; names the part and says why.
    #[error("{part}: {why}")]
    Bad {
        /// Which part (`host`, `port`, `peer id`, `pin`, …).
        part: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

fn bad(part: &'static str, why: impl Into<String>) -> ShareError {
    ShareError::Bad {
        part,
        why: why.into(),
    }
}

/// Where a share string points: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A literal address.
    Ip(IpAddr),
    /// A DNS name (resolved when dialed).
    Dns(String),
}

impl FromStr for Host {
    type Err = ShareError;

    fn from_str(text: &str) -> Result<Self, ShareError> {
        Host::parse(text)
    }
}

impl Host {
    fn parse(text: &str) -> Result<Self, ShareError> {
        if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(Host::Ip(ip));
        }
        let name_ok = !text.is_empty()
            && text.len() <= 253
            && text.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err(bad(
                "host",
                format!("{text:?} is neither an IP address nor a DNS name"),
            ));
        }
        Ok(Host::Dns(text.to_ascii_lowercase()))
    }

    fn protocol(&self) -> Protocol<'static> {
        match self {
            Host::Ip(IpAddr::V4(a)) => Protocol::Ip4(*a),
            Host::Ip(IpAddr::V6(a)) => Protocol::Ip6(*a),
            Host::Dns(name) => Protocol::Dns(Cow::Owned(name.clone())),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(a) => write!(f, "{a}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

/// A camouflaged HTTPS listener as its share string names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsShare {
    /// Where to connect.
    pub host: Host,
    /// TCP port (443 unless the string says otherwise).
    pub port: u16,
    /// The secret path token (without the leading `/`).
    pub token: String,
    /// The TLS server name to send; `None` sends the host's name, or none
    /// for an IP address (as a browser does).
    pub sni: Option<String>,
    /// SHA-256 of the relay's certificate, when it is self-signed.
    pub pin: Option<[u8; 32]>,
    /// The relay's libp2p identity.
    pub peer: PeerId,
}

impl HttpsShare {
    /// The server name the TLS handshake names, if any.
    pub fn server_name(&self) -> Option<String> {
        self.sni.clone().or_else(|| match &self.host {
            Host::Dns(name) => Some(name.clone()),
            Host::Ip(_) => None,
        })
    }
}

/// A pluggable-transport bridge as its bridge line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeLine {
    /// The transport (`obfs4`, …).
    pub transport: String,
    /// The bridge's address.
    pub host: Host,
    /// Its port.
    pub port: u16,
    /// The relay's libp2p identity.
    pub peer: PeerId,
    /// The transport's arguments (`cert`, `iat-mode`, …), in order.
    pub args: Vec<(String, String)>,
}

/// A censorship-resistant address in its shareable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareAddr {
    /// Camouflaged HTTPS.
    Https(HttpsShare),
    /// A pluggable-transport bridge.
    Bridge(BridgeLine),
}

fn parse_port(text: &str) -> Result<u16, ShareError> {
    match text.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad("port", format!("{text:?} is not a port (1-65535)"))),
    }
}

fn parse_peer(text: &str) -> Result<PeerId, ShareError> {
    PeerId::from_str(text).map_err(|_| bad("peer id", format!("{text:?} is not a libp2p peer id")))
}

fn token_ok(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `HOST:PORT`, `[V6]:PORT`, or (when `default` is given) a bare host.
fn split_host_port(text: &str, default: Option<u16>) -> Result<(Host, u16), ShareError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| {
            bad(
                "host",
                format!("{text:?}: an IPv6 address needs its closing ]"),
            )
        })?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (text.to_owned(), None),
        }
    };
    let port = match (port, default) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad("port", format!("{text:?} has no :PORT"))),
    };
    Ok((Host::parse(&host)?, port))
}

fn parse_https(text: &str) -> Result<HttpsShare, ShareError> {
    let rest = &text["https://".len()..];
    let (rest, peer) = rest
        .split_once('#')
        .ok_or_else(|| bad("peer id", "missing: the string must end in #PEER_ID"))?;
    let peer = parse_peer(peer)?;
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let (authority, token) = location
        .split_once('/')
        .ok_or_else(|| bad("token", "missing: the address needs a /TOKEN path"))?;
    if !token_ok(token) {
        return Err(bad(
            "token",
            format!("{token:?} is not 16-64 characters of A-Z a-z 0-9 - _"),
        ));
    }
    let (host, port) = split_host_port(authority, Some(443))?;
    let mut share = HttpsShare {
        host,
        port,
        token: token.to_owned(),
        sni: None,
        pin: None,
        peer,
    };
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad("query", format!("{pair:?} is not KEY=VALUE")))?;
        match key {
            "sni" => {
                let Host::Dns(name) = Host::parse(value)? else {
                    return Err(bad("sni", format!("{value:?} is not a DNS name")));
                };
                share.sni = Some(name);
            }
            "pin" => {
                let bytes = BASE64URL_NOPAD
                    .decode(value.as_bytes())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        bad(
                            "pin",
                            format!("{value:?} is not 43 characters of base64url (a SHA-256)"),
                        )
                    })?;
                share.pin = Some(bytes);
            }
            other => {
                return Err(bad(
                    "query",
                    format!("unknown key {other:?} (known: sni, pin)"),
                ))
            }
        }
    }
    Ok(share)
}

fn arg_ok(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=_.-".contains(&b))
}

fn parse_bridge(text: &str) -> Result<BridgeLine, ShareError> {
    let mut words = text.split_whitespace();
    let transport = words.next().unwrap_or_default();
    if !PT_TRANSPORTS.contains(&transport) {
        return Err(bad(
            "transport",
            format!("{transport:?} is not one of {}", PT_TRANSPORTS.join(", ")),
        ));
    }
    let addr = words.next().ok_or_else(|| {
        bad(
            "address",
            "missing: TRANSPORT HOST:PORT PEER_ID [KEY=VALUE …]",
        )
    })?;
    let (host, port) = split_host_port(addr, None)?;
    let peer = parse_peer(
        words
            .next()
            .ok_or_else(|| bad("peer id", "missing after the address"))?,
    )?;
    let mut args = Vec::new();
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| bad("argument", format!("{word:?} is not KEY=VALUE")))?;
        if !arg_ok(key) || !arg_ok(value) || args.len() >= 16 {
            return Err(bad(
                "argument",
                format!("{word:?} is not a transport argument"),
            ));
        }
        args.push((key.to_owned(), value.to_owned()));
    }
    Ok(BridgeLine {
        transport: transport.to_owned(),
        host,
        port,
        peer,
        args,
    })
}

impl FromStr for ShareAddr {
    type Err = ShareError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() > MAX_SHARE_LEN {
            return Err(ShareError::TooLong(text.len()));
        }
        if text.starts_with("https://") {
            return parse_https(text).map(ShareAddr::Https);
        }
        if text.contains(' ') {
            return parse_bridge(text).map(ShareAddr::Bridge);
        }
        Err(ShareError::Unrecognised(text.to_owned()))
    }
}

impl fmt::Display for ShareAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareAddr::Https(s) => {
                write!(f, "https://{}", s.host)?;
                if s.port != 443 {
                    write!(f, ":{}", s.port)?;
                }
                write!(f, "/{}", s.token)?;
                let mut sep = '?';
                if let Some(sni) = &s.sni {
                    write!(f, "{sep}sni={sni}")?;
                    sep = '&';
                }
                if let Some(pin) = &s.pin {
                    write!(f, "{sep}pin={}", BASE64URL_NOPAD.encode(pin))?;
                }
                write!(f, "#{}", s.peer)
            }
            ShareAddr::Bridge(b) => {
                write!(f, "{} {}:{} {}", b.transport, b.host, b.port, b.peer)?;
                for (k, v) in &b.args {
                    write!(f, " {k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

/// The `http-path` of a bridge's internal multiaddr: `pt:TRANSPORT` then
/// `;KEY=VALUE` for each argument.
fn pt_path(b: &BridgeLine) -> String {
    let mut path = format!("pt:{}", b.transport);
    for (k, v) in &b.args {
        path.push_str(&format!(";{k}={v}"));
    }
    path
}

impl ShareAddr {
    /// The relay's peer id.
    pub fn peer(&self) -> PeerId {
        match self {
            ShareAddr::Https(s) => s.peer,
            ShareAddr::Bridge(b) => b.peer,
        }
    }

    /// The multiaddr the node dials:
    /// `/HOST/tcp/PORT/tls[/sni/NAME][/certhash/…]/http/http-path/TOKEN/p2p/PEER`
    /// for camouflaged HTTPS, `/HOST/tcp/PORT/http-path/pt:TRANSPORT;K=V…/p2p/PEER`
    /// for a bridge.
    pub fn to_multiaddr(&self) -> Multiaddr {
        match self {
            ShareAddr::Https(s) => {
                let mut addr = Multiaddr::empty()
                    .with(s.host.protocol())
                    .with(Protocol::Tcp(s.port))
                    .with(Protocol::Tls);
                if let Some(sni) = &s.sni {
                    addr.push(Protocol::Sni(Cow::Owned(sni.clone())));
                }
                if let Some(pin) = &s.pin {
                    if let Ok(hash) = Multihash::wrap(SHA2_256, pin) {
                        addr.push(Protocol::Certhash(hash));
                    }
                }
                addr.with(Protocol::Http)
                    .with(Protocol::HttpPath(Cow::Owned(s.token.clone())))
                    .with(Protocol::P2p(s.peer))
            }
            ShareAddr::Bridge(b) => Multiaddr::empty()
                .with(b.host.protocol())
                .with(Protocol::Tcp(b.port))
                .with(Protocol::HttpPath(Cow::Owned(pt_path(b))))
                .with(Protocol::P2p(b.peer)),
        }
    }

    /// The share string an internal multiaddr stands for, if it is one of
    /// ours (the inverse of [`ShareAddr::to_multiaddr`]).
    pub fn from_multiaddr(addr: &Multiaddr) -> Option<ShareAddr> {
        let target = crate::addr::Target::parse(addr)?;
        let peer = target.peer?;
        let host = match target.host {
            crate::addr::TargetHost::Ip(ip) => Host::Ip(ip),
            crate::addr::TargetHost::Dns(name) => Host::Dns(name),
        };
        match target.kind {
            crate::addr::Kind::Https { sni, pin, token } => Some(ShareAddr::Https(HttpsShare {
                host,
                port: target.port,
                token: token?,
                sni,
                pin,
                peer,
            })),
            crate::addr::Kind::Pt { transport, args } => Some(ShareAddr::Bridge(BridgeLine {
                transport,
                host,
                port: target.port,
                peer,
                args,
            })),
            crate::addr::Kind::PlainHttp { .. } => None,
        }
    }
}

/// Reads what a user gives as a peer: a multiaddr as it is, or a share
/// string or bridge line turned into the multiaddr it stands for.
pub fn parse_peer_addr(text: &str) -> Result<Multiaddr, ShareError> {
    let trimmed = text.trim();
    if trimmed.starts_with('/') {
        if trimmed.len() > MAX_SHARE_LEN {
            return Err(ShareError::TooLong(trimmed.len()));
        }
        return trimmed
            .parse()
            .map_err(|e| bad("multiaddr", format!("{trimmed:?}: {e}")));
    }
    trimmed.parse::<ShareAddr>().map(|s| s.to_multiaddr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::from_str("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA").expect("peer id")
    }

    #[test]
    fn an_https_share_string_round_trips_through_its_multiaddr() {
        let text = format!(
            "https://relay.example.org/AbCdEfGhIjKlMnOpQrStUv?sni=cdn.example.net&pin={}#{}",
            BASE64URL_NOPAD.encode(&[7u8; 32]),
            peer()
        );
        let share: ShareAddr = text.parse().expect("parses");
        assert_eq!(share.to_string(), text);
        let addr = share.to_multiaddr();
        assert_eq!(ShareAddr::from_multiaddr(&addr), Some(share));
        assert!(addr
            .to_string()
            .starts_with("/dns/relay.example.org/tcp/443/tls/sni/cdn.example.net/certhash/"));
    }

    #[test]
    fn ipv4_ipv6_and_ports_parse() {
        let s: ShareAddr = format!("https://192.0.2.7:8443/AbCdEfGhIjKlMnOpQrStUv#{}", peer())
            .parse()
            .expect("v4");
        let ShareAddr::Https(h) = &s else {
            panic!("https")
        };
        assert_eq!((h.port, h.server_name()), (8443, None));
        let v6: ShareAddr = format!("https://[2001:db8::1]/AbCdEfGhIjKlMnOpQrStUv#{}", peer())
            .parse()
            .expect("v6");
        assert_eq!(
            v6.to_string(),
            format!("https://[2001:db8::1]/AbCdEfGhIjKlMnOpQrStUv#{}", peer())
        );
    }

    #[test]
    fn a_bridge_line_round_trips_through_its_multiaddr() {
        let text = format!("obfs4 192.0.2.7:443 {} cert=abc+/def== iat-mode=0", peer());
        let share: ShareAddr = text.parse().expect("parses");
        assert_eq!(share.to_string(), text);
        let addr = share.to_multiaddr();
        assert_eq!(ShareAddr::from_multiaddr(&addr), Some(share));
    }

    #[test]
    fn each_bad_part_is_named() {
        let p = peer();
        let cases = [
            (format!("https://relay.example.org/short#{p}"), "token"),
            (
                format!("https://relay.example.org:0/AbCdEfGhIjKlMnOpQrStUv#{p}"),
                "port",
            ),
            (
                format!("https://relay.example.org:99999/AbCdEfGhIjKlMnOpQrStUv#{p}"),
                "port",
            ),
            (
                format!("https://bad_host!/AbCdEfGhIjKlMnOpQrStUv#{p}"),
                "host",
            ),
            (
                "https://relay.example.org/AbCdEfGhIjKlMnOpQrStUv#nope".to_owned(),
                "peer id",
            ),
            (
                "https://relay.example.org/AbCdEfGhIjKlMnOpQrStUv".to_owned(),
                "peer id",
            ),
            (
                format!("https://relay.example.org/AbCdEfGhIjKlMnOpQrStUv?pin=xyz#{p}"),
                "pin",
            ),
            (
                format!("https://relay.example.org/AbCdEfGhIjKlMnOpQrStUv?color=red#{p}"),
                "query",
            ),
            (format!("obfs5 192.0.2.7:443 {p} cert=x"), "transport"),
            (format!("obfs4 192.0.2.7 {p} cert=x"), "port"),
            ("obfs4 192.0.2.7:443 notapeer cert=x".to_owned(), "peer id"),
            (format!("obfs4 192.0.2.7:443 {p} cert"), "argument"),
            (format!("obfs4 192.0.2.7:443 {p} cert=a;b"), "argument"),
        ];
        for (text, part) in cases {
            match text.parse::<ShareAddr>() {
                Err(ShareError::Bad { part: got, .. }) => assert_eq!(got, part, "{text}"),
                other => panic!("{text}: expected a bad {part}, got {other:?}"),
            }
        }
        assert!(matches!(
            "hello".parse::<ShareAddr>(),
            Err(ShareError::Unrecognised(_))
        ));
        assert!(matches!(
            "x".repeat(2000).parse::<ShareAddr>(),
            Err(ShareError::TooLong(2000))
        ));
    }

    #[test]
    fn a_peer_may_be_a_multiaddr_a_share_string_or_a_bridge_line() {
        let p = peer();
        let plain = format!("/ip4/127.0.0.1/tcp/4701/p2p/{p}");
        assert_eq!(parse_peer_addr(&plain).expect("plain").to_string(), plain);
        let https = parse_peer_addr(&format!(
            "https://127.0.0.1:8443/AbCdEfGhIjKlMnOpQrStUv#{p}"
        ))
        .expect("https");
        assert_eq!(
            https.to_string(),
            format!("/ip4/127.0.0.1/tcp/8443/tls/http/http-path/AbCdEfGhIjKlMnOpQrStUv/p2p/{p}")
        );
        assert!(parse_peer_addr("/ip4/not-an-ip/tcp/1").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_never_a_panic(text in ".{0,300}") {
            let _ = parse_peer_addr(&text);
        }

        #[test]
        fn near_misses_of_share_strings_never_panic(
            host in "[a-z0-9.:\\[\\]-]{0,40}",
            token in "[A-Za-z0-9_#?&=-]{0,70}",
            tail in ".{0,60}",
        ) {
            let _ = format!("https://{host}/{token}{tail}").parse::<ShareAddr>();
            let _ = format!("obfs4 {host} {token} {tail}").parse::<ShareAddr>();
        }

        #[test]
        fn every_share_string_that_parses_round_trips(port in 1u16.., pin in proptest::option::of(proptest::array::uniform32(0u8..))) {
            let share = ShareAddr::Https(HttpsShare {
                host: Host::Dns("relay.example.org".into()),
                port,
                token: "AbCdEfGhIjKlMnOpQrStUv".into(),
                sni: None,
                pin,
                peer: peer(),
            });
            let again: ShareAddr = share.to_string().parse().expect("parses");
            proptest::prop_assert_eq!(&again, &share);
            proptest::prop_assert_eq!(ShareAddr::from_multiaddr(&share.to_multiaddr()), Some(share));
        }
    }
}
