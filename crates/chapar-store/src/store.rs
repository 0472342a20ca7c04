//! The store: verified chunks on disk, bookkeeping in redb.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use chapar_format::{read_index, BundleId, ChunkId, ChunkSource, Descriptor, MAX_CHUNK_SIZE};
use redb::{
    Database, ReadableDatabase, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
    WriteTransaction,
};

use crate::chunks::{ChunkFiles, FsChunks, MemChunks, Staged};
use crate::error::StoreError;
use crate::quota::{plan_eviction, Candidate};
use crate::record::{BundleRecord, Role};
use crate::tables::*;

/// Unix time now, in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A peer-book entry: the peer id's bytes and the mesh's record.
pub type PeerEntry = (Vec<u8>, Vec<u8>);

/// What a batch of chunks did to the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// Chunks now durable and acknowledged.
    pub stored: Vec<ChunkId>,
    /// Chunks that were already here.
    pub duplicates: usize,
    /// Chunks whose bytes did not hash to their id (refused).
    pub mismatched: Vec<ChunkId>,
    /// Chunks no bundle here wants (refused).
    pub unwanted: Vec<ChunkId>,
    /// Bundles evicted to make room.
    pub evicted: Vec<BundleId>,
}

/// One bundle as `chapar status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleStatus {
    /// The bundle.
    pub id: BundleId,
    /// Bookkeeping.
    pub record: BundleRecord,
    /// Ciphertext bytes.
    pub ciphertext_size: u64,
}

/// A batch of chunks on its way into the store.
struct Admission {
    report: PutReport,
    /// Chunks to record, with their lengths.
    fresh: Vec<(ChunkId, u32)>,
    staged: Vec<Staged>,
    /// Bundles that want the chunks (kept from eviction; their indexes
    /// are read after the commit).
    owners: Vec<BundleId>,
    /// Bytes admitted so far.
    pending: u64,
    used: u64,
    quota: Option<u64>,
}

impl Admission {
    fn accept(&mut self, id: ChunkId, len: u32, staged: Staged) {
        self.staged.push(staged);
        self.pending += u64::from(len);
        self.fresh.push((id, len));
    }
}

/// A chunk store in a data directory (or in memory).
pub struct Store {
    db: Database,
    files: Box<dyn ChunkFiles>,
    root: Option<PathBuf>,
    // Held for the store's lifetime: one process per data directory.
    _lock: Option<File>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    // Serialises everything that writes chunk files or drops chunk records,
    // so a removal can never delete a file a concurrent put just placed.
    writes: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `root`, taking its lock.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(StoreError::io(root))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: root.into() })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(&lock_path)(e)),
        }
        let files = FsChunks::new(root).map_err(StoreError::io(root))?;
        let stray = files.clear_staging().map_err(StoreError::io(root))?;
        if stray > 0 {
            tracing::info!(
                stray,
                "removed temporary chunk files left by an interrupted write"
            );
        }
        let db_path = root.join("meta.redb");
        create_database_atomically(root, &db_path)?;
        let db = Database::open(&db_path)?;
        let store = Self {
            db,
            files: Box::new(files),
            root: Some(root.into()),
            _lock: Some(lock),
            clock: Box::new(now),
            writes: std::sync::Mutex::new(()),
        };
        store.init()?;
        // A crash may have come between storing a bundle's index chunks and
        // reading them; read them now rather than wait for the bundle to be
        // offered again.
        for b in store.bundles()? {
            if !b.record.index_known {
                store.learn_index(&b.id)?;
            }
        }
        Ok(store)
    }

    /// A store held entirely in memory (tests, ephemeral nodes).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let store = Self {
            db,
            files: Box::<MemChunks>::default(),
            root: None,
            _lock: None,
            clock: Box::new(now),
            writes: std::sync::Mutex::new(()),
        };
        store.init()?;
        Ok(store)
    }

    /// Drops each chunk from the page cache once it is durable, for a
    /// relay: it writes gigabytes it reads back rarely (and then from
    /// disk), and should not push its host's own files out of memory for
    /// them. The pages freed are where the next chunks are written, which
    /// also spares memory never touched before: on these VMs that cost 2.7
    /// s of system time per GiB written, against 0.2 s reused, and a 256
    /// MiB replication took 1.3-1.4 s instead of 0.8 s. A node that opens
    /// or serves what it has just stored (a recipient, a sender) keeps it.
    pub fn drop_chunks_once_durable(&mut self) {
        self.files.drop_once_durable();
    }

    /// Replaces the clock (unix seconds) used for expiry and eviction
    /// decisions, so tests and simulations can move time.
    pub fn set_clock(&mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) {
        self.clock = Box::new(clock);
    }

    /// The store's idea of now (unix seconds).
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The data directory, for a store on disk.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn init(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(VERSION_KEY)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(VERSION_KEY, FORMAT_VERSION)?;
                }
                Some(v) if v == FORMAT_VERSION => {}
                Some(v) => {
                    return Err(StoreError::UnsupportedVersion {
                        found: v,
                        supported: FORMAT_VERSION,
                    })
                }
            }
            txn.open_table(DESCRIPTORS)?;
            txn.open_table(BUNDLES)?;
            txn.open_table(CHUNKS)?;
            txn.open_multimap_table(BUNDLE_CHUNKS)?;
            txn.open_multimap_table(CHUNK_BUNDLES)?;
            txn.open_multimap_table(RECEIPTS)?;
            txn.open_table(TOMBSTONES)?;
            txn.open_table(PEERS)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Holds the write lock. A panic while holding it leaves nothing
    /// half-done that the database would not roll back, so a poisoned lock
    /// is still usable.
    pub(crate) fn write_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn files(&self) -> &dyn ChunkFiles {
        &*self.files
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// The byte budget, if one is set.
    pub fn quota(&self) -> Result<Option<u64>, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(META)?.get(QUOTA)?.map(|v| v.value()))
    }

    /// Sets (or with `None` removes) the byte budget. It is kept in the
    /// data directory.
    pub fn set_quota(&self, quota: Option<u64>) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            match quota {
                Some(q) => meta.insert(QUOTA, q)?,
                None => meta.remove(QUOTA)?,
            };
        }
        txn.commit()?;
        Ok(())
    }

    /// Bytes of chunks stored.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(META)?
            .get(USED_BYTES)?
            .map_or(0, |v| v.value()))
    }

    /// Takes in a bundle's descriptor with a role. A known bundle keeps
    /// the stronger of its roles. Returns the id and whether it was new.
    pub fn add_bundle(
        &self,
        descriptor_bytes: &[u8],
        role: Role,
    ) -> Result<(BundleId, bool), StoreError> {
        let descriptor = Descriptor::decode(descriptor_bytes)?;
        let id = BundleId::of(descriptor_bytes);
        if self.is_tombstoned(&id)? {
            return Err(StoreError::Tombstoned { id });
        }
        if descriptor.expires_at <= self.now() {
            return Err(StoreError::Expired { id });
        }
        let writing = self.write_guard();
        let txn = self.db.begin_write()?;
        if txn.open_table(TOMBSTONES)?.get(&id.0)?.is_some() {
            return Err(StoreError::Tombstoned { id });
        }
        let new = {
            let mut bundles = txn.open_table(BUNDLES)?;
            let existing = bundles.get(&id.0)?.map(|v| v.value().to_vec());
            match existing {
                Some(bytes) => {
                    let mut rec = BundleRecord::decode(&bytes)?;
                    if role > rec.role {
                        rec.role = role;
                        bundles.insert(&id.0, &rec.encode()[..])?;
                    }
                    false
                }
                None => {
                    txn.open_table(DESCRIPTORS)?
                        .insert(&id.0, descriptor_bytes)?;
                    let mut rec = BundleRecord {
                        role,
                        added_at: self.now(),
                        priority: descriptor.priority,
                        expires_at: descriptor.expires_at,
                        recipients: descriptor.ack_hashes.len() as u8,
                        receipted: 0,
                        index_known: false,
                        known_chunks: 0,
                        held_chunks: 0,
                        held_bytes: 0,
                    };
                    want_chunks(&txn, &id, &descriptor.index_chunks, &mut rec)?;
                    bundles.insert(&id.0, &rec.encode()[..])?;
                    true
                }
            }
        };
        txn.commit()?;
        drop(writing);
        // Also for a known bundle: a crash may have come between storing
        // its index chunks and reading them.
        self.learn_index(&id)?;
        Ok((id, new))
    }

    /// The bundle's descriptor bytes.
    pub fn descriptor(&self, id: &BundleId) -> Result<Vec<u8>, StoreError> {
        let r = self.db.begin_read()?;
        let bytes = r
            .open_table(DESCRIPTORS)?
            .get(&id.0)?
            .map(|v| v.value().to_vec());
        bytes.ok_or(StoreError::UnknownBundle { id: *id })
    }

    /// The bundle's bookkeeping.
    pub fn record(&self, id: &BundleId) -> Result<BundleRecord, StoreError> {
        let r = self.db.begin_read()?;
        let bytes = r
            .open_table(BUNDLES)?
            .get(&id.0)?
            .map(|v| v.value().to_vec());
        BundleRecord::decode(&bytes.ok_or(StoreError::UnknownBundle { id: *id })?)
    }

    /// Every bundle held.
    pub fn bundles(&self) -> Result<Vec<BundleStatus>, StoreError> {
        let r = self.db.begin_read()?;
        let bundles = r.open_table(BUNDLES)?;
        let descriptors = r.open_table(DESCRIPTORS)?;
        let mut out = Vec::new();
        for entry in bundles.iter()? {
            let (k, v) = entry?;
            let id = BundleId(*k.value());
            let record = BundleRecord::decode(v.value())?;
            let ciphertext_size = match descriptors.get(&id.0)? {
                Some(d) => Descriptor::decode(d.value())?.ciphertext_size,
                None => 0,
            };
            out.push(BundleStatus {
                id,
                record,
                ciphertext_size,
            });
        }
        Ok(out)
    }

    /// Tombstoned bundles and when their tombstones lapse.
    pub fn tombstones(&self) -> Result<Vec<(BundleId, u64)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TOMBSTONES)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((BundleId(*k.value()), v.value()));
        }
        Ok(out)
    }

    /// Whether the bundle was delivered to every recipient.
    pub fn is_tombstoned(&self, id: &BundleId) -> Result<bool, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(TOMBSTONES)?.get(&id.0)?.is_some())
    }

    /// Ids of the bundle's chunks known so far (index chunks, then the
    /// payload's once the index is known).
    pub fn known_chunks(&self, id: &BundleId) -> Result<Vec<ChunkId>, StoreError> {
        let r = self.db.begin_read()?;
        let m = r.open_multimap_table(BUNDLE_CHUNKS)?;
        let mut out = Vec::new();
        for v in m.get(&id.0)? {
            out.push(ChunkId(*v?.value()));
        }
        Ok(out)
    }

    /// Known chunks of the bundle that are not stored here.
    pub fn missing_chunks(&self, id: &BundleId) -> Result<Vec<ChunkId>, StoreError> {
        let r = self.db.begin_read()?;
        let m = r.open_multimap_table(BUNDLE_CHUNKS)?;
        let chunks = r.open_table(CHUNKS)?;
        let mut out = Vec::new();
        for v in m.get(&id.0)? {
            let c = *v?.value();
            if chunks.get(&c)?.is_none() {
                out.push(ChunkId(c));
            }
        }
        Ok(out)
    }

    /// Whether a chunk is stored (acknowledged) here.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(CHUNKS)?.get(&id.0)?.is_some())
    }

    /// Reads a stored chunk and verifies it. A chunk that fails
    /// verification is quarantined, marked missing and never served.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_chunk_into(id, Vec::new())
    }

    /// [`Store::get_chunk`] into `buffer` (emptied first), to reuse it.
    pub fn get_chunk_into(
        &self,
        id: &ChunkId,
        buffer: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let len = {
            let r = self.db.begin_read()?;
            let len = r.open_table(CHUNKS)?.get(&id.0)?.map(|v| v.value());
            match len {
                Some(len) => len as usize,
                None => return Ok(None),
            }
        };
        let bytes = self
            .files
            .read(id, len, buffer)
            .map_err(StoreError::io(self.chunk_label(id)))?;
        match bytes {
            Some(b) if b.len() == len && id.matches(&b) => Ok(Some(b)),
            _ => {
                tracing::warn!(chunk = %id, "stored chunk failed verification; quarantined");
                let _writing = self.write_guard();
                self.files
                    .quarantine(id)
                    .map_err(StoreError::io(self.chunk_label(id)))?;
                self.forget_chunks_locked(&[*id])?;
                Err(StoreError::ChunkCorrupt { id: *id })
            }
        }
    }

    pub(crate) fn chunk_label(&self, id: &ChunkId) -> PathBuf {
        match &self.root {
            Some(r) => r.join("chunks").join(&id.to_hex()[..2]).join(id.to_hex()),
            None => PathBuf::from(format!("<memory>/{id}")),
        }
    }

    /// Verifies and stores a batch of chunks, reading them one at a time
    /// from `batch` (only one chunk's bytes need be in memory). Each must
    /// be wanted by a bundle here. The whole batch is made durable with one
    /// flush before the database acknowledges it (group commit). Evicts
    /// whole bundles, in the documented order, when the quota requires it;
    /// refuses when nothing may be evicted.
    pub fn put_chunks<I, B>(&self, batch: I) -> Result<PutReport, StoreError>
    where
        I: IntoIterator<Item = (ChunkId, B)>,
        B: AsRef<[u8]>,
    {
        let writing = self.write_guard();
        let mut a = self.admission()?;
        let staging = (|| {
            for (id, bytes) in batch {
                let bytes = bytes.as_ref();
                if bytes.len() > MAX_CHUNK_SIZE as usize || !id.matches(bytes) {
                    a.report.mismatched.push(id);
                    continue;
                }
                if self.admit(&mut a, &id, bytes.len() as u64)? {
                    let staged = self
                        .files
                        .stage(&id, bytes)
                        .map_err(StoreError::io(self.chunk_label(&id)))?;
                    a.accept(id, bytes.len() as u32, staged);
                }
            }
            Ok(())
        })();
        if let Err(e) = staging {
            self.files.discard(a.staged);
            return Err(e);
        }
        self.commit_admitted(a, writing)
    }

    /// Stores chunks already written to the staging area by
    /// [`Store::stage_chunk`] (each `id` the BLAKE3 of what was written,
    /// as a [`chapar_format::ChunkSink`] is given it): the same rules and
    /// group commit as [`Store::put_chunks`], without writing the bytes a
    /// second time. Staged chunks not taken are deleted.
    pub(crate) fn put_staged(
        &self,
        batch: Vec<(ChunkId, u32, Staged)>,
    ) -> Result<PutReport, StoreError> {
        let writing = self.write_guard();
        let mut a = self.admission()?;
        let mut refused = Vec::new();
        let mut batch = batch.into_iter();
        let admitting = (|| {
            for (id, len, staged) in batch.by_ref() {
                if self.admit(&mut a, &id, u64::from(len))? {
                    a.accept(id, len, staged);
                } else {
                    refused.push(staged);
                }
            }
            Ok(())
        })();
        self.files.discard(refused);
        if let Err(e) = admitting {
            self.files.discard(a.staged);
            self.files.discard(batch.map(|(_, _, s)| s).collect());
            return Err(e);
        }
        self.commit_admitted(a, writing)
    }

    /// Writes a chunk into the staging area, for [`Store::put_staged`].
    pub(crate) fn stage_chunk(&self, id: &ChunkId, bytes: &[u8]) -> Result<Staged, StoreError> {
        self.files
            .stage(id, bytes)
            .map_err(StoreError::io(self.chunk_label(id)))
    }

    /// Deletes staged chunks that will not be stored.
    pub(crate) fn discard_staged(&self, staged: Vec<Staged>) {
        self.files.discard(staged);
    }

    fn admission(&self) -> Result<Admission, StoreError> {
        let quota = self.quota()?;
        // Read once; re-read only after an eviction changes it.
        let used = match quota {
            Some(_) => self.used_bytes()?,
            None => 0,
        };
        Ok(Admission {
            report: PutReport::default(),
            fresh: Vec::new(),
            staged: Vec::new(),
            owners: Vec::new(),
            pending: 0,
            used,
            quota,
        })
    }

    /// Whether a verified chunk of `len` bytes is to be stored: not held
    /// (nor already in this batch) and wanted by a bundle here; makes room
    /// under the quota if need be.
    fn admit(&self, a: &mut Admission, id: &ChunkId, len: u64) -> Result<bool, StoreError> {
        let (held, wanted_by) = self.standing(id)?;
        if held || a.fresh.iter().any(|(f, _)| f == id) {
            a.report.duplicates += 1;
            return Ok(false);
        }
        if wanted_by.is_empty() {
            a.report.unwanted.push(*id);
            return Ok(false);
        }
        for b in wanted_by {
            if !a.owners.contains(&b) {
                a.owners.push(b);
            }
        }
        if let Some(quota) = a.quota {
            if a.used + a.pending + len > quota {
                let evicted = self.make_room(a.pending + len, &a.owners)?;
                a.report.evicted.extend(evicted);
                a.used = self.used_bytes()?;
            }
        }
        Ok(true)
    }

    /// Makes a batch's staged chunks durable, then records them in one
    /// transaction (the second half of [`Store::put_chunks`]).
    fn commit_admitted(
        &self,
        a: Admission,
        writing: std::sync::MutexGuard<'_, ()>,
    ) -> Result<PutReport, StoreError> {
        let Admission {
            mut report,
            fresh,
            staged,
            owners,
            ..
        } = a;
        if fresh.is_empty() {
            return Ok(report);
        }
        let label = self.root.clone().unwrap_or_default();
        self.files.publish(staged).map_err(StoreError::io(&label))?;

        let txn = self.db.begin_write()?;
        let mut added = 0u64;
        {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut new = Vec::with_capacity(fresh.len());
            for (id, len) in &fresh {
                // Counted once, even if another writer recorded it meanwhile.
                if chunks.insert(&id.0, *len)?.is_none() {
                    new.push((*id, *len));
                }
            }
            drop(chunks);
            for (id, len) in &new {
                adjust_holders(&txn, id, 1, i64::from(*len))?;
                added += u64::from(*len);
            }
        }
        add_used(&txn, added as i64)?;
        txn.commit()?;
        report.stored = fresh.iter().map(|(id, _)| *id).collect();
        // Reading an index reads chunks, which may quarantine one and so
        // need the lock: release it first.
        drop(writing);
        for owner in owners {
            self.learn_index_once_held(&owner)?;
        }
        Ok(report)
    }

    /// Whether chunk `id` is held, and which bundles want it: one read
    /// transaction for both, on the put path.
    fn standing(&self, id: &ChunkId) -> Result<(bool, Vec<BundleId>), StoreError> {
        let r = self.db.begin_read()?;
        let held = r.open_table(CHUNKS)?.get(&id.0)?.is_some();
        let mut wanted_by = Vec::new();
        for b in r.open_multimap_table(CHUNK_BUNDLES)?.get(&id.0)? {
            wanted_by.push(BundleId(*b?.value()));
        }
        Ok((held, wanted_by))
    }

    /// Bundles that want chunk `id`.
    pub fn wanted_by(&self, id: &ChunkId) -> Result<Vec<BundleId>, StoreError> {
        let r = self.db.begin_read()?;
        let m = r.open_multimap_table(CHUNK_BUNDLES)?;
        let mut out = Vec::new();
        for b in m.get(&id.0)? {
            out.push(BundleId(*b?.value()));
        }
        Ok(out)
    }

    /// [`Store::learn_index`] once every index chunk is held. Chunks arrive
    /// one batch at a time: reading the index as soon as parity could
    /// cover the rest would rebuild from parity a chunk that is on its way,
    /// and the Reed–Solomon tables that takes (8 MiB, kept for the life of
    /// the process) would be most of a relay's memory. A bundle whose
    /// index chunk never comes is rebuilt when it stalls
    /// ([`Store::parity_can_complete`]).
    fn learn_index_once_held(&self, id: &BundleId) -> Result<(), StoreError> {
        match self.record(id) {
            Ok(r) if !r.index_known => {}
            Ok(_) | Err(StoreError::UnknownBundle { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.missing_chunks(id)?.is_empty() {
            self.learn_index(id)?;
        }
        Ok(())
    }

    /// Once enough of a bundle's index chunks are here (parity rebuilding
    /// the rest), reads the index and starts wanting every payload chunk.
    pub(crate) fn learn_index(&self, id: &BundleId) -> Result<(), StoreError> {
        let mut rec = match self.record(id) {
            Ok(r) => r,
            Err(StoreError::UnknownBundle { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if rec.index_known {
            return Ok(());
        }
        let descriptor = Descriptor::decode(&self.descriptor(id)?)?;
        let ids = match read_index(&descriptor, &self) {
            Ok((ids, _)) => ids,
            // Not enough index chunks yet: try again when more arrive.
            Err(chapar_format::RebuildError::TooManyMissing { .. }) => return Ok(()),
            Err(e) => {
                tracing::warn!(bundle = %id, error = %e, "chunk index unreadable");
                return Ok(());
            }
        };
        let _writing = self.write_guard();
        let txn = self.db.begin_write()?;
        // Re-read inside the transaction: counters may have moved since.
        let current = txn
            .open_table(BUNDLES)?
            .get(&id.0)?
            .map(|v| v.value().to_vec());
        let Some(current) = current else {
            return Ok(());
        };
        rec = BundleRecord::decode(&current)?;
        if rec.index_known {
            return Ok(());
        }
        rec.index_known = true;
        want_chunks(&txn, id, &ids, &mut rec)?;
        txn.open_table(BUNDLES)?.insert(&id.0, &rec.encode()[..])?;
        txn.commit()?;
        Ok(())
    }

    /// Frees `needed` bytes under the quota, evicting whole bundles in the
    /// documented order but never one in `keep`. All or nothing.
    fn make_room(&self, needed: u64, keep: &[BundleId]) -> Result<Vec<BundleId>, StoreError> {
        let Some(quota) = self.quota()? else {
            return Ok(Vec::new());
        };
        let used = self.used_bytes()?;
        if used + needed <= quota {
            return Ok(Vec::new());
        }
        let must_free = used + needed - quota;
        let candidates: Vec<Candidate> = self
            .bundles()?
            .into_iter()
            .map(|b| Candidate {
                id: b.id,
                role: b.record.role,
                expires_at: b.record.expires_at,
                partly_receipted: b.record.receipted != 0,
                priority: b.record.priority,
                added_at: b.record.added_at,
                bytes: b.record.held_bytes,
            })
            .collect();
        let Some(plan) = plan_eviction(&candidates, must_free, self.now(), keep) else {
            return Err(StoreError::QuotaFull {
                needed,
                used,
                quota,
            });
        };
        for id in &plan {
            tracing::info!(bundle = %id, "evicting bundle to stay within the quota");
            self.remove_bundle_locked(id, None)?;
        }
        // Shared chunks may free less than planned; check, never overrun.
        if self.used_bytes()? + needed > quota {
            return Err(StoreError::QuotaFull {
                needed,
                used: self.used_bytes()?,
                quota,
            });
        }
        Ok(plan)
    }

    /// Drops chunks from the books (after quarantine or loss), so they
    /// count as missing and can be fetched again.
    pub(crate) fn forget_chunks(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let _writing = self.write_guard();
        self.forget_chunks_locked(ids)
    }

    /// [`Store::forget_chunks`] for a caller already holding the write lock.
    fn forget_chunks_locked(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        let mut freed = 0i64;
        for id in ids {
            let len = txn.open_table(CHUNKS)?.remove(&id.0)?.map(|v| v.value());
            if let Some(len) = len {
                adjust_holders(&txn, id, -1, -i64::from(len))?;
                freed += i64::from(len);
            }
        }
        add_used(&txn, -freed)?;
        txn.commit()?;
        Ok(())
    }

    /// Removes a bundle and the chunks no other bundle wants; with
    /// `tombstone`, remembers it (until that expiry) so it is not taken again.
    pub fn remove_bundle(&self, id: &BundleId, tombstone: Option<u64>) -> Result<(), StoreError> {
        let _writing = self.write_guard();
        self.remove_bundle_locked(id, tombstone)
    }

    /// [`Store::remove_bundle`] for a caller already holding the write lock.
    pub(crate) fn remove_bundle_locked(
        &self,
        id: &BundleId,
        tombstone: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut doomed = Vec::new();
        let txn = self.db.begin_write()?;
        {
            let mut by_bundle = txn.open_multimap_table(BUNDLE_CHUNKS)?;
            let mut by_chunk = txn.open_multimap_table(CHUNK_BUNDLES)?;
            let mut chunks = txn.open_table(CHUNKS)?;
            let ids: Vec<[u8; 32]> = by_bundle
                .get(&id.0)?
                .map(|v| v.map(|g| *g.value()))
                .collect::<Result<_, _>>()?;
            let mut freed = 0u64;
            for c in ids {
                by_chunk.remove(&c, &id.0)?;
                if by_chunk.get(&c)?.next().is_none() {
                    if let Some(len) = chunks.remove(&c)? {
                        freed += u64::from(len.value());
                        doomed.push(ChunkId(c));
                    }
                }
            }
            by_bundle.remove_all(&id.0)?;
            drop((by_bundle, by_chunk, chunks));
            add_used(&txn, -(freed as i64))?;
        }
        txn.open_table(BUNDLES)?.remove(&id.0)?;
        txn.open_table(DESCRIPTORS)?.remove(&id.0)?;
        match tombstone {
            // The receipts stay with the tombstone: they are the proof of
            // delivery other nodes can verify (a bare tombstone is not).
            Some(until) => {
                txn.open_table(TOMBSTONES)?.insert(&id.0, until)?;
            }
            None => {
                txn.open_multimap_table(RECEIPTS)?.remove_all(&id.0)?;
            }
        }
        txn.commit()?;
        // Deleted after the commit: a crash in between leaves orphan files
        // for fsck, never a record without its bytes.
        for c in doomed {
            self.files
                .remove(&c)
                .map_err(StoreError::io(self.chunk_label(&c)))?;
        }
        Ok(())
    }

    /// The mesh's peer book: opaque records by peer id, at most `keep` of
    /// them. Anyone who connects can be written here, so a full book makes
    /// room for a new peer by dropping the records `rank` puts lowest (the
    /// mesh ranks by when each peer was last seen), in the same
    /// transaction; the record just written is never the one dropped.
    pub fn put_peer(
        &self,
        peer: &[u8],
        record: &[u8],
        keep: usize,
        rank: impl Fn(&[u8]) -> u64,
    ) -> Result<(), StoreError> {
        let keep = keep.max(1);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PEERS)?;
            table.insert(peer, record)?;
            let len = usize::try_from(table.len()?).unwrap_or(usize::MAX);
            if len > keep {
                let mut ranked = Vec::with_capacity(len);
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    if k.value() != peer {
                        ranked.push((rank(v.value()), k.value().to_vec()));
                    }
                }
                ranked.sort_unstable();
                for (_, doomed) in ranked.iter().take(len - keep) {
                    table.remove(doomed.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every peer record, as (peer id, record).
    pub fn peers(&self) -> Result<Vec<PeerEntry>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(PEERS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// Creates a new, empty database beside `path` and renames it into place,
/// so a crash while creating it can never leave a half-written file (redb
/// refuses one whose header was cut short: "magic number mismatch").
/// Nothing is acknowledged before the database exists, so an interrupted
/// creation loses nothing.
fn create_database_atomically(root: &Path, path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    let fresh = root.join("meta.redb.new");
    let _ = std::fs::remove_file(&fresh);
    drop(Database::create(&fresh)?);
    File::open(&fresh)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&fresh, path))
        .and_then(|()| File::open(root))
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(path))
}

/// Records that `bundle` wants `ids`, counting those already present.
fn want_chunks(
    txn: &WriteTransaction,
    bundle: &BundleId,
    ids: &[ChunkId],
    rec: &mut BundleRecord,
) -> Result<(), StoreError> {
    let mut by_bundle = txn.open_multimap_table(BUNDLE_CHUNKS)?;
    let mut by_chunk = txn.open_multimap_table(CHUNK_BUNDLES)?;
    let chunks = txn.open_table(CHUNKS)?;
    for id in ids {
        if by_bundle.insert(&bundle.0, &id.0)? {
            // Already wanted (an id listed twice): count once.
            continue;
        }
        by_chunk.insert(&id.0, &bundle.0)?;
        rec.known_chunks += 1;
        if let Some(len) = chunks.get(&id.0)? {
            rec.held_chunks += 1;
            rec.held_bytes += u64::from(len.value());
        }
    }
    Ok(())
}

/// Adds `count` chunks and `bytes` to every bundle that wants chunk `id`.
fn adjust_holders(
    txn: &WriteTransaction,
    id: &ChunkId,
    count: i32,
    bytes: i64,
) -> Result<(), StoreError> {
    let owners: Vec<[u8; 32]> = txn
        .open_multimap_table(CHUNK_BUNDLES)?
        .get(&id.0)?
        .map(|v| v.map(|g| *g.value()))
        .collect::<Result<_, _>>()?;
    let mut bundles = txn.open_table(BUNDLES)?;
    for owner in owners {
        let Some(bytes_rec) = bundles.get(&owner)?.map(|v| v.value().to_vec()) else {
            continue;
        };
        let mut rec = BundleRecord::decode(&bytes_rec)?;
        rec.held_chunks = rec.held_chunks.saturating_add_signed(count);
        rec.held_bytes = rec.held_bytes.saturating_add_signed(bytes);
        bundles.insert(&owner, &rec.encode()[..])?;
    }
    Ok(())
}

fn add_used(txn: &WriteTransaction, delta: i64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    let used = meta.get(USED_BYTES)?.map_or(0, |v| v.value());
    meta.insert(USED_BYTES, used.saturating_add_signed(delta))?;
    Ok(())
}

impl ChunkSource for &Store {
    fn get(&self, id: &ChunkId, max_len: usize) -> std::io::Result<Option<Vec<u8>>> {
        self.get_into(id, max_len, Vec::new())
    }

    fn get_into(
        &self,
        id: &ChunkId,
        _max_len: usize,
        buffer: Vec<u8>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        match self.get_chunk_into(id, buffer) {
            Ok(bytes) => Ok(bytes),
            // Quarantined and marked missing: parity can stand in for it.
            Err(StoreError::ChunkCorrupt { .. }) => Ok(None),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    fn contains(&self, id: &ChunkId) -> std::io::Result<bool> {
        self.has_chunk(id).map_err(std::io::Error::other)
    }
}
