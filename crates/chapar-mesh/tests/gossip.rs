//! Gossip between real nodes over loopback TCP, and against bare libp2p
//! peers that say what a test makes them say: descriptors spread hop by
//! hop, a peer gossiping junk is cut off, a flood of valid descriptors is
//! capped without punishing anyone, and replays change nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

mod common;

use chapar_format::{BundleId, Descriptor, EXPIRY_GRANULARITY_SECS};
use chapar_mesh::{start, NodeConfig, NodeHandle, Rate};
use chapar_store::{import_folder, Role, Store, StoreHandle};
use chapar_wire::{ReceiptMessage, DESCRIPTOR_TOPIC, MAX_GOSSIP_MESSAGE, RECEIPT_TOPIC};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageId, PublishError};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

/// Long enough that no periodic sync runs during a test: what arrives
/// after the sync each new connection starts with came by gossip.
const NO_RESYNC: Duration = Duration::from_secs(3600);

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "chapar_mesh=debug".into()))
        .with_test_writer()
        .try_init();
}

/// A real node on its own store on disk.
struct Relay {
    handle: NodeHandle,
    store: StoreHandle,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start(peers: Vec<Multiaddr>, tune: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StoreHandle::new(Store::open(&dir.path().join("data")).expect("store"));
        let mut config = common::isolated_config(peers);
        config.sync_interval = NO_RESYNC;
        tune(&mut config);
        let handle = start(config, store.clone()).await.expect("node starts");
        Self {
            handle,
            store,
            _dir: dir,
        }
    }

    fn id(&self) -> PeerId {
        self.handle.peer_id()
    }

    async fn addr(&self) -> Multiaddr {
        common::listen_addr(&self.handle).await
    }

    async fn knows(&self, id: BundleId) -> bool {
        self.store.record(id).await.is_ok()
    }

    async fn bundles(&self) -> HashSet<BundleId> {
        self.store
            .call(|s| Ok(s.bundles()?.into_iter().map(|b| b.id).collect()))
            .await
            .expect("bundles")
    }

    async fn is_connected_to(&self, peer: PeerId) -> bool {
        self.handle.connected_peers().await.contains(&peer)
    }

    async fn wait_for_peers(&self, n: usize, what: &str) {
        common::eventually(what, Duration::from_secs(10), || async {
            self.handle.connected_peers().await.len() >= n
        })
        .await;
    }

    async fn wait_to_know(&self, id: BundleId, what: &str) {
        common::eventually(what, Duration::from_secs(10), || self.knows(id)).await;
    }

    /// A value from the node's metrics (the first sample of that name).
    fn metric(&self, name: &str) -> f64 {
        let text = self.handle.metrics_text();
        text.lines()
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                let key = key.split('{').next()?;
                (key == name).then(|| value.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Gossip messages this node took in (duplicates are not counted).
    fn gossip_received(&self) -> f64 {
        self.metric("libp2p_gossipsub_messages_total")
    }
}

/// What a bare peer has seen of the network.
#[derive(Default, Debug)]
struct Seen {
    connected: HashSet<PeerId>,
    established: usize,
    closed: usize,
    dial_failures: usize,
    /// (peer, topic) subscriptions announced to us.
    subscriptions: HashSet<(PeerId, String)>,
}

enum Order {
    Dial(Multiaddr),
    Publish(
        &'static str,
        Vec<u8>,
        oneshot::Sender<Result<MessageId, PublishError>>,
    ),
    Mesh(&'static str, oneshot::Sender<Vec<PeerId>>),
}

/// A bare libp2p peer (TCP, noise, yamux and gossipsub, nothing else)
/// that publishes whatever the test hands it: anonymous messages with
/// content ids, like a Chapar node's, but it validates nothing.
struct BarePeer {
    id: PeerId,
    orders: mpsc::Sender<Order>,
    seen: Arc<Mutex<Seen>>,
}

impl BarePeer {
    /// A peer subscribed to `topics` (it can publish to any topic).
    fn start(topics: &[&str]) -> Self {
        let config = gossipsub::ConfigBuilder::default()
            .max_transmit_size(MAX_GOSSIP_MESSAGE)
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(|m: &gossipsub::Message| {
                MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .heartbeat_interval(Duration::from_secs(1))
            .build()
            .expect("gossipsub config");
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| {
                let behaviour: gossipsub::Behaviour =
                    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
                        .expect("gossipsub");
                behaviour
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for topic in topics {
            swarm
                .behaviour_mut()
                .subscribe(&IdentTopic::new(*topic))
                .expect("subscribe");
        }
        let id = *swarm.local_peer_id();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (orders, mut incoming) = mpsc::channel(64);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    order = incoming.recv() => match order {
                        // The handle is gone: drop the swarm and its connections.
                        None => break,
                        Some(Order::Dial(addr)) => {
                            if swarm.dial(addr).is_err() {
                                log.lock().expect("seen").dial_failures += 1;
                            }
                        }
                        Some(Order::Publish(topic, data, reply)) => {
                            let result = swarm.behaviour_mut().publish(IdentTopic::new(topic), data);
                            let _ = reply.send(result);
                        }
                        Some(Order::Mesh(topic, reply)) => {
                            let hash = IdentTopic::new(topic).hash();
                            let _ = reply.send(swarm.behaviour().mesh_peers(&hash).copied().collect());
                        }
                    },
                    event = swarm.select_next_some() => {
                        let mut seen = log.lock().expect("seen");
                        match event {
                            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                                seen.established += 1;
                                seen.connected.insert(peer_id);
                            }
                            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                                seen.closed += 1;
                                if num_established == 0 {
                                    seen.connected.remove(&peer_id);
                                }
                            }
                            SwarmEvent::OutgoingConnectionError { .. } => seen.dial_failures += 1,
                            SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, topic }) => {
                                seen.subscriptions.insert((peer_id, topic.into_string()));
                            }
                            SwarmEvent::Behaviour(gossipsub::Event::Unsubscribed { peer_id, topic }) => {
                                seen.subscriptions.remove(&(peer_id, topic.into_string()));
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        Self { id, orders, seen }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().expect("seen")
    }

    async fn dial(&self, addr: Multiaddr) {
        let _ = self.orders.send(Order::Dial(addr)).await;
    }

    /// Dials `node` and waits until it has told us its subscriptions.
    async fn join(&self, node: &Relay) {
        self.dial(node.addr().await).await;
        let peer = node.id();
        common::eventually(
            "the node never announced its topics to the bare peer",
            Duration::from_secs(10),
            || async move {
                let seen = self.seen();
                [DESCRIPTOR_TOPIC, RECEIPT_TOPIC]
                    .iter()
                    .all(|t| seen.subscriptions.contains(&(peer, t.to_string())))
            },
        )
        .await;
    }

    async fn publish(&self, topic: &'static str, data: Vec<u8>) -> Result<MessageId, PublishError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.orders.send(Order::Publish(topic, data, tx)).await;
        rx.await.expect("bare peer running")
    }

    async fn mesh(&self, topic: &'static str) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        let _ = self.orders.send(Order::Mesh(topic, tx)).await;
        rx.await.expect("bare peer running")
    }
}

/// A valid descriptor with its expiry moved to `expires_at` (rounded to
/// the format's granularity), re-encoded canonically.
fn with_expiry(descriptor: &[u8], expires_at: u64) -> Vec<u8> {
    let mut d = Descriptor::decode(descriptor).expect("decode");
    d.expires_at = expires_at / EXPIRY_GRANULARITY_SECS * EXPIRY_GRANULARITY_SECS;
    d.encode().expect("encode")
}

fn unix_now() -> u64 {
    chapar_store::now()
}

/// A bundle sealed on the first of four relays in a line reaches the far
/// end by gossip alone: each hop validates the descriptor, takes it in and
/// forwards it, with no periodic sync to fall back on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_gossip_reaches_every_relay() {
    trace();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _) = common::sealed_bundle(tmp.path(), 50_000);

    let r0 = Relay::start(vec![], |_| {}).await;
    let r1 = Relay::start(vec![r0.addr().await], |_| {}).await;
    let r2 = Relay::start(vec![r1.addr().await], |_| {}).await;
    let r3 = Relay::start(vec![r2.addr().await], |_| {}).await;
    let line = [&r0, &r1, &r2, &r3];
    for (relay, peers) in line.iter().zip([1, 2, 2, 1]) {
        relay.wait_for_peers(peers, "the line never formed").await;
    }
    // Let the sync each new connection starts with finish: from here on
    // only gossip can carry a descriptor.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for relay in &line[1..] {
        assert!(!relay.knows(id).await);
    }

    let folder = bundle.clone();
    r0.store
        .call(move |s| import_folder(s, &folder, Role::Sealed, |_| {}).map(|_| ()))
        .await
        .expect("import");
    let descriptor = r0
        .store
        .call(move |s| s.descriptor(&id))
        .await
        .expect("descriptor");
    r0.handle.announce(descriptor).await;

    for (n, relay) in line.iter().enumerate().skip(1) {
        relay
            .wait_to_know(id, &format!("relay {n} never heard of the bundle"))
            .await;
        assert!(
            relay.gossip_received() >= 1.0,
            "relay {n} knows the bundle but received no gossip"
        );
    }
    for relay in line {
        assert_eq!(relay.handle.stats().gossip_rejected.get(), 0);
        relay.handle.shutdown().await;
    }
}

/// An attacker joins a relay's mesh like any peer, stays a while, then
/// gossips junk "descriptors". The relay rejects them, cuts the attacker
/// off, refuses it when it comes back, and goes on replicating with its
/// honest neighbour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gossiping_invalid_descriptors_is_cut_off() {
    // A lurker, not a hit and run: a couple of heartbeats in the mesh
    // before it turns, as any peer that has been around a while.
    junk_attack(Duration::from_secs(2)).await;
}

/// The same attack straight after joining the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gossiping_junk_as_soon_as_it_joins_is_cut_off() {
    junk_attack(Duration::ZERO).await;
}

/// An attacker meets relay A (which has an honest neighbour B), sits in
/// A's descriptor mesh for `lurk`, then gossips five junk descriptors.
async fn junk_attack(lurk: Duration) {
    trace();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _) = common::sealed_bundle(tmp.path(), 100_000);
    let fast_sync = |c: &mut NodeConfig| c.sync_interval = Duration::from_millis(500);
    let a = Relay::start(vec![], fast_sync).await;
    let b = Relay::start(vec![a.addr().await], fast_sync).await;
    a.wait_for_peers(1, "B never connected to A").await;

    let attacker = BarePeer::start(&[DESCRIPTOR_TOPIC]);
    attacker.join(&a).await;
    common::eventually(
        "A and the attacker never meshed",
        Duration::from_secs(10),
        || async { attacker.mesh(DESCRIPTOR_TOPIC).await.contains(&a.id()) },
    )
    .await;
    tokio::time::sleep(lurk).await;

    let mut sent = 0;
    for i in 0..5u8 {
        let mut junk = b"chapar/D".to_vec();
        junk.extend(std::iter::repeat_n(i, 40 + usize::from(i)));
        if attacker.publish(DESCRIPTOR_TOPIC, junk).await.is_ok() {
            sent += 1;
        }
    }
    assert!(sent >= 3, "the attacker could publish only {sent} messages");

    common::eventually(
        "A never cut the attacker off",
        Duration::from_secs(10),
        || async {
            !a.is_connected_to(attacker.id).await && !attacker.seen().connected.contains(&a.id())
        },
    )
    .await;
    let stats = a.handle.stats();
    assert!(stats.peers_banned.get() >= 1);
    assert!(stats.gossip_rejected.get() >= 3);
    assert!(a.is_connected_to(b.id()).await, "B was cut off too");

    // The attacker comes back: A lets the connection go at once.
    let before = {
        let seen = attacker.seen();
        seen.closed + seen.dial_failures
    };
    attacker.dial(a.addr().await).await;
    common::eventually(
        "the attacker's redial was neither refused nor dropped",
        Duration::from_secs(10),
        || async {
            let seen = attacker.seen();
            seen.closed + seen.dial_failures > before && seen.connected.is_empty()
        },
    )
    .await;
    for _ in 0..5 {
        assert!(
            !a.is_connected_to(attacker.id).await,
            "A took the attacker back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The refused connection neither counts as a peer nor uncounts one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gauge = a.handle.stats().peers_connected.get();
        let connected = a.handle.connected_peers().await.len() as i64;
        if gauge == connected || tokio::time::Instant::now() > deadline {
            assert_eq!(
                gauge, connected,
                "A's peers_connected gauge disagrees with its connected peers"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Meanwhile A and B go on as before: a bundle sealed at B reaches A whole.
    let folder = bundle.clone();
    b.store
        .call(move |s| import_folder(s, &folder, Role::Sealed, |_| {}).map(|_| ()))
        .await
        .expect("import");
    let descriptor = b
        .store
        .call(move |s| s.descriptor(&id))
        .await
        .expect("descriptor");
    b.handle.announce(descriptor).await;
    common::eventually(
        "A never completed B's bundle",
        Duration::from_secs(30),
        || common::complete(&a.store, id),
    )
    .await;
    assert!(a.is_connected_to(b.id()).await);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

/// A peer pushes twenty valid, new descriptors as fast as it can. The
/// relay takes in its burst allowance and no more, forwards nothing it
/// refused, counts the refusals, and does not treat the flooder as an
/// offender; an honest neighbour's descriptor still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_flood_is_capped() {
    trace();
    const BURST: u32 = 5;
    const FLOOD: usize = 20;
    let flood: Vec<common::TinyBundle> = (0..FLOOD)
        .map(|i| common::tiny_bundle(&format!("flood {i}")))
        .collect();
    let a = Relay::start(vec![], |c| {
        c.descriptor_rate = Rate {
            burst: BURST,
            per_second: 0.0001,
        };
    })
    .await;
    let b = Relay::start(vec![a.addr().await], |_| {}).await;
    a.wait_for_peers(1, "B never connected to A").await;
    let flooder = BarePeer::start(&[]);
    flooder.join(&a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    for bundle in &flood {
        flooder
            .publish(DESCRIPTOR_TOPIC, bundle.descriptor.clone())
            .await
            .expect("publish");
    }
    let flooded: HashSet<BundleId> = flood.iter().map(|b| b.id).collect();
    let taken = || async { a.bundles().await.intersection(&flooded).count() };
    let refused = || a.handle.stats().descriptors_refused.get();
    common::eventually(
        "A never dealt with the whole flood",
        Duration::from_secs(15),
        || async { taken().await as u64 + refused() >= FLOOD as u64 },
    )
    .await;
    assert_eq!(
        taken().await,
        BURST as usize,
        "A took in more than its burst"
    );
    assert_eq!(refused(), (FLOOD - BURST as usize) as u64);

    // What A refused it did not forward: B has at most what A took.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_b = b.bundles().await;
    assert!(at_b.intersection(&flooded).count() <= BURST as usize);
    assert!(at_b.is_subset(&a.bundles().await));

    // Flooding valid descriptors is not an offence.
    let stats = a.handle.stats();
    assert_eq!(stats.gossip_rejected.get(), 0);
    assert_eq!(stats.peers_banned.get(), 0);
    assert!(a.is_connected_to(flooder.id).await, "A dropped the flooder");
    assert_eq!(flooder.seen().closed, 0);

    // B has its own allowance at A: its bundle gets in despite the flood.
    let own = common::tiny_bundle("B's own");
    b.store
        .add_bundle(own.descriptor.clone(), Role::Sealed)
        .await
        .expect("add");
    b.handle.announce(own.descriptor.clone()).await;
    a.wait_to_know(own.id, "A refused B's descriptor after the flood")
        .await;
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

/// Replays and forgeries change nothing: the same descriptor from two
/// peers is taken in once; a forged receipt is rejected and frees
/// nothing, while the genuine one frees the bundle; and the delivered
/// bundle's descriptor, gossiped again, does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_gossip_is_harmless() {
    trace();
    let held = common::tiny_bundle("held");
    let (new, later, last) = (
        common::tiny_bundle("new"),
        common::tiny_bundle("later"),
        common::tiny_bundle("last"),
    );
    let a = Relay::start(vec![], |_| {}).await;
    common::hold_completely(&a.store, &held, Role::Relaying).await;
    let used = a.store.call(|s| s.used_bytes()).await.expect("used");
    assert!(used > 0);
    // Publishers only: A forwards nothing to them, so each publishes
    // exactly what the test says.
    let (p, q) = (BarePeer::start(&[]), BarePeer::start(&[]));
    p.join(&a).await;
    q.join(&a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The same descriptor from two peers; then another from the second,
    // which A sees only after it has dealt with the duplicate.
    p.publish(DESCRIPTOR_TOPIC, new.descriptor.clone())
        .await
        .expect("publish");
    a.wait_to_know(new.id, "A never took in the new descriptor")
        .await;
    q.publish(DESCRIPTOR_TOPIC, new.descriptor.clone())
        .await
        .expect("publish the same again");
    q.publish(DESCRIPTOR_TOPIC, later.descriptor.clone())
        .await
        .expect("publish");
    a.wait_to_know(later.id, "A never took in the later descriptor")
        .await;
    assert_eq!(
        a.gossip_received(),
        2.0,
        "the duplicate was processed again"
    );
    assert_eq!(
        a.bundles().await,
        HashSet::from([held.id, new.id, later.id])
    );

    // A forged receipt: rejected, nothing freed.
    let forged = ReceiptMessage {
        bundle: held.id,
        secret: chapar_format::AckSecret::random(),
    };
    p.publish(RECEIPT_TOPIC, forged.encode().to_vec())
        .await
        .expect("publish");
    common::eventually(
        "A never rejected the forged receipt",
        Duration::from_secs(10),
        || async { a.handle.stats().gossip_rejected.get() == 1 },
    )
    .await;
    assert!(
        common::complete(&a.store, held.id).await,
        "a forged receipt freed the bundle"
    );
    assert!(!a
        .store
        .call(move |s| s.is_tombstoned(&held.id))
        .await
        .expect("store"));
    assert_eq!(a.store.call(|s| s.used_bytes()).await.expect("used"), used);

    // The genuine receipt frees it.
    let genuine = ReceiptMessage {
        bundle: held.id,
        secret: held.ack_secret.clone(),
    };
    q.publish(RECEIPT_TOPIC, genuine.encode().to_vec())
        .await
        .expect("publish");
    common::eventually(
        "the genuine receipt did not free the bundle",
        Duration::from_secs(10),
        || async {
            a.store
                .call(move |s| s.is_tombstoned(&held.id))
                .await
                .expect("store")
        },
    )
    .await;
    assert_eq!(a.store.call(|s| s.used_bytes()).await.expect("used"), 0);

    // The delivered bundle's descriptor gossiped again (new to A's gossip
    // layer, which never saw it) does not resurrect it; A has dealt with
    // it once it knows the descriptor P sends next.
    p.publish(DESCRIPTOR_TOPIC, held.descriptor.clone())
        .await
        .expect("publish");
    p.publish(DESCRIPTOR_TOPIC, last.descriptor.clone())
        .await
        .expect("publish");
    a.wait_to_know(last.id, "A never took in the last descriptor")
        .await;
    assert!(
        !a.knows(held.id).await,
        "a replayed descriptor brought a delivered bundle back"
    );
    assert!(a
        .store
        .call(move |s| s.is_tombstoned(&held.id))
        .await
        .expect("store"));
    assert_eq!(a.handle.stats().gossip_rejected.get(), 1);
    assert!(
        a.is_connected_to(q.id).await,
        "the honest publisher was cut off"
    );
    a.handle.shutdown().await;
}

/// A well-formed descriptor that claims to live longer than any relay
/// keeps a bundle is rejected; one already expired is ignored (it may be
/// a clock apart, not malice). Neither is taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_with_impossible_expiries_are_not_taken_in() {
    trace();
    let base = common::tiny_bundle("expiry");
    let now = unix_now();
    let far = with_expiry(&base.descriptor, now + 500 * 24 * 3600);
    let stale = with_expiry(&base.descriptor, now - 2 * EXPIRY_GRANULARITY_SECS);
    let fine = common::tiny_bundle("fine");
    let a = Relay::start(vec![], |_| {}).await;
    let peer = BarePeer::start(&[]);
    peer.join(&a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    peer.publish(DESCRIPTOR_TOPIC, stale.clone())
        .await
        .expect("publish");
    peer.publish(DESCRIPTOR_TOPIC, far.clone())
        .await
        .expect("publish");
    peer.publish(DESCRIPTOR_TOPIC, fine.descriptor.clone())
        .await
        .expect("publish");
    a.wait_to_know(fine.id, "A never took in the sane descriptor")
        .await;
    assert!(!a.knows(BundleId::of(&far)).await);
    assert!(!a.knows(BundleId::of(&stale)).await);
    assert_eq!(
        a.handle.stats().gossip_rejected.get(),
        1,
        "exactly the far-future descriptor is rejected"
    );
    a.handle.shutdown().await;
}
