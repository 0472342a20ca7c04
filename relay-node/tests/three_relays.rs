//! Three real `chapar-relay` processes on loopback: a bundle imported into
//! one before it starts ends up complete on the other two.

mod common;

use std::process::Command;

use chapar_store::{import_folder, Role, Store};

use common::{metric, scrape, sealed_bundle, Relay};

#[test]
fn a_bundle_imported_into_one_relay_before_start_completes_on_two_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id) = sealed_bundle(tmp.path());
    let (a_dir, b_dir, c_dir) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    {
        let store = Store::open(&a_dir).expect("store");
        let report = import_folder(&store, &bundle, Role::Relaying, |_| {}).expect("import");
        assert!(report.complete);
    }
    let mut a = Relay::start(&a_dir, &[]);
    let a_addr = a.listen_addr("relay A");
    let mut b = Relay::start(&b_dir, std::slice::from_ref(&a_addr));
    let b_addr = b.listen_addr("relay B");
    let mut c = Relay::start_with(&c_dir, &[b_addr], &["--metrics", "127.0.0.1:0"]);
    let complete = format!("bundle complete bundle={id}");
    b.wait_for(&complete, "relay B");
    c.wait_for(&complete, "relay C");

    // C's metrics say what it did, alongside libp2p's own.
    let url = c.wait_for("serving metrics", "relay C metrics");
    let addr = url
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("metrics address in the log line");
    // The gauges move on the relay's next look at its store, the counters
    // as each batch is stored: give both a moment after the log line.
    let settled = |m: &str| {
        m.contains("chapar_bundles_complete 1")
            && metric(m, "chapar_chunk_bytes_in_total") >= 400_000.0
    };
    let mut metrics = scrape(addr);
    for _ in 0..50 {
        if settled(&metrics) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        metrics = scrape(addr);
    }
    assert!(metrics.contains("chapar_bundles_complete 1"), "{metrics}");
    assert!(
        metrics.contains("chapar_replication_lag_chunks 0"),
        "{metrics}"
    );
    let bytes_in = metric(&metrics, "chapar_chunk_bytes_in_total");
    assert!(
        bytes_in >= 400_000.0,
        "fetched {bytes_in} bytes:\n{metrics}"
    );
    assert!(
        metrics.contains("libp2p_swarm_connections_established_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("libp2p_bandwidth_bytes_total"),
        "{metrics}"
    );

    // Restarted with no peers given, C finds B again from its peer book.
    c.stop();
    let mut c = Relay::start(&c_dir, &[]);
    c.wait_for("peer connected", "relay C after a restart");
    for r in [a, b, c] {
        r.stop();
    }
    for dir in [&b_dir, &c_dir] {
        let store = Store::open(dir).expect("store");
        assert!(store.record(&id).expect("record").complete());
        assert!(!store.fsck(false).expect("fsck").damaged());
    }
    // The peer id is stable and `chapar-relay id` prints it.
    let out = Command::new(env!("CARGO_BIN_EXE_chapar-relay"))
        .args(["id", "--data-dir"])
        .arg(&a_dir)
        .output()
        .expect("id");
    let peer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        a_addr.ends_with(&format!("/p2p/{peer}")),
        "{a_addr} vs {peer}"
    );
}
