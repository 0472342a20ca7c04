//! Rebuilds an erasure-coded stream from whatever chunks are at hand:
//! every chunk is verified against its id, and a missing or corrupt data
//! chunk is rebuilt from its stripe's parity.

use std::io::{self, Read};

use crate::descriptor::Descriptor;
use crate::erasure::rebuild_stripe;
use crate::error::{Part, RebuildError, StripeLoss};
use crate::id::ChunkId;
use crate::index;
use crate::layout::{Layout, Slot};

/// Where chunks come from: a bundle folder, a store, memory in tests.
pub trait ChunkSource {
    /// The bytes stored under `id`, unverified, or `None` if absent. Must
    /// not return more than `max_len` bytes (a longer chunk is corrupt;
    /// returning `Some` with more lets the caller say so).
    fn get(&self, id: &ChunkId, max_len: usize) -> io::Result<Option<Vec<u8>>>;

    /// [`ChunkSource::get`] into `buffer` (its contents discarded), so a
    /// reader can reuse one allocation for every chunk: a fresh 1 MiB
    /// buffer is a fresh mapping, faulted in page by page as it fills.
    fn get_into(
        &self,
        id: &ChunkId,
        max_len: usize,
        buffer: Vec<u8>,
    ) -> io::Result<Option<Vec<u8>>> {
        drop(buffer);
        self.get(id, max_len)
    }

    /// Whether a chunk is present (not whether it is intact).
    fn contains(&self, id: &ChunkId) -> io::Result<bool>;
}

impl<T: ChunkSource + ?Sized> ChunkSource for &T {
    fn get(&self, id: &ChunkId, max_len: usize) -> io::Result<Option<Vec<u8>>> {
        (**self).get(id, max_len)
    }

    fn get_into(
        &self,
        id: &ChunkId,
        max_len: usize,
        buffer: Vec<u8>,
    ) -> io::Result<Option<Vec<u8>>> {
        (**self).get_into(id, max_len, buffer)
    }

    fn contains(&self, id: &ChunkId) -> io::Result<bool> {
        (**self).contains(id)
    }
}

/// What was wrong with a chunk that had to be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Not present.
    Missing,
    /// Present, but its bytes do not hash to its id.
    Corrupt,
}

/// A chunk rebuilt from parity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Payload or index.
    pub part: Part,
    /// The chunk's id.
    pub chunk: ChunkId,
    /// What was wrong with it.
    pub damage: Damage,
}

/// Counts, per stripe, the chunks that are absent, and returns the stripes
/// that lost more than parity can replace. Cheap: it does not read chunks.
pub fn scan<S: ChunkSource>(
    layout: &Layout,
    ids: &[ChunkId],
    part: Part,
    source: &S,
) -> Result<Vec<StripeLoss>, RebuildError> {
    let per = layout.data_per_stripe() + layout.parity_per_stripe();
    let mut losses = Vec::new();
    for stripe in 0..layout.stripes() {
        let start = stripe * per;
        let end =
            (start + layout.stripe_data(stripe).len() + layout.parity_per_stripe()).min(ids.len());
        let mut lost = 0;
        for id in &ids[start..end] {
            let present = source
                .contains(id)
                .map_err(|source| RebuildError::Source { chunk: *id, source })?;
            lost += usize::from(!present);
        }
        if lost > layout.parity_per_stripe() {
            losses.push(StripeLoss {
                part,
                stripe,
                lost,
                parity: layout.parity_per_stripe(),
            });
        }
    }
    Ok(losses)
}

/// Reads a verified chunk, or says why it cannot be used.
fn fetch_verified<S: ChunkSource>(
    source: &S,
    id: &ChunkId,
    len: usize,
    buffer: Vec<u8>,
) -> Result<Result<Vec<u8>, Damage>, RebuildError> {
    match source.get_into(id, len, buffer) {
        Ok(Some(bytes)) if bytes.len() == len && id.matches(&bytes) => Ok(Ok(bytes)),
        Ok(Some(_)) => Ok(Err(Damage::Corrupt)),
        Ok(None) => Ok(Err(Damage::Missing)),
        Err(source) => Err(RebuildError::Source { chunk: *id, source }),
    }
}

/// A `Read` over the rebuilt stream. At the end it checks the whole
/// stream's BLAKE3 when one is expected; any failure is an `io::Error`
/// wrapping a [`RebuildError`] (see [`rebuild_error`]).
pub struct Reassembler<S: ChunkSource> {
    layout: Layout,
    ids: Vec<ChunkId>,
    part: Part,
    source: S,
    next_data: usize,
    current: Vec<u8>,
    /// The chunk read before `current`, whose allocation the next read
    /// reuses.
    spare: Vec<u8>,
    offset: usize,
    rebuilt_stripe: Option<usize>,
    rebuilt: Vec<(usize, Vec<u8>)>,
    whole: blake3::Hasher,
    expected: Option<[u8; 32]>,
    checked: bool,
    repairs: Vec<Repair>,
}

impl<S: ChunkSource> Reassembler<S> {
    /// Reads the stream laid out by `layout` whose chunk ids (layout
    /// order) are `ids`; if `expected` is given, the whole must hash to it.
    pub fn new(
        layout: Layout,
        ids: Vec<ChunkId>,
        part: Part,
        source: S,
        expected: Option<[u8; 32]>,
    ) -> Result<Self, RebuildError> {
        if ids.len() != layout.total_chunks() {
            return Err(RebuildError::Index(crate::DecodeError::invalid(
                "chunk list",
                format!("{} ids for {} chunks", ids.len(), layout.total_chunks()),
            )));
        }
        Ok(Self {
            layout,
            ids,
            part,
            source,
            next_data: 0,
            current: Vec::new(),
            spare: Vec::new(),
            offset: 0,
            rebuilt_stripe: None,
            rebuilt: Vec::new(),
            whole: blake3::Hasher::new(),
            expected,
            checked: false,
            repairs: Vec::new(),
        })
    }

    /// Records repairs made before this reader existed (the index's), so
    /// [`Reassembler::repairs`] reports them all.
    pub fn note_repairs(&mut self, earlier: Vec<Repair>) {
        self.repairs.splice(0..0, earlier);
    }

    /// Chunks rebuilt from parity so far.
    pub fn repairs(&self) -> &[Repair] {
        &self.repairs
    }

    fn id(&self, slot: Slot) -> ChunkId {
        self.ids[self.layout.position(slot)]
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, RebuildError> {
        let i = self.next_data;
        if i == self.layout.data_chunks() {
            return Ok(None);
        }
        self.next_data += 1;
        let stripe = i / self.layout.data_per_stripe();
        if self.rebuilt_stripe == Some(stripe) {
            if let Some(pos) = self.rebuilt.iter().position(|(j, _)| *j == i) {
                return Ok(Some(self.rebuilt.swap_remove(pos).1));
            }
        }
        let id = self.id(Slot::Data(i));
        let buffer = std::mem::take(&mut self.spare);
        match fetch_verified(&self.source, &id, self.layout.data_len(i), buffer)? {
            Ok(bytes) => Ok(Some(bytes)),
            Err(_) => {
                self.rebuild(stripe)?;
                let pos = self
                    .rebuilt
                    .iter()
                    .position(|(j, _)| *j == i)
                    .ok_or_else(|| RebuildError::Erasure(format!("chunk {i} not rebuilt")))?;
                Ok(Some(self.rebuilt.swap_remove(pos).1))
            }
        }
    }

    fn rebuild(&mut self, stripe: usize) -> Result<(), RebuildError> {
        let layout = self.layout;
        let data_range = layout.stripe_data(stripe);
        let parity_count = layout.parity_per_stripe();
        let shard_len = layout.shard_len(stripe);
        let mut damage = Vec::new();
        let mut data = Vec::with_capacity(data_range.len());
        let mut lens = Vec::with_capacity(data_range.len());
        // Chunks before `next_data - 1` were already emitted; they are still
        // read back, because the decoder needs a full set of survivors.
        for i in data_range.clone() {
            let id = self.id(Slot::Data(i));
            lens.push(layout.data_len(i));
            match fetch_verified(&self.source, &id, layout.data_len(i), Vec::new())? {
                Ok(bytes) => data.push(Some(bytes)),
                Err(d) => {
                    damage.push((i - data_range.start, id, d));
                    data.push(None);
                }
            }
        }
        let mut parity = Vec::with_capacity(parity_count);
        let mut lost = damage.len();
        for index in 0..parity_count {
            let id = self.id(Slot::Parity { stripe, index });
            match fetch_verified(&self.source, &id, shard_len, Vec::new())? {
                Ok(bytes) => parity.push(Some(bytes)),
                Err(_) => {
                    lost += 1;
                    parity.push(None);
                }
            }
        }
        if lost > parity_count {
            return Err(RebuildError::TooManyMissing {
                losses: vec![StripeLoss {
                    part: self.part,
                    stripe,
                    lost,
                    parity: parity_count,
                }],
            });
        }
        let restored = rebuild_stripe(layout.data_per_stripe(), shard_len, &data, &lens, &parity)?;
        let mut rebuilt = Vec::with_capacity(restored.len());
        for ((pos, bytes), (_, id, d)) in restored.into_iter().zip(&damage) {
            if !id.matches(&bytes) {
                return Err(RebuildError::RepairMismatch { stripe, chunk: *id });
            }
            self.repairs.push(Repair {
                part: self.part,
                chunk: *id,
                damage: *d,
            });
            rebuilt.push((data_range.start + pos, bytes));
        }
        self.rebuilt_stripe = Some(stripe);
        self.rebuilt = rebuilt;
        Ok(())
    }

    fn check_whole(&mut self) -> Result<(), RebuildError> {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        if let Some(expected) = self.expected {
            if self.whole.finalize() != blake3::Hash::from_bytes(expected) {
                return Err(RebuildError::CiphertextMismatch {
                    expected: hex::encode(expected),
                });
            }
        }
        Ok(())
    }
}

impl<S: ChunkSource> Read for Reassembler<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.offset == self.current.len() {
            match self.next_chunk().map_err(io::Error::other)? {
                Some(chunk) => {
                    self.whole.update(&chunk);
                    self.spare = std::mem::replace(&mut self.current, chunk);
                    self.offset = 0;
                }
                None => {
                    self.check_whole().map_err(io::Error::other)?;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.offset);
        out[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Recovers the [`RebuildError`] inside an `io::Error` from a [`Reassembler`].
pub fn rebuild_error(e: io::Error) -> Result<RebuildError, io::Error> {
    if e.get_ref().is_some_and(|inner| inner.is::<RebuildError>()) {
        match e.into_inner().map(|inner| inner.downcast::<RebuildError>()) {
            Some(Ok(rebuild)) => Ok(*rebuild),
            Some(Err(other)) => Err(io::Error::other(other)),
            None => Err(io::Error::other("unreachable: io error lost its payload")),
        }
    } else {
        Err(e)
    }
}

/// Rebuilds and decodes a bundle's chunk index. Returns the payload chunk
/// ids in layout order and any repairs made.
pub fn read_index<S: ChunkSource>(
    descriptor: &Descriptor,
    source: &S,
) -> Result<(Vec<ChunkId>, Vec<Repair>), RebuildError> {
    let index_layout = descriptor
        .index_layout()
        .map_err(|e| RebuildError::Index(crate::DecodeError::invalid("descriptor", e.0)))?;
    let payload_layout = descriptor
        .payload_layout()
        .map_err(|e| RebuildError::Index(crate::DecodeError::invalid("descriptor", e.0)))?;
    let losses = scan(&index_layout, &descriptor.index_chunks, Part::Index, source)?;
    if !losses.is_empty() {
        return Err(RebuildError::TooManyMissing { losses });
    }
    let mut reader = Reassembler::new(
        index_layout,
        descriptor.index_chunks.clone(),
        Part::Index,
        source,
        None,
    )?;
    let mut bytes = Vec::with_capacity(descriptor.index_size as usize);
    if let Err(e) = reader.read_to_end(&mut bytes) {
        return Err(match rebuild_error(e) {
            Ok(rebuild) => rebuild,
            Err(io) => RebuildError::Erasure(io.to_string()),
        });
    }
    let ids = index::decode(&bytes, payload_layout.total_chunks())?;
    Ok((ids, reader.repairs().to_vec()))
}
