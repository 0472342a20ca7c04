//! The relay's settings: command-line flags over a TOML file over the
//! defaults (which `chapar-relay.example.toml` spells out).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chapar_mesh::{NodeConfig, RelayLimits};
use clap::Args;

use crate::links::{HttpsSettings, LinkSettings, Obfs4Settings};
use libp2p::{identity, Multiaddr};

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "CHAPAR_DATA_DIR";

pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/4701", "/ip4/0.0.0.0/udp/4701/quic-v1"];
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TARGET_PEERS: usize = 12;

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// The data directory [default: the platform's data folder, e.g.
    /// ~/.local/share/chapar-relay].
    #[arg(long, env = DATA_DIR_ENV, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

fn parse_peer(text: &str) -> Result<Multiaddr, chapar_transport::ShareError> {
    chapar_transport::parse_peer_addr(text)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// A TOML file of settings (see chapar-relay.example.toml); flags given
    /// on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on (repeatable): TCP, QUIC (/udp/N/quic-v1),
    /// WebSocket (/tcp/N/ws), or through a relay (…/p2p/<relay>/p2p-circuit)
    /// [default: /ip4/0.0.0.0/tcp/4701 and /ip4/0.0.0.0/udp/4701/quic-v1;
    /// none when --https-listen or --obfs4-listen is given].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,

    /// A peer to connect to and keep reconnecting to (repeatable): a
    /// multiaddr with /p2p/<id>, another relay's share string, or a bridge
    /// line.
    #[arg(long = "peer", visible_alias = "bridge", value_name = "ADDRESS", value_parser = parse_peer)]
    pub peers: Vec<Multiaddr>,

    /// Byte budget for stored chunks, e.g. 50GiB (kept in the data directory).
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<bytesize::ByteSize>,

    /// How often to re-sync inventories with each peer [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub sync_interval: Option<humantime::Duration>,

    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9701.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Do not discover or announce peers on the local network (mDNS).
    #[arg(long)]
    pub no_mdns: bool,

    /// This relay's uplink is the scarce link (a gateway on a satellite
    /// window): send each chunk out once before any twice, and let the
    /// far side share it among itself.
    #[arg(long)]
    pub scarce_uplink: bool,

    /// With --scarce-uplink: a listen address the scarce link reaches this
    /// relay on (repeatable). Only peers that connect through one count as
    /// across it; the rest (this gateway's country side) are served
    /// freely. Without it, every peer counts.
    #[arg(long = "scarce-uplink-listen", value_name = "MULTIADDR")]
    pub scarce_uplink_listen: Vec<Multiaddr>,

    /// Serve a camouflaged HTTPS listener here (443 in production): an
    /// ordinary website to anyone without this relay's secret, Chapar
    /// inside TLS for clients given its share string.
    #[arg(long, value_name = "IP:PORT")]
    pub https_listen: Option<SocketAddr>,

    /// The website strangers see there: a folder of static files
    /// [default: a small built-in page].
    #[arg(long, value_name = "DIR")]
    pub https_site: Option<PathBuf>,

    /// The certificate chain to serve (PEM, e.g. certbot's fullchain.pem)
    /// [default: a self-signed one made in the data directory, pinned in
    /// the share string].
    #[arg(long, value_name = "FILE")]
    pub https_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub https_key: Option<PathBuf>,

    /// Serve plain HTTP on --https-listen, for a reverse proxy (nginx,
    /// Caddy, a CDN) that terminates TLS in front of it. --https-cert then
    /// names the proxy's certificate if clients must pin it.
    #[arg(long)]
    pub https_behind_proxy: bool,

    /// The port clients connect to when a proxy listens on another one.
    #[arg(long, value_name = "PORT")]
    pub https_public_port: Option<u16>,

    /// Run an obfs4 bridge here (Tor's pluggable transport, through
    /// obfs4proxy or lyrebird). Its bridge line is printed at start.
    #[arg(long, value_name = "IP:PORT")]
    pub obfs4_listen: Option<SocketAddr>,

    /// The obfs4 program [default: lyrebird or obfs4proxy on PATH].
    #[arg(long, value_name = "FILE")]
    pub obfs4_binary: Option<PathBuf>,

    /// The name or address clients reach this relay at, for share strings
    /// [default: the listen address, or this machine's first address].
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,

    /// More log output (-v debug). `CHAPAR_LOG` takes a full filter.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The settings file. Every field is optional; the defaults are the ones
/// written in `chapar-relay.example.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<Vec<String>>,
    pub peers: Option<Vec<String>>,
    pub quota: Option<String>,
    pub sync_interval: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub mdns: Option<bool>,
    pub target_peers: Option<usize>,
    pub scarce_uplink: Option<bool>,
    pub scarce_uplink_listen: Option<Vec<String>>,
    pub relay: Option<RelaySection>,
    pub public_host: Option<String>,
    pub https: Option<HttpsSection>,
    pub obfs4: Option<Obfs4Section>,
}

/// `[https]`: the camouflaged HTTPS listener.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSection {
    pub listen: Option<SocketAddr>,
    pub site: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub behind_proxy: Option<bool>,
    pub public_port: Option<u16>,
}

/// `[obfs4]`: the obfs4 bridge.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obfs4Section {
    pub listen: Option<SocketAddr>,
    pub binary: Option<PathBuf>,
}

/// `[relay]`: carrying circuits for peers that cannot be reached directly.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub enabled: Option<bool>,
    pub max_circuit_duration: Option<String>,
    pub max_circuit_bytes: Option<String>,
    pub max_circuits: Option<usize>,
    pub max_circuits_per_peer: Option<usize>,
    pub max_reservations: Option<usize>,
    pub reservation_duration: Option<String>,
}

/// Settings after the file and the flags are merged and validated.
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub quota: Option<u64>,
    pub sync_interval: Duration,
    pub metrics: Option<SocketAddr>,
    pub mdns: bool,
    pub target_peers: usize,
    pub scarce_uplink: bool,
    pub scarce_listen: Vec<Multiaddr>,
    pub relay: Option<RelayLimits>,
    pub links: LinkSettings,
}

impl Settings {
    /// The node configuration these settings describe.
    pub fn node_config(&self, key: identity::Keypair) -> NodeConfig {
        let mut config = NodeConfig::new(key, self.listen.clone());
        config.peers = self.peers.clone();
        config.sync_interval = self.sync_interval;
        config.mdns = self.mdns;
        config.target_peers = self.target_peers;
        config.relay = self.relay;
        config.scarce_uplink = self.scarce_uplink;
        config.scarce_listen = self.scarce_listen.clone();
        if self.scarce_uplink {
            // A chunk that crossed the scarce link is shared on the far
            // side; it crosses again only if it seems lost for a while.
            config.resend_after = Duration::from_secs(30);
        }
        config
    }
}

pub fn read_config(path: &Path) -> Result<ConfigFile> {
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

/// Peers: multiaddrs, share strings or bridge lines.
fn peer_addrs(list: &[String]) -> Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| chapar_transport::parse_peer_addr(a).with_context(|| format!("peers: {a:?}")))
        .collect()
}

fn link_settings(args: &RunArgs, file: &ConfigFile) -> LinkSettings {
    let https_file = file.https.as_ref();
    let https = args
        .https_listen
        .or(https_file.and_then(|h| h.listen))
        .map(|listen| HttpsSettings {
            listen,
            site: args
                .https_site
                .clone()
                .or(https_file.and_then(|h| h.site.clone())),
            cert: args
                .https_cert
                .clone()
                .or(https_file.and_then(|h| h.cert.clone())),
            key: args
                .https_key
                .clone()
                .or(https_file.and_then(|h| h.key.clone())),
            behind_proxy: args.https_behind_proxy
                || https_file.and_then(|h| h.behind_proxy).unwrap_or(false),
            public_port: args
                .https_public_port
                .or(https_file.and_then(|h| h.public_port)),
        });
    let obfs4_file = file.obfs4.as_ref();
    let obfs4 = args
        .obfs4_listen
        .or(obfs4_file.and_then(|o| o.listen))
        .map(|listen| Obfs4Settings {
            listen,
            binary: args
                .obfs4_binary
                .clone()
                .or(obfs4_file.and_then(|o| o.binary.clone())),
        });
    LinkSettings {
        https,
        obfs4,
        public_host: args.public_host.clone().or(file.public_host.clone()),
    }
}

fn duration(text: &str, what: &str) -> Result<Duration> {
    humantime::parse_duration(text).with_context(|| format!("{what}: {text:?}"))
}

fn size(text: &str, what: &str) -> Result<u64> {
    Ok(text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| anyhow::anyhow!("{what}: {text:?}: {e}"))?
        .as_u64())
}

fn relay_limits(section: Option<&RelaySection>) -> Result<Option<RelayLimits>> {
    let Some(s) = section else {
        return Ok(Some(RelayLimits::default()));
    };
    if s.enabled == Some(false) {
        return Ok(None);
    }
    let mut limits = RelayLimits::default();
    if let Some(d) = &s.max_circuit_duration {
        limits.max_circuit_duration = duration(d, "relay.max_circuit_duration")?;
        anyhow::ensure!(
            limits.max_circuit_duration.as_secs() <= u64::from(u32::MAX),
            "relay.max_circuit_duration: at most {} seconds",
            u32::MAX
        );
    }
    if let Some(b) = &s.max_circuit_bytes {
        limits.max_circuit_bytes = size(b, "relay.max_circuit_bytes")?;
    }
    if let Some(d) = &s.reservation_duration {
        limits.reservation_duration = duration(d, "relay.reservation_duration")?;
    }
    limits.max_circuits = s.max_circuits.unwrap_or(limits.max_circuits);
    limits.max_circuits_per_peer = s
        .max_circuits_per_peer
        .unwrap_or(limits.max_circuits_per_peer);
    limits.max_reservations = s.max_reservations.unwrap_or(limits.max_reservations);
    Ok(Some(limits))
}

pub fn settings(args: &RunArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let data_dir = match (&args.data.data_dir, &file.data_dir) {
        (Some(d), _) | (None, Some(d)) => d.clone(),
        (None, None) => data_dir(&args.data)?,
    };
    let links = link_settings(args, &file);
    let listen = match (&args.listen[..], &file.listen) {
        ([], Some(l)) => addrs(l, "listen")?,
        // A relay that faces a censor must not also answer libp2p on a
        // well-known port of the same address: plain listeners only when
        // asked for.
        ([], None) if links.https.is_some() || links.obfs4.is_some() => Vec::new(),
        ([], None) => DEFAULT_LISTEN
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
        (flags, _) => flags.to_vec(),
    };
    let peers = match (&args.peers[..], &file.peers) {
        ([], Some(p)) => peer_addrs(p)?,
        (flags, _) => flags.to_vec(),
    };
    let quota = match (args.quota, &file.quota) {
        (Some(q), _) => Some(q.as_u64()),
        (None, Some(q)) => Some(size(q, "quota")?),
        (None, None) => None,
    };
    let sync_interval = match (args.sync_interval, &file.sync_interval) {
        (Some(d), _) => d.into(),
        (None, Some(d)) => duration(d, "sync_interval")?,
        (None, None) => DEFAULT_SYNC_INTERVAL,
    };
    let scarce_listen = match (&args.scarce_uplink_listen[..], &file.scarce_uplink_listen) {
        ([], Some(l)) => addrs(l, "scarce_uplink_listen")?,
        (flags, _) => flags.to_vec(),
    };
    if let Some(a) = scarce_listen.iter().find(|a| !listen.contains(a)) {
        anyhow::bail!("scarce uplink address {a} is not one of the listen addresses");
    }
    Ok(Settings {
        data_dir,
        listen,
        peers,
        quota,
        sync_interval,
        metrics: args.metrics.or(file.metrics),
        mdns: !args.no_mdns && file.mdns.unwrap_or(true),
        target_peers: file.target_peers.unwrap_or(DEFAULT_TARGET_PEERS),
        scarce_uplink: args.scarce_uplink
            || file.scarce_uplink.unwrap_or(false)
            || !scarce_listen.is_empty(),
        scarce_listen,
        relay: relay_limits(file.relay.as_ref())?,
        links,
    })
}

pub fn data_dir(arg: &DataDirArg) -> Result<PathBuf> {
    if let Some(dir) = &arg.data_dir {
        return Ok(dir.clone());
    }
    directories::ProjectDirs::from("", "", "chapar-relay")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home folder to put the data directory in; give --data-dir")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> ConfigFile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("chapar-relay.example.toml");
        read_config(&path).expect("example parses")
    }

    #[test]
    fn the_committed_example_config_is_valid_and_matches_the_defaults() {
        let file = example();
        let listen: Vec<String> = DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect();
        assert_eq!(file.listen, Some(listen));
        let interval =
            duration(file.sync_interval.as_deref().expect("set"), "x").expect("duration");
        assert_eq!(interval, DEFAULT_SYNC_INTERVAL);
        assert_eq!(file.mdns, Some(true));
        assert_eq!(file.target_peers, Some(DEFAULT_TARGET_PEERS));
        assert_eq!(file.scarce_uplink, Some(false));
        assert_eq!(file.scarce_uplink_listen, Some(vec![]));
        for p in file.peers.unwrap_or_default() {
            p.parse::<Multiaddr>().expect("example peer parses");
        }
        let from_file = relay_limits(file.relay.as_ref())
            .expect("relay section valid")
            .expect("relay on");
        let defaults = RelayLimits::default();
        assert_eq!(
            from_file.max_circuit_duration,
            defaults.max_circuit_duration
        );
        assert_eq!(from_file.max_circuit_bytes, defaults.max_circuit_bytes);
        assert_eq!(from_file.max_circuits, defaults.max_circuits);
        assert_eq!(
            from_file.max_circuits_per_peer,
            defaults.max_circuits_per_peer
        );
        assert_eq!(from_file.max_reservations, defaults.max_reservations);
        assert_eq!(
            from_file.reservation_duration,
            defaults.reservation_duration
        );
    }

    #[test]
    fn unknown_settings_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "qouta = \"5GiB\"\n").expect("write");
        assert!(read_config(&path).is_err());
        std::fs::write(&path, "[relay]\nmax_circuts = 3\n").expect("write");
        assert!(read_config(&path).is_err());
    }

    #[test]
    fn relay_limits_parse_and_can_be_turned_off() {
        let off = RelaySection {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(relay_limits(Some(&off)).expect("valid").is_none());
        let tight = RelaySection {
            max_circuit_bytes: Some("10MiB".into()),
            max_circuit_duration: Some("30m".into()),
            ..Default::default()
        };
        let limits = relay_limits(Some(&tight)).expect("valid").expect("on");
        assert_eq!(limits.max_circuit_bytes, 10 * 1024 * 1024);
        assert_eq!(limits.max_circuit_duration, Duration::from_secs(1800));
        let absurd = RelaySection {
            max_circuit_duration: Some("1000years".into()),
            ..Default::default()
        };
        assert!(relay_limits(Some(&absurd)).is_err());
    }
}
