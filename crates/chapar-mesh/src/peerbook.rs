//! The peer book record: where a peer was last reached, so a restarted
//! node redials the relays it knew. Pure encoding; the store keeps the
//! bytes under the peer id.
//!
//! Version 1: `01`, last seen (u64 Unix seconds), address count (u8, at
//! most [`MAX_ADDRS`]), then each address as a u16 length and the
//! multiaddr's binary form (at most [`MAX_ADDR_LEN`] bytes).

use chapar_format::wire::{Reader, Writer};
use libp2p::Multiaddr;

/// Addresses kept per peer.
pub const MAX_ADDRS: usize = 8;
/// Longest address kept (a relayed address with two peer ids is ~150 B).
pub const MAX_ADDR_LEN: usize = 512;
const VERSION: u8 = 1;

/// One peer's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// When it was last connected (Unix seconds).
    pub last_seen: u64,
    /// Where it was reached, best first.
    pub addrs: Vec<Multiaddr>,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
#[error("peer book record is corrupt or from an unknown version")]
pub struct BadRecord;

impl PeerRecord {
    /// Encodes the record (extra or oversized addresses are left out).
    pub fn encode(&self) -> Vec<u8> {
        let addrs: Vec<Vec<u8>> = self
            .addrs
            .iter()
            .map(|a| a.to_vec())
            .filter(|b| b.len() <= MAX_ADDR_LEN)
            .take(MAX_ADDRS)
            .collect();
        let mut w = Writer::plain();
        w.u8(VERSION).u64(self.last_seen).u8(addrs.len() as u8);
        for a in &addrs {
            w.u16(a.len() as u16).bytes(a);
        }
        w.buf
    }

    /// Decodes a record, refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadRecord> {
        let mut r = Reader::new(bytes, "peer record");
        let version = r.u8().map_err(|_| BadRecord)?;
        if version != VERSION {
            return Err(BadRecord);
        }
        let last_seen = r.u64().map_err(|_| BadRecord)?;
        let count = usize::from(r.u8().map_err(|_| BadRecord)?);
        if count > MAX_ADDRS {
            return Err(BadRecord);
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u16().map_err(|_| BadRecord)?);
            if len > MAX_ADDR_LEN {
                return Err(BadRecord);
            }
            let raw = r.bytes(len).map_err(|_| BadRecord)?;
            addrs.push(Multiaddr::try_from(raw.to_vec()).map_err(|_| BadRecord)?);
        }
        r.finish().map_err(|_| BadRecord)?;
        Ok(Self { last_seen, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let record = PeerRecord {
            last_seen: 1_800_000_000,
            addrs: vec![
                "/ip4/10.0.0.1/tcp/4001".parse().expect("addr"),
                "/ip4/10.0.0.1/udp/4001/quic-v1".parse().expect("addr"),
            ],
        };
        let bytes = record.encode();
        assert_eq!(PeerRecord::decode(&bytes).expect("decodes"), record);
        for cut in 0..bytes.len() {
            assert!(PeerRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(PeerRecord::decode(&trailing).is_err());
        let mut version = bytes;
        version[0] = 2;
        assert!(PeerRecord::decode(&version).is_err());
        assert!(PeerRecord::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 200]).is_err());
    }

    #[test]
    fn keeps_at_most_max_addrs() {
        let record = PeerRecord {
            last_seen: 1,
            addrs: (0..20)
                .map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().expect("addr"))
                .collect(),
        };
        let decoded = PeerRecord::decode(&record.encode()).expect("decodes");
        assert_eq!(decoded.addrs.len(), MAX_ADDRS);
    }
}
