//! The censor of BRIEF.md, on real network namespaces and real processes:
//!
//! ```text
//!  country              censor (router)                gateway              world
//!  sender   ──veth──  DPI on every forwarded packet ──veth──  relay G  ──veth──  relay W, recipient
//!  10.88.1.2          10.88.1.1 | 10.88.2.1                    10.88.2.2 | 10.88.3.1  10.88.3.2
//! ```
//!
//! The censor (`chapar-censor`, NFQUEUE) drops flows that carry libp2p's
//! signatures (`/multistream/1.0.0`, `/noise`, `/yamux`), TCP and UDP port
//! 4701, QUIC Initials offering ALPN `libp2p`, and (the fully-encrypted
//! rule) flows whose first packet is neither TLS, HTTP nor mostly
//! printable with 3.4–4.6 set bits per byte; and it actively probes every
//! server a country host connects to. The test asserts:
//!
//! 1. plain libp2p from the country (TCP on 4702, TCP on 4701, QUIC) is
//!    blocked, each by its rule: the censor works;
//! 2. a stealth sender given only the gateway's camouflaged share string
//!    hands its bundle to G, the recipient in the world opens it byte for
//!    byte, and the receipt comes back (`--until delivered` exits 0);
//! 3. no probe of the camouflaged listener got anything naming libp2p or
//!    Chapar, and `GET /` got the decoy site, while probes of the plain
//!    listener did show libp2p (so the prober works);
//! 4. obfs4: with the fully-encrypted rule on, a sender given the bridge
//!    line hands off nothing and the censor logs the rule; with the rule
//!    off, the same sender gets through.
//!
//! Needs root, `ip netns`, `iptables` and `obfs4proxy`; skips loudly
//! without them, except under CI, where that is a failure. Everything is
//! torn down on every exit path (see `chapar_tests::netns`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chapar_tests::netns::{binaries, in_ns, ip, preflight, run, Lab};
use serde_json::Value;

const COUNTRY: usize = 0;
const CENSOR: usize = 1;
const GATEWAY: usize = 2;
const WORLD: usize = 3;

const G_CENSORED: &str = "10.88.2.2";
const HTTPS_PORT: u16 = 443;
const PLAIN_PORT: u16 = 4702;
const QUIC_PORT: u16 = 4703;
const BLOCKED_PORT: u16 = 4701;
const OBFS4_PORT: u16 = 9443;
const QUEUE: &str = "7";
/// How long each phase may take before the test gives up and shows logs.
const PHASE: Duration = Duration::from_secs(90);
/// How long a blocked sender is given to (fail to) hand anything off.
const BLOCKED_FOR: Duration = Duration::from_secs(12);

fn topology(lab: &Lab) {
    lab.link(COUNTRY, "c0", "10.88.1.2", CENSOR, "z0", "10.88.1.1");
    lab.link(CENSOR, "z1", "10.88.2.1", GATEWAY, "g0", G_CENSORED);
    lab.link(GATEWAY, "g1", "10.88.3.1", WORLD, "w0", "10.88.3.2");
    ip(&[
        "-n",
        lab.ns(COUNTRY),
        "route",
        "add",
        "default",
        "via",
        "10.88.1.1",
    ]);
    ip(&[
        "-n",
        lab.ns(GATEWAY),
        "route",
        "add",
        "10.88.1.0/24",
        "via",
        "10.88.2.1",
    ]);
    in_ns(
        lab.ns(CENSOR),
        &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
    );
    // Every forwarded packet goes to the censor; none passes while it is
    // not running (no --queue-bypass): the censor cannot be skipped.
    in_ns(
        lab.ns(CENSOR),
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-j",
            "NFQUEUE",
            "--queue-num",
            QUEUE,
        ],
    );
}

fn start_censor(lab: &mut Lab, name: &str, logs: &Path, fet: bool) {
    let mut args: Vec<String> = ["--queue", QUEUE, "--country", "10.88.1.0/24", "--log"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push(logs.join("censor-decisions.jsonl").display().to_string());
    args.push("--probes".into());
    args.push(logs.join("censor-probes.jsonl").display().to_string());
    if !fet {
        args.push("--no-fet".into());
    }
    lab.spawn(
        name,
        CENSOR,
        Path::new(env!("CARGO_BIN_EXE_chapar-censor")),
        &args,
    );
    wait_for_line(&logs.join(format!("{name}.out")), "censor: ready", lab);
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_lines(path: &Path) -> Vec<Value> {
    lines(path)
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for_line(path: &Path, needle: &str, lab: &Lab) -> String {
    let deadline = Instant::now() + PHASE;
    loop {
        if let Some(l) = lines(path).into_iter().find(|l| l.contains(needle)) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in {}\n{}",
            path.display(),
            lab.tail_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The censor's blocked flows to `port`, by rule.
fn blocked_rules(decisions: &Path, port: u16) -> Vec<String> {
    let to = format!(":{port}");
    json_lines(decisions)
        .iter()
        .filter(|d| d["event"] == "blocked")
        .filter(|d| d["flow"].as_str().is_some_and(|f| f.ends_with(&to)))
        .filter_map(|d| d["rule"].as_str().map(str::to_owned))
        .collect()
}

/// The most chunks a sender's `--progress json` events say it handed off.
fn handed_off(log: &Path) -> u64 {
    json_lines(log)
        .iter()
        .filter(|e| e["event"] == "progress")
        .filter_map(|e| e["stage"]["handed_off"].as_u64())
        .max()
        .unwrap_or(0)
}

fn evidence(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let root = dir.join(name);
    fs::create_dir_all(&root).expect("mkdir");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ bytes as u64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(root.join("scan.bin"), data).expect("write");
    fs::write(root.join("note.txt"), "ward 3, 14 admissions\n").expect("write");
    root
}

fn send_args(
    data: &Path,
    recipient: &str,
    peers: &[&str],
    until: &str,
    input: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "send".into(),
        "-r".into(),
        recipient.into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--chunk-size".into(),
        "64KiB".into(),
        "--sync-interval".into(),
        "1s".into(),
        "--progress".into(),
        "json".into(),
        "--until".into(),
        until.into(),
        "--replicas".into(),
        "1".into(),
    ];
    for p in peers {
        args.extend(["--peer".into(), (*p).to_owned()]);
    }
    args.push(input.display().to_string());
    args
}

fn wait_exit(lab: &mut Lab, name: &str) {
    let deadline = Instant::now() + PHASE;
    loop {
        if let Some(status) = lab.exited(name) {
            assert!(
                status.success(),
                "{name} exited with {status}\n{}",
                lab.tail_logs()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not finish\n{}",
            lab.tail_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn same_files(a: &Path, b: &Path) {
    for entry in fs::read_dir(a).expect("read_dir") {
        let path = entry.expect("entry").path();
        let other = b.join(path.file_name().expect("name"));
        assert_eq!(
            fs::read(&path).expect("read original"),
            fs::read(&other).unwrap_or_else(|e| panic!("{}: {e}", other.display())),
            "{} differs",
            other.display()
        );
    }
}

#[test]
fn through_a_censor_plain_libp2p_is_blocked_and_the_camouflaged_link_delivers() {
    if !preflight(
        "censor_netns",
        &[
            ("iptables", "--version", "iptables"),
            ("obfs4proxy", "-version", "obfs4proxy"),
        ],
    ) {
        return;
    }
    let (cli, relay) = binaries();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let logs = dir.join("logs");
    let mut lab = Lab::new(logs.clone(), &["country", "censor", "gateway", "world"]);
    topology(&lab);
    eprintln!(
        "namespaces: {:?}; logs in {}",
        lab.namespaces(),
        logs.display()
    );
    start_censor(&mut lab, "censor", &logs, true);

    // The gateway: camouflaged HTTPS, obfs4 and plain listeners toward the
    // country; plain toward the world.
    let site = dir.join("site");
    fs::create_dir_all(&site).expect("mkdir");
    fs::write(site.join("index.html"), "<h1>Bakery opening hours</h1>").expect("write");
    let g_data = dir.join("g");
    let g_args: Vec<String> = [
        "--data-dir".to_owned(),
        g_data.display().to_string(),
        "--listen".into(),
        format!("/ip4/{G_CENSORED}/tcp/{PLAIN_PORT}"),
        "--listen".into(),
        format!("/ip4/{G_CENSORED}/tcp/{BLOCKED_PORT}"),
        "--listen".into(),
        format!("/ip4/{G_CENSORED}/udp/{QUIC_PORT}/quic-v1"),
        "--listen".into(),
        "/ip4/10.88.3.1/tcp/4701".into(),
        "--https-listen".into(),
        format!("{G_CENSORED}:{HTTPS_PORT}"),
        "--https-site".into(),
        site.display().to_string(),
        "--obfs4-listen".into(),
        format!("{G_CENSORED}:{OBFS4_PORT}"),
        "--public-host".into(),
        G_CENSORED.into(),
        "--no-mdns".into(),
        "--sync-interval".into(),
        "1s".into(),
    ]
    .to_vec();
    lab.spawn("gateway", GATEWAY, &relay, &g_args);
    let g_out = logs.join("gateway.out");
    let share = wait_for_line(&g_out, "share: https://", &lab)["share: ".len()..].to_owned();
    let bridge = wait_for_line(&g_out, "share: obfs4 ", &lab)["share: ".len()..].to_owned();
    let g_id = share.rsplit('#').next().expect("peer id").to_owned();

    let w_id = run(Command::new(&relay)
        .args(["id", "--data-dir"])
        .arg(dir.join("w")))
    .trim()
    .to_owned();
    let key = dir.join("key.txt");
    let recipient = run(Command::new(&cli).arg("keygen").arg("-o").arg(&key))
        .trim()
        .to_owned();
    lab.spawn(
        "world",
        WORLD,
        &relay,
        &[
            "--data-dir".into(),
            dir.join("w").display().to_string(),
            "--listen".into(),
            "/ip4/10.88.3.2/tcp/4701".into(),
            "--peer".into(),
            format!("/ip4/10.88.3.1/tcp/4701/p2p/{g_id}"),
            "--no-mdns".into(),
            "--sync-interval".into(),
            "1s".into(),
        ],
    );
    let out = dir.join("out");
    lab.spawn(
        "recipient",
        WORLD,
        &cli,
        &[
            "receive".into(),
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            out.display().to_string(),
            "--data-dir".into(),
            dir.join("recipient").display().to_string(),
            "--peer".into(),
            format!("/ip4/10.88.3.2/tcp/4701/p2p/{w_id}"),
            "--sync-interval".into(),
            "1s".into(),
            "--once".into(),
        ],
    );

    // 1. Plain libp2p, three ways: none gets through, each by its rule.
    let decisions = logs.join("censor-decisions.jsonl");
    let plain_input = evidence(dir, "plain-evidence", 100_000);
    let plain_peers = [
        format!("/ip4/{G_CENSORED}/tcp/{PLAIN_PORT}/p2p/{g_id}"),
        format!("/ip4/{G_CENSORED}/tcp/{BLOCKED_PORT}/p2p/{g_id}"),
        format!("/ip4/{G_CENSORED}/udp/{QUIC_PORT}/quic-v1/p2p/{g_id}"),
    ];
    let plain_refs: Vec<&str> = plain_peers.iter().map(String::as_str).collect();
    lab.spawn(
        "plain-sender",
        COUNTRY,
        &cli,
        &send_args(
            &dir.join("plain"),
            &recipient,
            &plain_refs,
            "handed-off",
            &plain_input,
        ),
    );
    std::thread::sleep(BLOCKED_FOR);
    assert!(
        lab.exited("plain-sender").is_none(),
        "the plain sender finished:\n{}\ncensor's FORWARD chain:\n{}",
        lab.tail_logs(),
        in_ns(lab.ns(CENSOR), &["iptables", "-L", "FORWARD", "-v", "-n"])
    );
    lab.kill("plain-sender");
    assert_eq!(
        handed_off(&logs.join("plain-sender.log")),
        0,
        "{}",
        lab.tail_logs()
    );
    let rules = |port| blocked_rules(&decisions, port);
    assert!(
        rules(PLAIN_PORT)
            .iter()
            .any(|r| r.starts_with("signature:")),
        "no signature block to {PLAIN_PORT}: {:?}\n{}",
        rules(PLAIN_PORT),
        lab.tail_logs()
    );
    assert!(
        rules(BLOCKED_PORT).iter().any(|r| r == "port-4701"),
        "{:?}",
        rules(BLOCKED_PORT)
    );
    assert!(
        rules(QUIC_PORT).iter().any(|r| r == "quic-alpn-libp2p"),
        "{:?}",
        rules(QUIC_PORT)
    );

    // 2. The camouflaged link, from a stealth sender that knows only the
    // share string: delivered, opened, receipted.
    let input = evidence(dir, "evidence", 600_000);
    lab.spawn(
        "sender",
        COUNTRY,
        &cli,
        &send_args(
            &dir.join("sender"),
            &recipient,
            &[&share],
            "delivered",
            &input,
        ),
    );
    wait_exit(&mut lab, "recipient");
    wait_exit(&mut lab, "sender");
    let opened: Vec<PathBuf> = fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    same_files(&input, &opened[0].join("evidence"));
    assert!(
        blocked_rules(&decisions, HTTPS_PORT).is_empty(),
        "the censor blocked the camouflaged link: {:?}",
        blocked_rules(&decisions, HTTPS_PORT)
    );

    // 3. What the censor's probes got.
    let probes = logs.join("censor-probes.jsonl");
    let https_server = format!("{G_CENSORED}:{HTTPS_PORT}");
    let plain_server = format!("{G_CENSORED}:{PLAIN_PORT}");
    let deadline = Instant::now() + PHASE;
    let of = |server: &str| -> Vec<Value> {
        json_lines(&probes)
            .into_iter()
            .filter(|p| p["server"] == server)
            .collect()
    };
    while of(&https_server).len() < 5 || of(&plain_server).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "probes missing:\n{}",
            lab.tail_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in of(&https_server) {
        assert_eq!(p["telltales"], serde_json::json!([]), "{p}");
    }
    let get = of(&https_server)
        .into_iter()
        .find(|p| p["probe"] == "tls-get")
        .expect("tls-get probe");
    assert_eq!(get["status"], 200, "{get}");
    assert!(
        get["answer_prefix"]
            .as_str()
            .is_some_and(|a| a.contains("HTTP/1.1 200")),
        "{get}"
    );
    assert!(
        of(&plain_server)
            .iter()
            .any(|p| p["telltales"].as_array().is_some_and(|t| !t.is_empty())),
        "the prober saw nothing of libp2p on the plain port: is it probing?"
    );
    eprintln!("probes of {https_server}:");
    for p in of(&https_server) {
        eprintln!(
            "  {} tls={} status={} {:?}",
            p["probe"],
            p["tls"],
            p["status"],
            p["answer_prefix"]
                .as_str()
                .map(|a| a.lines().next().unwrap_or(""))
        );
    }

    // 4. obfs4 against the fully-encrypted rule, then without it.
    let obfs4_input = evidence(dir, "obfs4-evidence", 100_000);
    lab.spawn(
        "obfs4-sender",
        COUNTRY,
        &cli,
        &send_args(
            &dir.join("obfs4"),
            &recipient,
            &[&bridge],
            "handed-off",
            &obfs4_input,
        ),
    );
    std::thread::sleep(BLOCKED_FOR);
    let obfs4_rules = blocked_rules(&decisions, OBFS4_PORT);
    let blocked =
        lab.exited("obfs4-sender").is_none() && handed_off(&logs.join("obfs4-sender.log")) == 0;
    eprintln!(
        "obfs4 with the fully-encrypted rule on: blocked={blocked}, rules fired: {obfs4_rules:?}"
    );
    assert!(
        blocked,
        "obfs4 got through the fully-encrypted rule:\n{}",
        lab.tail_logs()
    );
    assert!(
        obfs4_rules.iter().any(|r| r == "fully-encrypted"),
        "{obfs4_rules:?}"
    );
    lab.terminate("censor");
    start_censor(&mut lab, "censor-no-fet", &logs, false);
    wait_exit(&mut lab, "obfs4-sender");
    eprintln!("obfs4 with the fully-encrypted rule off: handed off");
}
