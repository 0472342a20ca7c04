//! The censor of the scenario test, as pure logic: it sees one raw IPv4
//! packet at a time (as NFQUEUE hands them to `chapar-censor`) and decides
//! whether it passes. No I/O here; the binary does the queueing, the log
//! and the active probes.
//!
//! Rules, per flow (the 5-tuple; both directions are one flow, and once a
//! flow is blocked every later packet of it is dropped both ways):
//! - **signatures**: a payload holding `/multistream/1.0.0`, `/noise` or
//!   `/yamux` (TCP and UDP alike);
//! - **port 4701**: TCP or UDP to or from Chapar's default port;
//! - **QUIC ALPN**: QUIC v1 client Initials whose TLS ClientHello offers
//!   ALPN `libp2p` (the Initial keys follow from the packet itself, RFC 9001
//!   §5.2, so any on-path observer can read the ClientHello). A ClientHello
//!   with a post-quantum key share spans several Initials, in one datagram
//!   or several: the censor gathers their CRYPTO data per flow (bounded)
//!   and judges the flow on the packet that completes the ClientHello;
//! - **fully encrypted traffic** (Wu et al., USENIX Security 2023): the
//!   first client→server data packet of a TCP flow that none of the
//!   paper's exemptions Ex1–Ex5 fits. The Great Firewall was measured to
//!   block only a fraction of such flows (about one in four); this censor
//!   blocks every one, so a test that passes here passes there. The rule
//!   can be switched off.
//!
//! Besides verdicts, the censor reports each newly blocked flow and, once
//! per server address, each server that a TCP flow from the "country"
//! reaches, so the binary can probe it actively.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;

use ring::aead::quic::{HeaderProtectionKey, AES_128};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::hkdf::{self, Prk, Salt, HKDF_SHA256};

/// Payload strings that give libp2p away in the clear.
pub const SIGNATURES: [&str; 3] = ["/multistream/1.0.0", "/noise", "/yamux"];
/// Chapar's default port, blocked outright.
pub const BLOCKED_PORT: u16 = 4701;
/// Flows the censor remembers at most; the oldest is forgotten first.
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
/// Server addresses announced for probing at most (later ones are not).
const MAX_SERVERS: usize = 65_536;
/// Most CRYPTO bytes gathered per UDP flow from QUIC client Initials.
const MAX_CRYPTO: usize = 16 * 1024;
/// Most client Initials of one connection attempt gathered (and most
/// packets read from one datagram); past it, what is there is judged.
const MAX_INITIALS: usize = 8;

// ---------------------------------------------------------------- subnets

/// An IPv4 subnet such as `10.88.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The subnet of `addr` with a `prefix`-bit mask (`None` past 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Self { addr, prefix })
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// `A.B.C.D/N`, or a bare address (a /32).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr = ip.parse().map_err(|_| format!("bad IPv4 address {ip:?}"))?;
        prefix
            .parse()
            .ok()
            .and_then(|p| Self::new(addr, p))
            .ok_or_else(|| format!("bad prefix length {prefix:?}"))
    }
}

// ---------------------------------------------------------------- packets

/// The transport protocols the censor looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One parsed IPv4 TCP or UDP packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// TCP or UDP.
    pub proto: Proto,
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// TCP flags (`tcp_flags`), 0 for UDP.
    pub flags: u8,
    /// Transport payload (bounded by the IP total length).
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// Parses an IPv4 packet carrying TCP or UDP. Anything else (IPv6, other
/// protocols, non-first fragments, truncated or inconsistent headers)
/// gives `None`.
pub fn parse_packet(raw: &[u8]) -> Option<Packet<'_>> {
    let first = *raw.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(be16(raw, 2)?);
    if first >> 4 != 4 || ihl < 20 || total < ihl || total > raw.len() {
        return None;
    }
    if be16(raw, 6)? & 0x1fff != 0 {
        return None; // a later fragment: no transport header
    }
    let proto = match raw.get(9)? {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    let l4 = raw.get(ihl..total)?;
    let (header_len, flags) = match proto {
        Proto::Tcp => (usize::from(*l4.get(12)? >> 4) * 4, *l4.get(13)?),
        Proto::Udp => (8, 0),
    };
    if header_len < 8 {
        return None;
    }
    Some(Packet {
        proto,
        src: SocketAddrV4::new(ipv4_at(raw, 12)?, be16(l4, 0)?),
        dst: SocketAddrV4::new(ipv4_at(raw, 16)?, be16(l4, 2)?),
        flags,
        payload: l4.get(header_len..)?,
    })
}

// ------------------------------------------------ fully encrypted traffic

fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"PUT ",
    b"POST ",
    b"HEAD ",
    b"PATCH ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// Ex1: average set bits per byte at most 3.4 or at least 4.6.
fn ex1_popcount(p: &[u8]) -> bool {
    let bits: u64 = p.iter().map(|b| u64::from(b.count_ones())).sum();
    // Exact in integers: bits/len <= 3.4  <=>  10*bits <= 34*len.
    let len = p.len() as u64;
    bits * 10 <= len * 34 || bits * 10 >= len * 46
}

/// Ex2: the first six bytes are printable.
fn ex2_printable_prefix(p: &[u8]) -> bool {
    p.get(..6).is_some_and(|h| h.iter().all(|&b| printable(b)))
}

/// Ex3: more than half of the bytes are printable.
fn ex3_mostly_printable(p: &[u8]) -> bool {
    p.iter().filter(|&&b| printable(b)).count() * 2 > p.len()
}

/// Ex4: more than 20 contiguous printable bytes.
fn ex4_printable_run(p: &[u8]) -> bool {
    p.split(|&b| !printable(b)).any(|run| run.len() > 20)
}

/// Ex5: looks like TLS or HTTP.
fn ex5_tls_or_http(p: &[u8]) -> bool {
    let tls = matches!(p, [0x16 | 0x17, 0x03, 0x00..=0x04, ..]);
    tls || HTTP_METHODS.iter().any(|m| p.starts_with(m))
}

/// Whether a first client data packet fits one of the exemptions Ex1–Ex5
/// of Wu et al. (so the fully-encrypted rule lets its flow pass).
pub fn fet_exempt(payload: &[u8]) -> bool {
    ex1_popcount(payload)
        || ex2_printable_prefix(payload)
        || ex3_mostly_printable(payload)
        || ex4_printable_run(payload)
        || ex5_tls_or_http(payload)
}

// ------------------------------------------------------------------ QUIC

/// RFC 9001 §5.2: the salt for QUIC v1 Initial secrets.
const INITIAL_SALT: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
const QUIC_V1: u32 = 1;
const FRAME_PADDING: u64 = 0x00;
const FRAME_PING: u64 = 0x01;
const FRAME_ACK: u64 = 0x02;
const FRAME_ACK_ECN: u64 = 0x03;
const FRAME_CRYPTO: u64 = 0x06;
const LONG_INITIAL: u8 = 0;
const LONG_RETRY: u8 = 3;
const EXT_ALPN: u16 = 16;

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(self.bytes(n)?.iter().fold(0, |a, &b| a << 8 | u64::from(b)))
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }
    /// A length-prefixed field with an `n`-byte length.
    fn vec(&mut self, n: usize) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uint(n)?).ok()?;
        self.bytes(len)
    }
    /// A QUIC variable-length integer (RFC 9000 §16).
    fn varint(&mut self) -> Option<u64> {
        let first = *self.buf.get(self.pos)?;
        let len = 1 << (first >> 6);
        Some(self.uint(len)? & (u64::MAX >> (64 - 8 * len + 2)))
    }
    fn varint_usize(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }
}

/// The client's Initial packet protection keys for a destination
/// connection ID (RFC 9001 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialKeys {
    /// AEAD key (AES-128-GCM).
    pub key: [u8; 16],
    /// AEAD IV.
    pub iv: [u8; 12],
    /// Header protection key (AES-128).
    pub hp: [u8; 16],
}

/// Output length for `ring::hkdf`.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// TLS 1.3 HKDF-Expand-Label with an empty context.
fn expand_label(prk: &Prk, label: &[u8], out: &mut [u8]) -> Option<()> {
    let out_len = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

/// Derives the client Initial keys from the destination connection ID.
pub fn client_initial_keys(dcid: &[u8]) -> Option<InitialKeys> {
    let initial = Salt::new(HKDF_SHA256, &INITIAL_SALT).extract(dcid);
    let mut secret = [0; 32];
    expand_label(&initial, b"client in", &mut secret)?;
    let client = Prk::new_less_safe(HKDF_SHA256, &secret);
    let mut keys = InitialKeys {
        key: [0; 16],
        iv: [0; 12],
        hp: [0; 16],
    };
    expand_label(&client, b"quic key", &mut keys.key)?;
    expand_label(&client, b"quic iv", &mut keys.iv)?;
    expand_label(&client, b"quic hp", &mut keys.hp)?;
    Some(keys)
}

/// The header-protection mask for a 16-byte `sample` (RFC 9001 §5.4.3).
pub fn header_protection_mask(hp: &[u8; 16], sample: &[u8]) -> Option<[u8; 5]> {
    HeaderProtectionKey::new(&AES_128, hp)
        .ok()?
        .new_mask(sample)
        .ok()
}

/// The AEAD nonce for packet number `pn` (RFC 9001 §5.3).
fn nonce(iv: &[u8; 12], pn: u64) -> Nonce {
    let mut n = *iv;
    for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
        *b ^= p;
    }
    Nonce::assume_unique_for_key(n)
}

/// Where the parts of a QUIC v1 long-header packet lie (offsets from the
/// packet's first byte).
struct LongHeader<'a> {
    initial: bool,
    dcid: &'a [u8],
    pn_offset: usize,
    end: usize,
}

/// The long header at the start of `d`: an Initial, 0-RTT or Handshake
/// packet (a Retry has no Length and ends the datagram; so does anything
/// that does not parse).
fn long_header(d: &[u8]) -> Option<LongHeader<'_>> {
    let mut r = Reader::new(d);
    let first = r.u8()?;
    let kind = first >> 4 & 0x03;
    // Long header and fixed bit; the low four bits are protected.
    if first & 0xc0 != 0xc0 || kind == LONG_RETRY || r.uint(4)? != u64::from(QUIC_V1) {
        return None;
    }
    let dcid = r.vec(1).filter(|c| c.len() <= 20)?;
    r.vec(1).filter(|c| c.len() <= 20)?; // source connection ID
    if kind == LONG_INITIAL {
        let token_len = r.varint_usize()?;
        r.bytes(token_len)?; // token
    }
    let length = r.varint_usize()?;
    let end = r.pos.checked_add(length).filter(|&e| e <= d.len())?;
    Some(LongHeader {
        initial: kind == LONG_INITIAL,
        dcid,
        pn_offset: r.pos,
        end,
    })
}

/// The long-header packets coalesced in one UDP datagram (RFC 9000
/// §12.2), each with its header, at most `MAX_INITIALS` of them. They end
/// at a short-header packet, at trailing padding or at anything else that
/// does not parse.
fn long_packets(datagram: &[u8]) -> impl Iterator<Item = (LongHeader<'_>, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let h = long_header(rest)?;
        let (packet, tail) = rest.split_at_checked(h.end)?;
        rest = tail;
        Some((h, packet))
    })
    .take(MAX_INITIALS)
}

/// Removes the header protection of `packet`: the clear header (up to and
/// with the packet number) and the packet number (RFC 9001 §5.4).
fn unprotect_header(packet: &[u8], pn_offset: usize, hp: &[u8; 16]) -> Option<(Vec<u8>, u64)> {
    let sample = packet.get(pn_offset + 4..pn_offset + 20)?;
    let mask = header_protection_mask(hp, sample)?;
    let mut header = packet.get(..pn_offset)?.to_vec();
    let first = header.first_mut()?;
    *first ^= mask[0] & 0x0f;
    let pn_len = usize::from(*first & 0x03) + 1;
    let mut pn = 0u64;
    let protected = packet.get(pn_offset..pn_offset + pn_len)?;
    for (&b, &m) in protected.iter().zip(&mask[1..]) {
        header.push(b ^ m);
        pn = pn << 8 | u64::from(b ^ m);
    }
    Some((header, pn))
}

/// Decrypts one client Initial (`packet` holds exactly it, `h` is its
/// header) with the keys of the DCID it carries; its frames.
fn open_initial(packet: &[u8], h: &LongHeader<'_>) -> Option<Vec<u8>> {
    packet.get(h.pn_offset + 20)?; // room for the sample: skip key derivation otherwise
    let keys = client_initial_keys(h.dcid)?;
    let (header, pn) = unprotect_header(packet, h.pn_offset, &keys.hp)?;
    let mut payload = packet.get(header.len()..h.end)?.to_vec();
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &keys.key).ok()?);
    let plain = key
        .open_in_place(nonce(&keys.iv, pn), Aad::from(&header), &mut payload)
        .ok()?;
    Some(plain.to_vec())
}

/// Removes the protection of a QUIC v1 client Initial (the first packet
/// of a datagram) and returns its decrypted frames.
pub fn decrypt_client_initial(datagram: &[u8]) -> Option<Vec<u8>> {
    let (h, packet) = long_packets(datagram).next().filter(|(h, _)| h.initial)?;
    open_initial(packet, &h)
}

/// The CRYPTO frames of a decrypted Initial, as (offset, data). It reads
/// PADDING, PING, ACK and CRYPTO frames and stops at any other.
fn crypto_frames(frames: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut r = Reader::new(frames);
    while let Some(kind) = r.varint() {
        let read = match kind {
            FRAME_PADDING | FRAME_PING => Some(()),
            FRAME_ACK | FRAME_ACK_ECN => skip_ack(&mut r, kind == FRAME_ACK_ECN),
            FRAME_CRYPTO => crypto_frame(&mut r).map(|chunk| out.push(chunk)),
            _ => None,
        };
        if read.is_none() {
            break;
        }
    }
    out
}

fn crypto_frame<'a>(r: &mut Reader<'a>) -> Option<(u64, &'a [u8])> {
    let offset = r.varint()?;
    let len = r.varint_usize()?;
    Some((offset, r.bytes(len)?))
}

/// Skips the body of an ACK frame (RFC 9000 §19.3).
fn skip_ack(r: &mut Reader<'_>, ecn: bool) -> Option<()> {
    r.varint()?; // largest acknowledged
    r.varint()?; // ack delay
    let ranges = r.varint()?;
    r.varint()?; // first range
    for _ in 0..ranges {
        r.varint()?; // gap (each pass consumes bytes, so a huge count ends soon)
        r.varint()?; // range length
    }
    for _ in 0..if ecn { 3 } else { 0 } {
        r.varint()?; // ECT(0), ECT(1), ECN-CE counts
    }
    Some(())
}

/// Reassembles the CRYPTO stream from offset 0 out of a packet's frames
/// (PADDING, PING, ACK and CRYPTO; it stops at any other frame), up to
/// the first gap and at most `MAX_CRYPTO` bytes.
pub fn crypto_stream(frames: &[u8]) -> Vec<u8> {
    let mut buffer = CryptoBuffer::new();
    buffer.add_frames(frames);
    buffer.prefix().to_vec()
}

/// The ALPN protocols a TLS ClientHello handshake message offers (`None`
/// if it is no ClientHello). A ClientHello cut short yields what its
/// complete extensions offer.
pub fn client_hello_alpns(hello: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut r = Reader::new(hello);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.bytes(3 + 2 + 32)?; // length, legacy version, random
    r.vec(1)?; // session id
    r.vec(2)?; // cipher suites
    r.vec(1)?; // compression methods
    r.bytes(2)?; // extensions length (possibly past what we hold)
    let mut alpns = Vec::new();
    while let (Some(kind), Some(data)) = (r.uint(2), r.vec(2)) {
        if kind == u64::from(EXT_ALPN) {
            alpns.extend(alpn_list(data));
        }
    }
    Some(alpns)
}

fn alpn_list(data: &[u8]) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    let mut r = Reader::new(data.get(2..).unwrap_or_default());
    while let Some(name) = r.vec(1) {
        names.push(name.to_vec());
    }
    names
}

fn hello_offers_libp2p(hello: &[u8]) -> bool {
    client_hello_alpns(hello).is_some_and(|alpns| alpns.iter().any(|a| a == b"libp2p"))
}

/// What the CRYPTO data gathered so far shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judgement {
    /// The ClientHello is not complete yet.
    Undecided,
    /// A ClientHello without ALPN `libp2p`, or no ClientHello at all.
    Allow,
    /// A ClientHello offering ALPN `libp2p`.
    Block,
}

/// The CRYPTO data of one connection attempt's client Initials, placed by
/// offset (fragments may come in any order): at most `MAX_CRYPTO` bytes
/// and `MAX_INITIALS` packets.
struct CryptoBuffer {
    data: Vec<u8>,
    /// Which bytes of `data` arrived, one bit each.
    have: [u64; MAX_CRYPTO / 64],
    initials: usize,
}

impl CryptoBuffer {
    fn new() -> Box<Self> {
        Box::new(Self {
            data: Vec::new(),
            have: [0; MAX_CRYPTO / 64],
            initials: 0,
        })
    }

    /// Adds the CRYPTO frames of one decrypted Initial and judges anew.
    fn add_initial(&mut self, frames: &[u8]) -> Judgement {
        self.initials += 1;
        self.add_frames(frames);
        self.judge()
    }

    fn add_frames(&mut self, frames: &[u8]) {
        for (offset, chunk) in crypto_frames(frames) {
            self.insert(offset, chunk);
        }
    }

    /// Places `chunk` at `offset`; what lies past `MAX_CRYPTO` is dropped.
    fn insert(&mut self, offset: u64, chunk: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let end = start.saturating_add(chunk.len()).min(MAX_CRYPTO);
        let Some(src) = end.checked_sub(start).and_then(|n| chunk.get(..n)) else {
            return; // starts past the bound
        };
        let Some(dst) = self.slot(start, end) else {
            return;
        };
        dst.copy_from_slice(src);
        for i in start..end {
            if let Some(word) = self.have.get_mut(i / 64) {
                *word |= 1 << (i % 64);
            }
        }
    }

    /// `data[start..end]`, growing `data` to `end` (never past `MAX_CRYPTO`).
    fn slot(&mut self, start: usize, end: usize) -> Option<&mut [u8]> {
        if start >= end {
            return None;
        }
        if let Some(more) = end.checked_sub(self.data.len()) {
            self.data.reserve_exact(more);
            self.data.resize(end, 0);
        }
        self.data.get_mut(start..end)
    }

    /// The contiguous data from offset 0.
    fn prefix(&self) -> &[u8] {
        let gap = self.have.iter().enumerate().find(|(_, w)| **w != u64::MAX);
        let len = gap.map_or(MAX_CRYPTO, |(i, w)| i * 64 + w.trailing_ones() as usize);
        self.data
            .get(..len.min(self.data.len()))
            .unwrap_or_default()
    }

    /// Undecided until the ClientHello from offset 0 is complete (or fills
    /// the buffer, or `MAX_INITIALS` Initials came without completing it:
    /// then what is there is judged).
    fn judge(&self) -> Judgement {
        let hello = self.prefix();
        let needed = match hello {
            [1, a, b, c, ..] => {
                4 + (usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c))
            }
            [] | [1, ..] => usize::MAX,
            _ => 0, // no ClientHello: judged at once
        };
        if hello.len() < needed.min(MAX_CRYPTO) && self.initials < MAX_INITIALS {
            Judgement::Undecided
        } else if hello_offers_libp2p(hello.get(..needed).unwrap_or(hello)) {
            Judgement::Block
        } else {
            Judgement::Allow
        }
    }
}

/// What a UDP flow's QUIC client Initials showed so far. Initials are
/// decrypted with the keys of the DCID each carries, and gathered per DCID:
/// a client keeps the DCID of its first Initial until the server answers,
/// and a new DCID that decrypts is a new connection attempt (after a Retry,
/// or a new connection between the same ports), which supersedes the last.
#[derive(Default)]
enum QuicState {
    /// No client Initial yet.
    #[default]
    Fresh,
    /// Gathering the CRYPTO data of the Initials sent with this DCID.
    Gathering(Vec<u8>, Box<CryptoBuffer>),
    /// The ClientHello sent with this DCID was judged: nothing more to
    /// gather for it.
    Judged(Vec<u8>),
}

impl QuicState {
    /// Reads one UDP payload (all its coalesced packets); whether it
    /// completes a ClientHello that offers ALPN `libp2p`.
    fn observe(&mut self, datagram: &[u8]) -> bool {
        long_packets(datagram)
            .any(|(h, packet)| self.observe_packet(&h, packet) == Judgement::Block)
    }

    fn observe_packet(&mut self, h: &LongHeader<'_>, packet: &[u8]) -> Judgement {
        if !h.initial || matches!(self, QuicState::Judged(d) if d == h.dcid) {
            return Judgement::Undecided;
        }
        let Some(frames) = open_initial(packet, h) else {
            return Judgement::Undecided;
        };
        if !matches!(self, QuicState::Gathering(d, _) if d == h.dcid) {
            *self = QuicState::Gathering(h.dcid.to_vec(), CryptoBuffer::new());
        }
        let QuicState::Gathering(_, buffer) = self else {
            return Judgement::Undecided;
        };
        let judgement = buffer.add_initial(&frames);
        if judgement != Judgement::Undecided {
            *self = QuicState::Judged(h.dcid.to_vec()); // frees the buffer
        }
        judgement
    }

    /// Bytes held for CRYPTO data.
    fn buffered(&self) -> usize {
        match self {
            QuicState::Gathering(_, buffer) => buffer.data.capacity(),
            _ => 0,
        }
    }
}

/// Whether a UDP payload's client Initials (coalesced ones included) hold
/// a complete TLS ClientHello that offers ALPN `libp2p`. The censor keeps
/// state per flow instead, for ClientHellos spread over several datagrams.
pub fn quic_offers_libp2p(datagram: &[u8]) -> bool {
    QuicState::default().observe(datagram)
}

// ------------------------------------------------------------ the censor

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// Drop it.
    Drop,
}

/// The rule that blocked a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The payload held one of `SIGNATURES`.
    Signature(&'static str),
    /// TCP or UDP to or from port 4701.
    Port4701,
    /// A QUIC Initial offered ALPN `libp2p`.
    QuicAlpnLibp2p,
    /// The first client data packet looked fully encrypted.
    FullyEncrypted,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Signature(s) => write!(f, "signature:{s}"),
            Rule::Port4701 => f.write_str("port-4701"),
            Rule::QuicAlpnLibp2p => f.write_str("quic-alpn-libp2p"),
            Rule::FullyEncrypted => f.write_str("fully-encrypted"),
        }
    }
}

/// A flow, oriented from the side that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// TCP or UDP.
    pub proto: Proto,
    /// The side that opened the flow (sent the SYN, or the first packet).
    pub client: SocketAddrV4,
    /// The other side.
    pub server: SocketAddrV4,
}

impl fmt::Display for Flow {
    /// `10.0.0.2:5555->10.0.1.1:443`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.client, self.server)
    }
}

/// Something worth recording that a packet revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A flow was blocked for good.
    Blocked {
        /// The flow.
        flow: Flow,
        /// The rule that fired.
        rule: Rule,
    },
    /// A TCP flow from the country reached this server for the first time.
    NewServer(SocketAddr),
}

/// The verdict on one packet and what it revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Accept or drop.
    pub verdict: Verdict,
    /// New events (usually none).
    pub events: Vec<Event>,
}

/// A flow's key: the same for both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey(Proto, SocketAddrV4, SocketAddrV4);

impl FlowKey {
    fn of(p: &Packet<'_>) -> Self {
        Self(p.proto, p.src.min(p.dst), p.src.max(p.dst))
    }
}

struct FlowState {
    flow: Flow,
    blocked: Option<Rule>,
    client_data_seen: bool,
    quic: QuicState,
}

/// The censor's state: remembered flows and announced servers.
pub struct Censor {
    country: Option<Ipv4Net>,
    fully_encrypted_rule: bool,
    max_flows: usize,
    flows: HashMap<FlowKey, FlowState>,
    order: VecDeque<FlowKey>,
    servers: HashSet<SocketAddrV4>,
}

impl Censor {
    /// A censor that announces servers reached from `country` (none if
    /// `None`) and applies the fully-encrypted rule if asked to.
    pub fn new(country: Option<Ipv4Net>, fully_encrypted_rule: bool) -> Self {
        Self {
            country,
            fully_encrypted_rule,
            max_flows: DEFAULT_MAX_FLOWS,
            flows: HashMap::new(),
            order: VecDeque::new(),
            servers: HashSet::new(),
        }
    }

    /// Remembers at most `n` flows (at least 1) instead of 65,536.
    pub fn with_max_flows(mut self, n: usize) -> Self {
        self.max_flows = n.max(1);
        self
    }

    /// How many flows are remembered now.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// How many bytes the censor holds for QUIC CRYPTO data now, over all
    /// flows (at most 16 KiB per flow that has not been judged yet).
    pub fn buffered_crypto_bytes(&self) -> usize {
        self.flows.values().map(|s| s.quic.buffered()).sum()
    }

    /// Decides one raw IPv4 packet. Packets it cannot parse pass.
    pub fn decide(&mut self, raw: &[u8]) -> Decision {
        let mut events = Vec::new();
        let verdict = match parse_packet(raw) {
            Some(p) => self.decide_packet(&p, &mut events),
            None => Verdict::Accept,
        };
        Decision { verdict, events }
    }

    fn decide_packet(&mut self, p: &Packet<'_>, events: &mut Vec<Event>) -> Verdict {
        let fet = self.fully_encrypted_rule;
        let state = self.flow_state(p, events);
        if state.blocked.is_some() {
            return Verdict::Drop;
        }
        match classify(p, state, fet) {
            Some(rule) => {
                state.blocked = Some(rule);
                events.push(Event::Blocked {
                    flow: state.flow,
                    rule,
                });
                Verdict::Drop
            }
            None => Verdict::Accept,
        }
    }

    fn flow_state(&mut self, p: &Packet<'_>, events: &mut Vec<Event>) -> &mut FlowState {
        let key = FlowKey::of(p);
        if !self.flows.contains_key(&key) {
            let flow = orient(p);
            self.announce(&flow, events);
            self.remember(key, flow);
        }
        self.flows
            .entry(key)
            .or_insert_with(|| new_state(orient(p)))
    }

    fn remember(&mut self, key: FlowKey, flow: Flow) {
        while self.flows.len() >= self.max_flows {
            match self.order.pop_front() {
                Some(old) => self.flows.remove(&old),
                None => break,
            };
        }
        self.order.push_back(key);
        self.flows.insert(key, new_state(flow));
    }

    fn announce(&mut self, flow: &Flow, events: &mut Vec<Event>) {
        let from_country = self
            .country
            .is_some_and(|c| c.contains(*flow.client.ip()) && !c.contains(*flow.server.ip()));
        if flow.proto == Proto::Tcp
            && from_country
            && self.servers.len() < MAX_SERVERS
            && self.servers.insert(flow.server)
        {
            events.push(Event::NewServer(SocketAddr::V4(flow.server)));
        }
    }
}

fn new_state(flow: Flow) -> FlowState {
    FlowState {
        flow,
        blocked: None,
        client_data_seen: false,
        quic: QuicState::Fresh,
    }
}

/// Who opened the flow: the SYN's sender (the SYN-ACK's receiver), else
/// whoever sent the first packet seen.
fn orient(p: &Packet<'_>) -> Flow {
    let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
    let (client, server) = if p.proto == Proto::Tcp && p.flags & syn_ack == syn_ack {
        (p.dst, p.src)
    } else {
        (p.src, p.dst)
    };
    Flow {
        proto: p.proto,
        client,
        server,
    }
}

/// The rule a packet of a still open flow breaks, if any.
fn classify(p: &Packet<'_>, state: &mut FlowState, fet: bool) -> Option<Rule> {
    let first_client_data = p.proto == Proto::Tcp
        && !p.payload.is_empty()
        && p.src == state.flow.client
        && !std::mem::replace(&mut state.client_data_seen, true);
    if p.src.port() == BLOCKED_PORT || p.dst.port() == BLOCKED_PORT {
        return Some(Rule::Port4701);
    }
    if let Some(sig) = SIGNATURES
        .into_iter()
        .find(|s| contains(p.payload, s.as_bytes()))
    {
        return Some(Rule::Signature(sig));
    }
    if p.proto == Proto::Udp && state.quic.observe(p.payload) {
        return Some(Rule::QuicAlpnLibp2p);
    }
    if fet && first_client_data && !fet_exempt(p.payload) {
        return Some(Rule::FullyEncrypted);
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 88, 1, 2), 40000);
    const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 88, 2, 2), 443);

    fn country() -> Ipv4Net {
        "10.88.1.0/24".parse().expect("subnet")
    }

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).expect("hex")
    }

    /// An IPv4 packet (checksums left zero: the censor does not check them).
    fn ip(proto: Proto, src: SocketAddrV4, dst: SocketAddrV4, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend(src.port().to_be_bytes());
        l4.extend(dst.port().to_be_bytes());
        match proto {
            Proto::Tcp => l4.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]),
            Proto::Udp => l4.extend(
                ((8 + data.len()) as u16)
                    .to_be_bytes()
                    .into_iter()
                    .chain([0, 0]),
            ),
        }
        l4.extend(data);
        let total = (20 + l4.len()) as u16;
        let proto_num = if proto == Proto::Tcp { 6 } else { 17 };
        let mut p = vec![0x45, 0];
        p.extend(total.to_be_bytes());
        p.extend([0, 0, 0x40, 0, 64, proto_num, 0, 0]);
        p.extend(src.ip().octets());
        p.extend(dst.ip().octets());
        p.extend(l4);
        p
    }

    fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, data: &[u8]) -> Vec<u8> {
        ip(Proto::Tcp, src, dst, flags, data)
    }

    fn udp(src: SocketAddrV4, dst: SocketAddrV4, data: &[u8]) -> Vec<u8> {
        ip(Proto::Udp, src, dst, 0, data)
    }

    const PA: u8 = tcp_flags::PSH | tcp_flags::ACK;

    /// A handshake, then `first` from the client; the verdict on `first`.
    fn open_and_send(c: &mut Censor, first: &[u8]) -> Decision {
        c.decide(&tcp(CLIENT, SERVER, tcp_flags::SYN, &[]));
        c.decide(&tcp(SERVER, CLIENT, tcp_flags::SYN | tcp_flags::ACK, &[]));
        c.decide(&tcp(CLIENT, SERVER, tcp_flags::ACK, &[]));
        c.decide(&tcp(CLIENT, SERVER, PA, first))
    }

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn packets_parse_to_their_addresses_ports_and_payload() {
        let raw = tcp(CLIENT, SERVER, PA, b"hello");
        let p = parse_packet(&raw).expect("parses");
        assert_eq!(
            (p.proto, p.src, p.dst, p.flags),
            (Proto::Tcp, CLIENT, SERVER, PA)
        );
        assert_eq!(p.payload, b"hello");
        let raw = udp(CLIENT, SERVER, b"dns?");
        let p = parse_packet(&raw).expect("parses");
        assert_eq!((p.proto, p.payload), (Proto::Udp, &b"dns?"[..]));
    }

    #[test]
    fn truncated_and_foreign_packets_do_not_parse() {
        let raw = tcp(CLIENT, SERVER, PA, b"hello");
        for n in 0..raw.len() {
            assert_eq!(parse_packet(&raw[..n]), None, "cut at {n}");
        }
        let mut v6 = raw.clone();
        v6[0] = 0x65;
        assert_eq!(parse_packet(&v6), None);
        let mut icmp = raw.clone();
        icmp[9] = 1;
        assert_eq!(parse_packet(&icmp), None);
        let mut fragment = raw;
        fragment[7] = 8;
        assert_eq!(parse_packet(&fragment), None);
    }

    #[test]
    fn subnets_parse_and_contain_their_addresses() {
        let c = country();
        assert!(c.contains(Ipv4Addr::new(10, 88, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 88, 2, 2)));
        assert!("0.0.0.0/0"
            .parse::<Ipv4Net>()
            .expect("any")
            .contains(Ipv4Addr::BROADCAST));
        assert!("10.0.0.1"
            .parse::<Ipv4Net>()
            .expect("host")
            .contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0/8".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn a_flow_that_speaks_multistream_is_blocked_both_ways() {
        let mut c = Censor::new(Some(country()), true);
        let d = open_and_send(&mut c, b"\x13/multistream/1.0.0\n");
        assert_eq!(d.verdict, Verdict::Drop);
        let flow = Flow {
            proto: Proto::Tcp,
            client: CLIENT,
            server: SERVER,
        };
        let rule = Rule::Signature("/multistream/1.0.0");
        assert_eq!(d.events, vec![Event::Blocked { flow, rule }]);
        assert_eq!(rule.to_string(), "signature:/multistream/1.0.0");
        assert_eq!(flow.to_string(), "10.88.1.2:40000->10.88.2.2:443");
        for (s, d) in [(SERVER, CLIENT), (CLIENT, SERVER)] {
            let later = c.decide(&tcp(s, d, PA, b"GET / HTTP/1.1\r\n"));
            assert_eq!(later.verdict, Verdict::Drop);
            assert!(later.events.is_empty(), "blocked once, reported once");
        }
    }

    #[test]
    fn noise_and_yamux_in_any_later_packet_block_the_flow() {
        for sig in ["/noise", "/yamux"] {
            let mut c = Censor::new(None, true);
            assert_eq!(
                open_and_send(&mut c, b"GET / HTTP/1.1\r\n").verdict,
                Verdict::Accept
            );
            let mut data = b"\x07".to_vec();
            data.extend(sig.as_bytes());
            let d = c.decide(&tcp(SERVER, CLIENT, PA, &data));
            assert_eq!(d.verdict, Verdict::Drop);
            assert!(
                matches!(d.events[..], [Event::Blocked { rule: Rule::Signature(s), .. }] if s == sig)
            );
        }
    }

    #[test]
    fn port_4701_is_blocked_for_tcp_and_udp_either_way() {
        let relay = SocketAddrV4::new(*SERVER.ip(), BLOCKED_PORT);
        let mut c = Censor::new(None, false);
        let syn = c.decide(&tcp(CLIENT, relay, tcp_flags::SYN, &[]));
        assert_eq!(syn.verdict, Verdict::Drop);
        assert!(matches!(
            syn.events[..],
            [Event::Blocked {
                rule: Rule::Port4701,
                ..
            }]
        ));
        assert_eq!(c.decide(&udp(relay, CLIENT, b"x")).verdict, Verdict::Drop);
        assert_eq!(Rule::Port4701.to_string(), "port-4701");
    }

    #[test]
    fn random_bytes_are_blocked_as_fully_encrypted_but_tls_and_http_pass() {
        for seed in 1..50 {
            let mut random = noise(seed, 1024);
            random[0] = 0x00; // not printable: keeps Ex2 and Ex5 out of chance's reach
            let mut c = Censor::new(None, true);
            let d = open_and_send(&mut c, &random);
            assert_eq!(d.verdict, Verdict::Drop, "seed {seed}");
            assert!(matches!(
                d.events[..],
                [Event::Blocked {
                    rule: Rule::FullyEncrypted,
                    ..
                }]
            ));
            assert_eq!(
                c.decide(&tcp(SERVER, CLIENT, PA, b"ok")).verdict,
                Verdict::Drop
            );
        }
        let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        tls.extend(noise(7, 512));
        let http = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        for first in [&tls[..], &http[..]] {
            let mut c = Censor::new(None, true);
            assert_eq!(open_and_send(&mut c, first).verdict, Verdict::Accept);
        }
    }

    #[test]
    fn only_the_first_client_data_packet_is_judged_for_fully_encrypted() {
        let mut c = Censor::new(None, true);
        assert_eq!(
            open_and_send(&mut c, b"GET / HTTP/1.1\r\n").verdict,
            Verdict::Accept
        );
        let random = noise(3, 1024);
        assert_eq!(
            c.decide(&tcp(CLIENT, SERVER, PA, &random)).verdict,
            Verdict::Accept
        );
        assert_eq!(
            c.decide(&tcp(SERVER, CLIENT, PA, &random)).verdict,
            Verdict::Accept
        );
    }

    #[test]
    fn the_fully_encrypted_rule_can_be_switched_off() {
        let mut c = Censor::new(None, false);
        assert_eq!(
            open_and_send(&mut c, &noise(5, 1024)).verdict,
            Verdict::Accept
        );
    }

    #[test]
    fn each_exemption_of_wu_et_al_lets_a_first_packet_pass() {
        let random = noise(11, 400);
        let mut low_popcount = random.clone();
        low_popcount.iter_mut().step_by(2).for_each(|b| *b &= 0x11);
        assert!(ex1_popcount(&low_popcount) && !ex1_popcount(&random));
        assert!(ex1_popcount(&[0xff; 100]) && ex1_popcount(&[0; 100]));
        assert!(ex2_printable_prefix(b"SSH-2.\xff\xfe") && !ex2_printable_prefix(b"SSH-\x01"));
        assert!(ex3_mostly_printable(b"abc\xff") && !ex3_mostly_printable(b"ab\xff\xfe"));
        let mut run = random.clone();
        run[100..121].copy_from_slice(&[b'a'; 21]);
        assert!(ex4_printable_run(&run) && !ex4_printable_run(&[b'a'; 20]));
        assert!(ex5_tls_or_http(b"\x17\x03\x03\x00") && ex5_tls_or_http(b"POST /x"));
        assert!(!ex5_tls_or_http(b"\x16\x03\x05") && !ex5_tls_or_http(b"GETX"));
        assert!(!fet_exempt(&random) && fet_exempt(&low_popcount) && fet_exempt(&run));
    }

    #[test]
    fn new_servers_reached_from_the_country_are_announced_once() {
        let mut c = Censor::new(Some(country()), true);
        let d = c.decide(&tcp(CLIENT, SERVER, tcp_flags::SYN, &[]));
        assert_eq!(d.events, vec![Event::NewServer(SocketAddr::V4(SERVER))]);
        let other = SocketAddrV4::new(*CLIENT.ip(), 40001);
        assert!(c
            .decide(&tcp(other, SERVER, tcp_flags::SYN, &[]))
            .events
            .is_empty());
        // Not from the country, or inside it, or UDP: no probe.
        let outside = SocketAddrV4::new(Ipv4Addr::new(10, 88, 2, 9), 5000);
        let neighbour = SocketAddrV4::new(Ipv4Addr::new(10, 88, 1, 9), 80);
        assert!(c
            .decide(&tcp(outside, CLIENT, tcp_flags::SYN, &[]))
            .events
            .is_empty());
        assert!(c
            .decide(&tcp(CLIENT, neighbour, tcp_flags::SYN, &[]))
            .events
            .is_empty());
        let quic = SocketAddrV4::new(*SERVER.ip(), 8443);
        assert!(c.decide(&udp(CLIENT, quic, b"x")).events.is_empty());
    }

    #[test]
    fn a_syn_ack_seen_first_still_orients_the_flow_from_the_client() {
        let mut c = Censor::new(Some(country()), true);
        let d = c.decide(&tcp(SERVER, CLIENT, tcp_flags::SYN | tcp_flags::ACK, &[]));
        assert_eq!(d.events, vec![Event::NewServer(SocketAddr::V4(SERVER))]);
        assert_eq!(
            c.decide(&tcp(CLIENT, SERVER, PA, &noise(9, 600))).verdict,
            Verdict::Drop
        );
    }

    #[test]
    fn the_flow_table_is_bounded_and_forgets_the_oldest_flow() {
        let mut c = Censor::new(None, true).with_max_flows(4);
        assert_eq!(
            open_and_send(&mut c, b"\x13/multistream/1.0.0\n").verdict,
            Verdict::Drop
        );
        for port in 1..=10 {
            let client = SocketAddrV4::new(*CLIENT.ip(), port);
            c.decide(&tcp(client, SERVER, tcp_flags::SYN, &[]));
            assert!(c.flow_count() <= 4);
        }
        // The blocked flow has been forgotten: it is judged afresh.
        assert_eq!(
            c.decide(&tcp(CLIENT, SERVER, PA, b"GET / HTTP/1.1\r\n"))
                .verdict,
            Verdict::Accept
        );
    }

    // ---------------------------------------------------------- QUIC

    #[test]
    fn initial_keys_match_rfc_9001_appendix_a() {
        let keys = client_initial_keys(&hex("8394c8f03e515708")).expect("keys");
        assert_eq!(keys.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(keys.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(keys.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    }

    #[test]
    fn header_protection_matches_rfc_9001_appendix_a() {
        // A.2: sample d1b1c98dd7689fb8ec11d242b123dc9b gives mask 437b9aec36,
        // turning the header c3…0000449e00000002 into c0…0000449e7b9aec34.
        let keys = client_initial_keys(&hex("8394c8f03e515708")).expect("keys");
        let mask = header_protection_mask(&keys.hp, &hex("d1b1c98dd7689fb8ec11d242b123dc9b"));
        assert_eq!(mask.expect("mask").to_vec(), hex("437b9aec36"));
    }

    /// A TLS ClientHello handshake message offering `alpns`.
    fn client_hello(alpns: &[&[u8]]) -> Vec<u8> {
        client_hello_padded(alpns, 0)
    }

    /// A ClientHello offering `alpns` with, if `key_share` is not 0, a
    /// key_share extension of that many bytes before its ALPN extension
    /// (as a post-quantum key share makes it: too big for one Initial).
    fn client_hello_padded(alpns: &[&[u8]], key_share: usize) -> Vec<u8> {
        let mut list = Vec::new();
        for a in alpns {
            list.push(a.len() as u8);
            list.extend(*a);
        }
        let mut alpn = (list.len() as u16).to_be_bytes().to_vec();
        alpn.extend(list);
        let mut exts = Vec::new();
        // server_name "example.com", then ALPN, then supported_versions.
        exts.extend(hex("0000 0010 000e 00 000b 6578616d706c652e636f6d"));
        if key_share > 0 {
            exts.extend([0x00, 0x33]);
            exts.extend((key_share as u16).to_be_bytes());
            exts.extend(noise(key_share as u64, key_share));
        }
        exts.extend(EXT_ALPN.to_be_bytes());
        exts.extend((alpn.len() as u16).to_be_bytes());
        exts.extend(alpn);
        exts.extend(hex("002b 0003 02 0304"));
        let mut body = vec![0x03, 0x03];
        body.extend([0x5a; 32]); // random
        body.extend(hex("00 0006 130113021303 01 00"));
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// A QUIC v1 client Initial carrying `frames`, padded to 1200 bytes and
    /// protected as RFC 9001 §5 says.
    fn client_initial(dcid: &[u8], pn: u32, frames: &[u8]) -> Vec<u8> {
        let keys = client_initial_keys(dcid).expect("keys");
        let mut payload = frames.to_vec();
        let mut header = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
        header.extend(dcid);
        header.extend([0, 0]); // no source connection ID, no token
        let pn_offset = header.len() + 2;
        payload.resize(1200 - pn_offset - 4 - 16, 0); // PADDING frames
        let length = (4 + payload.len() + 16) as u16 | 0x4000;
        header.extend(length.to_be_bytes());
        header.extend(pn.to_be_bytes());
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &keys.key).expect("key"));
        key.seal_in_place_append_tag(nonce(&keys.iv, pn.into()), Aad::from(&header), &mut payload)
            .expect("seal");
        let mut packet = header;
        packet.extend(payload);
        let mask = header_protection_mask(&keys.hp, &packet[pn_offset + 4..pn_offset + 20]);
        let mask = mask.expect("mask");
        packet[0] ^= mask[0] & 0x0f;
        for i in 0..4 {
            packet[pn_offset + i] ^= mask[1 + i];
        }
        packet
    }

    fn crypto(offset: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06, offset];
        f.extend((data.len() as u16 | 0x4000).to_be_bytes());
        f.extend(data);
        f
    }

    #[test]
    fn a_protected_initial_decrypts_to_its_client_hello() {
        let hello = client_hello(&[b"h3"]);
        let packet = client_initial(&hex("8394c8f03e515708"), 2, &crypto(0, &hello));
        assert_eq!(packet.len(), 1200);
        let frames = decrypt_client_initial(&packet).expect("decrypts");
        assert_eq!(crypto_stream(&frames), hello);
        assert_eq!(client_hello_alpns(&hello), Some(vec![b"h3".to_vec()]));
        let mut tampered = packet;
        tampered[600] ^= 1;
        assert_eq!(decrypt_client_initial(&tampered), None);
    }

    #[test]
    fn a_quic_initial_offering_libp2p_is_blocked() {
        let hello = client_hello(&[b"libp2p"]);
        let packet = client_initial(&noise(1, 8), 0, &crypto(0, &hello));
        assert!(quic_offers_libp2p(&packet));
        let mut c = Censor::new(Some(country()), true);
        let quic = SocketAddrV4::new(*SERVER.ip(), 9000);
        let d = c.decide(&udp(CLIENT, quic, &packet));
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(matches!(
            d.events[..],
            [Event::Blocked {
                rule: Rule::QuicAlpnLibp2p,
                ..
            }]
        ));
        assert_eq!(
            c.decide(&udp(quic, CLIENT, b"reply")).verdict,
            Verdict::Drop
        );
        assert_eq!(Rule::QuicAlpnLibp2p.to_string(), "quic-alpn-libp2p");
    }

    #[test]
    fn a_client_hello_split_out_of_order_with_ping_and_padding_is_reassembled() {
        let hello = client_hello(&[b"h3", b"libp2p"]);
        let (a, b) = hello.split_at(40);
        let mut frames = vec![0x01, 0x00, 0x00]; // PING, PADDING
        frames.extend(crypto(40, b));
        frames.extend([0x00, 0x01]);
        frames.extend(crypto(0, a));
        let packet = client_initial(&noise(2, 20), 1, &frames);
        assert!(quic_offers_libp2p(&packet));
    }

    #[test]
    fn a_quic_initial_offering_only_h3_passes() {
        let packet = client_initial(&noise(4, 8), 0, &crypto(0, &client_hello(&[b"h3"])));
        let mut c = Censor::new(None, true);
        let quic = SocketAddrV4::new(*SERVER.ip(), 443);
        assert_eq!(
            c.decide(&udp(CLIENT, quic, &packet)).verdict,
            Verdict::Accept
        );
    }

    /// A CRYPTO frame with an 8-byte offset.
    fn crypto_at(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        f.extend((offset | 0xc0 << 56).to_be_bytes());
        f.extend((data.len() as u16 | 0x4000).to_be_bytes());
        f.extend(data);
        f
    }

    const QUIC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 88, 2, 2), 9000);

    /// A ClientHello offering `alpns`, too big for one Initial, split over
    /// two Initials sent to `dcid` (its ALPN extension in the second).
    fn split_hello(alpns: &[&[u8]], dcid: &[u8]) -> [Vec<u8>; 2] {
        let hello = client_hello_padded(alpns, 1300);
        assert!(hello.len() > 1200, "{} bytes fit one Initial", hello.len());
        let (a, b) = hello.split_at(900);
        [
            client_initial(dcid, 0, &crypto_at(0, a)),
            client_initial(dcid, 1, &crypto_at(900, b)),
        ]
    }

    fn accepted() -> Decision {
        Decision {
            verdict: Verdict::Accept,
            events: Vec::new(),
        }
    }

    fn assert_blocked_as_quic(d: &Decision) {
        let flow = Flow {
            proto: Proto::Udp,
            client: CLIENT,
            server: QUIC,
        };
        let rule = Rule::QuicAlpnLibp2p;
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(d.events, vec![Event::Blocked { flow, rule }]);
    }

    #[test]
    fn a_client_hello_split_over_two_initials_is_blocked_on_the_second() {
        let [first, second] = split_hello(&[b"libp2p"], &noise(21, 8));
        assert!(!quic_offers_libp2p(&first) && !quic_offers_libp2p(&second));
        let mut c = Censor::new(Some(country()), true);
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &first)), accepted());
        assert!(c.buffered_crypto_bytes() > 0);
        assert_blocked_as_quic(&c.decide(&udp(CLIENT, QUIC, &second)));
        assert_eq!(c.buffered_crypto_bytes(), 0);
        let reply = c.decide(&udp(QUIC, CLIENT, b"reply"));
        assert_eq!(reply.verdict, Verdict::Drop);
        assert!(reply.events.is_empty(), "blocked once, reported once");
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &first)).verdict, Verdict::Drop);
    }

    #[test]
    fn a_split_client_hello_coalesced_in_one_datagram_is_blocked() {
        let [first, second] = split_hello(&[b"h3", b"libp2p"], &noise(22, 20));
        for mut datagram in [
            [&first[..], &second[..]].concat(),
            [&second[..], &first[..]].concat(),
        ] {
            datagram.extend([0; 40]); // padding after the packets
            assert!(quic_offers_libp2p(&datagram));
            let mut c = Censor::new(None, true);
            assert_blocked_as_quic(&c.decide(&udp(CLIENT, QUIC, &datagram)));
            assert_eq!(c.buffered_crypto_bytes(), 0);
        }
    }

    #[test]
    fn a_split_client_hello_arriving_in_reverse_order_is_blocked() {
        let [first, second] = split_hello(&[b"libp2p"], &noise(23, 8));
        let mut c = Censor::new(None, true);
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &second)), accepted());
        assert_blocked_as_quic(&c.decide(&udp(CLIENT, QUIC, &first)));
    }

    #[test]
    fn an_h3_only_split_client_hello_passes_and_stops_buffering() {
        let [first, second] = split_hello(&[b"h3"], &noise(24, 8));
        let mut c = Censor::new(None, true);
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &first)), accepted());
        assert!(c.buffered_crypto_bytes() > 0);
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &second)), accepted());
        assert_eq!(c.buffered_crypto_bytes(), 0);
        // Retransmissions of the judged ClientHello are not gathered again.
        for packet in [&first, &second] {
            assert_eq!(c.decide(&udp(CLIENT, QUIC, packet)), accepted());
            assert_eq!(c.buffered_crypto_bytes(), 0);
        }
    }

    #[test]
    fn initials_with_another_dcid_are_another_connection_attempt() {
        let (a, b) = (noise(25, 8), noise(26, 8));
        let [a_first, _] = split_hello(&[b"libp2p"], &a);
        let [b_first, b_second] = split_hello(&[b"libp2p"], &b);
        let mut c = Censor::new(None, true);
        // Halves of two attempts do not make one ClientHello...
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &a_first)), accepted());
        assert_eq!(c.decide(&udp(CLIENT, QUIC, &b_second)), accepted());
        // ...but the second attempt, once complete, is judged.
        assert_blocked_as_quic(&c.decide(&udp(CLIENT, QUIC, &b_first)));
    }

    #[test]
    fn the_per_flow_crypto_buffer_is_bounded() {
        let dcid = noise(27, 8);
        let mut c = Censor::new(None, true);
        let mut peak = 0;
        for pn in 0..20u32 {
            // A ClientHello claiming 16 MiB, then fragments past the bound
            // with gaps between them: it never completes.
            let data = match pn {
                0 => [&[1, 0xff, 0xff, 0xff][..], &noise(1, 1000)].concat(),
                _ => noise(u64::from(pn), 1100),
            };
            let offset = [0, 1 << 60].get(pn as usize).copied();
            let offset = offset.unwrap_or(u64::from(pn) * 2700);
            let packet = client_initial(&dcid, pn, &crypto_at(offset, &data));
            assert_eq!(c.decide(&udp(CLIENT, QUIC, &packet)), accepted());
            assert!(c.buffered_crypto_bytes() <= MAX_CRYPTO);
            peak = peak.max(c.buffered_crypto_bytes());
        }
        assert_eq!(peak, MAX_CRYPTO, "the bound was reached");
        assert_eq!(c.buffered_crypto_bytes(), 0, "given up after MAX_INITIALS");
    }

    #[test]
    fn a_client_hello_larger_than_the_buffer_is_judged_when_it_fills() {
        let mut hello = client_hello(&[b"libp2p"]);
        hello[1..4].copy_from_slice(&[0x01, 0, 0]); // claims 64 KiB
        let mut b = CryptoBuffer::new();
        b.insert(0, &hello);
        assert_eq!(b.judge(), Judgement::Undecided);
        b.insert(MAX_CRYPTO as u64 - 10, &[0; 100]); // straddles the end
        b.insert(u64::MAX, b"far away");
        b.insert(hello.len() as u64, &vec![0; MAX_CRYPTO]);
        assert_eq!(b.prefix().len(), MAX_CRYPTO);
        assert_eq!(b.data.capacity(), MAX_CRYPTO);
        assert_eq!(b.judge(), Judgement::Block);
    }

    #[test]
    fn ack_frames_in_an_initial_are_skipped() {
        let hello = client_hello(&[b"libp2p"]);
        // ACK (largest 5, delay 0, one more range, first 1, gap 0, len 1),
        // then ACK_ECN (with three counts), then the CRYPTO frame.
        let mut frames = vec![0x02, 5, 0, 1, 1, 0, 1, 0x03, 2, 0, 0, 0, 7, 8, 9];
        frames.extend(crypto(0, &hello));
        assert_eq!(crypto_stream(&frames), hello);
        assert!(quic_offers_libp2p(&client_initial(&[9; 8], 3, &frames)));
    }

    #[test]
    fn garbage_packets_never_panic() {
        let mut c = Censor::new(Some(country()), true).with_max_flows(64);
        let valid = udp(
            CLIENT,
            SERVER,
            &client_initial(&[1; 8], 0, &crypto(0, &client_hello(&[b"libp2p"]))),
        );
        for seed in 1..3000u64 {
            let n = (seed % 1500) as usize;
            let mut raw = noise(seed, n);
            c.decide(&raw);
            // Valid headers with a corrupted body reach deeper parsers.
            let mut deep = valid.clone();
            let at = (seed as usize * 7) % deep.len();
            deep[at] ^= raw.first().copied().unwrap_or(1) | 1;
            deep.truncate((seed as usize * 13) % (deep.len() + 1));
            c.decide(&deep);
            raw.truncate(n / 2);
            let _ = crypto_stream(&raw);
            let _ = client_hello_alpns(&raw);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut c = Censor::new(Some(country()), true);
            c.decide(&raw);
            let _ = decrypt_client_initial(&raw);
            let _ = crypto_stream(&raw);
            let _ = client_hello_alpns(&raw);
        }

        #[test]
        fn arbitrary_payloads_behind_valid_headers_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..1500),
            tcp_port in any::<u16>(),
        ) {
            let mut c = Censor::new(Some(country()), true);
            let dst = SocketAddrV4::new(*SERVER.ip(), tcp_port);
            c.decide(&tcp(CLIENT, dst, PA, &data));
            let mut quic = vec![0xc0, 0, 0, 0, 1];
            quic.extend(&data);
            c.decide(&udp(CLIENT, dst, &quic));
        }
    }
}
