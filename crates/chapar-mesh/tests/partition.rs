//! Partition and heal: a relay cut off while a bundle is announced catches
//! up by inventory sync once its links come back. Nobody announces twice.
//!
//! Relays A and B are linked directly. Relay C reaches them only through
//! two `chapar-link` proxies, which the test cuts and heals. C does not
//! listen and nothing discovers peers (no mDNS, no relaying, no peer book,
//! no dialing of peers found by Kademlia), so the proxies are its only way
//! in or out: what C holds came through them.

use std::time::Duration;

mod common;

use chapar_format::BundleId;
use chapar_link::{Link, Shape};
use chapar_mesh::{start, NodeHandle};
use chapar_store::{import_folder, Role, Store, StoreError, StoreHandle};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// Longer than gossipsub keeps a message to pass on (5 heartbeats of 1 s):
/// a partition that lasts this long cannot be bridged by gossip.
const GOSSIP_MEMORY: Duration = Duration::from_secs(6);
/// How long any one step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

struct Relay {
    handle: NodeHandle,
    store: StoreHandle,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// A relay that dials `peers` and, if `listens`, accepts connections
    /// on loopback.
    async fn start(listens: bool, peers: Vec<Multiaddr>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StoreHandle::new(Store::open(&dir.path().join("data")).expect("store"));
        let listen = if listens {
            vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")]
        } else {
            Vec::new()
        };
        let mut config = common::isolated_config(peers);
        config.listen = listen;
        config.sync_interval = Duration::from_millis(500);
        config.relay = None;
        let handle = start(config, store.clone()).await.expect("node starts");
        Self {
            handle,
            store,
            _dir: dir,
        }
    }

    async fn connected_to(&self, peers: &[PeerId]) -> bool {
        let connected = self.handle.connected_peers().await;
        peers.iter().all(|p| connected.contains(p))
    }

    /// Whether the store knows the bundle at all (its descriptor).
    async fn knows(&self, id: BundleId) -> bool {
        match self.store.record(id).await {
            Ok(_) => true,
            Err(StoreError::UnknownBundle { .. }) => false,
            Err(e) => panic!("store: {e}"),
        }
    }

    async fn complete(&self, id: BundleId) -> bool {
        common::complete(&self.store, id).await
    }
}

/// A link in front of `relay`, and the address that reaches the relay
/// through it.
async fn link_to(relay: &Relay) -> (Link, Multiaddr) {
    let target = common::tcp_socket(&common::listen_addr(&relay.handle).await);
    let link = Link::start(
        "127.0.0.1:0".parse().expect("addr"),
        target,
        Shape::default(),
    )
    .await
    .expect("link starts");
    let through = common::tcp_multiaddr(link.local_addr(), relay.handle.peer_id());
    (link, through)
}

fn bytes_back(links: &[&Link]) -> u64 {
    links.iter().map(|l| l.bytes_forwarded().1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_during_an_announcement_gets_the_bundle_by_sync_when_its_links_heal() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chapar_mesh=info,chapar_link=debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _) = common::sealed_bundle(tmp.path(), 300_000);

    // A and B, linked directly; C behind a link to each.
    let a = Relay::start(true, vec![]).await;
    let b = Relay::start(true, vec![common::listen_addr(&a.handle).await]).await;
    let (link_a, via_a) = link_to(&a).await;
    let (link_b, via_b) = link_to(&b).await;
    let c = Relay::start(false, vec![via_a, via_b]).await;
    let a_and_b = [a.handle.peer_id(), b.handle.peer_id()];
    common::eventually("C never met A and B through the links", PATIENCE, || {
        c.connected_to(&a_and_b)
    })
    .await;
    assert!(link_a.connections_accepted() >= 1 && link_b.connections_accepted() >= 1);

    // Partition: C's links go down, and its connections with them.
    link_a.set_up(false);
    link_b.set_up(false);
    let cut = Instant::now();
    common::eventually(
        "C still has a peer with both links down: something got around them",
        PATIENCE,
        || async { c.handle.connected_peers().await.is_empty() },
    )
    .await;
    eprintln!("C noticed the cut in {:?}", cut.elapsed());
    let back_at_cut = bytes_back(&[&link_a, &link_b]);

    // A bundle is placed on A and announced once.
    let placed = bundle.clone();
    a.store
        .call(move |s| import_folder(s, &placed, Role::Sealed, |_| {}))
        .await
        .expect("import");
    let descriptor = a
        .store
        .call(move |s| s.descriptor(&id))
        .await
        .expect("descriptor");
    a.handle.announce(descriptor).await;
    let announced = Instant::now();

    // B gets all of it; C, cut off, nothing at all.
    common::eventually("B never completed the bundle", PATIENCE, || b.complete(id)).await;
    let wait = GOSSIP_MEMORY.saturating_sub(announced.elapsed());
    tokio::time::sleep(wait).await;
    assert!(!c.knows(id).await, "C heard of the bundle while cut off");
    assert_eq!(
        bytes_back(&[&link_a, &link_b]),
        back_at_cut,
        "bytes crossed a link that was down"
    );
    assert!(
        link_a.connections_refused() + link_b.connections_refused() >= 1,
        "C never tried to redial during the partition"
    );

    // Heal: C redials, syncs inventories, and fetches it all. Nobody
    // announces anything again.
    link_a.set_up(true);
    link_b.set_up(true);
    let healed = Instant::now();
    common::eventually("C never came back to A and B", PATIENCE, || {
        c.connected_to(&a_and_b)
    })
    .await;
    eprintln!("C reconnected {:?} after the heal", healed.elapsed());
    common::eventually(
        "C never completed the bundle after the heal",
        PATIENCE,
        || c.complete(id),
    )
    .await;
    eprintln!(
        "C completed the bundle {:?} after the heal",
        healed.elapsed()
    );

    // Every chunk byte C fetched came back through the links after the heal.
    let fetched = c.handle.stats().bytes_fetched.get();
    let carried = bytes_back(&[&link_a, &link_b]) - back_at_cut;
    assert!(fetched > 0, "C completed without fetching");
    assert!(
        carried >= fetched,
        "C fetched {fetched} B but the links carried back only {carried} B"
    );
    eprintln!(
        "links carried back {carried} B for {fetched} B of chunks; open time {:?} / {:?}",
        link_a.open_time(),
        link_b.open_time()
    );

    for r in [&a, &b, &c] {
        r.handle.shutdown().await;
    }
}
