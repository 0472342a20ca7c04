//! `chapar-relay`: a volunteer relay. It stores and forwards encrypted
//! chunks it cannot read, within the quota its operator sets: it learns
//! bundles by gossip and inventory sync, fetches what it lacks from its
//! peers, and serves what it holds.
#![forbid(unsafe_code)]

mod links;
mod settings;

use std::time::Duration;

use anyhow::{Context, Result};
use chapar_mesh::{load_or_create_node_key, serve_metrics, start};
use chapar_store::{Store, StoreHandle};
use clap::{Parser, Subcommand};

use crate::settings::{settings, RunArgs};

/// A Chapar relay: stores and forwards encrypted chunks it cannot read.
#[derive(Debug, Parser)]
#[command(
    name = "chapar-relay",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this relay's peer id (creating its key if needed) and, given
    /// the same settings as a run, the share string of each
    /// censorship-resistant listener.
    Id(Box<IdArgs>),
    /// Probe a server as a censor would (no secret), and show what each
    /// probe got back: check that a relay looks like an ordinary website.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct IdArgs {
    #[command(flatten)]
    run: RunArgs,

    /// One JSON object: {"peer_id": …, "share": […]}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// The server's address.
    #[arg(value_name = "IP:PORT")]
    addr: std::net::SocketAddr,

    /// The name to send in TLS and Host [default: the address].
    #[arg(long)]
    server_name: Option<String>,
}

fn main() -> Result<()> {
    chapar_mesh::keep_large_buffers_out_of_the_heap();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Id(args)) => id(*args),
        Some(Command::Probe(args)) => probe(args),
        None => run(cli.run),
    }
}

fn id(args: IdArgs) -> Result<()> {
    let settings = settings(&args.run)?;
    let dir = settings.data_dir.clone();
    let key = load_or_create_node_key(&dir).with_context(|| format!("{}", dir.display()))?;
    let peer = key.public().to_peer_id();
    let links = &settings.links;
    let mut shares = Vec::new();
    if let (Some(https), Some(keys)) = (&links.https, links::https_keys(&dir, links)?) {
        shares.extend(links::https_share(links, &keys, https.listen.port(), peer)?);
    }
    let mut notes = Vec::new();
    if let Some(obfs4) = &links.obfs4 {
        match links::saved_obfs4_args(&dir) {
            Some(args) => {
                shares.extend(links::bridge_line(links, obfs4.listen.port(), args, peer)?)
            }
            None => notes
                .push("the obfs4 bridge line is known once the relay has run with --obfs4-listen"),
        }
    }
    let shares: Vec<String> = shares.iter().map(ToString::to_string).collect();
    if args.json {
        let object =
            serde_json::json!({"peer_id": peer.to_string(), "share": shares, "notes": notes});
        println!("{object}");
    } else {
        println!("{peer}");
        for s in &shares {
            println!("share: {s}");
        }
        for n in notes {
            eprintln!("note: {n}");
        }
    }
    Ok(())
}

fn probe(args: ProbeArgs) -> Result<()> {
    let name = args
        .server_name
        .unwrap_or_else(|| args.addr.ip().to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answers = runtime.block_on(chapar_transport::probe::probe_all(args.addr, &name));
    let mut telltale = false;
    for a in answers {
        let first = String::from_utf8_lossy(&a.answer);
        let first = first.lines().next().unwrap_or("(nothing)");
        let found = a.telltales();
        telltale |= !found.is_empty();
        println!(
            "{:<18} tls={:<5} {} bytes  {first:?}  {}",
            a.probe,
            a.tls,
            a.answer.len(),
            if found.is_empty() {
                String::new()
            } else {
                format!("GIVES AWAY: {}", found.join(", "))
            }
        );
    }
    if telltale {
        anyhow::bail!("some answers name libp2p or Chapar");
    }
    Ok(())
}

fn init_logging(verbose: u8) {
    let default = if verbose > 0 {
        "info,chapar_mesh=debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAPAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(args: RunArgs) -> Result<()> {
    init_logging(args.verbose);
    let settings = settings(&args)?;
    let dir = settings.data_dir.clone();
    let key = load_or_create_node_key(&dir).with_context(|| format!("{}", dir.display()))?;
    let mut store = Store::open(&dir)?;
    store.drop_chunks_once_durable();
    if let Some(q) = settings.quota {
        store.set_quota(Some(q))?;
    }
    let links = settings.links.clone();
    let https_keys = links::https_keys(&dir, &links)?;
    let mut config = settings.node_config(key);
    links::configure(&mut config, &links, https_keys.as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // First, so a SIGTERM during start-up still stops the relay cleanly.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let store = StoreHandle::new(store);
        let node = start(config, store.clone()).await?;
        tracing::info!(peer_id = %node.peer_id(), data_dir = %dir.display(), "relay started");
        links::announce_and_supervise(&dir, &links, https_keys.as_ref(), &node).await?;
        if let Some(addr) = settings.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics address {addr}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(url = %format!("http://{bound}/metrics"), "serving metrics");
            tokio::spawn(serve_metrics(listener, node.clone()));
        }
        let mut gc = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = gc.tick() => {
                    let collected = store.call(|s| s.collect_garbage(s.now())).await;
                    if let Ok(report) = collected {
                        for id in report.expired {
                            tracing::info!(bundle = %id, "expired bundle removed");
                        }
                    }
                }
            }
        }
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}
