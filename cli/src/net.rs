//! Running a node for `send` and `receive`: the runtime, the node key and
//! store in the data directory, and progress output.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chapar_mesh::{Fetch, NodeConfig, NodeHandle};
use chapar_store::StoreHandle;

use crate::args::{NetArgs, ProgressMode};

/// A small runtime: the node needs little, and the machine may be a laptop.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Starts this machine's node over its store.
pub async fn start_node(
    dir: &Path,
    store: StoreHandle,
    net: &NetArgs,
    fetch: Fetch,
) -> Result<NodeHandle> {
    let key = chapar_mesh::load_or_create_node_key(dir)
        .with_context(|| format!("node key in {}", dir.display()))?;
    let stealth = net.listen.is_empty() && !net.mdns;
    let mut config = NodeConfig::new(key, net.listen.clone());
    config.peers = net.peers.clone();
    config.mdns = net.mdns && !net.no_mdns;
    config.stealth = stealth;
    config.pluggable.state_dir = dir.join("pt");
    if stealth {
        for plain in net
            .peers
            .iter()
            .filter(|a| !chapar_transport::is_hidden_transport(a))
        {
            tracing::warn!(
                peer = %plain,
                "a plain libp2p address: a censor can see and block this link; ask the relay for its share string"
            );
        }
    }
    config.sync_interval = net.sync_interval.into();
    config.fetch = fetch;
    // A sender's or recipient's machine relays circuits for nobody, and
    // is not a DHT server that anyone joining could list.
    config.relay = None;
    config.kademlia = false;
    let node = chapar_mesh::start(config, store).await?;
    Ok(node)
}

/// Resolves `auto` against whether stderr is a terminal.
pub fn progress_mode(mode: ProgressMode) -> ProgressMode {
    match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
        ProgressMode::Auto => ProgressMode::Lines,
        other => other,
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// How often progress is looked at.
pub const TICK: Duration = Duration::from_millis(250);
