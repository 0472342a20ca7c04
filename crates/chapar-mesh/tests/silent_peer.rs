//! A peer whose link stalls with requests outstanding: open, carrying
//! nothing, as when a satellite window closes under a TCP connection that
//! waits for it. Real swarms over loopback TCP, the stalled one behind a
//! `chapar-link` proxy.

use std::time::Duration;

mod common;

use chapar_bundle::open_folder;
use chapar_link::{Link, Shape};
use chapar_store::export_folder;

/// B asks A for chunks over a slow link, which then stalls; C, holding the
/// whole bundle, arrives. B must not wait for A's link (or for a ping to
/// fail and close it): it gives up on what it asked of A and gets those
/// chunks from C, while A's link is still stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_asked_of_a_peer_whose_link_stalled_come_from_another_holder() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chapar_mesh=info,chapar_link=debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (folder, id, key) = common::sealed_bundle(tmp.path(), 1_000_000);
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();

    let (a, _) = common::relay_in(dirs[0].path(), Some(&folder), vec![]).await;
    let (c, _) = common::relay_in(dirs[2].path(), Some(&folder), vec![]).await;
    // 64 KiB/s: B's first batch from A (512 KiB) would take 8 s.
    let shape = Shape {
        rate_bytes_per_sec: Some(64 * 1024),
        initially_up: true,
    };
    let a_addr = common::tcp_socket(&common::listen_addr(&a).await);
    let link = Link::start("127.0.0.1:0".parse().expect("addr"), a_addr, shape)
        .await
        .expect("link");
    let via_link = common::tcp_multiaddr(link.local_addr(), a.peer_id());
    let (b, b_store) = common::relay_in(dirs[1].path(), None, vec![via_link]).await;

    common::eventually("A never began serving B", Duration::from_secs(30), || {
        let served = a.stats().chunks_served.get();
        async move { served > 0 }
    })
    .await;
    link.set_stalled(true);
    assert!(
        !common::complete(&b_store, id).await,
        "B already had the bundle: the test would prove nothing"
    );
    b.dial(common::listen_addr(&c).await).await;

    common::eventually(
        "B never completed the bundle while A's link was stalled",
        Duration::from_secs(60),
        || common::complete(&b_store, id),
    )
    .await;
    assert!(
        b.stats().requests_abandoned.get() >= 1,
        "B finished without giving up on A: the chunks asked of A came another way"
    );
    assert!(!b_store.store().fsck(false).expect("fsck").damaged());
    let out = tmp.path().join("export");
    export_folder(b_store.store(), &id, &out).expect("export");
    open_folder(&out, &[key], &tmp.path().join("opened")).expect("opens");
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}
