//! `chapar-relay`: a volunteer relay. It stores and forwards encrypted
//! chunks it cannot read, within the quota its operator sets: it learns
//! bundles by gossip and inventory sync, fetches what it lacks from its
//! peers, and serves what it holds.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chapar_mesh::{start, NodeConfig};
use chapar_store::{Store, StoreHandle};
use clap::{Args, Parser, Subcommand};
use libp2p::{identity, Multiaddr};

/// Environment variable naming the data directory.
const DATA_DIR_ENV: &str = "CHAPAR_DATA_DIR";
/// File holding the node's libp2p key, inside the data directory.
const NODE_KEY_FILE: &str = "node.key";

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
    /// Print this relay's peer id (creating its key if needed).
    Id(DataDirArg),
}

#[derive(Debug, Args)]
struct DataDirArg {
    /// The data directory [default: the platform's data folder, e.g.
    /// ~/.local/share/chapar-relay].
    #[arg(long, env = DATA_DIR_ENV, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    data: DataDirArg,

    /// Address to listen on (repeatable).
    #[arg(
        long,
        value_name = "MULTIADDR",
        default_value = "/ip4/0.0.0.0/tcp/4701"
    )]
    listen: Vec<Multiaddr>,

    /// A peer to connect to and keep reconnecting to, with /p2p/<id> (repeatable).
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<Multiaddr>,

    /// Byte budget for stored chunks, e.g. 50GiB (kept in the data directory).
    #[arg(long, value_name = "SIZE")]
    quota: Option<bytesize::ByteSize>,

    /// How often to re-sync inventories with each peer.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    sync_interval: humantime::Duration,

    /// More log output (-v debug). `CHAPAR_LOG` takes a full filter.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn data_dir(arg: &DataDirArg) -> Result<PathBuf> {
    if let Some(dir) = &arg.data_dir {
        return Ok(dir.clone());
    }
    directories::ProjectDirs::from("", "", "chapar-relay")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home folder to put the data directory in; give --data-dir")
}

/// The node's key: read from the data directory, or made and written
/// there (mode 0600) the first time, so the peer id survives restarts.
fn node_key(dir: &Path) -> Result<identity::Keypair> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let path = dir.join(NODE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{}: not a libp2p key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("encoding the node key")?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("{}", path.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Id(arg)) => {
            let key = node_key(&data_dir(&arg)?)?;
            println!("{}", key.public().to_peer_id());
            Ok(())
        }
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let default = if args.verbose > 0 {
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
    let dir = data_dir(&args.data)?;
    let key = node_key(&dir)?;
    let store = Store::open(&dir)?;
    if let Some(q) = args.quota {
        store.set_quota(Some(q.as_u64()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = StoreHandle::new(store);
        let mut config = NodeConfig::new(key, args.listen);
        config.peers = args.peers;
        config.sync_interval = args.sync_interval.into();
        let node = start(config, store.clone()).await?;
        tracing::info!(peer_id = %node.peer_id(), data_dir = %dir.display(), "relay started");
        let mut gc = tokio::time::interval(Duration::from_secs(60));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
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
