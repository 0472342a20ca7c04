//! `chapar-relay`: the volunteer relay node. The mesh (libp2p transports,
//! gossip, inventory sync, chunk transfer) arrives with the relay-mesh
//! issue; until then this binary only identifies itself.
#![forbid(unsafe_code)]

use clap::Parser;

/// A Chapar relay: stores and forwards encrypted chunks it cannot read.
#[derive(Debug, Parser)]
#[command(name = "chapar-relay", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the relay mesh is not built yet; see the Status table in README.md")
}
