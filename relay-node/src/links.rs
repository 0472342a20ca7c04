//! The relay's censorship-resistant listeners: camouflaged HTTPS and an
//! obfs4 bridge. Settings become what the node needs before it starts;
//! once it listens, each becomes the one share string an operator hands
//! out.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chapar_mesh::{NodeConfig, NodeHandle};
use chapar_transport::camouflage::{CamouflageKeys, ServerSide, Site};
use chapar_transport::pt::{find_binary, PtServer};
use chapar_transport::share::{BridgeLine, Host, HttpsShare, ShareAddr};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Folder (in the data directory) where the obfs4 server keeps its keys.
const OBFS4_STATE: &str = "pt/obfs4-server";

/// A camouflaged HTTPS listener's settings.
#[derive(Debug, Clone)]
pub struct HttpsSettings {
    pub listen: SocketAddr,
    pub site: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Plain HTTP for a reverse proxy that terminates TLS.
    pub behind_proxy: bool,
    /// The port clients connect to, when a proxy listens on another.
    pub public_port: Option<u16>,
}

/// An obfs4 bridge's settings.
#[derive(Debug, Clone)]
pub struct Obfs4Settings {
    pub listen: SocketAddr,
    pub binary: Option<PathBuf>,
}

/// Every censorship-resistant listener of the relay.
#[derive(Debug, Clone, Default)]
pub struct LinkSettings {
    pub https: Option<HttpsSettings>,
    pub obfs4: Option<Obfs4Settings>,
    /// The name or address clients reach this relay at.
    pub public_host: Option<String>,
}

/// The host share strings name: the configured public host, else the
/// listen address, else this machine's first non-loopback address.
fn public_host(settings: &LinkSettings, listen: IpAddr) -> Result<Host> {
    if let Some(h) = &settings.public_host {
        return h.parse().with_context(|| format!("--public-host {h:?}"));
    }
    if !listen.is_unspecified() {
        return Ok(Host::Ip(listen));
    }
    let found = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4() == listen.is_ipv4())
        .min_by_key(|ip| !matches!(ip, IpAddr::V4(v4) if !v4.is_private()));
    match found {
        Some(ip) => {
            tracing::warn!(%ip, "share strings name this machine's address; give --public-host if clients reach it by another");
            Ok(Host::Ip(ip))
        }
        None => anyhow::bail!("no address to put in share strings: give --public-host"),
    }
}

/// What the HTTPS listener serves, made (or read) in the data directory.
pub fn https_keys(dir: &Path, settings: &LinkSettings) -> Result<Option<CamouflageKeys>> {
    let Some(https) = &settings.https else {
        return Ok(None);
    };
    let keys = match (&https.cert, &https.key) {
        (Some(cert), Some(key)) => CamouflageKeys::with_certificate(dir, cert, key)?,
        (Some(cert), None) if https.behind_proxy => {
            // The proxy holds the key; its certificate is only pinned.
            CamouflageKeys::pinning_certificate(dir, cert)?
        }
        (None, None) if https.behind_proxy => CamouflageKeys::secret_only(dir)?,
        (None, None) => {
            let name = public_host(settings, https.listen.ip())?.to_string();
            let name = name.trim_start_matches('[').trim_end_matches(']');
            CamouflageKeys::load_or_create(dir, name)?
        }
        _ => anyhow::bail!(
            "--https-cert and --https-key go together (behind a proxy, --https-cert alone)"
        ),
    };
    Ok(Some(keys))
}

/// Adds the listeners and what they serve to the node's configuration.
pub fn configure(
    config: &mut NodeConfig,
    settings: &LinkSettings,
    keys: Option<&CamouflageKeys>,
) -> Result<()> {
    if let (Some(https), Some(keys)) = (&settings.https, keys) {
        let site = match &https.site {
            Some(dir) => {
                anyhow::ensure!(dir.is_dir(), "--https-site {}: not a folder", dir.display());
                Site::folder(dir.clone())
            }
            None => Site::built_in(),
        };
        let side = ServerSide::new(keys, site).context("the HTTPS certificate and key")?;
        config.camouflage = Some(Arc::new(side));
        let mut addr = Multiaddr::from(https.listen.ip()).with(Protocol::Tcp(https.listen.port()));
        if !https.behind_proxy {
            addr.push(Protocol::Tls);
        }
        config.listen.push(addr.with(Protocol::Http));
    }
    if settings.obfs4.is_some() {
        // Where the obfs4 server hands over what it decodes.
        config.listen.push("/ip4/127.0.0.1/tcp/0".parse()?);
    }
    Ok(())
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// The node's listen addresses once it has bound `wanted` of them.
async fn bound_addrs(node: &NodeHandle, wanted: impl Fn(&[Multiaddr]) -> bool) -> Vec<Multiaddr> {
    for _ in 0..100 {
        let addrs = node.listen_addrs().await;
        if wanted(&addrs) {
            return addrs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.listen_addrs().await
}

fn is_https_listener(a: &Multiaddr) -> bool {
    chapar_transport::is_hidden_transport(a) && a.iter().any(|p| p == Protocol::Http)
}

fn is_loopback_tcp(a: &Multiaddr) -> bool {
    let mut it = a.iter();
    matches!(
        (it.next(), it.next(), it.next()),
        (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(_)), Some(Protocol::P2p(_)) | None) if ip.is_loopback()
    )
}

/// The HTTPS share string, given the port clients reach.
pub fn https_share(
    settings: &LinkSettings,
    keys: &CamouflageKeys,
    port: u16,
    peer: PeerId,
) -> Result<Option<ShareAddr>> {
    let Some(https) = &settings.https else {
        return Ok(None);
    };
    let host = public_host(settings, https.listen.ip())?;
    Ok(Some(ShareAddr::Https(HttpsShare {
        host,
        port: https.public_port.unwrap_or(port),
        token: keys.token(),
        sni: None,
        pin: keys.pin().filter(|_| keys.self_signed),
        peer,
    })))
}

/// The obfs4 bridge line, given the server's arguments.
pub fn bridge_line(
    settings: &LinkSettings,
    port: u16,
    args: Vec<(String, String)>,
    peer: PeerId,
) -> Result<Option<ShareAddr>> {
    let Some(obfs4) = &settings.obfs4 else {
        return Ok(None);
    };
    Ok(Some(ShareAddr::Bridge(BridgeLine {
        transport: "obfs4".into(),
        host: public_host(settings, obfs4.listen.ip())?,
        port,
        peer,
        args,
    })))
}

/// The obfs4 arguments saved by an earlier run (`obfs4_bridgeline.txt`).
pub fn saved_obfs4_args(dir: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(dir.join(OBFS4_STATE).join("obfs4_bridgeline.txt")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Bridge obfs4 "))?;
    let args: Vec<(String, String)> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (!args.is_empty()).then_some(args)
}

/// Prints the share line of each listener once the node is up, and keeps
/// the obfs4 server running (restarting it if it dies). Returns when the
/// node's links are set up; the obfs4 supervisor runs on.
pub async fn announce_and_supervise(
    dir: &Path,
    settings: &LinkSettings,
    keys: Option<&CamouflageKeys>,
    node: &NodeHandle,
) -> Result<()> {
    let peer = node.peer_id();
    if let Some(keys) = keys {
        let addrs = bound_addrs(node, |a| a.iter().any(is_https_listener)).await;
        let port = addrs
            .iter()
            .find(|a| is_https_listener(a))
            .and_then(tcp_port)
            .context("the HTTPS listener did not start")?;
        if let Some(share) = https_share(settings, keys, port, peer)? {
            println!("share: {share}");
        }
    }
    let Some(obfs4) = settings.obfs4.clone() else {
        return Ok(());
    };
    let addrs = bound_addrs(node, |a| a.iter().any(is_loopback_tcp)).await;
    let forward_to = addrs
        .iter()
        .find(|a| is_loopback_tcp(a))
        .and_then(tcp_port)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .context("the loopback listener for obfs4 did not start")?;
    let state = dir.join(OBFS4_STATE);
    let binary = match find_binary("obfs4", obfs4.binary.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("obfs4 bridge not started: {e}; the relay runs on without it");
            return Ok(());
        }
    };
    let mut server =
        match PtServer::launch(&binary, "obfs4", obfs4.listen, forward_to, &state).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("obfs4 bridge not started: {e}; the relay runs on without it");
                return Ok(());
            }
        };
    if let Some(line) = bridge_line(settings, server.addr.port(), server.args.clone(), peer)? {
        println!("share: {line}");
    }
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let status = server.proxy.exited().await;
            tracing::error!(
                ?status,
                "the obfs4 server exited; starting it again in {backoff:?}"
            );
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                match PtServer::launch(&binary, "obfs4", obfs4.listen, forward_to, &state).await {
                    Ok(s) => {
                        server = s;
                        backoff = Duration::from_secs(1);
                        tracing::info!("obfs4 server running again");
                        break;
                    }
                    Err(e) => tracing::error!("obfs4 server did not start: {e}"),
                }
            }
        }
    });
    Ok(())
}
