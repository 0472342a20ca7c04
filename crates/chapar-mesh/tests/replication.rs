//! Real swarms over loopback TCP, each on its own store on disk.

use std::path::Path;
use std::time::Duration;

mod common;

use chapar_bundle::open_folder;
use chapar_format::BundleId;
use chapar_mesh::{start, NodeHandle};
use chapar_store::{export_folder, Role, Store, StoreHandle};
use libp2p::Multiaddr;

struct TestNode {
    handle: NodeHandle,
    store: StoreHandle,
    _dir: tempfile::TempDir,
}

impl TestNode {
    async fn start(peers: Vec<Multiaddr>, preload: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (handle, store) = common::relay_in(dir.path(), preload, peers).await;
        Self {
            handle,
            store,
            _dir: dir,
        }
    }

    async fn addr(&self) -> Multiaddr {
        for _ in 0..100 {
            if let Some(a) = self.handle.listen_addrs().await.into_iter().next() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node never listened");
    }

    async fn complete(&self, id: BundleId) -> bool {
        common::complete(&self.store, id).await
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
async fn a_bundle_on_one_relay_reaches_a_chain_of_relays_and_a_late_joiner() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chapar_mesh=debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, key) = common::sealed_bundle(tmp.path(), 300_000);

    let a = TestNode::start(vec![], Some(&bundle)).await;
    assert!(a.complete(id).await);
    let b = TestNode::start(vec![a.addr().await], None).await;
    let c = TestNode::start(vec![b.addr().await], None).await;
    b.wait_complete(id, "relay B (next to A)").await;
    c.wait_complete(id, "relay C (two hops from A)").await;

    // A relay that comes up after everyone else has it catches up by sync
    // alone: nothing is re-gossiped for it.
    let late = TestNode::start(vec![c.addr().await], None).await;
    late.wait_complete(id, "the late relay").await;

    // What reached the far end opens.
    let out = tmp.path().join("export");
    export_folder(late.store.store(), &id, &out).expect("export");
    let opened = tmp.path().join("opened");
    open_folder(&out, &[key], &opened).expect("opens");
    for n in [&a, &b, &c, &late] {
        n.handle.shutdown().await;
    }
}

/// A receipt recorded at one relay frees the bundle on the others: it
/// travels in the inventory sync, checked by preimage at every hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_frees_the_bundle_everywhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, key) = common::sealed_bundle(tmp.path(), 300_000);
    let a = TestNode::start(vec![], Some(&bundle)).await;
    let b = TestNode::start(vec![a.addr().await], None).await;
    let c = TestNode::start(vec![b.addr().await], None).await;
    b.wait_complete(id, "relay B").await;
    c.wait_complete(id, "relay C").await;

    // The recipient opens the bundle and hands its receipt to relay C.
    let opened = open_folder(&bundle, &[key], &tmp.path().join("opened")).expect("opens");
    let outcome = c
        .store
        .add_receipt(id, opened.ack_secret.clone())
        .await
        .expect("receipt");
    assert_eq!(
        outcome,
        chapar_store::ReceiptOutcome::Recorded { delivered: true }
    );
    c.handle
        .announce_receipt(&chapar_wire::ReceiptMessage {
            bundle: id,
            secret: opened.ack_secret,
        })
        .await;

    for (node, name) in [(&a, "relay A"), (&b, "relay B"), (&c, "relay C")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let tombstoned = node
                .store
                .call(move |s| s.is_tombstoned(&id))
                .await
                .expect("store");
            if tombstoned {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never learned of the receipt"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let used = node.store.call(|s| s.used_bytes()).await.expect("used");
        assert_eq!(used, 0, "{name} still holds the delivered bundle's chunks");
    }
}

/// A relay stopped halfway through a bundle and started again on the same
/// data directory fetches only what it lacks, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restarted_mid_transfer_resumes_without_refetching() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chapar_mesh=debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _) = common::sealed_bundle(tmp.path(), 300_000);
    let a = TestNode::start(vec![], Some(&bundle)).await;
    let a_addr = a.addr().await;
    let data = tmp.path().join("b-data");

    // One chunk in flight at a time, so the stop lands mid-transfer.
    let slow = |peers: Vec<Multiaddr>| {
        let mut config = common::isolated_config(peers);
        config.sync_interval = Duration::from_millis(300);
        config.limits = chapar_mesh::Limits {
            per_peer_bytes: 4096,
            total_bytes: 4096,
        };
        config
    };
    let store = StoreHandle::new(Store::open(&data).expect("store"));
    let b = start(slow(vec![a_addr.clone()]), store.clone())
        .await
        .expect("starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let held_before = loop {
        let held = store.record(id).await.map(|r| r.held_chunks).unwrap_or(0);
        if held >= 8 {
            break held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress before the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    b.shutdown().await;
    drop(store);
    let record = loop {
        // The old node's tasks let go of the store as they wind down.
        match Store::open(&data) {
            Ok(s) => break s.record(&id).expect("record"),
            Err(chapar_store::StoreError::Locked { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert!(record.held_chunks >= held_before);
    assert!(
        !record.complete(),
        "finished before the restart: the test proved nothing"
    );

    let store = StoreHandle::new(Store::open(&data).expect("store"));
    let b = start(slow(vec![a_addr]), store.clone())
        .await
        .expect("restarts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !store
        .record(id)
        .await
        .map(|r| r.complete())
        .unwrap_or(false)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted relay never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only what was missing at the restart was fetched: nothing twice.
    let r = store.record(id).await.expect("record");
    let missing = u64::from(r.known_chunks - record.held_chunks);
    let fetched = common::settled(&b.stats().chunks_fetched, missing).await;
    assert_eq!(fetched, missing);
}

/// Holds `chunks` of a sealed bundle folder (with its descriptor and
/// index) in a fresh store, without the parity repair an import does.
async fn hold_part(
    folder: &Path,
    keep: impl Fn(usize) -> bool,
) -> (StoreHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let bundle = chapar_bundle::BundleFolder::new(folder);
    let (d, descriptor) = bundle.read_descriptor().expect("descriptor");
    let (ids, _) = chapar_format::read_index(&d, &bundle).expect("index");
    store
        .add_bundle(&descriptor, Role::Relaying)
        .expect("descriptor");
    let read =
        |id: &chapar_format::ChunkId| (*id, std::fs::read(bundle.chunk_path(id)).expect("chunk"));
    store
        .put_chunks(d.index_chunks.iter().map(read))
        .expect("index chunks");
    let kept: Vec<_> = (0..ids.len())
        .filter(|p| keep(*p))
        .map(|p| read(&ids[p]))
        .collect();
    store.put_chunks(kept).expect("chunks");
    (StoreHandle::new(store), dir)
}

/// The chunks that died with a peer are not fetched again across the
/// scarce link: a relay that has gathered all the rest from two partial
/// holders, neither of which could finish alone, rebuilds them from parity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rebuilds_from_parity_what_no_peer_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (folder, id, key) = common::sealed_bundle(tmp.path(), 300_000);
    let bundle = chapar_bundle::BundleFolder::new(&folder);
    let (d, _) = bundle.read_descriptor().expect("descriptor");
    let layout = d.payload_layout().expect("layout");
    let lost: Vec<usize> = (0..layout.stripes())
        .map(|s| layout.position(chapar_format::Slot::Data(layout.stripe_data(s).start)))
        .collect();
    let is_parity = |p: usize| matches!(layout.slot(p), chapar_format::Slot::Parity { .. });
    // One holds the data (less one chunk per stripe), the other the parity.
    let (data_store, _d1) = hold_part(&folder, |p| !is_parity(p) && !lost.contains(&p)).await;
    let (parity_store, _d2) = hold_part(&folder, is_parity).await;
    for s in [&data_store, &parity_store] {
        let s = s.clone();
        assert!(
            !s.call(move |s| s.parity_can_complete(&id))
                .await
                .expect("ask"),
            "a holder could finish alone: the test would prove nothing"
        );
    }
    // Neither holder fetches, so neither can rebuild or pass chunks on.
    let source = |store: StoreHandle| async move {
        let mut config = common::isolated_config(vec![]);
        config.fetch = chapar_mesh::Fetch::Nothing;
        start(config, store).await.expect("holder starts")
    };
    let data_node = source(data_store).await;
    let parity_node = source(parity_store).await;
    let b = TestNode::start(
        vec![
            common::listen_addr(&data_node).await,
            common::listen_addr(&parity_node).await,
        ],
        None,
    )
    .await;
    b.wait_complete(id, "relay B, from two partial holders and parity")
        .await;

    let stats = b.handle.stats();
    let lost_count = lost.len() as u64;
    assert_eq!(
        common::settled(&stats.chunks_rebuilt, lost_count).await,
        lost_count,
        "exactly the chunks nobody held were rebuilt"
    );
    let others = (d.index_chunks.len() + layout.total_chunks() - lost.len()) as u64;
    assert_eq!(
        common::settled(&stats.chunks_fetched, others).await,
        others,
        "everything else was fetched, once"
    );
    assert!(!b.store.store().fsck(false).expect("fsck").damaged());
    let out = tmp.path().join("export");
    export_folder(b.store.store(), &id, &out).expect("export");
    open_folder(&out, &[key], &tmp.path().join("opened")).expect("opens");
    for n in [&data_node, &parity_node, &b.handle] {
        n.shutdown().await;
    }
}
