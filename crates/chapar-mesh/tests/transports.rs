//! The transports and discovery a relay offers, each carrying a real
//! bundle between real swarms on loopback: QUIC, WebSocket, a relay v2
//! circuit (with more data than libp2p's default circuit limit), and
//! Kademlia finding a relay nobody was told about.

use std::time::Duration;

mod common;

use chapar_format::BundleId;
use chapar_mesh::{start, NodeConfig, NodeHandle};
use chapar_store::{import_folder, Role, Store, StoreHandle};
use libp2p::multiaddr::Protocol;
use libp2p::{identity, Multiaddr};

struct TestNode {
    handle: NodeHandle,
    store: StoreHandle,
    _dir: tempfile::TempDir,
}

struct Setup<'a> {
    listen: Vec<&'a str>,
    peers: Vec<Multiaddr>,
    preload: Option<&'a std::path::Path>,
    /// Peers found by discovery are dialed (Kademlia); off, only the
    /// topology the test builds exists.
    discover: bool,
    quota: Option<u64>,
}

impl<'a> Setup<'a> {
    fn new(listen: Vec<&'a str>, peers: Vec<Multiaddr>) -> Self {
        Self {
            listen,
            peers,
            preload: None,
            discover: false,
            quota: None,
        }
    }
}

impl TestNode {
    async fn start(setup: Setup<'_>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data")).expect("store");
        if let Some(bundle) = setup.preload {
            import_folder(&store, bundle, Role::Relaying, |_| {}).expect("import");
        }
        store.set_quota(setup.quota).expect("quota");
        let store = StoreHandle::new(store);
        let listen = setup
            .listen
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let mut config = NodeConfig::new(identity::Keypair::generate_ed25519(), listen);
        config.peers = setup.peers;
        config.sync_interval = Duration::from_millis(500);
        config.mdns = false;
        config.use_peer_book = false;
        if !setup.discover {
            config.kademlia = false;
            config.target_peers = 0;
        }
        let handle = start(config, store.clone()).await.expect("node starts");
        Self {
            handle,
            store,
            _dir: dir,
        }
    }

    /// The first listen address whose protocols include `kind` ("quic-v1", "ws", "tcp").
    async fn addr(&self, kind: &str) -> Multiaddr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .handle
                .listen_addrs()
                .await
                .into_iter()
                .find(|a| a.iter().any(|p| p.tag() == kind));
            if let Some(a) = found {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} listen address"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_complete(&self, id: BundleId, what: &str) {
        let store = self.store.clone();
        common::eventually(
            &format!("{what} never completed the bundle"),
            Duration::from_secs(60),
            || {
                let store = store.clone();
                async move { common::complete(&store, id).await }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_replicates_over_quic_and_over_websocket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _key) = common::sealed_bundle(tmp.path(), 300_000);
    let mut setup = Setup::new(
        vec!["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0/ws"],
        vec![],
    );
    setup.preload = Some(&bundle);
    let a = TestNode::start(setup).await;
    let over_quic = TestNode::start(Setup::new(vec![], vec![a.addr("quic-v1").await])).await;
    let over_ws = TestNode::start(Setup::new(vec![], vec![a.addr("ws").await])).await;
    over_quic
        .wait_complete(id, "the relay dialing over QUIC")
        .await;
    over_ws
        .wait_complete(id, "the relay dialing over WebSocket")
        .await;
    for n in [&a, &over_quic, &over_ws] {
        n.handle.shutdown().await;
    }
}

/// C cannot be dialed directly (it listens only through relay R); A
/// reaches it through R's circuit. R keeps nothing (a quota of one byte),
/// so every chunk C gets crossed the circuit, and the bundle is several
/// times libp2p's default circuit limit of 128 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reachable_only_through_a_circuit_gets_the_bundle() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chapar_mesh=debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _key) = common::sealed_bundle(tmp.path(), 600_000);
    let mut relay_setup = Setup::new(vec!["/ip4/127.0.0.1/tcp/0"], vec![]);
    relay_setup.quota = Some(1);
    let relay = TestNode::start(relay_setup).await;
    let relay_addr = relay.addr("tcp").await;

    // C's only address is a reservation on R.
    let circuit_listen = relay_addr.clone().with(Protocol::P2pCircuit).to_string();
    let c = TestNode::start(Setup::new(vec![&circuit_listen], vec![])).await;
    let via_relay = c.addr("p2p-circuit").await;
    assert!(
        via_relay.to_string().contains("/p2p-circuit/"),
        "{via_relay}"
    );

    let mut a_setup = Setup::new(vec![], vec![via_relay]);
    a_setup.preload = Some(&bundle);
    let a = TestNode::start(a_setup).await;
    c.wait_complete(id, "the relay behind the circuit").await;
    // A's counter moves once each batch is sent, maybe after C stored it.
    common::eventually(
        "A never served the bundle itself",
        Duration::from_secs(30),
        || async { a.handle.stats().bytes_served.get() >= 600_000 },
    )
    .await;
    assert_eq!(relay.handle.stats().bytes_served.get(), 0, "R held nothing");
    for n in [&a, &relay, &c] {
        n.handle.shutdown().await;
    }
}

/// A knows nobody; B was told of A; C was told only of B. Kademlia walks
/// C to A, and C connects to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_finds_a_relay_nobody_named() {
    let discovering = |peers| {
        let mut s = Setup::new(vec!["/ip4/127.0.0.1/tcp/0"], peers);
        s.discover = true;
        s
    };
    let a = TestNode::start(discovering(vec![])).await;
    let b = TestNode::start(discovering(vec![a.addr("tcp").await])).await;
    let c = TestNode::start(discovering(vec![b.addr("tcp").await])).await;
    let a_id = a.handle.peer_id();
    common::eventually("C never connected to A", Duration::from_secs(30), || {
        let c = c.handle.clone();
        async move { c.connected_peers().await.contains(&a_id) }
    })
    .await;
    for n in [&a, &b, &c] {
        n.handle.shutdown().await;
    }
}

/// A relay named twice, first at an address nothing answers (as a censor
/// leaves a blocked link) and then at one that works, is reached: every
/// address of a peer is dialed, not only the last one given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_given_at_a_dead_and_a_live_address_is_reached_through_the_live_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _key) = common::sealed_bundle(tmp.path(), 100_000);
    let mut setup = Setup::new(vec!["/ip4/127.0.0.1/tcp/0"], vec![]);
    setup.preload = Some(&bundle);
    let a = TestNode::start(setup).await;
    let live = a.addr("tcp").await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dead: Multiaddr = format!("/ip4/127.0.0.1/tcp/{dead_port}/p2p/{}", a.handle.peer_id())
        .parse()
        .expect("addr");
    for peers in [vec![live.clone(), dead.clone()], vec![dead, live]] {
        let b = TestNode::start(Setup::new(vec![], peers)).await;
        b.wait_complete(id, "the node given a dead and a live address")
            .await;
        b.handle.shutdown().await;
    }
    a.handle.shutdown().await;
}
