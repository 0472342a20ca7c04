//! Three real `chapar-relay` processes on loopback: a bundle imported into
//! one before it starts ends up complete on the other two.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chapar_bundle::{seal_to_folder, SealOptions};
use chapar_format::{BundleId, Geometry};
use chapar_store::{import_folder, Role, Store};

struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Relay {
    fn start(data: &Path, peers: &[String]) -> Self {
        Self::start_with(data, peers, &[])
    }

    fn start_with(data: &Path, peers: &[String], extra: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chapar-relay"));
        cmd.arg("--data-dir")
            .arg(data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--sync-interval", "1s"])
            // Other tests' relays on this machine must not join this mesh.
            .arg("--no-mdns")
            .args(extra)
            .env("CHAPAR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for p in peers {
            cmd.args(["--peer", p]);
        }
        let mut child = cmd.spawn().expect("relay starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::sync_channel(4096);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, what: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "{what}: no log line with {needle:?}; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn listen_addr(&mut self, what: &str) -> String {
        let line = self.wait_for("/p2p/", what);
        let start = line.find("/ip4/").expect("address in the line");
        line[start..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_owned()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("relay exits");
        assert!(status.success(), "relay exited with {status}");
    }
}

/// A relay left running by a failed assertion would outlive the test.
impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One plain HTTP GET of /metrics.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn sealed_bundle(dir: &Path) -> (std::path::PathBuf, BundleId) {
    let input = dir.join("evidence");
    std::fs::create_dir(&input).expect("mkdir");
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(input.join("scan.bin"), data).expect("write");
    let mut opts = SealOptions::new(vec![age::x25519::Identity::generate().to_public()]);
    opts.geometry = Geometry {
        chunk_size: 16 * 1024,
        data_per_stripe: 16,
        parity_per_stripe: 4,
    };
    let folder = dir.join("bundle");
    let sealed = seal_to_folder(&[input], &opts, &folder).expect("seal");
    (folder, sealed.bundle_id)
}

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
