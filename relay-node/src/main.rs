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

    /// A TOML file of settings (see chapar-relay.example.toml); flags given
    /// on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/4701].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,

    /// A peer to connect to and keep reconnecting to, with /p2p/<id> (repeatable).
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<Multiaddr>,

    /// Byte budget for stored chunks, e.g. 50GiB (kept in the data directory).
    #[arg(long, value_name = "SIZE")]
    quota: Option<bytesize::ByteSize>,

    /// How often to re-sync inventories with each peer [default: 10s].
    #[arg(long, value_name = "DURATION")]
    sync_interval: Option<humantime::Duration>,

    /// More log output (-v debug). `CHAPAR_LOG` takes a full filter.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The settings file. Every field is optional; the defaults are the ones
/// written in `chapar-relay.example.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    listen: Option<Vec<String>>,
    peers: Option<Vec<String>>,
    quota: Option<String>,
    sync_interval: Option<String>,
}

/// Settings after the file and the flags are merged and validated.
struct Settings {
    data_dir: PathBuf,
    listen: Vec<Multiaddr>,
    peers: Vec<Multiaddr>,
    quota: Option<u64>,
    sync_interval: Duration,
}

const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/4701";
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(10);

fn read_config(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid settings", path.display()))
}

fn addrs(list: &[String], what: &str) -> Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("{what}: {a:?} is not a multiaddr"))
        })
        .collect()
}

fn settings(args: &RunArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let data_dir = match (&args.data.data_dir, &file.data_dir) {
        (Some(d), _) | (None, Some(d)) => d.clone(),
        (None, None) => data_dir(&args.data)?,
    };
    let listen = match (&args.listen[..], &file.listen) {
        ([], Some(l)) => addrs(l, "listen")?,
        ([], None) => vec![DEFAULT_LISTEN.parse()?],
        (flags, _) => flags.to_vec(),
    };
    let peers = match (&args.peers[..], &file.peers) {
        ([], Some(p)) => addrs(p, "peers")?,
        (flags, _) => flags.to_vec(),
    };
    let quota = match (args.quota, &file.quota) {
        (Some(q), _) => Some(q.as_u64()),
        (None, Some(q)) => Some(
            q.parse::<bytesize::ByteSize>()
                .map_err(|e| anyhow::anyhow!("quota: {q:?}: {e}"))?
                .as_u64(),
        ),
        (None, None) => None,
    };
    let sync_interval = match (args.sync_interval, &file.sync_interval) {
        (Some(d), _) => d.into(),
        (None, Some(d)) => {
            humantime::parse_duration(d).with_context(|| format!("sync_interval: {d:?}"))?
        }
        (None, None) => DEFAULT_SYNC_INTERVAL,
    };
    Ok(Settings {
        data_dir,
        listen,
        peers,
        quota,
        sync_interval,
    })
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
    let settings = settings(&args)?;
    let dir = settings.data_dir.clone();
    let key = node_key(&dir)?;
    let store = Store::open(&dir)?;
    if let Some(q) = settings.quota {
        store.set_quota(Some(q))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = StoreHandle::new(store);
        let mut config = NodeConfig::new(key, settings.listen);
        config.peers = settings.peers;
        config.sync_interval = settings.sync_interval;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_example_config_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("chapar-relay.example.toml");
        let file = read_config(&path).expect("example parses");
        assert_eq!(file.listen, Some(vec![DEFAULT_LISTEN.to_string()]));
        let interval = humantime::parse_duration(file.sync_interval.as_deref().expect("set"))
            .expect("duration");
        assert_eq!(interval, DEFAULT_SYNC_INTERVAL);
        for p in file.peers.unwrap_or_default() {
            p.parse::<Multiaddr>().expect("example peer parses");
        }
    }

    #[test]
    fn unknown_settings_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "qouta = \"5GiB\"\n").expect("write");
        assert!(read_config(&path).is_err());
    }
}
