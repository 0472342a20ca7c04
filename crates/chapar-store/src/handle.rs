//! Using the store from async code: every call runs on tokio's blocking
//! pool, at most a bounded number at once, so the runtime's threads never
//! wait on a disk.

use std::sync::Arc;

use chapar_format::{AckSecret, BundleId, ChunkId};
use tokio::sync::Semaphore;

use crate::buffers::ChunkBuffers;
use crate::error::StoreError;
use crate::maintenance::ReceiptOutcome;
use crate::record::{BundleRecord, Role};
use crate::store::{PutReport, Store};

/// Store calls allowed in flight at once; more wait their turn.
const MAX_IN_FLIGHT: usize = 16;

/// A cheap, cloneable async handle to a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreHandle {
    store: Arc<Store>,
    permits: Arc<Semaphore>,
    buffers: ChunkBuffers,
}

impl StoreHandle {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        Self {
            store: Arc::new(store),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            buffers: ChunkBuffers::default(),
        }
    }

    /// The chunk buffers this handle reads into and takes back once a
    /// chunk is stored; callers that move chunks share them too.
    pub fn buffers(&self) -> &ChunkBuffers {
        &self.buffers
    }

    /// The store itself, for synchronous code.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs `f` on the blocking pool with the store, waiting for a permit.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Database("store handle closed".into()))?;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// See [`Store::add_bundle`].
    pub async fn add_bundle(
        &self,
        descriptor: Vec<u8>,
        role: Role,
    ) -> Result<(BundleId, bool), StoreError> {
        self.call(move |s| s.add_bundle(&descriptor, role)).await
    }

    /// See [`Store::put_chunks`]; the chunks' buffers then go to
    /// [`StoreHandle::buffers`].
    pub async fn put_chunks(
        &self,
        chunks: Vec<(ChunkId, Vec<u8>)>,
    ) -> Result<PutReport, StoreError> {
        let buffers = self.buffers.clone();
        self.call(move |s| {
            let put = s.put_chunks(chunks.iter().map(|(id, bytes)| (*id, bytes)));
            for (_, bytes) in chunks {
                buffers.give(bytes);
            }
            put
        })
        .await
    }

    /// See [`Store::get_chunk`]; read into one of [`StoreHandle::buffers`].
    pub async fn get_chunk(&self, id: ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let buffer = self.buffers.take();
        self.call(move |s| s.get_chunk_into(&id, buffer)).await
    }

    /// See [`Store::missing_chunks`].
    pub async fn missing_chunks(&self, id: BundleId) -> Result<Vec<ChunkId>, StoreError> {
        self.call(move |s| s.missing_chunks(&id)).await
    }

    /// See [`Store::record`].
    pub async fn record(&self, id: BundleId) -> Result<BundleRecord, StoreError> {
        self.call(move |s| s.record(&id)).await
    }

    /// See [`Store::add_receipt`].
    pub async fn add_receipt(
        &self,
        id: BundleId,
        secret: AckSecret,
    ) -> Result<ReceiptOutcome, StoreError> {
        self.call(move |s| s.add_receipt(&id, &secret)).await
    }
}
