//! What the relay's multi-process tests share: a `chapar-relay` process
//! whose log is read as it comes, and a small sealed bundle.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chapar_bundle::{seal_to_folder, SealOptions};
use chapar_format::{BundleId, Geometry};

pub struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Relay {
    pub fn start(data: &Path, peers: &[String]) -> Self {
        Self::start_with(data, peers, &[])
    }

    pub fn start_with(data: &Path, peers: &[String], extra: &[&str]) -> Self {
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
    pub fn wait_for(&mut self, needle: &str, what: &str) -> String {
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

    pub fn listen_addr(&mut self, what: &str) -> String {
        let line = self.wait_for("/p2p/", what);
        let start = line.find("/ip4/").expect("address in the line");
        line[start..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_owned()
    }

    pub fn stop(mut self) {
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
pub fn scrape(addr: &str) -> String {
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
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

pub fn sealed_bundle(dir: &Path) -> (std::path::PathBuf, BundleId) {
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
