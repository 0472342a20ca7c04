//! `chapar-relay`: a volunteer relay. It stores and forwards encrypted
//! chunks it cannot read, within the quota its operator sets: it learns
//! bundles by gossip and inventory sync, fetches what it lacks from its
//! peers, and serves what it holds.
#![forbid(unsafe_code)]

mod settings;

use std::time::Duration;

use anyhow::{Context, Result};
use chapar_mesh::{load_or_create_node_key, serve_metrics, start};
use chapar_store::{Store, StoreHandle};
use clap::{Parser, Subcommand};

use crate::settings::{data_dir, settings, DataDirArg, RunArgs};

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

fn main() -> Result<()> {
    chapar_mesh::keep_large_buffers_out_of_the_heap();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Id(arg)) => {
            let dir = data_dir(&arg)?;
            let key =
                load_or_create_node_key(&dir).with_context(|| format!("{}", dir.display()))?;
            println!("{}", key.public().to_peer_id());
            Ok(())
        }
        None => run(cli.run),
    }
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = StoreHandle::new(store);
        let node = start(settings.node_config(key), store.clone()).await?;
        tracing::info!(peer_id = %node.peer_id(), data_dir = %dir.display(), "relay started");
        if let Some(addr) = settings.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics address {addr}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(url = %format!("http://{bound}/metrics"), "serving metrics");
            tokio::spawn(serve_metrics(listener, node.clone()));
        }
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
