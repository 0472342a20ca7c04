//! `chapar demo`, the README's first command, run small: the bundle gets
//! across the gateway's windows, opens, and the receipt comes back.

use assert_cmd::Command;

#[test]
fn the_demo_delivers_across_the_windows_and_the_receipt_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::cargo_bin("chapar")
        .expect("binary")
        .args([
            "--json",
            "demo",
            "--size",
            "2MiB",
            "--window",
            "2s",
            "--closed",
            "2s",
            "--rate",
            "4MiB",
            "--timeout",
            "90s",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["ok"], true);
    assert_eq!(report["receipt_at_sender"], true);
    let id = report["bundle_id"].as_str().expect("bundle id");
    // What the recipient opened is what the sender sealed.
    let sealed = dir.path().join("evidence");
    let opened = dir.path().join("received").join(id).join("evidence");
    for name in [
        "records.csv",
        "statement.txt",
        "scans/ward-1.jpg",
        "scans/ward-4.jpg",
    ] {
        assert_eq!(
            std::fs::read(sealed.join(name)).expect("sealed file"),
            std::fs::read(opened.join(name)).expect("opened file"),
            "{name}"
        );
    }
    // Each chunk crossed the gateway about once (the gateway super-seeds
    // and the relays abroad share among themselves).
    let crossed = report["crossed_to_world"].as_f64().expect("bytes");
    let bundle = report["bundle_bytes_with_parity"].as_f64().expect("bytes");
    assert!(crossed >= bundle * 0.8, "crossed {crossed} of {bundle}");
    assert!(
        crossed <= bundle * 1.1,
        "crossed {crossed} for a {bundle}-byte bundle"
    );
}
