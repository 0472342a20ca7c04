//! Helpers shared by the mesh's scenario tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chapar_bundle::{seal_to_folder, SealOptions};
use chapar_format::{BundleId, Geometry};
use chapar_store::StoreHandle;

/// Seals `size` bytes of patterned data (4 KiB chunks, 16+4) into a bundle
/// folder under `dir`.
pub fn sealed_bundle(dir: &Path, size: usize) -> (PathBuf, BundleId, age::x25519::Identity) {
    let input = dir.join("evidence");
    std::fs::create_dir(&input).expect("mkdir");
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(input.join("scan.bin"), data).expect("write");
    let key = age::x25519::Identity::generate();
    let mut opts = SealOptions::new(vec![key.to_public()]);
    opts.geometry = Geometry {
        chunk_size: 4096,
        data_per_stripe: 16,
        parity_per_stripe: 4,
    };
    let folder = dir.join("bundle");
    let sealed = seal_to_folder(&[input], &opts, &folder).expect("seal");
    (folder, sealed.bundle_id, key)
}

/// Polls `check` until it holds; fails the test with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the store holds every chunk of the bundle.
pub async fn complete(store: &StoreHandle, id: BundleId) -> bool {
    store
        .record(id)
        .await
        .map(|r| r.complete())
        .unwrap_or(false)
}
