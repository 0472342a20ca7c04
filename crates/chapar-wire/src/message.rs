//! Stream messages and gossip payloads, version 1.

use chapar_format::wire::{Reader, Writer};
use chapar_format::{
    AckSecret, BundleId, ChunkId, DecodeError, MAX_CHUNK_SIZE, MAX_DESCRIPTOR_SIZE,
};

/// Most bundles one inventory lists.
pub const MAX_INVENTORY_ENTRIES: usize = 65_536;
/// Most descriptors one sync response carries (the rest follow at the next sync).
pub const MAX_DESCRIPTORS_PER_RESPONSE: usize = 64;
/// Most receipts one sync response carries.
pub const MAX_RECEIPTS: usize = 16_384;
/// Most chunk ids one request names.
pub const MAX_CHUNKS_PER_REQUEST: usize = 256;

/// A message that cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Structurally wrong.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// Over a limit.
    #[error("message of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A count over its limit.
    #[error("{what}: {count} is over the limit of {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A type byte this version does not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A field failed to decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One bundle a node holds, as its inventory reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventoryEntry {
    /// The bundle.
    pub bundle: BundleId,
    /// Every chunk is held.
    pub complete: bool,
    /// Chunks held.
    pub held: u32,
}

/// What a node holds: the compact summary exchanged at every (re)connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Bundles held (fully or partly).
    pub bundles: Vec<InventoryEntry>,
}

/// A receipt: the revealed ack secret of one recipient of a bundle.
#[derive(Debug, Clone)]
pub struct ReceiptMessage {
    /// The bundle.
    pub bundle: BundleId,
    /// The preimage of one of its ack hashes.
    pub secret: AckSecret,
}

impl PartialEq for ReceiptMessage {
    fn eq(&self, other: &Self) -> bool {
        self.bundle == other.bundle && self.secret.expose() == other.secret.expose()
    }
}

impl Eq for ReceiptMessage {}

impl ReceiptMessage {
    /// Encoded size: bundle id and secret.
    pub const LEN: usize = 64;

    /// The gossip payload.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(self.bundle.as_bytes());
        out[32..].copy_from_slice(self.secret.expose());
        out
    }

    /// Decodes a gossip payload (exactly 64 bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != Self::LEN {
            return Err(WireError::Malformed("a receipt is exactly 64 bytes"));
        }
        let mut r = Reader::new(bytes, "receipt");
        let bundle = BundleId(r.array()?);
        let secret = AckSecret::from_bytes(r.array()?);
        Ok(Self { bundle, secret })
    }
}

/// The responder's half of an inventory sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResponse {
    /// What the responder holds.
    pub inventory: Inventory,
    /// Descriptors of bundles the initiator did not list (canonical bytes).
    pub descriptors: Vec<Vec<u8>>,
    /// Receipts for bundles the initiator listed.
    pub receipts: Vec<ReceiptMessage>,
}

/// A framed stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sync, initiator → responder: what the initiator holds.
    SyncRequest(Inventory),
    /// Sync, responder → initiator.
    SyncResponse(SyncResponse),
    /// Chunks, requester → server: send these.
    ChunkRequest(Vec<ChunkId>),
    /// Chunks, server → requester: one chunk (unverified until checked).
    ChunkData {
        /// The id it is sent under.
        id: ChunkId,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Chunks, server → requester: not held here.
    ChunkMissing(ChunkId),
}

const SYNC_REQUEST: u8 = 1;
const SYNC_RESPONSE: u8 = 2;
const CHUNK_REQUEST: u8 = 3;
const CHUNK_DATA: u8 = 4;
const CHUNK_MISSING: u8 = 5;

impl Message {
    /// How many leading bytes of a frame [`Message::decode_split`] wants
    /// apart: the kind, and for chunk data the chunk's id.
    pub const SPLIT_HEAD: usize = 1 + 32;

    /// Decodes a frame read in two parts: its first bytes (at most
    /// [`Message::SPLIT_HEAD`]) and the rest. Chunk data keeps `rest` as
    /// the chunk's bytes, neither moved nor copied (a chunk is most of
    /// what crosses). Anything else is decoded as [`Message::decode`]
    /// would the whole.
    pub fn decode_split(head: &[u8], rest: Vec<u8>) -> Result<Self, WireError> {
        if head.len() == Self::SPLIT_HEAD && head[0] == CHUNK_DATA {
            if rest.is_empty() || rest.len() > MAX_CHUNK_SIZE as usize {
                return Err(WireError::Malformed("chunk size out of bounds"));
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&head[1..]);
            return Ok(Message::ChunkData {
                id: ChunkId(id),
                bytes: rest,
            });
        }
        let mut frame = Vec::with_capacity(head.len() + rest.len());
        frame.extend_from_slice(head);
        frame.extend_from_slice(&rest);
        Self::decode(&frame)
    }

    /// The frame header and fixed fields of a chunk of `size` bytes; the
    /// chunk's bytes follow it on the wire, so a sender can write them from
    /// where they are.
    pub fn chunk_data_header(id: &ChunkId, size: usize) -> [u8; 4 + 1 + 32] {
        let mut out = [0u8; 37];
        out[..4].copy_from_slice(&((1 + 32 + size) as u32).to_be_bytes());
        out[4] = CHUNK_DATA;
        out[5..].copy_from_slice(id.as_bytes());
        out
    }

    /// Largest frame on the sync protocol.
    /// (Holds a full inventory, 64 descriptors and 16,384 receipts: 4.45 MB.)
    pub const MAX_SYNC_FRAME: usize = 6 * 1024 * 1024;
    /// Largest frame on the chunk protocol (a whole chunk).
    pub const MAX_CHUNK_FRAME: usize = 1 + 32 + MAX_CHUNK_SIZE as usize;

    /// The frame: length, type and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::plain();
        w.u32(0);
        match self {
            Message::SyncRequest(inv) => {
                w.u8(SYNC_REQUEST);
                encode_inventory(&mut w, inv);
            }
            Message::SyncResponse(resp) => {
                w.u8(SYNC_RESPONSE);
                encode_inventory(&mut w, &resp.inventory);
                w.u16(resp.descriptors.len() as u16);
                for d in &resp.descriptors {
                    w.u16(d.len() as u16).bytes(d);
                }
                w.u32(resp.receipts.len() as u32);
                for r in &resp.receipts {
                    w.bytes(&r.encode());
                }
            }
            Message::ChunkRequest(ids) => {
                w.u8(CHUNK_REQUEST).u16(ids.len() as u16);
                for id in ids {
                    w.bytes(id.as_bytes());
                }
            }
            Message::ChunkData { id, bytes } => {
                w.u8(CHUNK_DATA).bytes(id.as_bytes()).bytes(bytes);
            }
            Message::ChunkMissing(id) => {
                w.u8(CHUNK_MISSING).bytes(id.as_bytes());
            }
        }
        let len = (w.buf.len() - 4) as u32;
        w.buf[..4].copy_from_slice(&len.to_be_bytes());
        w.buf
    }

    /// Decodes a frame's contents (type and body, after the length).
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        let (&kind, body) = frame
            .split_first()
            .ok_or(WireError::Malformed("empty frame"))?;
        let mut r = Reader::new(body, "message");
        let msg = match kind {
            SYNC_REQUEST => Message::SyncRequest(decode_inventory(&mut r)?),
            SYNC_RESPONSE => {
                let inventory = decode_inventory(&mut r)?;
                let n = bounded(r.u16()?.into(), MAX_DESCRIPTORS_PER_RESPONSE, "descriptors")?;
                let mut descriptors = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = usize::from(r.u16()?);
                    if len > MAX_DESCRIPTOR_SIZE {
                        return Err(WireError::TooLarge {
                            size: len,
                            max: MAX_DESCRIPTOR_SIZE,
                        });
                    }
                    descriptors.push(r.bytes(len)?.to_vec());
                }
                let n = bounded(r.u32()? as usize, MAX_RECEIPTS, "receipts")?;
                let mut receipts = Vec::with_capacity(n);
                for _ in 0..n {
                    receipts.push(ReceiptMessage::decode(r.bytes(ReceiptMessage::LEN)?)?);
                }
                Message::SyncResponse(SyncResponse {
                    inventory,
                    descriptors,
                    receipts,
                })
            }
            CHUNK_REQUEST => {
                let n = bounded(r.u16()?.into(), MAX_CHUNKS_PER_REQUEST, "chunk ids")?;
                if n == 0 {
                    return Err(WireError::Malformed("a chunk request names no chunk"));
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(ChunkId(r.array()?));
                }
                Message::ChunkRequest(ids)
            }
            CHUNK_DATA => {
                let id = ChunkId(r.array()?);
                let bytes = r.bytes(body.len() - 32)?.to_vec();
                if bytes.is_empty() || bytes.len() > MAX_CHUNK_SIZE as usize {
                    return Err(WireError::Malformed("chunk size out of bounds"));
                }
                Message::ChunkData { id, bytes }
            }
            CHUNK_MISSING => Message::ChunkMissing(ChunkId(r.array()?)),
            other => return Err(WireError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn bounded(count: usize, max: usize, what: &'static str) -> Result<usize, WireError> {
    if count > max {
        return Err(WireError::TooMany { what, count, max });
    }
    Ok(count)
}

fn encode_inventory(w: &mut Writer, inv: &Inventory) {
    w.u32(inv.bundles.len() as u32);
    for e in &inv.bundles {
        w.bytes(e.bundle.as_bytes())
            .u8(u8::from(e.complete))
            .u32(e.held);
    }
}

fn decode_inventory(r: &mut Reader<'_>) -> Result<Inventory, WireError> {
    let n = bounded(
        r.u32()? as usize,
        MAX_INVENTORY_ENTRIES,
        "inventory entries",
    )?;
    let mut bundles = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let bundle = BundleId(r.array()?);
        let complete = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Malformed("inventory flag is not 0 or 1")),
        };
        bundles.push(InventoryEntry {
            bundle,
            complete,
            held: r.u32()?,
        });
    }
    Ok(Inventory { bundles })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip; and no proper prefix of the body decodes, except for
    /// chunk data, whose body is "the rest of the frame" (the frame length
    /// bounds it, and the chunk id catches any cut).
    fn round_trip(m: Message) {
        let frame = m.encode();
        let prefix_free = !matches!(m, Message::ChunkData { .. });
        let len = crate::frame_length(frame[..4].try_into().expect("4 bytes"), usize::MAX)
            .expect("length");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(Message::decode(&frame[4..]).expect("decodes"), m);
        let body = &frame[4..];
        for cut in 0..body.len() {
            // Chunk data needs only its type byte, id and one byte.
            if prefix_free || cut < 34 {
                assert!(
                    Message::decode(&body[..cut]).is_err(),
                    "{m:?}: prefix {cut} decoded"
                );
            }
        }
    }

    #[test]
    fn every_message_round_trips_and_no_prefix_decodes() {
        let inv = Inventory {
            bundles: vec![InventoryEntry {
                bundle: BundleId([1; 32]),
                complete: true,
                held: 77,
            }],
        };
        round_trip(Message::SyncRequest(inv.clone()));
        round_trip(Message::SyncResponse(SyncResponse {
            inventory: inv,
            descriptors: vec![vec![9; 300], vec![8; 2]],
            receipts: vec![ReceiptMessage {
                bundle: BundleId([2; 32]),
                secret: AckSecret::from_bytes([3; 32]),
            }],
        }));
        round_trip(Message::ChunkRequest(vec![
            ChunkId([4; 32]),
            ChunkId([5; 32]),
        ]));
        round_trip(Message::ChunkData {
            id: ChunkId([6; 32]),
            bytes: vec![1, 2, 3],
        });
        round_trip(Message::ChunkMissing(ChunkId([7; 32])));
    }

    #[test]
    fn split_decoding_and_the_split_chunk_header_match_the_plain_forms() {
        let split = |body: &[u8]| {
            let lead = body.len().min(Message::SPLIT_HEAD);
            Message::decode_split(&body[..lead], body[lead..].to_vec())
        };
        let m = Message::ChunkData {
            id: ChunkId([7; 32]),
            bytes: vec![1, 2, 3, 4],
        };
        let frame = m.encode();
        assert_eq!(split(&frame[4..]).expect("decodes"), m);
        let header = Message::chunk_data_header(&ChunkId([7; 32]), 4);
        assert_eq!(&frame[..37], &header[..]);
        assert!(split(&[CHUNK_DATA; 33]).is_err(), "empty chunk");
        let request = Message::ChunkMissing(ChunkId([1; 32]));
        assert_eq!(split(&request.encode()[4..]).expect("decodes"), request);
        let truncated = [CHUNK_DATA, 1, 2];
        assert!(split(&truncated).is_err() && Message::decode(&truncated).is_err());
    }

    #[test]
    fn counts_are_bounded_before_allocation() {
        let mut frame = vec![SYNC_REQUEST];
        frame.extend(u32::MAX.to_be_bytes());
        assert!(matches!(
            Message::decode(&frame),
            Err(WireError::TooMany { .. })
        ));
        let mut frame = vec![CHUNK_REQUEST];
        frame.extend(1000u16.to_be_bytes());
        assert!(matches!(
            Message::decode(&frame),
            Err(WireError::TooMany { .. })
        ));
        assert!(matches!(
            Message::decode(&[99]),
            Err(WireError::UnknownType(99))
        ));
        assert!(crate::frame_length([0xff; 4], Message::MAX_SYNC_FRAME).is_err());
        assert!(crate::frame_length([0; 4], 10).is_err());
    }

    #[test]
    fn receipt_gossip_is_exactly_64_bytes() {
        let r = ReceiptMessage {
            bundle: BundleId([1; 32]),
            secret: AckSecret::from_bytes([2; 32]),
        };
        assert_eq!(ReceiptMessage::decode(&r.encode()).expect("decodes"), r);
        assert!(ReceiptMessage::decode(&[0; 63]).is_err());
        assert!(ReceiptMessage::decode(&[0; 65]).is_err());
    }
}
