//! The scenario every release must survive (BRIEF.md), on real network
//! namespaces and real processes:
//!
//! ```text
//!  country                        gateway                    world
//!  sender, relays C1 C2 ──veth──  relay G  ──veth, tbf──   relays W1 W2 W3, recipient
//!  10.77.1.2                      10.77.1.1 | 10.77.2.1      10.77.2.2
//!               domestic link                international link
//!               (always up)                  (8 Mbit/s; down most of the time,
//!                                             open in short windows)
//! ```
//!
//! The gateway namespace does not forward IP, so relay G is the only way
//! out. While the bundle travels, C2 restarts (SIGTERM, then again on the
//! same data directory) and W3 is killed for good (SIGKILL) in the middle
//! of a window. The test asserts that the recipient opens the bundle and
//! every file matches the original byte for byte, that the receipt comes
//! back to the sender (`chapar send --until delivered` exits 0), and that
//! what the gateway sent over the international link, above IP (TCP payload: the
//! counter minus per-packet headers, which are reported too), is at most 1.05 ×
//! the bundle's chunk bytes (data + parity); it reports useful bytes /
//! (rate × open time).
//!
//! Needs root and `ip netns` (iproute2) with `tc` and the `tbf` qdisc. It
//! skips with a loud message without them, except under CI (`CI` set),
//! where that is a failure. Namespaces are named `chapar-<pid>-<nonce>-…`,
//! so runs cannot clash; they are deleted (with every process in them) by
//! a drop guard on every exit path, panics included, and by a watchdog
//! process if the test process itself is killed. Leftovers of a run whose
//! process is gone are swept at the start.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chapar_tests::netns::{binaries, in_ns, ip, preflight, run, Lab};

/// The international link's rate: `tbf rate 8mbit`, in bytes per second.
const RATE_BYTES_PER_SEC: f64 = 1_000_000.0;
const TBF: [&str; 6] = ["rate", "8mbit", "burst", "32kbit", "latency", "50ms"];
/// The link's schedule: closed, then open, then closed again...
const CLOSED: Duration = Duration::from_secs(5);
const OPEN: Duration = Duration::from_secs(3);
/// W3 dies this long into this window (1-based).
const KILL_IN_WINDOW: usize = 2;
const KILL_AFTER: Duration = Duration::from_millis(1500);
/// The whole run, before the test gives up and prints what it saw.
const DEADLINE: Duration = Duration::from_secs(300);
/// Bytes over the international link, at most this times the chunk bytes.
const BOUND: f64 = 1.05;

const SUBNET_DOMESTIC: &str = "10.77.1";
const SUBNET_INTERNATIONAL: &str = "10.77.2";
const GW_PORT: u16 = 4700;
/// Interface names, inside our own namespaces (created there directly, so
/// they cannot clash with any other run's).
const DOM_COUNTRY: &str = "dom-country";
const DOM_GATEWAY: &str = "dom-gateway";
const INTL_GATEWAY: &str = "intl-gateway";
const INTL_WORLD: &str = "intl-world";

// ---------------------------------------------------------------- the topology

const COUNTRY: usize = 0;
const GATEWAY: usize = 1;
const WORLD: usize = 2;

fn topology(lab: &Lab) {
    lab.link(
        COUNTRY,
        DOM_COUNTRY,
        &format!("{SUBNET_DOMESTIC}.2"),
        GATEWAY,
        DOM_GATEWAY,
        &format!("{SUBNET_DOMESTIC}.1"),
    );
    lab.link(
        GATEWAY,
        INTL_GATEWAY,
        &format!("{SUBNET_INTERNATIONAL}.1"),
        WORLD,
        INTL_WORLD,
        &format!("{SUBNET_INTERNATIONAL}.2"),
    );
    // The satellite link is slow both ways.
    for (ns, dev) in [(GATEWAY, INTL_GATEWAY), (WORLD, INTL_WORLD)] {
        let mut args = vec!["-n", lab.ns(ns), "qdisc", "add", "dev", dev, "root", "tbf"];
        args.extend(TBF);
        run(Command::new("tc").args(&args));
    }
    // It starts cut.
    ip(&["-n", lab.ns(GATEWAY), "link", "set", INTL_GATEWAY, "down"]);
}

// ---------------------------------------------------------------- the window

/// One opening of the international link.
#[derive(Clone, Copy)]
struct Window {
    opened: Instant,
    /// `None` while it is open.
    closed: Option<Instant>,
    /// Wall clock (UTC) at opening, to line up with the processes' logs.
    opened_utc: std::time::SystemTime,
    /// The gateway's tx_bytes on the link at opening and at closing.
    tx_at_open: u64,
    tx_at_close: Option<u64>,
}

/// When the international link was opened and closed.
#[derive(Default)]
struct Windows {
    spans: Vec<Window>,
}

impl Windows {
    /// Total time the link was open up to `until`.
    fn open_time(&self, until: Instant) -> Duration {
        self.spans
            .iter()
            .filter(|w| w.opened < until)
            .map(|w| w.closed.unwrap_or(until).min(until) - w.opened)
            .sum()
    }

    /// The `n`th window (1-based), if it has opened.
    fn nth(&self, n: usize) -> Option<Window> {
        self.spans.get(n.checked_sub(1)?).copied()
    }

    /// A line per window: when (UTC), how long, and what the gateway sent.
    fn table(&self, start: Instant) -> String {
        let mut out = String::new();
        for (i, w) in self.spans.iter().enumerate() {
            let utc = w
                .opened_utc
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let (h, m, s) = (
                utc.as_secs() / 3600 % 24,
                utc.as_secs() / 60 % 60,
                utc.as_secs() % 60,
            );
            let sent = w.tx_at_close.map_or_else(
                || "still open".to_owned(),
                |c| format!("{} bytes sent", c - w.tx_at_open),
            );
            out.push_str(&format!(
                "  window {:2}: t={:6.2}s ({h:02}:{m:02}:{s:02}.{:03} UTC) for {:.2}s, {sent}\n",
                i + 1,
                secs(w.opened - start),
                utc.subsec_millis(),
                secs(w.closed.unwrap_or_else(Instant::now) - w.opened),
            ));
        }
        out
    }
}

/// The gateway's transmitted bytes on its international link.
fn gateway_tx(ns: &str) -> u64 {
    in_ns(
        ns,
        &[
            "cat",
            &format!("/sys/class/net/{INTL_GATEWAY}/statistics/tx_bytes"),
        ],
    )
    .trim()
    .parse()
    .expect("counter")
}

/// Opens and closes the gateway's international link on the schedule
/// until `stop`; ends with it closed.
fn drive_windows(ns: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Windows>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let set = |state: &str| {
            Command::new("ip")
                .args(["-n", &ns, "link", "set", INTL_GATEWAY, state])
                .status()
                .is_ok_and(|s| s.success())
        };
        let wait = |d: Duration| {
            let end = Instant::now() + d;
            while Instant::now() < end {
                if stop.load(Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        };
        loop {
            if !wait(CLOSED) {
                break;
            }
            let tx_at_open = gateway_tx(&ns);
            if !set("up") {
                break;
            }
            log.lock().expect("window log").spans.push(Window {
                opened: Instant::now(),
                closed: None,
                opened_utc: std::time::SystemTime::now(),
                tx_at_open,
                tx_at_close: None,
            });
            let more = wait(OPEN);
            set("down");
            let closed = Instant::now();
            let tx = gateway_tx(&ns);
            if let Some(last) = log.lock().expect("window log").spans.last_mut() {
                last.closed = Some(closed);
                last.tx_at_close = Some(tx);
            }
            if !more {
                break;
            }
        }
    })
}

// ---------------------------------------------------------------- helpers

fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A few MiB of evidence: it needs several windows at 8 Mbit/s.
fn evidence(dir: &Path) -> PathBuf {
    let root = dir.join("evidence");
    fs::create_dir_all(root.join("scans")).expect("mkdir");
    fs::write(root.join("scans/ct-0001.dcm"), xorshift_bytes(1, 3 << 20)).expect("write");
    fs::write(
        root.join("scans/xray-07.png"),
        xorshift_bytes(2, (5 << 20) / 2),
    )
    .expect("write");
    fs::write(root.join("records.pdf"), xorshift_bytes(3, 512 << 10)).expect("write");
    fs::write(root.join("notes.txt"), "shot at the checkpoint, 14:20").expect("write");
    root
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Bytes of every chunk file in a store (`<data>/chunks/ab/ab…`).
fn chunk_bytes(data: &Path) -> (u64, usize) {
    let files = files_under(&data.join("chunks"));
    let bytes = files
        .iter()
        .map(|f| fs::metadata(f).expect("metadata").len())
        .sum();
    (bytes, files.len())
}

/// The `--progress json` lines (compact JSON objects) a process wrote on
/// stderr so far.
fn json_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_owned)
        .collect()
}

/// Whether a compact JSON line is the event `name`.
fn is_event(line: &str, name: &str) -> bool {
    line.contains(&format!("\"event\":\"{name}\""))
}

/// The raw text of a scalar field (`"key":value`) in a compact JSON line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":");
    let rest = &line[line.find(&pattern)? + pattern.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn relay_id(relay: &Path, data: &Path) -> String {
    run(Command::new(relay).arg("id").arg("--data-dir").arg(data))
        .trim()
        .to_owned()
}

/// What the gateway's log says it served to each peer, and how often it
/// lost each peer.
fn gateway_summary(log: &Path, names: &[(String, &str)]) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let name_of = |id: &str| {
        names
            .iter()
            .find(|(p, _)| p == id)
            .map_or_else(|| id.to_owned(), |(_, n)| (*n).to_owned())
    };
    let mut served: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut lost: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let value = |key: &str| {
            let start = line.find(key)? + key.len();
            line[start..].split_whitespace().next()
        };
        if line.contains("served chunks") {
            if let (Some(peer), Some(bytes)) = (value("peer="), value("bytes=")) {
                let entry = served.entry(name_of(peer)).or_default();
                entry.0 += bytes.parse::<u64>().unwrap_or(0);
                entry.1 += 1;
            }
        } else if line.contains("peer disconnected") {
            if let Some(peer) = value("peer_id=") {
                *lost.entry(name_of(peer)).or_default() += 1;
            }
        }
    }
    let mut out = String::new();
    for (peer, (bytes, streams)) in &served {
        out.push_str(&format!(
            "  served {peer}: {bytes} chunk bytes in {streams} streams\n"
        ));
    }
    for (peer, n) in &lost {
        out.push_str(&format!("  lost the connection to {peer} {n} time(s)\n"));
    }
    out
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------- the test

struct RelaySpec {
    name: &'static str,
    ns: usize,
    listen: Vec<String>,
    peers: Vec<String>,
    extra: Vec<String>,
}

fn relay_args(data: &Path, spec: &RelaySpec) -> Vec<String> {
    let mut args = vec!["--data-dir".to_owned(), data.display().to_string()];
    for l in &spec.listen {
        args.extend(["--listen".to_owned(), l.clone()]);
    }
    for p in &spec.peers {
        args.extend(["--peer".to_owned(), p.clone()]);
    }
    args.extend(
        ["--no-mdns", "--sync-interval", "1s"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    args.extend(spec.extra.iter().cloned());
    args
}

/// Also held to the issue's byte bound. Runs before the gateway named its
/// scarce side and before stalled bundles were rebuilt from parity gave
/// 1.007–1.090× above IP, within the bound in 3 of 5; the five runs after
/// (2026-11-26) gave 0.969–0.990×: the chunks that die with W3 are rebuilt
/// on the world side instead of crossing again.
#[test]
fn bundle_crosses_a_gateway_open_in_short_windows_within_the_byte_bound() {
    scenario();
}

fn scenario() {
    if !preflight("blackout_netns", &[("tc", "-V", "iproute2")]) {
        return;
    }
    let (cli, relay) = binaries();
    let tmp = tempfile::Builder::new()
        .prefix("chapar-blackout-")
        .tempdir()
        .expect("tempdir");
    // CHAPAR_TEST_KEEP=1 keeps the logs and data directories for a look.
    let (_tmp, dir) = if std::env::var_os("CHAPAR_TEST_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    };
    let dir = dir.as_path();
    let logs = dir.join("logs");
    let mut lab = Lab::new(logs.clone(), &["country", "gateway", "world"]);
    topology(&lab);
    eprintln!(
        "namespaces: {:?}; logs in {}",
        lab.namespaces(),
        logs.display()
    );

    // Keys and peer ids, made before anything runs.
    let key = dir.join("recipient-key.txt");
    let recipient = run(Command::new(&cli).arg("keygen").arg("-o").arg(&key))
        .trim()
        .to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let data = |name: &str| dir.join("data").join(name);
    let id = |name: &str| relay_id(&relay, &data(name));
    let (c1, c2, g, w1, w2, w3) = (id("C1"), id("C2"), id("G"), id("W1"), id("W2"), id("W3"));
    // The CLI keeps its node key in the data directory as the relay does.
    let names: Vec<(String, &str)> = vec![
        (c1.clone(), "C1"),
        (c2.clone(), "C2"),
        (w1.clone(), "W1"),
        (w2.clone(), "W2"),
        (w3.clone(), "W3"),
        (id("sender"), "sender"),
        (id("recipient"), "recipient"),
    ];
    let addr = |ip: &str, port: u16| format!("/ip4/{ip}/tcp/{port}");
    let dom = |host: u8| format!("{SUBNET_DOMESTIC}.{host}");
    let intl = |host: u8| format!("{SUBNET_INTERNATIONAL}.{host}");
    let peer = |ip: &str, port: u16, id: &str| format!("{}/p2p/{id}", addr(ip, port));
    let c1_at = peer(&dom(2), 4701, &c1);
    let c2_at = peer(&dom(2), 4702, &c2);
    let g_dom = peer(&dom(1), GW_PORT, &g);
    let g_intl = peer(&intl(1), GW_PORT, &g);
    let w1_at = peer(&intl(2), 4711, &w1);
    let w2_at = peer(&intl(2), 4712, &w2);
    let w3_at = peer(&intl(2), 4713, &w3);

    let relays = [
        RelaySpec {
            name: "G",
            ns: GATEWAY,
            listen: vec![addr(&dom(1), GW_PORT), addr(&intl(1), GW_PORT)],
            peers: vec![],
            // Only the world side is across the scarce link: a country
            // relay fetching from the gateway takes nothing from it.
            extra: vec![
                "--scarce-uplink-listen".into(),
                addr(&intl(1), GW_PORT),
                "--metrics".into(),
                "127.0.0.1:9700".into(),
            ],
        },
        RelaySpec {
            name: "C1",
            ns: COUNTRY,
            listen: vec![addr(&dom(2), 4701)],
            peers: vec![g_dom.clone(), c2_at.clone()],
            extra: vec![],
        },
        RelaySpec {
            name: "C2",
            ns: COUNTRY,
            listen: vec![addr(&dom(2), 4702)],
            peers: vec![g_dom.clone(), c1_at.clone()],
            extra: vec![],
        },
        RelaySpec {
            name: "W1",
            ns: WORLD,
            listen: vec![addr(&intl(2), 4711)],
            peers: vec![g_intl.clone(), w2_at.clone(), w3_at.clone()],
            extra: vec![],
        },
        RelaySpec {
            name: "W2",
            ns: WORLD,
            listen: vec![addr(&intl(2), 4712)],
            peers: vec![g_intl.clone(), w1_at.clone(), w3_at.clone()],
            extra: vec![],
        },
        RelaySpec {
            name: "W3",
            ns: WORLD,
            listen: vec![addr(&intl(2), 4713)],
            peers: vec![g_intl.clone(), w1_at.clone(), w2_at.clone()],
            extra: vec![],
        },
    ];
    for r in &relays {
        lab.spawn(r.name, r.ns, &relay, &relay_args(&data(r.name), r));
    }
    let c2_args = relay_args(&data("C2"), &relays[2]);

    let out_dir = dir.join("received");
    let mut receive: Vec<String> = vec![
        "receive".into(),
        "-i".into(),
        key.display().to_string(),
        "--data-dir".into(),
        data("recipient").display().to_string(),
        "-o".into(),
        out_dir.display().to_string(),
    ];
    for p in [&w1_at, &w2_at, &w3_at, &g_intl] {
        receive.extend(["--peer".into(), p.clone()]);
    }
    receive.extend(
        [
            "--no-mdns",
            "--sync-interval",
            "1s",
            "--progress",
            "json",
            "--once",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    lab.spawn("recipient", WORLD, &cli, &receive);

    let input = evidence(dir);
    let mut send: Vec<String> = vec![
        "send".into(),
        "-r".into(),
        recipient.clone(),
        "--data-dir".into(),
        data("sender").display().to_string(),
        "--chunk-size".into(),
        "256KiB".into(),
    ];
    for p in [&c1_at, &c2_at, &g_dom] {
        send.extend(["--peer".into(), p.clone()]);
    }
    send.extend(
        [
            "--no-mdns",
            "--sync-interval",
            "1s",
            "--progress",
            "json",
            "--until",
            "delivered",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    send.push(input.display().to_string());

    let baseline_tx = lab.counter(GATEWAY, INTL_GATEWAY, "tx_bytes");
    let baseline_rx = lab.counter(GATEWAY, INTL_GATEWAY, "rx_bytes");
    let baseline_tx_packets = lab.counter(GATEWAY, INTL_GATEWAY, "tx_packets");
    let baseline_rx_packets = lab.counter(GATEWAY, INTL_GATEWAY, "rx_packets");
    let windows = Arc::new(Mutex::new(Windows::default()));
    let start = Instant::now();
    let stop_windows = lab.stop_flag();
    let window_thread = drive_windows(
        lab.ns(GATEWAY).to_owned(),
        stop_windows.clone(),
        windows.clone(),
    );
    lab.spawn("sender", COUNTRY, &cli, &send);

    // Watch the run; make the mid-run events happen.
    let mut sealed: Option<(u64, usize, String)> = None;
    let mut c2_restarted_at: Option<Instant> = None;
    let mut w3_killed_at: Option<Instant> = None;
    let mut opened_at: Option<Instant> = None;
    let mut recipient_status: Option<ExitStatus> = None;
    let mut timeline: Vec<String> = Vec::new();
    let note = |timeline: &mut Vec<String>, what: String| {
        let line = format!("t={:6.2}s  {what}", secs(start.elapsed()));
        eprintln!("{line}");
        timeline.push(line);
    };
    let sender_status = loop {
        let fail = |lab: &Lab, timeline: &[String], why: &str| -> ! {
            panic!(
                "{why}\ntimeline:\n{}\nlogs:{}",
                timeline.join("\n"),
                lab.tail_logs()
            )
        };
        if start.elapsed() > DEADLINE {
            fail(
                &lab,
                &timeline,
                &format!("not delivered within {DEADLINE:?}"),
            );
        }
        let sender_events = json_lines(&lab.log_path("sender"));
        if sealed.is_none() {
            if let Some(e) = sender_events.iter().find(|e| is_event(e, "sealed")) {
                let (bytes, count) = chunk_bytes(&data("sender"));
                let bundle = field(e, "bundle_id").expect("bundle id").to_owned();
                note(
                    &mut timeline,
                    format!("sealed {bundle}: {count} chunks, {bytes} bytes"),
                );
                sealed = Some((bytes, count, bundle));
            }
        }
        let handing_off = sender_events.iter().any(|e| {
            is_event(e, "progress")
                && field(e, "handed_off")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
        });
        if handing_off && c2_restarted_at.is_none() {
            note(&mut timeline, "hand-off has begun: restarting C2".into());
            let status = lab.terminate("C2");
            if !status.success() {
                fail(
                    &lab,
                    &timeline,
                    &format!("C2 exited with {status} on SIGTERM"),
                );
            }
            lab.spawn("C2", COUNTRY, &relay, &c2_args);
            c2_restarted_at = Some(Instant::now());
            note(
                &mut timeline,
                "C2 is back on the same data directory".into(),
            );
        }
        let kill_due = windows
            .lock()
            .expect("window log")
            .nth(KILL_IN_WINDOW)
            .is_some_and(|w| w.opened.elapsed() >= KILL_AFTER);
        if kill_due && w3_killed_at.is_none() {
            lab.kill("W3");
            w3_killed_at = Some(Instant::now());
            note(
                &mut timeline,
                format!(
                    "W3 killed for good (SIGKILL), {KILL_AFTER:?} into window {KILL_IN_WINDOW}"
                ),
            );
        }
        if opened_at.is_none()
            && json_lines(&lab.log_path("recipient"))
                .iter()
                .any(|e| is_event(e, "opened"))
        {
            opened_at = Some(Instant::now());
            note(&mut timeline, "the recipient opened the bundle".into());
        }
        if recipient_status.is_none() {
            if let Some(status) = lab.exited("recipient") {
                recipient_status = Some(status);
                note(&mut timeline, format!("the recipient exited: {status}"));
                if !status.success() {
                    fail(&lab, &timeline, "`chapar receive --once` failed");
                }
            }
        }
        if let Some(status) = lab.exited("sender") {
            note(&mut timeline, format!("the sender exited: {status}"));
            break status;
        }
        for r in ["G", "C1", "C2", "W1", "W2"] {
            if let Some(status) = lab.exited(r) {
                fail(&lab, &timeline, &format!("relay {r} died: {status}"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let delivered_at = Instant::now();
    // The recipient lingers a moment after opening, for its receipt.
    let linger = Instant::now() + Duration::from_secs(30);
    while recipient_status.is_none() && Instant::now() < linger {
        recipient_status = lab.exited("recipient");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What crossed, up to the moment the sender learnt of the delivery.
    let tx = lab.counter(GATEWAY, INTL_GATEWAY, "tx_bytes") - baseline_tx;
    let rx = lab.counter(GATEWAY, INTL_GATEWAY, "rx_bytes") - baseline_rx;
    let tx_packets = lab.counter(GATEWAY, INTL_GATEWAY, "tx_packets") - baseline_tx_packets;
    let rx_packets = lab.counter(GATEWAY, INTL_GATEWAY, "rx_packets") - baseline_rx_packets;
    stop_windows.store(true, Ordering::SeqCst);
    let _ = window_thread.join();
    let tc_stats = run(Command::new("tc").args([
        "-n",
        lab.ns(GATEWAY),
        "-s",
        "qdisc",
        "show",
        "dev",
        INTL_GATEWAY,
    ]));
    let metrics = in_ns(
        lab.ns(GATEWAY),
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9700 && printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 5 cat <&3 || true",
        ],
    );
    let gw_metrics: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("chapar_"))
        .collect();

    // ---- the report
    let (chunk_total, chunk_count, bundle) = sealed.clone().expect("the sender sealed the bundle");
    let win = windows.lock().expect("window log");
    let opened = opened_at.unwrap_or(delivered_at);
    let open_to_opened = win.open_time(opened);
    let open_to_delivered = win.open_time(delivered_at);
    let windows_used = win.spans.iter().filter(|w| w.opened < delivered_at).count();
    let efficiency = chunk_total as f64 / (RATE_BYTES_PER_SEC * secs(open_to_opened));
    let ratio = tx as f64 / chunk_total as f64;
    // Ethernet + IPv4 + TCP with timestamps, per packet (tbf cuts GSO
    // packets down to the MTU, so nearly every packet is a real frame).
    let headers = tx_packets * (14 + 20 + 32);
    let both = (tx + rx) as f64 / chunk_total as f64;
    let report = format!(
        "\n==== blackout scenario report\n\
         bundle {bundle}: {chunk_count} chunks (data + parity + index), {chunk_total} bytes\n\
         international link, gateway -> world: {tx} bytes in {tx_packets} packets \
         = {ratio:.4} x chunk bytes on the wire; {headers} bytes of that are Ethernet/IPv4/TCP headers, \
         leaving {:.4} x above IP (bound {BOUND})\n\
         international link, world -> gateway: {rx} bytes in {rx_packets} packets; both ways {both:.4} x chunk bytes\n\
         link open {:.1} s until the recipient opened it ({:.1} s until the receipt reached the sender), \
         {windows_used} windows of {:?} every {:?}\n\
         efficiency: useful bytes / (rate x open time) = {chunk_total} / ({RATE_BYTES_PER_SEC} B/s x {:.2} s) = {:.1} %\n\
         wall clock: opened after {:.1} s, delivered (receipt at the sender) after {:.1} s\n\
         timeline:\n{}\n\
         windows:\n{}\
         tc on the gateway's international link:\n{tc_stats}\
         gateway metrics:\n{}\n\
         gateway log:\n{}",
        tx.saturating_sub(headers) as f64 / chunk_total as f64,
        secs(open_to_opened),
        secs(open_to_delivered),
        OPEN,
        OPEN + CLOSED,
        secs(open_to_opened),
        efficiency * 100.0,
        secs(opened - start),
        secs(delivered_at - start),
        timeline.join("\n"),
        win.table(start),
        gw_metrics.join("\n"),
        gateway_summary(&lab.log_path("G"), &names),
    );
    drop(win);
    eprintln!("{report}");

    // ---- the assertions
    let fail = |why: &str| -> ! { panic!("{why}\n{report}\nlogs:{}", lab.tail_logs()) };
    if !sender_status.success() {
        fail(&format!(
            "`chapar send --until delivered` exited with {sender_status}"
        ));
    }
    let sender_said = fs::read_to_string(lab.log_path("sender")).unwrap_or_default();
    if !sender_said.contains("done: every bundle is delivered") {
        fail("the sender did not say the bundle was delivered");
    }
    if recipient_status.is_none_or(|s| !s.success()) || opened_at.is_none() {
        fail("the recipient did not open the bundle");
    }
    if c2_restarted_at.is_none() || w3_killed_at.is_none() {
        fail("the mid-run events (C2 restart, W3 killed) did not both happen before delivery");
    }
    let opened_dir = out_dir.join(&bundle);
    for original in files_under(&input) {
        let rel = original
            .strip_prefix(input.parent().expect("parent"))
            .expect("relative");
        let got = opened_dir.join(rel);
        let same = fs::read(&got).ok() == Some(fs::read(&original).expect("read"));
        if !same {
            fail(&format!(
                "{} differs from {}",
                got.display(),
                original.display()
            ));
        }
    }
    // The bound is on what crossed above IP: the bytes TCP carried. The
    // per-packet Ethernet/IPv4/TCP headers (~4.6 % at a 1500-byte MTU) are
    // a tax of the link, not bytes the mesh chose to send; the raw figure
    // is reported above.
    let carried = tx.saturating_sub(headers);
    if carried as f64 > BOUND * chunk_total as f64 {
        fail(&format!(
            "{carried} bytes of TCP payload ({tx} on the wire) crossed the gateway's international \
             link toward the world, more than {BOUND} x {chunk_total} chunk bytes"
        ));
    }
}
