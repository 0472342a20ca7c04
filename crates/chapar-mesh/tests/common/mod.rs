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

/// A node's counter once it has reached `at_least` and then stood still
/// for a moment. Counters move when the replicator or server hears how a
/// batch ended, which is after the store committed it (or the peer got
/// it), so a test that saw a bundle complete must wait for them; the
/// pause lets a late batch (a chunk fetched twice) be counted too.
pub async fn settled(counter: &prometheus_client::metrics::counter::Counter, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counter.get() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counter stopped at {} short of {at_least}",
            counter.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.get()
}

/// Whether the store holds every chunk of the bundle.
pub async fn complete(store: &StoreHandle, id: BundleId) -> bool {
    store
        .record(id)
        .await
        .map(|r| r.complete())
        .unwrap_or(false)
}

/// The node's first listen address (with `/p2p/<peer id>`), waiting for
/// the listener to come up.
pub async fn listen_addr(node: &chapar_mesh::NodeHandle) -> libp2p::Multiaddr {
    for _ in 0..100 {
        if let Some(a) = node.listen_addrs().await.into_iter().next() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node never listened");
}

/// The IP and TCP port of a `/ip4/…/tcp/…` multiaddr.
pub fn tcp_socket(addr: &libp2p::Multiaddr) -> std::net::SocketAddr {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port),
        _ => panic!("not a TCP address: {addr}"),
    }
}

/// The multiaddr that reaches `peer` at a TCP `socket` (a proxy in front
/// of it, say).
pub fn tcp_multiaddr(socket: std::net::SocketAddr, peer: libp2p::PeerId) -> libp2p::Multiaddr {
    use libp2p::multiaddr::Protocol;
    let ip = match socket.ip() {
        std::net::IpAddr::V4(a) => Protocol::Ip4(a),
        std::net::IpAddr::V6(a) => Protocol::Ip6(a),
    };
    libp2p::Multiaddr::empty()
        .with(ip)
        .with(Protocol::Tcp(socket.port()))
        .with(Protocol::P2p(peer))
}

/// A small bundle sealed in memory: its descriptor, every chunk, and the
/// recipient's receipt secret (as the recipient would find it in its
/// sealed header).
pub struct TinyBundle {
    /// The bundle id.
    pub id: BundleId,
    /// The descriptor's canonical bytes.
    pub descriptor: Vec<u8>,
    /// Every chunk (payload and index, data and parity).
    pub chunks: Vec<(chapar_format::ChunkId, Vec<u8>)>,
    /// The one recipient's receipt secret.
    pub ack_secret: chapar_format::AckSecret,
}

#[derive(Default)]
struct MemorySink(Vec<(chapar_format::ChunkId, Vec<u8>)>);

impl chapar_format::ChunkSink for MemorySink {
    fn put(&mut self, id: &chapar_format::ChunkId, bytes: &[u8]) -> std::io::Result<()> {
        self.0.push((*id, bytes.to_vec()));
        Ok(())
    }
}

/// Seals a few hundred bytes (distinct for each `tag`) to one fresh
/// recipient, in memory: a real, valid bundle in a few milliseconds.
pub fn tiny_bundle(tag: &str) -> TinyBundle {
    let key = age::x25519::Identity::generate();
    let mut opts = SealOptions::new(vec![key.to_public()]);
    opts.geometry = Geometry {
        chunk_size: 1024,
        data_per_stripe: 2,
        parity_per_stripe: 1,
    };
    let payload = format!("tiny bundle {tag}: {}", "x".repeat(200));
    let (sealed, sink) =
        chapar_bundle::seal_stream(&opts, MemorySink::default(), 1, 0, |out, _| {
            out.write_all(payload.as_bytes())
                .map_err(|source| chapar_bundle::BundleError::Io {
                    path: PathBuf::from("<memory>"),
                    source,
                })
        })
        .expect("seal");
    let header = chapar_bundle::find_header(&sealed.descriptor, &[key]).expect("header");
    TinyBundle {
        id: sealed.bundle_id,
        descriptor: sealed.descriptor_bytes,
        chunks: sink.0,
        ack_secret: header.ack_secret,
    }
}

/// Puts a bundle's descriptor and all its chunks into `store` (chunks are
/// taken only once the index naming them is known, so a few rounds).
pub async fn hold_completely(store: &StoreHandle, bundle: &TinyBundle, role: chapar_store::Role) {
    store
        .add_bundle(bundle.descriptor.clone(), role)
        .await
        .expect("add bundle");
    for _ in 0..4 {
        if complete(store, bundle.id).await {
            return;
        }
        store
            .put_chunks(bundle.chunks.clone())
            .await
            .expect("put chunks");
    }
    assert!(complete(store, bundle.id).await, "bundle not complete");
}

/// A node config for a scenario whose topology is exactly the one the test
/// builds: a fresh key, listening on loopback TCP (port 0), dialing
/// `peers`, with nothing that could find a way around it (no mDNS, no
/// Kademlia, no dialing of announced addresses, no peer book).
pub fn isolated_config(peers: Vec<libp2p::Multiaddr>) -> chapar_mesh::NodeConfig {
    let mut config = chapar_mesh::NodeConfig::new(
        libp2p::identity::Keypair::generate_ed25519(),
        vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
    );
    config.peers = peers;
    config.mdns = false;
    config.kademlia = false;
    config.target_peers = 0;
    config.dial_learned_addrs = false;
    config.use_peer_book = false;
    config
}

/// A relay on a fresh store under `dir`, holding `bundle` (imported
/// before it starts) if given, dialing `peers`, syncing every 500 ms.
pub async fn relay_in(
    dir: &Path,
    bundle: Option<&Path>,
    peers: Vec<libp2p::Multiaddr>,
) -> (chapar_mesh::NodeHandle, StoreHandle) {
    let store = chapar_store::Store::open(&dir.join("data")).expect("store");
    if let Some(bundle) = bundle {
        chapar_store::import_folder(&store, bundle, chapar_store::Role::Relaying, |_| {})
            .expect("import");
    }
    let store = StoreHandle::new(store);
    let mut config = isolated_config(peers);
    config.sync_interval = Duration::from_millis(500);
    let handle = chapar_mesh::start(config, store.clone())
        .await
        .expect("node starts");
    (handle, store)
}
