//! `chapar send`, `chapar-relay` and `chapar receive` as real, separate
//! processes on loopback: a bundle goes sender → relay → recipient and
//! opens byte for byte; it waits in the sender while no relay is up; a
//! sender killed mid-handoff resumes; two recipients of one bundle both
//! open it while a third key sees nothing; the receipt reaches the sender
//! and frees the relay's space; and a relay's store carried on a "USB
//! stick" (`chapar export` / `chapar import`) delivers to a recipient who
//! never had a network path to the sender's side.
//!
//! Every process runs with `--no-mdns` (tests running at the same time must
//! not find each other) and with machine-readable output: `--json` for the
//! final report on stdout, `--progress json` for one JSON object per line
//! on stderr. Every child is killed when its guard drops, on every exit
//! path, panics included.
//!
//! The relay binary lives in another package, so `CARGO_BIN_EXE_` does not
//! name it here: it is built once, at first use, with the cargo that runs
//! these tests, next to the `chapar` binary.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

/// How long any one wait may take before the test gives up and shows the
/// logs. Never reached when things work (each step takes a few seconds at
/// most); generous for a loaded two-core CI machine.
const PATIENCE: Duration = Duration::from_secs(45);

/// What `send` and `receive` get, besides their own arguments: loopback
/// only, no mDNS, fast re-syncs, parsable output.
const NET_FLAGS: [&str; 8] = [
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--no-mdns",
    "--sync-interval",
    "1s",
    "--progress",
    "json",
    "--json",
];

// ---------------------------------------------------------------------------
// The binaries

fn chapar_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chapar"))
}

/// `chapar-relay`, built (once per test process) next to `chapar`.
fn relay_bin() -> &'static Path {
    static RELAY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match RELAY.get_or_init(build_relay) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn build_relay() -> Result<PathBuf, String> {
    let chapar = chapar_bin();
    let bin = chapar.with_file_name("chapar-relay");
    let profile_dir = chapar
        .parent()
        .ok_or_else(|| format!("{} has no parent folder", chapar.display()))?;
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "chapar-relay",
            "--bin",
            "chapar-relay",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Build with the profile and into the target folder the tests came from.
    match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(custom) => {
            cargo.args(["--profile", custom]);
        }
        None => {}
    }
    if let Some(target_dir) = profile_dir.parent() {
        cargo.arg("--target-dir").arg(target_dir);
    }
    let status = cargo
        .status()
        .map_err(|e| format!("could not run cargo to build chapar-relay ({e}): run `cargo build -p chapar-relay` first"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build -p chapar-relay` (run by this test) failed with {status}: \
             run `cargo build -p chapar-relay` and fix what it reports"
        ));
    }
    if !bin.is_file() {
        return Err(format!(
            "chapar-relay is not at {} after building it: run `cargo build -p chapar-relay`",
            bin.display()
        ));
    }
    Ok(bin)
}

// ---------------------------------------------------------------------------
// Running processes

/// A child process whose stderr lines are collected as they come and whose
/// stdout is read to the end on a thread. Killed when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout_lines: mpsc::Receiver<String>,
    stdout: Option<JoinHandle<String>>,
}

/// How a process ended.
struct Finished {
    status: ExitStatus,
    stdout: String,
    log: String,
}

impl Finished {
    /// The `--json` report on stdout.
    fn json(&self, what: &str) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{what}: stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.log
            )
        })
    }

    fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.log
        );
        self
    }
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::sync_channel(1 << 16);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (out_tx, stdout_lines) = mpsc::sync_channel(1 << 12);
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(&mut stdout).lines().map_while(Result::ok) {
                let _ = out_tx.try_send(line.clone());
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Self {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            stdout_lines,
            stdout: Some(stdout),
        }
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// The next stderr line, if one comes before `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = self.lines.recv_timeout(wait).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Stderr lines already there, without waiting.
    fn pending_lines(&mut self) -> Vec<String> {
        let fresh: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(fresh.iter().cloned());
        fresh
    }

    /// Waits for a stderr line that `matches`; returns it.
    fn wait_for(&mut self, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        while let Some(line) = self.next_line(deadline) {
            if matches(&line) {
                return line;
            }
        }
        let exited = self.child.try_wait().ok().flatten();
        panic!(
            "{}: waited {PATIENCE:?} for {what} (process {}); its stderr:\n{}",
            self.name,
            exited.map_or("still running".to_owned(), |s| format!("exited with {s}")),
            self.log()
        );
    }

    /// Waits for a stdout line that starts with `prefix`; returns the rest.
    fn wait_stdout(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(line) = self.stdout_lines.recv_timeout(Duration::from_millis(100)) {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_owned();
                }
            }
            let _ = self.pending_lines();
        }
        panic!(
            "{}: no stdout line starting {prefix:?} within {PATIENCE:?}; its stderr:\n{}",
            self.name,
            self.log()
        );
    }

    /// Waits for a `--progress json` line that `matches`; returns it.
    fn wait_json(&mut self, what: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
        let line = self.wait_for(what, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| matches(&v))
        });
        serde_json::from_str(&line).expect("matched as JSON")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself.
    fn finish(&mut self) -> Finished {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    let _ = self.next_line(Instant::now() + Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = self.pending_lines();
                    panic!(
                        "{}: did not finish within {PATIENCE:?}; its stderr:\n{}",
                        self.name,
                        self.log()
                    );
                }
                Err(e) => panic!("{}: wait failed: {e}", self.name),
            }
        };
        // The pipe closes at exit: collect what is left.
        let drained = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .lines
            .recv_timeout(drained.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Finished {
            status,
            stdout,
            log: self.log(),
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(&mut self) -> Finished {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "{}: kill -TERM failed", self.name);
        self.finish()
    }

    /// SIGKILL: no chance to clean up.
    fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `chapar-relay` on loopback.
struct Relay {
    proc: Proc,
}

impl Relay {
    /// Starts a relay on `dir`, listening on `listen`, dialing `peers`.
    fn start(name: &str, dir: &Path, listen: &str, peers: &[&str]) -> Self {
        let mut cmd = Command::new(relay_bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["--listen", listen, "--no-mdns", "--sync-interval", "1s"])
            .env("CHAPAR_LOG", "info");
        for p in peers {
            cmd.args(["--peer", p]);
        }
        Self {
            proc: Proc::spawn(name, cmd),
        }
    }

    /// Its loopback TCP address with `/p2p/<peer id>`, from its log.
    fn addr(&mut self) -> String {
        let line = self.proc.wait_for("its listen address", |l| {
            l.contains("listening address=/ip4/127.0.0.1/tcp/")
        });
        let start = line.find("/ip4/").expect("address in the line");
        line[start..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_owned()
    }

    /// SIGTERM; the relay must stop cleanly (and unlock its data dir).
    fn stop(mut self) -> String {
        let name = self.proc.name.clone();
        let end = self.proc.terminate();
        end.assert_success(&name);
        end.log
    }
}

/// `chapar-relay id`: the peer id a relay on `dir` will have.
fn relay_peer_id(dir: &Path) -> String {
    let out = Command::new(relay_bin())
        .args(["id", "--data-dir"])
        .arg(dir)
        .output()
        .expect("chapar-relay id runs");
    assert!(out.status.success(), "chapar-relay id: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loopback TCP port nothing listens on right now.
fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------
// The chapar commands

fn chapar() -> Command {
    Command::new(chapar_bin())
}

/// A one-shot command with `--json`: must succeed; returns its report.
fn chapar_json<I, S>(args: I) -> Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = chapar();
    cmd.arg("--json").args(args);
    let out = cmd.output().expect("chapar runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{cmd:?}: stdout is not JSON ({e}): {stdout}"))
}

/// `chapar keygen`: the identity file and its recipient (age1…).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = chapar()
        .args(["keygen", "-o"])
        .arg(&file)
        .output()
        .expect("chapar keygen runs");
    assert!(out.status.success(), "keygen: {out:?}");
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        recipient.starts_with("age1"),
        "keygen printed {recipient:?}"
    );
    (file, recipient)
}

/// `chapar status --json` on a stopped node's data directory.
fn status(dir: &Path) -> Value {
    chapar_json([
        OsStr::new("status"),
        OsStr::new("--data-dir"),
        dir.as_os_str(),
    ])
}

/// Starts `chapar send` sealing `paths` for `recipients` (or resuming,
/// without paths) into the store at `data`, handing off to `peer`.
fn send(
    name: &str,
    data: &Path,
    peer: &str,
    until: &str,
    recipients: &[&str],
    extra: &[&str],
    paths: &[&Path],
) -> Proc {
    let mut cmd = chapar();
    cmd.arg("send")
        .arg("--data-dir")
        .arg(data)
        .args(["--peer", peer, "--until", until, "--replicas", "1"])
        .args(NET_FLAGS)
        .args(extra);
    for r in recipients {
        cmd.args(["-r", r]);
    }
    cmd.args(paths);
    Proc::spawn(name, cmd)
}

/// Starts `chapar receive --once` with `key`, opening into `out`.
fn receive(name: &str, data: &Path, key: &Path, out: &Path, peer: &str, once: bool) -> Proc {
    let mut cmd = chapar();
    cmd.arg("receive")
        .arg("--data-dir")
        .arg(data)
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(out)
        .args(["--peer", peer])
        .args(NET_FLAGS);
    if once {
        cmd.arg("--once");
    }
    Proc::spawn(name, cmd)
}

/// The bundle id from the sender's `sealed` progress event.
fn sealed_id(sender: &mut Proc) -> String {
    let sealed = sender.wait_json("the sealed event", |v| v["event"] == "sealed");
    sealed["bundle_id"]
        .as_str()
        .expect("bundle_id in the sealed event")
        .to_owned()
}

/// Runs a `receive --once` to its end and checks it opened bundle `id`.
fn received(mut receiver: Proc, id: &str) {
    let end = receiver.finish();
    end.assert_success(&receiver.name);
    let report = end.json(&receiver.name);
    let opened: Vec<&str> = report["opened"]
        .as_array()
        .expect("opened list")
        .iter()
        .filter_map(|o| o["bundle_id"].as_str())
        .collect();
    assert_eq!(opened, [id], "{}: {report}\n{}", receiver.name, end.log);
}

// ---------------------------------------------------------------------------
// Evidence and checking it

/// A folder of evidence: a big random file in a subfolder, a text file,
/// and an empty file.
fn evidence(dir: &Path, big: usize) -> PathBuf {
    let root = dir.join("evidence");
    std::fs::create_dir_all(root.join("scans")).expect("mkdir");
    let mut bytes = vec![0u8; big];
    rand::thread_rng().fill(&mut bytes[..]);
    std::fs::write(root.join("scans/ct-0042.bin"), bytes).expect("write");
    std::fs::write(
        root.join("records.txt"),
        "ward 3, 14 admissions, gunshot wounds\n".repeat(40),
    )
    .expect("write");
    std::fs::write(root.join("scans/empty.dat"), b"").expect("write");
    root
}

/// Every file under `root`, as relative paths, sorted.
fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The opened copy of `original` in `out` (`OUT/<bundle id>/<folder name>`)
/// holds the same files, byte for byte, and nothing else.
fn assert_opened_intact(out: &Path, id: &str, original: &Path) {
    let opened = out
        .join(id)
        .join(original.file_name().expect("evidence folder name"));
    let want = files_under(original);
    let got = files_under(&opened);
    assert_eq!(got, want, "files opened into {}", opened.display());
    for rel in &want {
        let a = std::fs::read(original.join(rel)).expect("read original");
        let b = std::fs::read(opened.join(rel)).expect("read opened");
        assert!(
            a == b,
            "{} differs from the original ({} vs {} bytes)",
            opened.join(rel).display(),
            b.len(),
            a.len()
        );
    }
}

/// Chunk files in a store's `chunks/ab/<64 hex>` folders.
fn chunk_files(data: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(data.join("chunks")) else {
        return 0;
    };
    shards
        .filter_map(Result::ok)
        .filter_map(|shard| std::fs::read_dir(shard.path()).ok())
        .flat_map(|files| files.filter_map(Result::ok))
        .filter(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .count()
}

/// A bundle's entry in `chapar status --json`, if listed.
fn status_entry<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["bundles"]
        .as_array()
        .expect("bundles list")
        .iter()
        .find(|b| b["bundle_id"] == id)
}

fn tombstoned(status: &Value, id: &str) -> bool {
    status["tombstones"]
        .as_array()
        .expect("tombstones list")
        .iter()
        .any(|t| t["bundle_id"] == id)
}

/// The one bundle in a `send --json` report.
fn sent_bundle(report: &Value, id: &str) -> Value {
    let bundles = report["bundles"].as_array().expect("bundles in the report");
    assert_eq!(bundles.len(), 1, "{report}");
    assert_eq!(bundles[0]["bundle_id"], id, "{report}");
    bundles[0].clone()
}

// ---------------------------------------------------------------------------
// The scenarios

#[test]
fn a_bundle_sent_through_a_relay_opens_byte_for_byte_and_its_receipt_frees_the_relay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key, recipient) = keygen(t, "key.txt");
    let original = evidence(t, 3 << 20);
    let relay_dir = t.join("relay");
    let mut relay = Relay::start("relay", &relay_dir, "/ip4/127.0.0.1/tcp/0", &[]);
    let addr = relay.addr();

    let mut sender = send(
        "sender",
        &t.join("sender"),
        &addr,
        "delivered",
        &[&recipient],
        &["--chunk-size", "64KiB"],
        &[&original],
    );
    let id = sealed_id(&mut sender);

    let out = t.join("out");
    received(
        receive("recipient", &t.join("recipient"), &key, &out, &addr, true),
        &id,
    );
    assert_opened_intact(&out, &id, &original);

    // The receipt went recipient → relay → sender: the sender stops by
    // itself, delivered.
    let end = sender.finish();
    end.assert_success("sender --until delivered");
    let report = end.json("sender");
    assert_eq!(report["ok"], true, "{report}");
    let bundle = sent_bundle(&report, &id);
    assert_eq!(bundle["delivered"], true, "{report}");
    assert_eq!(bundle["receipts"], 1, "{report}");
    assert_eq!(bundle["recipients"], 1, "{report}");

    // And the relay let the bundle go: no record, no chunk bytes, a
    // tombstone so it is not fetched again.
    relay.stop();
    let after = status(&relay_dir);
    assert!(status_entry(&after, &id).is_none(), "{after}");
    assert!(tombstoned(&after, &id), "{after}");
    assert_eq!(after["used_bytes"], 0, "{after}");
    assert_eq!(chunk_files(&relay_dir), 0, "chunk files left in the relay");
}

#[test]
fn a_bundle_sent_while_no_relay_is_up_is_handed_off_when_one_starts_and_then_opens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key, recipient) = keygen(t, "key.txt");
    let original = evidence(t, 1 << 20);
    // The relay's address is known before it runs: its key is made now,
    // its port chosen now.
    let relay_dir = t.join("relay");
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let addr = format!("{listen}/p2p/{}", relay_peer_id(&relay_dir));

    let mut sender = send(
        "sender",
        &t.join("sender"),
        &addr,
        "replicated",
        &[&recipient],
        &["--chunk-size", "64KiB"],
        &[&original],
    );
    let id = sealed_id(&mut sender);
    let first = sender.wait_json("a first progress line", |v| v["event"] == "progress");
    assert_eq!(first["stage"]["handed_off"], 0, "{first}");
    // Let it dial the absent relay and back off a few times: it must keep
    // the bundle and wait, not give up.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sender.running(),
        "the sender gave up while no relay was up:\n{}",
        sender.log()
    );

    let mut relay = Relay::start("relay", &relay_dir, &listen, &[]);
    assert_eq!(relay.addr(), addr);
    let end = sender.finish();
    end.assert_success("sender --until replicated");
    let report = end.json("sender");
    let bundle = sent_bundle(&report, &id);
    assert_eq!(bundle["replicas"], 1, "{report}");

    // The sender is gone; the relay alone delivers.
    let out = t.join("out");
    received(
        receive("recipient", &t.join("recipient"), &key, &out, &addr, true),
        &id,
    );
    assert_opened_intact(&out, &id, &original);
    relay.stop();
}

#[test]
fn a_sender_killed_mid_handoff_resumes_and_the_bundle_opens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key, recipient) = keygen(t, "key.txt");
    // 16 MiB in 64 KiB chunks: ~330 chunks, which take the relay many
    // batches to take in, so there is a moment with some but not all.
    let original = evidence(t, 16 << 20);
    let relay_dir = t.join("relay");
    let sender_dir = t.join("sender");
    let mut relay = Relay::start("relay", &relay_dir, "/ip4/127.0.0.1/tcp/0", &[]);
    let addr = relay.addr();

    let mut sender = send(
        "sender",
        &sender_dir,
        &addr,
        "replicated",
        &[&recipient],
        &["--chunk-size", "64KiB"],
        &[&original],
    );
    let id = sealed_id(&mut sender);
    // Kill it as soon as part of the bundle has left: when its progress
    // says so, or when the first chunk files land in the relay.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let partial_progress = sender.pending_lines().iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                let handed = v["stage"]["handed_off"].as_u64().unwrap_or(0);
                let total = v["stage"]["chunks"].as_u64().unwrap_or(0);
                v["event"] == "progress" && handed > 0 && handed < total
            })
        });
        if partial_progress || chunk_files(&relay_dir) > 0 {
            sender.kill_hard();
            break;
        }
        assert!(
            sender.running(),
            "the sender finished before it could be killed mid-handoff:\n{}",
            sender.log()
        );
        assert!(
            Instant::now() < deadline,
            "nothing reached the relay within {PATIENCE:?}; sender:\n{}",
            sender.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }

    // The relay holds part of the bundle, and keeps it across a restart.
    relay.stop();
    let partial = status(&relay_dir);
    let entry = status_entry(&partial, &id)
        .unwrap_or_else(|| panic!("the relay does not list the bundle: {partial}"));
    let held = entry["chunks_held"].as_u64().expect("chunks_held");
    let known = entry["chunks_known"].as_u64().expect("chunks_known");
    assert!(
        held > 0 && held < known && entry["complete"] == false,
        "the kill should have come mid-handoff (a bigger bundle would widen the window): {entry}"
    );
    let mut relay = Relay::start("relay (restarted)", &relay_dir, "/ip4/127.0.0.1/tcp/0", &[]);
    let addr = relay.addr();

    // `chapar send` with no paths resumes what was sealed here.
    let mut resumed = send(
        "resumed sender",
        &sender_dir,
        &addr,
        "replicated",
        &[],
        &[],
        &[],
    );
    let end = resumed.finish();
    end.assert_success("resumed sender");
    let report = end.json("resumed sender");
    let bundle = sent_bundle(&report, &id);
    assert_eq!(bundle["replicas"], 1, "{report}");
    assert_eq!(bundle["handed_off"], bundle["chunks"], "{report}");

    let out = t.join("out");
    received(
        receive("recipient", &t.join("recipient"), &key, &out, &addr, true),
        &id,
    );
    assert_opened_intact(&out, &id, &original);
    relay.stop();
}

#[test]
fn two_recipients_of_one_bundle_both_open_it_and_a_third_key_sees_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key1, recipient1) = keygen(t, "key1.txt");
    let (key2, recipient2) = keygen(t, "key2.txt");
    let (key3, _) = keygen(t, "key3.txt");
    let original = evidence(t, 2 << 20);
    let relay_dir = t.join("relay");
    let mut relay = Relay::start("relay", &relay_dir, "/ip4/127.0.0.1/tcp/0", &[]);
    let addr = relay.addr();

    // The outsider listens the whole time.
    let (out3, data3) = (t.join("out3"), t.join("outsider"));
    let mut outsider = receive("outsider (key 3)", &data3, &key3, &out3, &addr, false);

    let mut sender = send(
        "sender",
        &t.join("sender"),
        &addr,
        "delivered",
        &[&recipient1, &recipient2],
        &["--chunk-size", "64KiB"],
        &[&original],
    );
    let id = sealed_id(&mut sender);

    let (out1, out2) = (t.join("out1"), t.join("out2"));
    let first = receive("recipient 1", &t.join("r1"), &key1, &out1, &addr, true);
    let second = receive("recipient 2", &t.join("r2"), &key2, &out2, &addr, true);
    received(first, &id);
    received(second, &id);
    assert_opened_intact(&out1, &id, &original);
    assert_opened_intact(&out2, &id, &original);

    let end = sender.finish();
    end.assert_success("sender --until delivered");
    let report = end.json("sender");
    let bundle = sent_bundle(&report, &id);
    assert_eq!(bundle["receipts"], 2, "{report}");
    assert_eq!(bundle["recipients"], 2, "{report}");
    assert_eq!(bundle["delivered"], true, "{report}");
    assert!(
        bundle["chunks"].as_u64() > Some(0) && bundle["handed_off"] == bundle["chunks"],
        "{report}"
    );

    // The third key heard of the bundle but opened nothing.
    let end = outsider.terminate();
    end.assert_success("outsider");
    let report = end.json("outsider");
    assert_eq!(
        report["opened"],
        serde_json::json!([]),
        "{report}\n{}",
        end.log
    );
    let opened_anything = std::fs::read_dir(&out3)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    assert!(
        !opened_anything,
        "the outsider wrote into {}",
        out3.display()
    );
    assert!(
        !end.log.contains("\"addressed\"") && !end.log.contains("\"opened\""),
        "outsider:\n{}",
        end.log
    );
    let seen = status(&data3);
    assert!(
        status_entry(&seen, &id).is_some() || tombstoned(&seen, &id),
        "the outsider never learned of the bundle, so the test proves nothing: {seen}"
    );
    relay.stop();
}

#[test]
fn sneakernet_a_country_relay_exports_a_world_relay_imports_and_the_recipient_gets_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key, recipient) = keygen(t, "key.txt");
    let original = evidence(t, 1 << 20);

    // Inside the country: the sender hands the bundle to relay A.
    let country_dir = t.join("country-relay");
    let mut country = Relay::start("country relay", &country_dir, "/ip4/127.0.0.1/tcp/0", &[]);
    let country_addr = country.addr();
    let mut sender = send(
        "sender",
        &t.join("sender"),
        &country_addr,
        "replicated",
        &[&recipient],
        &["--chunk-size", "64KiB"],
        &[&original],
    );
    let id = sealed_id(&mut sender);
    sender.finish().assert_success("sender --until replicated");
    // A relay's data dir is locked while it runs.
    country.stop();

    // Onto the USB stick, and off it into a relay in the world.
    let usb = t.join("usb").join("bundle");
    let exported = chapar_json([
        OsStr::new("export"),
        OsStr::new("--data-dir"),
        country_dir.as_os_str(),
        OsStr::new(&id),
        OsStr::new("-o"),
        usb.as_os_str(),
    ]);
    assert_eq!(exported["complete"], true, "{exported}");
    let world_dir = t.join("world-relay");
    let imported = chapar_json([
        OsStr::new("import"),
        OsStr::new("--data-dir"),
        world_dir.as_os_str(),
        usb.as_os_str(),
    ]);
    assert_eq!(imported["bundle_id"], id.as_str(), "{imported}");
    assert_eq!(imported["complete"], true, "{imported}");

    // The world relay never had a peer on the other side.
    let mut world = Relay::start("world relay", &world_dir, "/ip4/127.0.0.1/tcp/0", &[]);
    let world_addr = world.addr();
    let out = t.join("out");
    received(
        receive(
            "recipient",
            &t.join("recipient"),
            &key,
            &out,
            &world_addr,
            true,
        ),
        &id,
    );
    assert_opened_intact(&out, &id, &original);
    let country_peer = country_addr.rsplit('/').next().expect("peer id");
    let log = world.stop();
    assert!(
        !log.contains(country_peer),
        "the world relay met the country relay:\n{log}"
    );
}

/// What `send` and `receive` get in the stealth tests: no `--listen`, so
/// they run dial-only and quiet, as they do by default.
const STEALTH_FLAGS: [&str; 5] = ["--sync-interval", "1s", "--progress", "json", "--json"];

/// A stealth sender and recipient (no `--listen`) that reach the relay
/// only through `peer` (a share string or bridge line): the sender seals
/// `original` and runs until delivered; the recipient opens it into
/// `t/out`. Returns how the sender ended.
fn send_and_receive_through(
    t: &Path,
    peer: &str,
    original: &Path,
    key: &Path,
    recipient: &str,
) -> Finished {
    let mut cmd = chapar();
    cmd.arg("send")
        .arg("--data-dir")
        .arg(t.join("sender"))
        .args(["--peer", peer, "--until", "delivered", "--replicas", "1"])
        .args(["--chunk-size", "64KiB", "-r", recipient])
        .args(STEALTH_FLAGS)
        .arg(original)
        .env("CHAPAR_LOG", "info");
    let mut sender = Proc::spawn("sender", cmd);
    let bundle = sealed_id(&mut sender);
    let out = t.join("out");
    let mut cmd = chapar();
    cmd.arg("receive")
        .arg("--data-dir")
        .arg(t.join("recipient"))
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(&out)
        .args(["--peer", peer, "--once"])
        .args(STEALTH_FLAGS);
    received(Proc::spawn("recipient", cmd), &bundle);
    assert_opened_intact(&out, &bundle, original);
    let end = sender.finish();
    end.assert_success("the stealth sender, --until delivered");
    let report = end.json("sender");
    assert_eq!(sent_bundle(&report, &bundle)["delivered"], true, "{report}");
    end
}

#[test]
fn stealth_sender_and_recipient_reach_a_relay_only_through_its_camouflaged_share_string() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key, recipient) = keygen(t, "key.txt");
    let original = evidence(t, 1 << 20);
    let site = t.join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    std::fs::write(site.join("index.html"), "<h1>Opening hours</h1>").expect("write");
    let relay_dir = t.join("relay");
    let mut cmd = Command::new(relay_bin());
    cmd.arg("--data-dir")
        .arg(&relay_dir)
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--sync-interval",
            "1s",
        ])
        .args(["--https-listen", "127.0.0.1:0", "--https-site"])
        .arg(&site)
        .env("CHAPAR_LOG", "info");
    let mut relay = Proc::spawn("relay", cmd);
    let share = relay.wait_stdout("share: ");
    assert!(share.starts_with("https://127.0.0.1:"), "{share}");
    assert!(
        share.contains("?pin="),
        "a self-signed certificate is pinned: {share}"
    );

    // `chapar-relay id` names the same token, pin and peer (its port is
    // the configured one, 0 here, so only the rest is compared).
    let id = Command::new(relay_bin())
        .args([
            "id",
            "--json",
            "--https-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&relay_dir)
        .output()
        .expect("chapar-relay id runs");
    assert!(id.status.success(), "{id:?}");
    let id: Value = serde_json::from_slice(&id.stdout).expect("id --json");
    let listed = id["share"][0].as_str().expect("one share string");
    let path_onwards = |s: &str| {
        s[s.find('/').map_or(0, |i| i + 2)..]
            .split_once('/')
            .map(|(_, rest)| rest.to_owned())
    };
    assert_eq!(
        path_onwards(listed),
        path_onwards(&share),
        "{listed} vs {share}"
    );

    let end = send_and_receive_through(t, &share, &original, &key, &recipient);
    // Dial-only: the sender logged its connection, and never listened.
    assert!(end.log.contains("peer connected"), "{}", end.log);
    assert!(
        !end.log.contains("listening address="),
        "the stealth sender listened:\n{}",
        end.log
    );
    relay.terminate().assert_success("relay");
}

/// `obfs4proxy` (or lyrebird) on PATH; a loud skip without it, a failure
/// under CI, which installs it.
fn obfs4_installed() -> bool {
    let found = ["obfs4proxy", "lyrebird"].iter().any(|name| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "obfs4proxy is not installed, and CI must not skip this test (apt-get install obfs4proxy)"
        );
        eprintln!("SKIPPED: obfs4proxy is not installed (apt-get install obfs4proxy)");
    }
    found
}

#[test]
fn a_bundle_crosses_an_obfs4_bridge_from_its_bridge_line_alone() {
    if !obfs4_installed() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (key, recipient) = keygen(t, "key.txt");
    let original = evidence(t, 1 << 20);
    let relay_dir = t.join("relay");
    let relay_cmd = |dir: &Path| {
        let mut cmd = Command::new(relay_bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["--no-mdns", "--sync-interval", "1s"])
            .args([
                "--obfs4-listen",
                "127.0.0.1:0",
                "--public-host",
                "127.0.0.1",
            ])
            .env("CHAPAR_LOG", "info");
        cmd
    };
    let mut relay = Proc::spawn("relay", relay_cmd(&relay_dir));
    let bridge = relay.wait_stdout("share: ");
    assert!(bridge.starts_with("obfs4 127.0.0.1:"), "{bridge}");
    assert!(bridge.contains(" cert="), "{bridge}");

    send_and_receive_through(t, &bridge, &original, &key, &recipient);

    // An obfs4 program that dies is started again; the relay runs on.
    let relay_pid = relay.child.id().to_string();
    let obfs4_child = || {
        let out = Command::new("pgrep")
            .args(["-P", &relay_pid])
            .output()
            .expect("pgrep runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let first = obfs4_child();
    assert!(!first.is_empty(), "no obfs4 program under the relay");
    let killed = Command::new("kill")
        .args(["-9", &first])
        .status()
        .expect("kill");
    assert!(killed.success());
    relay.wait_for("the obfs4 restart", |l| {
        l.contains("obfs4 server running again")
    });
    let second = obfs4_child();
    assert!(
        !second.is_empty() && second != first,
        "{first} -> {second:?}"
    );
    assert!(relay.running());

    // The bridge line is the obfs4 server's: the same after a restart.
    relay.terminate().assert_success("relay");
    let mut again = Proc::spawn("relay again", relay_cmd(&relay_dir));
    let bridge_again = again.wait_stdout("share: ");
    let cert = |line: &str| {
        line.split_whitespace()
            .find(|w| w.starts_with("cert="))
            .map(str::to_owned)
    };
    assert_eq!(cert(&bridge_again), cert(&bridge));
    again.terminate().assert_success("relay again");
}

#[test]
fn a_missing_obfs4_program_is_a_clear_error_and_the_relay_keeps_its_other_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay_dir = tmp.path().join("relay");
    let mut cmd = Command::new(relay_bin());
    cmd.arg("--data-dir")
        .arg(&relay_dir)
        .args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args([
            "--https-listen",
            "127.0.0.1:0",
            "--obfs4-listen",
            "127.0.0.1:0",
        ])
        .args(["--obfs4-binary", "/nonexistent/obfs4proxy"])
        .env("CHAPAR_LOG", "info");
    let mut relay = Proc::spawn("relay", cmd);
    // The HTTPS link still comes up and is announced...
    let share = relay.wait_stdout("share: ");
    assert!(share.starts_with("https://"), "{share}");
    // ...and the obfs4 failure names the program.
    relay.wait_for("the obfs4 error", |l| {
        l.contains("obfs4 bridge not started") && l.contains("/nonexistent/obfs4proxy")
    });
    assert!(relay.running(), "the relay kept running");
    relay.terminate().assert_success("relay");
}

#[test]
fn a_malformed_bridge_line_or_share_string_is_refused_naming_the_bad_part() {
    let peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    for (arg, part) in [
        (format!("obfs4 192.0.2.7 {peer} cert=x"), "port"),
        (format!("obfs4 192.0.2.7:443 {peer} cert"), "argument"),
        ("obfs4 192.0.2.7:443 notapeer cert=x".to_owned(), "peer id"),
        (format!("https://relay.example.org/short#{peer}"), "token"),
        (
            "https://relay.example.org/AbCdEfGhIjKlMnOpQrStUv".to_owned(),
            "peer id",
        ),
    ] {
        let out = chapar()
            .args(["send", "--peer", &arg])
            .output()
            .expect("chapar runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg}: {stderr}");
        assert!(stderr.contains(&format!("{part}:")), "{arg}: {stderr}");
    }
}
