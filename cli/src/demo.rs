//! `chapar demo`: the whole path across a blackout, on this machine, in
//! one command and without root. Inside the "country": a sender and two
//! relays. A gateway relay whose international link opens only in short,
//! throttled windows (an in-process link shaper, `chapar-link`). Outside:
//! two relays and a recipient. Sample evidence is sealed, handed off,
//! carried across the windows, opened and verified, and the receipt comes
//! back to the sender. Every node is a real libp2p node over loopback TCP
//! with its own store on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chapar_bundle::SealOptions;
use chapar_format::{BundleId, Geometry};
use chapar_link::{Link, Schedule, Shape};
use chapar_mesh::{Fetch, NodeConfig, NodeHandle};
use chapar_store::{Store, StoreHandle};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde_json::json;

use crate::args::DemoArgs;
use crate::commands::Report;
use crate::net::runtime;
use crate::progress::Progress;
use crate::receive::{Inbox, Receiver};
use crate::send::{seal_into_store, stage_of};

/// One node of the demo and its store.
struct DemoNode {
    name: &'static str,
    handle: NodeHandle,
    store: StoreHandle,
}

struct Mesh {
    sender: DemoNode,
    country: Vec<DemoNode>,
    gateway: DemoNode,
    world: Vec<DemoNode>,
    recipient: DemoNode,
    link: Link,
}

async fn node(
    name: &'static str,
    root: &Path,
    peers: Vec<Multiaddr>,
    tune: impl FnOnce(&mut NodeConfig),
) -> Result<DemoNode> {
    let dir = root.join(name);
    let store = StoreHandle::new(Store::open(&dir)?);
    let key = chapar_mesh::load_or_create_node_key(&dir)?;
    let mut config = NodeConfig::new(key, vec!["/ip4/127.0.0.1/tcp/0".parse()?]);
    config.peers = peers;
    config.sync_interval = Duration::from_secs(1);
    // The demo's topology is the one drawn here: no discovery that could
    // find a way around the gateway.
    config.mdns = false;
    config.kademlia = false;
    config.dial_learned_addrs = false;
    config.target_peers = 0;
    config.use_peer_book = false;
    config.relay = None;
    tune(&mut config);
    let handle = chapar_mesh::start(config, store.clone()).await?;
    Ok(DemoNode {
        name,
        handle,
        store,
    })
}

async fn tcp_addr(node: &DemoNode) -> Result<Multiaddr> {
    for _ in 0..200 {
        if let Some(a) = node.handle.listen_addrs().await.into_iter().next() {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{} never started listening", node.name)
}

/// A loopback TCP address with a port free a moment ago (the gateway
/// must know the exact address to tell its sides apart, so it cannot
/// listen on port 0 there).
fn free_loopback_port() -> Result<Multiaddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("/ip4/127.0.0.1/tcp/{port}").parse()?)
}

fn socket_of(addr: &Multiaddr) -> Result<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Ok(SocketAddr::new(
        ip.context("no IP")?,
        port.context("no TCP port")?,
    ))
}

async fn build_mesh(root: &Path, a: &DemoArgs) -> Result<Mesh> {
    let c1 = node("country-relay-1", root, vec![], |_| {}).await?;
    let c1_addr = tcp_addr(&c1).await?;
    let c2 = node("country-relay-2", root, vec![c1_addr.clone()], |_| {}).await?;
    let c2_addr = tcp_addr(&c2).await?;
    // The international link arrives on a listen address of its own, so
    // the gateway knows which peers are across it: what it serves the
    // country relays does not count as having crossed.
    let world_side = free_loopback_port()?;
    let gateway = node(
        "gateway",
        root,
        vec![c1_addr.clone(), c2_addr.clone()],
        |c| {
            // As `chapar-relay --scarce-uplink-listen ADDR` does.
            c.listen.push(world_side.clone());
            c.scarce_uplink = true;
            c.scarce_listen = vec![world_side.clone()];
            c.resend_after = Duration::from_secs(30);
        },
    )
    .await?;
    tcp_addr(&gateway).await?;
    let shape = Shape {
        rate_bytes_per_sec: Some(a.rate.as_u64()),
        initially_up: false,
    };
    let link = Link::start("127.0.0.1:0".parse()?, socket_of(&world_side)?, shape).await?;
    let local = link.local_addr();
    let across = Multiaddr::empty()
        .with(Protocol::Ip4(match local.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => anyhow::bail!("the link listens on IPv6"),
        }))
        .with(Protocol::Tcp(local.port()))
        .with(Protocol::P2p(gateway.handle.peer_id()));
    let w1 = node("world-relay-1", root, vec![across.clone()], |_| {}).await?;
    let w1_addr = tcp_addr(&w1).await?;
    let w2 = node("world-relay-2", root, vec![across, w1_addr.clone()], |_| {}).await?;
    let w2_addr = tcp_addr(&w2).await?;
    let recipient = node("recipient", root, vec![w1_addr, w2_addr], |c| {
        c.fetch = Fetch::Receiving
    })
    .await?;
    let sender = node("sender", root, vec![c1_addr, c2_addr], |c| {
        c.fetch = Fetch::Nothing
    })
    .await?;
    link.run_schedule(Schedule {
        up: a.window.into(),
        down: a.closed.into(),
    });
    Ok(Mesh {
        sender,
        country: vec![c1, c2],
        gateway,
        world: vec![w1, w2],
        recipient,
        link,
    })
}

/// Sample evidence: scans, a spreadsheet of records, a statement.
fn make_evidence(dir: &Path, size: u64) -> Result<PathBuf> {
    let evidence = dir.join("evidence");
    std::fs::create_dir_all(evidence.join("scans"))?;
    let per_scan = (size / 4).max(1);
    for i in 1..=4u64 {
        let mut bytes = vec![0u8; per_scan as usize];
        let mut x = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i);
        for chunk in bytes.chunks_mut(8) {
            // xorshift: incompressible, like real scans.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = chunk.len();
            chunk.copy_from_slice(&x.to_le_bytes()[..n]);
        }
        std::fs::write(evidence.join("scans").join(format!("ward-{i}.jpg")), bytes)?;
    }
    let mut records = String::from("date,ward,admitted,injury\n");
    for day in 1..=30 {
        records.push_str(&format!(
            "2026-11-{day:02},{},{},gunshot\n",
            day % 4 + 1,
            day * 3 % 17
        ));
    }
    std::fs::write(evidence.join("records.csv"), records)?;
    std::fs::write(
        evidence.join("statement.txt"),
        "Statement of the night nurse, recorded the morning after.\n",
    )?;
    Ok(evidence)
}

fn bar(multi: &MultiProgress, len: u64, label: &str) -> ProgressBar {
    let b = multi.add(ProgressBar::new(len));
    let style = ProgressStyle::with_template("{prefix:>30} {bar:32} {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    b.set_style(style);
    b.set_prefix(label.to_string());
    b
}

async fn most_held(nodes: &[DemoNode], id: BundleId) -> u64 {
    let mut best = 0;
    for n in nodes {
        if let Ok(r) = n.store.record(id).await {
            best = best.max(u64::from(r.held_chunks));
        }
    }
    best
}

pub fn demo(a: DemoArgs) -> Result<Report> {
    let tmp;
    let root = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.0.clone()
        }
    };
    let rt = runtime()?;
    let result = rt.block_on(run(&root, &a));
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// A fresh folder under the system temp dir (removed by `demo`).
struct TempRoot(PathBuf);

fn tempfile_dir() -> Result<TempRoot> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("chapar-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(TempRoot(path))
}

async fn run(root: &Path, a: &DemoArgs) -> Result<Report> {
    let started = Instant::now();
    let say = |s: &str| eprintln!("{s}");
    say("chapar demo: a sender inside a blacked-out country, two domestic relays, a gateway");
    say(&format!(
        "whose international link opens for {} every {} at {}/s, two relays abroad, a recipient.",
        a.window,
        humantime::format_duration(Duration::from(a.window) + Duration::from(a.closed)),
        bytesize::ByteSize(a.rate.as_u64())
    ));
    let key = age::x25519::Identity::generate();
    let key_file = root.join("recipient-key.txt");
    std::fs::write(
        &key_file,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&key.to_string())
        ),
    )?;
    let evidence = make_evidence(root, a.size.as_u64())?;
    let mesh = build_mesh(root, a).await?;

    let mut opts = SealOptions::new(vec![key.to_public()]);
    opts.note = "Ward records and scans, night of the 25th.".into();
    opts.geometry = Geometry {
        chunk_size: 64 * 1024,
        ..opts.geometry
    };
    let store = mesh.sender.store.store().clone();
    let (id, files, bytes) =
        tokio::task::spawn_blocking(move || seal_into_store(&store, &opts, &[evidence])).await??;
    let sealed_record = mesh.sender.store.record(id).await?;
    let total = u64::from(sealed_record.known_chunks);
    let bundle_bytes = sealed_record.held_bytes;
    say(&format!(
        "sealed {files} files ({}) for the recipient: bundle {}, {total} chunks with parity",
        bytesize::ByteSize(bytes),
        &id.to_hex()[..16]
    ));
    if let Ok(bytes) = mesh.sender.store.call(move |s| s.descriptor(&id)).await {
        mesh.sender.handle.announce(bytes).await;
    }

    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    // Bars on a terminal; otherwise a line whenever something moved.
    let line = |text: &str| {
        if tty {
            let _ = multi.println(text);
        } else {
            eprintln!("{text}");
        }
    };
    let mut last_line = String::new();
    let handed = bar(&multi, total, "sender: handed off");
    let country = bar(&multi, total, "country relays: hold");
    let world = bar(&multi, total, "across the gateway: hold");
    let receiving = bar(&multi, total, "recipient: has");
    let receipt = bar(&multi, 1, "receipt back at sender");
    let receiver = Receiver {
        store: mesh.recipient.store.clone(),
        node: mesh.recipient.handle.clone(),
        identities: Arc::new(vec![key]),
        out: root.join("received"),
    };
    let mut inbox = Inbox::default();
    let mut quiet = Progress::new(crate::args::ProgressMode::Quiet, 0);
    let mut link_was_up = false;
    let mut last_stage = None;
    let deadline = Instant::now() + Duration::from(a.timeout);
    let delivered = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if mesh.link.is_up() != link_was_up {
            link_was_up = mesh.link.is_up();
            line(if link_was_up {
                "  [gateway] international link open"
            } else {
                "  [gateway] international link closed"
            });
        }
        let stage = stage_of(
            &mesh.sender.handle,
            &mesh.sender.store,
            id,
            last_stage.as_ref(),
        )
        .await;
        handed.set_position(stage.handed_off as u64);
        country.set_position(most_held(&mesh.country, id).await);
        world.set_position(most_held(&mesh.world, id).await);
        receiving.set_position(most_held(std::slice::from_ref(&mesh.recipient), id).await);
        receiver.look(&mut inbox, &mut quiet).await?;
        let status = format!(
            "  sender handed off {}/{total} · country relays {}/{total} · abroad {}/{total} · recipient {}/{total}",
            handed.position(),
            country.position(),
            world.position(),
            receiving.position()
        );
        if !tty && status != last_line {
            eprintln!("{status}");
            last_line = status;
        }
        if stage.delivered() {
            receipt.set_position(1);
            break true;
        }
        last_stage = Some(stage);
        if Instant::now() > deadline {
            break false;
        }
    };
    for b in [&handed, &country, &world, &receiving, &receipt] {
        b.abandon();
    }
    let (to_gateway, from_gateway) = mesh.link.bytes_forwarded();
    let open = mesh.link.open_time();
    for n in [&mesh.sender, &mesh.gateway, &mesh.recipient]
        .into_iter()
        .chain(&mesh.country)
        .chain(&mesh.world)
    {
        n.handle.shutdown().await;
    }
    mesh.link.shutdown();
    if !delivered {
        anyhow::bail!("the bundle was not delivered within {}", a.timeout);
    }
    let out = root.join("received").join(id.to_hex());
    let mut listing = String::new();
    for entry in walk(&out)? {
        let size = std::fs::metadata(&entry).map(|m| m.len()).unwrap_or(0);
        let rel = entry.strip_prefix(&out).unwrap_or(&entry);
        listing.push_str(&format!(
            "  {:>10}  {}\n",
            bytesize::ByteSize(size).to_string(),
            rel.display()
        ));
    }
    let elapsed = started.elapsed();
    let stdout = format!(
        "opened and verified at the recipient ({}):\n{listing}the receipt reached the sender; relays freed the bundle.\n\
         across the gateway: {} toward the world ({:.2}× the bundle's {} with parity), {} back, in {:.1} s of open link; {:.1} s in all\n",
        out.display(),
        bytesize::ByteSize(from_gateway),
        from_gateway as f64 / bundle_bytes.max(1) as f64,
        bytesize::ByteSize(bundle_bytes),
        bytesize::ByteSize(to_gateway),
        open.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(Report {
        stdout,
        stderr: match &a.dir {
            Some(d) => format!("everything is kept in {}\n", d.display()),
            None => String::new(),
        },
        json: json!({
            "ok": true,
            "bundle_id": id.to_hex(),
            "files": files,
            "bytes": bytes,
            "chunks": total,
            "bundle_bytes_with_parity": bundle_bytes,
            "crossed_to_world": from_gateway,
            "crossed_back": to_gateway,
            "link_open_secs": open.as_secs_f64(),
            "seconds": elapsed.as_secs_f64(),
            "receipt_at_sender": true,
        }),
    })
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
