//! Tor pluggable transports, spoken to as the Pluggable Transport
//! specification (v1) says: the node starts the transport's binary as a
//! managed proxy (`TOR_PT_*` environment), reads its `CMETHOD`/`SMETHOD`
//! lines, and reaches a bridge through the client's SOCKS5 port with the
//! bridge's arguments in the RFC 1929 user name and password.
//!
//! The server side forwards what it decodes to a plain TCP port of ours
//! (`TOR_PT_ORPORT`, on loopback), where the node's ordinary libp2p TCP
//! listener takes it. Every transport of the Tor ecosystem that carries a
//! TCP stream works the same way: obfs4 (`obfs4proxy`, `lyrebird`),
//! snowflake, webtunnel, meek.
//!
//! We speak the protocol ourselves rather than through `tor-ptmgr`: that
//! crate needs arti's runtime and pulls in some 350 crates for what is a
//! few line formats and a SOCKS5 handshake (see `docs/PROTOCOL.md`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Pending};
use futures::FutureExt;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::Multiaddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::addr::{Kind, Target, TargetHost};

/// Longest a managed proxy may take to report its methods.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a connection through a transport may take (obfs4proxy waits
/// 40 s on a bridge that does not answer, e.g. for a wrong `cert`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line read from a managed proxy.
const MAX_LINE: usize = 4096;

/// Why a pluggable transport could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PtError {
    /// No binary for the transport was found.
    #[error("no program for the {transport} transport: install {wanted} (Debian: apt-get install {package}) or give its path")]
    NotInstalled {
        /// The transport.
        transport: String,
        /// The binaries looked for.
        wanted: String,
        /// The Debian package that has one.
        package: &'static str,
    },
    /// Starting the binary failed.
    #[error("{binary}: {source}")]
    Spawn {
        /// The program.
        binary: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The managed proxy refused its configuration or the transport.
    #[error("{binary}: {message}")]
    Refused {
        /// The program.
        binary: PathBuf,
        /// What it said.
        message: String,
    },
    /// The managed proxy said nothing usable in time, or exited.
    #[error("{binary}: {why}")]
    NoMethods {
        /// The program.
        binary: PathBuf,
        /// What happened.
        why: String,
    },
    /// The SOCKS5 handshake with the transport's client failed.
    #[error("through the {transport} transport: {why}")]
    Socks {
        /// The transport.
        transport: String,
        /// What failed.
        why: String,
    },
    /// A socket operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One line of a managed proxy's standard output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyLine {
    /// `VERSION 1`
    Version(String),
    /// `VERSION-ERROR`, `ENV-ERROR`, `PROXY-ERROR`: the whole proxy failed.
    Error(String),
    /// `CMETHOD NAME socks5 ADDR`
    ClientMethod {
        /// Transport name.
        name: String,
        /// `socks5` or `socks4`.
        protocol: String,
        /// Its SOCKS port.
        addr: SocketAddr,
    },
    /// `SMETHOD NAME ADDR [ARGS:K=V,…]`
    ServerMethod {
        /// Transport name.
        name: String,
        /// Where it listens.
        addr: SocketAddr,
        /// Its arguments (what clients need: obfs4's `cert`, `iat-mode`).
        args: Vec<(String, String)>,
    },
    /// `CMETHOD-ERROR` or `SMETHOD-ERROR`: one transport failed.
    MethodError {
        /// Transport name.
        name: String,
        /// Why.
        message: String,
    },
    /// `CMETHODS DONE` or `SMETHODS DONE`.
    Done,
    /// Anything else (`LOG`, `STATUS`, future keywords): ignored, as the
    /// specification asks.
    Other,
}

/// Splits `text` at unescaped `sep`, removing `\` escapes.
fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(last)) = (chars.next(), parts.last_mut()) {
                    last.push(next);
                }
            }
            c if c == sep => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    parts
}

fn parse_smethod_args(text: &str) -> Option<Vec<(String, String)>> {
    let list = text.strip_prefix("ARGS:")?;
    let mut args = Vec::new();
    for pair in split_escaped(list, ',') {
        // Values are escaped again for `=`; the first unescaped one splits.
        let (k, v) = pair.split_once('=')?;
        args.push((k.to_owned(), v.to_owned()));
    }
    Some(args)
}

impl ProxyLine {
    /// Reads one line (without its newline).
    pub fn parse(line: &str) -> ProxyLine {
        let mut words = line.split(' ');
        let keyword = words.next().unwrap_or_default();
        let rest = || {
            line.split_once(' ')
                .map(|x| x.1)
                .unwrap_or_default()
                .to_owned()
        };
        match keyword {
            "VERSION" => ProxyLine::Version(rest()),
            "VERSION-ERROR" | "ENV-ERROR" | "PROXY-ERROR" => {
                ProxyLine::Error(format!("{keyword} {}", rest()))
            }
            "CMETHODS" | "SMETHODS" if words.next() == Some("DONE") => ProxyLine::Done,
            "CMETHOD" => {
                let (Some(name), Some(protocol), Some(addr)) =
                    (words.next(), words.next(), words.next())
                else {
                    return ProxyLine::Other;
                };
                match addr.parse() {
                    Ok(addr) => ProxyLine::ClientMethod {
                        name: name.to_owned(),
                        protocol: protocol.to_owned(),
                        addr,
                    },
                    Err(_) => ProxyLine::Other,
                }
            }
            "SMETHOD" => {
                let (Some(name), Some(addr)) = (words.next(), words.next()) else {
                    return ProxyLine::Other;
                };
                let Ok(addr) = addr.parse() else {
                    return ProxyLine::Other;
                };
                let args = words.find_map(parse_smethod_args).unwrap_or_default();
                ProxyLine::ServerMethod {
                    name: name.to_owned(),
                    addr,
                    args,
                }
            }
            "CMETHOD-ERROR" | "SMETHOD-ERROR" => {
                let name = words.next().unwrap_or_default().to_owned();
                let message = words.collect::<Vec<_>>().join(" ");
                ProxyLine::MethodError { name, message }
            }
            _ => ProxyLine::Other,
        }
    }
}

/// The per-connection arguments as SOCKS5 user name and password
/// (`K=V;K=V`, `\`-escaped, split at 255 bytes; a lone NUL password when
/// everything fits in the name).
pub fn socks_credentials(args: &[(String, String)]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, '\\' | '=' | ';') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    let joined = args
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join(";");
    let bytes = joined.into_bytes();
    if bytes.len() > 510 {
        return Err(format!(
            "arguments take {} bytes, SOCKS5 carries 510",
            bytes.len()
        ));
    }
    let (name, password) = bytes.split_at(bytes.len().min(255));
    let password = if password.is_empty() {
        vec![0]
    } else {
        password.to_vec()
    };
    Ok((name.to_vec(), password))
}

async fn socks5_connect(
    proxy: SocketAddr,
    target: &TargetHost,
    port: u16,
    args: &[(String, String)],
    transport: &str,
) -> Result<TcpStream, PtError> {
    let fail = |why: String| PtError::Socks {
        transport: transport.to_owned(),
        why,
    };
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let method = if args.is_empty() { 0u8 } else { 2u8 };
    s.write_all(&[5, 1, method]).await?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await?;
    if reply != [5, method] {
        return Err(fail(format!("the SOCKS server chose method {:?}", reply)));
    }
    if method == 2 {
        let (name, password) = socks_credentials(args).map_err(fail)?;
        let mut auth = vec![1, name.len() as u8];
        auth.extend_from_slice(&name);
        auth.push(password.len() as u8);
        auth.extend_from_slice(&password);
        s.write_all(&auth).await?;
        s.read_exact(&mut reply).await?;
        if reply[1] != 0 {
            return Err(fail("the transport refused the bridge's arguments".into()));
        }
    }
    let mut request = vec![5, 1, 0];
    match target {
        TargetHost::Ip(IpAddr::V4(a)) => {
            request.push(1);
            request.extend_from_slice(&a.octets());
        }
        TargetHost::Ip(IpAddr::V6(a)) => {
            request.push(4);
            request.extend_from_slice(&a.octets());
        }
        TargetHost::Dns(name) => {
            let len = u8::try_from(name.len()).map_err(|_| fail("host name too long".into()))?;
            request.push(3);
            request.push(len);
            request.extend_from_slice(name.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    s.write_all(&request).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(fail(format!(
            "the bridge could not be reached (SOCKS reply {})",
            head[1]
        )));
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => usize::from(s.read_u8().await?) + 2,
        other => return Err(fail(format!("bad SOCKS address type {other}"))),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    Ok(s)
}

/// Programs that provide each transport, in the order looked for, and the
/// Debian package to install.
fn candidates(transport: &str) -> (&'static [&'static str], &'static str) {
    match transport {
        "obfs4" | "meek_lite" | "obfs3" => (&["lyrebird", "obfs4proxy"], "obfs4proxy"),
        "snowflake" => (&["snowflake-client"], "snowflake-client"),
        "webtunnel" => (&["webtunnel-client"], "webtunnel"),
        _ => (&[], "obfs4proxy"),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The program for `transport`: `configured` if given, else the first of
/// its known programs on `PATH`.
pub fn find_binary(transport: &str, configured: Option<&Path>) -> Result<PathBuf, PtError> {
    if let Some(p) = configured {
        return Ok(p.to_owned());
    }
    let (names, package) = candidates(transport);
    names
        .iter()
        .find_map(|n| find_in_path(n))
        .ok_or_else(|| PtError::NotInstalled {
            transport: transport.to_owned(),
            wanted: if names.is_empty() {
                "a managed proxy for it".to_owned()
            } else {
                names.join(" or ")
            },
            package,
        })
}

/// A running managed proxy. Dropping it closes its standard input (the
/// specification's signal to exit) and kills it.
pub struct ManagedProxy {
    child: Child,
    binary: PathBuf,
    /// Held open: with `TOR_PT_EXIT_ON_STDIN_CLOSE=1` the proxy exits when
    /// it closes (and tokio's `Child::wait` would close it if the child
    /// still owned it).
    _stdin: Option<tokio::process::ChildStdin>,
}

impl ManagedProxy {
    /// Starts `binary` with `env` and reads its lines until `*METHODS DONE`.
    async fn start(
        binary: &Path,
        state_dir: &Path,
        env: &[(&str, String)],
    ) -> Result<(Self, Vec<ProxyLine>), PtError> {
        std::fs::create_dir_all(state_dir)?;
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
            .env("TOR_PT_STATE_LOCATION", state_dir)
            .env("TOR_PT_EXIT_ON_STDIN_CLOSE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|source| PtError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
        let stdout = child.stdout.take().ok_or_else(|| PtError::NoMethods {
            binary: binary.to_owned(),
            why: "no standard output".into(),
        })?;
        let stdin = child.stdin.take();
        let mut proxy = ManagedProxy {
            child,
            binary: binary.to_owned(),
            _stdin: stdin,
        };
        let mut reader = BufReader::new(stdout);
        let lines = tokio::time::timeout(START_TIMEOUT, read_methods(&mut reader))
            .await
            .map_err(|_| proxy.no_methods(format!("said nothing usable within {START_TIMEOUT:?}")))?
            .map_err(|why| proxy.no_methods(why))?;
        // Keep reading what it says later (LOG, STATUS): a closed pipe would
        // kill it at its next line.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        });
        if let Some(ProxyLine::Error(message)) =
            lines.iter().find(|l| matches!(l, ProxyLine::Error(_)))
        {
            return Err(PtError::Refused {
                binary: proxy.binary.clone(),
                message: message.clone(),
            });
        }
        Ok((proxy, lines))
    }

    fn no_methods(&mut self, why: String) -> PtError {
        let _ = self.child.start_kill();
        PtError::NoMethods {
            binary: self.binary.clone(),
            why,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the process exits.
    pub async fn exited(&mut self) -> io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

async fn read_methods(
    reader: &mut BufReader<tokio::process::ChildStdout>,
) -> Result<Vec<ProxyLine>, String> {
    let mut reader = reader.take(64 * 1024);
    let mut lines = Vec::new();
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("exited before it reported its methods".into());
        }
        if buf.len() > MAX_LINE {
            return Err("wrote an over-long line".into());
        }
        let line = ProxyLine::parse(buf.trim_end());
        let last = matches!(line, ProxyLine::Done | ProxyLine::Error(_));
        lines.push(line);
        if last {
            return Ok(lines);
        }
    }
}

/// A transport's server side, running: where it listens and what a
/// bridge line needs.
pub struct PtServer {
    /// The managed proxy (dropping it stops the transport).
    pub proxy: ManagedProxy,
    /// Where the transport listens.
    pub addr: SocketAddr,
    /// Its arguments for clients (obfs4: `cert`, `iat-mode`).
    pub args: Vec<(String, String)>,
}

impl PtServer {
    /// Starts `transport`'s server on `bind`, forwarding what it decodes to
    /// `forward_to` (a plain TCP port of ours), keeping its keys in
    /// `state_dir` (so the bridge line survives restarts).
    pub async fn launch(
        binary: &Path,
        transport: &str,
        bind: SocketAddr,
        forward_to: SocketAddr,
        state_dir: &Path,
    ) -> Result<PtServer, PtError> {
        let env = [
            ("TOR_PT_SERVER_TRANSPORTS", transport.to_owned()),
            ("TOR_PT_SERVER_BINDADDR", format!("{transport}-{bind}")),
            ("TOR_PT_ORPORT", forward_to.to_string()),
            // Empty: no Extended ORPort; the transport pipes plain TCP.
            ("TOR_PT_EXTENDED_SERVER_PORT", String::new()),
        ];
        let (proxy, lines) = ManagedProxy::start(binary, state_dir, &env).await?;
        for line in lines {
            match line {
                ProxyLine::ServerMethod { name, addr, args } if name == transport => {
                    return Ok(PtServer { proxy, addr, args });
                }
                ProxyLine::MethodError { name, message } if name == transport => {
                    return Err(PtError::Refused {
                        binary: binary.to_owned(),
                        message: format!("SMETHOD-ERROR {name} {message}"),
                    });
                }
                _ => {}
            }
        }
        Err(PtError::NoMethods {
            binary: binary.to_owned(),
            why: format!("reported no server method for {transport}"),
        })
    }
}

/// Where each transport's client program is, when not on `PATH`.
#[derive(Debug, Clone, Default)]
pub struct PtClientConfig {
    /// Transport name to program.
    pub binaries: HashMap<String, PathBuf>,
    /// Where managed proxies keep their state.
    pub state_dir: PathBuf,
}

struct RunningClient {
    proxy: ManagedProxy,
    socks: SocketAddr,
}

/// Dials bridges (`/…/tcp/PORT/http-path/pt:TRANSPORT;K=V…`) through the
/// transport's managed client, started on the first dial and again if it
/// dies. It never listens: a bridge's server side runs as a [`PtServer`]
/// in front of a plain TCP listener.
pub struct PtTransport {
    config: Arc<PtClientConfig>,
    clients: Arc<Mutex<HashMap<String, RunningClient>>>,
}

impl PtTransport {
    /// A transport that starts client programs as `config` says.
    pub fn new(config: PtClientConfig) -> Self {
        Self {
            config: Arc::new(config),
            clients: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

async fn socks_port(
    config: &PtClientConfig,
    clients: &Mutex<HashMap<String, RunningClient>>,
    transport: &str,
) -> Result<SocketAddr, PtError> {
    let mut clients = clients.lock().await;
    if let Some(c) = clients.get_mut(transport) {
        if c.proxy.is_running() {
            return Ok(c.socks);
        }
        tracing::warn!(
            transport,
            "the transport's client exited; starting it again"
        );
        clients.remove(transport);
    }
    let binary = find_binary(
        transport,
        config.binaries.get(transport).map(PathBuf::as_path),
    )?;
    let env = [("TOR_PT_CLIENT_TRANSPORTS", transport.to_owned())];
    let state = config.state_dir.join("client");
    let (proxy, lines) = ManagedProxy::start(&binary, &state, &env).await?;
    let mut socks = None;
    for line in lines {
        match line {
            ProxyLine::ClientMethod {
                name,
                protocol,
                addr,
            } if name == transport && protocol == "socks5" => {
                socks = Some(addr);
            }
            ProxyLine::MethodError { name, message } if name == transport => {
                return Err(PtError::Refused {
                    binary,
                    message: format!("CMETHOD-ERROR {name} {message}"),
                });
            }
            _ => {}
        }
    }
    let socks = socks.ok_or_else(|| PtError::NoMethods {
        binary: binary.clone(),
        why: format!("reported no SOCKS5 client method for {transport}"),
    })?;
    tracing::info!(transport, binary = %binary.display(), "pluggable transport client started");
    clients.insert(transport.to_owned(), RunningClient { proxy, socks });
    Ok(socks)
}

/// A connection through a pluggable transport (futures' I/O traits, as
/// libp2p's upgrade wants).
pub type PtStream = tokio_util_compat::Compat<TcpStream>;

mod tokio_util_compat {
    //! The small adapter from tokio's I/O traits to futures' ones.
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    /// A tokio stream seen through futures' I/O traits.
    pub struct Compat<T>(pub T);

    impl<T: tokio::io::AsyncRead + Unpin> futures::AsyncRead for Compat<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl<T: tokio::io::AsyncWrite + Unpin> futures::AsyncWrite for Compat<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}

impl Transport for PtTransport {
    type Output = PtStream;
    type Error = PtError;
    type ListenerUpgrade = Pending<Result<PtStream, PtError>>;
    type Dial = BoxFuture<'static, Result<PtStream, PtError>>;

    fn listen_on(&mut self, _: ListenerId, addr: Multiaddr) -> Result<(), TransportError<PtError>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: DialOpts,
    ) -> Result<Self::Dial, TransportError<PtError>> {
        let Some(Target {
            host,
            port,
            kind: Kind::Pt { transport, args },
            ..
        }) = Target::parse(&addr)
        else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let (config, clients) = (self.config.clone(), self.clients.clone());
        Ok(async move {
            let socks = socks_port(&config, &clients, &transport).await?;
            let connect = socks5_connect(socks, &host, port, &args, &transport);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| PtError::Socks {
                    transport: transport.clone(),
                    why: format!("no answer from the bridge within {CONNECT_TIMEOUT:?}"),
                })??;
            Ok(tokio_util_compat::Compat(stream))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, PtError>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_lines_parse() {
        assert_eq!(
            ProxyLine::parse("VERSION 1"),
            ProxyLine::Version("1".into())
        );
        assert_eq!(
            ProxyLine::parse("CMETHOD obfs4 socks5 127.0.0.1:41269"),
            ProxyLine::ClientMethod {
                name: "obfs4".into(),
                protocol: "socks5".into(),
                addr: "127.0.0.1:41269".parse().expect("addr"),
            }
        );
        assert_eq!(
            ProxyLine::parse("SMETHOD obfs4 127.0.0.1:45123 ARGS:cert=1lw+/Fyp1Kk,iat-mode=0"),
            ProxyLine::ServerMethod {
                name: "obfs4".into(),
                addr: "127.0.0.1:45123".parse().expect("addr"),
                args: vec![
                    ("cert".into(), "1lw+/Fyp1Kk".into()),
                    ("iat-mode".into(), "0".into())
                ],
            }
        );
        assert_eq!(
            ProxyLine::parse("SMETHOD x 127.0.0.1:1 ARGS:a=b\\,c,d=e"),
            ProxyLine::ServerMethod {
                name: "x".into(),
                addr: "127.0.0.1:1".parse().expect("addr"),
                args: vec![("a".into(), "b,c".into()), ("d".into(), "e".into())],
            }
        );
        assert_eq!(ProxyLine::parse("SMETHODS DONE"), ProxyLine::Done);
        assert!(matches!(
            ProxyLine::parse("ENV-ERROR no TOR_PT_ORPORT"),
            ProxyLine::Error(_)
        ));
        assert_eq!(
            ProxyLine::parse("CMETHOD-ERROR snowflake no such transport is supported"),
            ProxyLine::MethodError {
                name: "snowflake".into(),
                message: "no such transport is supported".into()
            }
        );
        for junk in [
            "",
            "LOG SEVERITY=notice MESSAGE=\"hi\"",
            "CMETHOD a b notanaddr",
            "SMETHOD",
            "\u{0}\u{ff}",
        ] {
            assert_eq!(ProxyLine::parse(junk), ProxyLine::Other, "{junk:?}");
        }
    }

    #[test]
    fn socks_credentials_escape_and_split() {
        let args = vec![
            ("cert".to_owned(), "a=b;c\\".to_owned()),
            ("iat-mode".to_owned(), "0".to_owned()),
        ];
        let (name, password) = socks_credentials(&args).expect("fits");
        assert_eq!(name, b"cert=a\\=b\\;c\\\\;iat-mode=0".to_vec());
        assert_eq!(password, vec![0]);
        let long = vec![("k".to_owned(), "v".repeat(300))];
        let (name, password) = socks_credentials(&long).expect("fits");
        assert_eq!(name.len(), 255);
        assert_eq!(password.len(), 302 - 255);
        assert!(socks_credentials(&[("k".to_owned(), "v".repeat(600))]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_line_from_a_managed_proxy_parses_without_panic(line in ".{0,400}") {
            let _ = ProxyLine::parse(&line);
        }

        #[test]
        fn credentials_never_exceed_what_socks5_carries(
            args in proptest::collection::vec(("[a-z=;\\\\]{1,20}", ".{0,200}"), 0..6)
        ) {
            if let Ok((name, password)) = socks_credentials(&args) {
                proptest::prop_assert!(name.len() <= 255 && !password.is_empty() && password.len() <= 255);
            }
        }
    }
}
