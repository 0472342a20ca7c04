//! The camouflaged HTTPS transport.
//!
//! A listener is a real HTTPS server (TLS with the operator's or a
//! self-signed certificate, HTTP/1.1 by hyper). A request for the secret
//! path that asks for a WebSocket upgrade becomes a libp2p connection;
//! every other request gets the decoy [`Site`]. A dialer connects with TLS
//! (verifying the certificate against its pin, or against the web's
//! certificate authorities), asks for the secret path, and runs libp2p's
//! usual upgrade (multistream, Noise, Yamux) inside the WebSocket, so
//! nothing libp2p-specific is visible outside TLS.
//!
//! The listen address `/IP/tcp/PORT/tls/http` serves TLS itself;
//! `/IP/tcp/PORT/http` serves plain HTTP for a reverse proxy (nginx, a
//! CDN) that terminates TLS in front of it.

mod keys;
mod site;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, Ready};
use futures::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SERVER, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::multiaddr::{Multiaddr, Protocol};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub use keys::{CamouflageKeys, KeyError, HTTPS_DIR};
pub use site::Site;
pub use ws::WsStream;

use crate::addr::{Kind, Target, TargetHost};
use crate::tls;

/// HTTP connections served at once per listener (decoy visitors and
/// handshakes in progress; established libp2p connections do not count).
const MAX_HTTP_CONNECTIONS: usize = 512;
/// Longest a client may take for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a client may take to send a request's head (nginx: 60 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Anything a WebSocket can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection of this transport, before libp2p's upgrade.
pub type CamouflagedStream = WsStream<Box<dyn Io>>;

/// Why a camouflaged connection or listener failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CamouflageError {
    /// A socket operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed (a wrong pin is one way).
    #[error("TLS: {0}")]
    Tls(io::Error),
    /// The server did not upgrade to a WebSocket (wrong token, not a relay).
    #[error("the server did not accept the secret path: {0}")]
    Refused(String),
    /// A listen address asked for TLS but the node has no certificate.
    #[error("no certificate configured for a camouflaged HTTPS listener")]
    NoCertificate,
}

/// What a camouflaged listener serves: its TLS identity, secret token
/// and decoy site.
pub struct ServerSide {
    tls: Option<TlsAcceptor>,
    token: String,
    site: Site,
}

impl std::fmt::Debug for ServerSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSide")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerSide {
    /// A listener with `keys` and `site` (TLS only if `keys` hold a
    /// private key; plain HTTP behind a reverse proxy either way).
    pub fn new(keys: &CamouflageKeys, site: Site) -> Result<Self, rustls::Error> {
        Ok(Self {
            tls: tls::server_config(keys)?.map(TlsAcceptor::from),
            token: keys.token(),
            site,
        })
    }

    fn token_matches(&self, path: &str) -> bool {
        let Some(asked) = path.strip_prefix('/') else {
            return false;
        };
        // Constant time: a prober learns nothing from how fast a wrong guess fails.
        asked.len() == self.token.len()
            && asked
                .bytes()
                .zip(self.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

enum ListenerNews {
    Up(Multiaddr),
    Incoming {
        stream: Box<CamouflagedStream>,
        local: Multiaddr,
        remote: Multiaddr,
    },
    Closed(io::Result<()>),
}

/// The transport (before libp2p's Noise and Yamux upgrade; see
/// [`crate::upgraded`]).
pub struct CamouflageTransport {
    server: Option<Arc<ServerSide>>,
    news_tx: mpsc::Sender<(ListenerId, ListenerNews)>,
    news_rx: mpsc::Receiver<(ListenerId, ListenerNews)>,
    listeners: HashMap<ListenerId, tokio::task::JoinHandle<()>>,
    removed: VecDeque<ListenerId>,
    waker: Option<Waker>,
}

impl CamouflageTransport {
    /// A transport that dials camouflaged addresses, and listens on them
    /// too when given a [`ServerSide`].
    pub fn new(server: Option<Arc<ServerSide>>) -> Self {
        let (news_tx, news_rx) = mpsc::channel(64);
        Self {
            server,
            news_tx,
            news_rx,
            listeners: HashMap::new(),
            removed: VecDeque::new(),
            waker: None,
        }
    }
}

fn with_port(addr: &Multiaddr, port: u16) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(port),
            other => other,
        })
        .collect()
}

fn remote_addr(remote: SocketAddr) -> Multiaddr {
    Multiaddr::from(remote.ip()).with(Protocol::Tcp(remote.port()))
}

impl Transport for CamouflageTransport {
    type Output = CamouflagedStream;
    type Error = CamouflageError;
    type ListenerUpgrade = Ready<Result<Self::Output, Self::Error>>;
    type Dial = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some(target) = Target::parse(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let (TargetHost::Ip(ip), Kind::Https { token: None, .. } | Kind::PlainHttp { token: None }) =
            (&target.host, &target.kind)
        else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let Some(server) = self.server.clone() else {
            return Err(TransportError::Other(CamouflageError::NoCertificate));
        };
        let tls = matches!(target.kind, Kind::Https { .. });
        if tls && server.tls.is_none() {
            return Err(TransportError::Other(CamouflageError::NoCertificate));
        }
        let std_listener = std::net::TcpListener::bind((*ip, target.port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| TransportError::Other(e.into()))?;
        let port = std_listener
            .local_addr()
            .map_err(|e| TransportError::Other(e.into()))?
            .port();
        let listener =
            TcpListener::from_std(std_listener).map_err(|e| TransportError::Other(e.into()))?;
        let local = with_port(&addr, port);
        let task = tokio::spawn(accept_loop(
            listener,
            id,
            local,
            Arc::new(Serving {
                side: server,
                tls,
                news: self.news_tx.clone(),
                id,
            }),
        ));
        self.listeners.insert(id, task);
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(task) = self.listeners.remove(&id) else {
            return false;
        };
        task.abort();
        self.removed.push_back(id);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        match Target::parse(&addr) {
            Some(
                target @ Target {
                    kind: Kind::Https { token: Some(_), .. },
                    ..
                },
            ) => Ok(dial(target).boxed()),
            _ => Err(TransportError::MultiaddrNotSupported(addr)),
        }
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(listener_id) = self.removed.pop_front() {
            return Poll::Ready(TransportEvent::ListenerClosed {
                listener_id,
                reason: Ok(()),
            });
        }
        loop {
            let Poll::Ready(Some((listener_id, news))) = self.news_rx.poll_recv(cx) else {
                self.waker = Some(cx.waker().clone());
                return Poll::Pending;
            };
            if !self.listeners.contains_key(&listener_id) {
                continue; // news from a listener already removed
            }
            return Poll::Ready(match news {
                ListenerNews::Up(listen_addr) => TransportEvent::NewAddress {
                    listener_id,
                    listen_addr,
                },
                ListenerNews::Incoming {
                    stream,
                    local,
                    remote,
                } => TransportEvent::Incoming {
                    listener_id,
                    upgrade: futures::future::ready(Ok(*stream)),
                    local_addr: local,
                    send_back_addr: remote,
                },
                ListenerNews::Closed(reason) => {
                    self.listeners.remove(&listener_id);
                    TransportEvent::ListenerClosed {
                        listener_id,
                        reason: reason.map_err(CamouflageError::Io),
                    }
                }
            });
        }
    }
}

/// One listener's shared state.
struct Serving {
    side: Arc<ServerSide>,
    tls: bool,
    news: mpsc::Sender<(ListenerId, ListenerNews)>,
    id: ListenerId,
}

async fn accept_loop(
    listener: TcpListener,
    id: ListenerId,
    local: Multiaddr,
    serving: Arc<Serving>,
) {
    if serving
        .news
        .send((id, ListenerNews::Up(local.clone())))
        .await
        .is_err()
    {
        return;
    }
    let permits = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                let _ = serving.news.send((id, ListenerNews::Closed(Err(e)))).await;
                return;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // full: the connection is dropped, as an overloaded server would
        };
        let serving = serving.clone();
        let local = local.clone();
        tokio::spawn(async move {
            serve_connection(tcp, remote, local, serving).await;
            drop(permit);
        });
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(24) // EMFILE: wait for descriptors to free up
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    local: Multiaddr,
    serving: Arc<Serving>,
) {
    let _ = tcp.set_nodelay(true);
    let remote = remote_addr(remote);
    if !serving.tls {
        return serve_http(Box::new(tcp), local, remote, serving).await;
    }
    let Some(acceptor) = serving.side.tls.clone() else {
        return;
    };
    // nginx answers plain HTTP on its TLS port with a 400 page; so do we.
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            let mut tcp = tcp;
            let _ = tcp.write_all(site::PLAIN_HTTP_ON_TLS_PORT.as_bytes()).await;
            let _ = tcp.shutdown().await;
            return;
        }
        Ok(Ok(1)) => {}
        _ => return,
    }
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => serve_http(Box::new(tls), local, remote, serving).await,
        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
    }
}

async fn serve_http(io: Box<dyn Io>, local: Multiaddr, remote: Multiaddr, serving: Arc<Serving>) {
    let service = hyper::service::service_fn(move |req| {
        let serving = serving.clone();
        let (local, remote) = (local.clone(), remote.clone());
        async move { Ok::<_, Infallible>(answer(req, serving, local, remote).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .title_case_headers(true)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    let h = req.headers();
    let has = |name, word: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(word)))
    };
    let ok = req.method() == hyper::Method::GET
        && has(UPGRADE, "websocket")
        && has(CONNECTION, "upgrade")
        && h.get("sec-websocket-version").is_some_and(|v| v == "13");
    ok.then(|| h.get("sec-websocket-key").cloned()).flatten()
}

async fn answer(
    mut req: Request<Incoming>,
    serving: Arc<Serving>,
    local: Multiaddr,
    remote: Multiaddr,
) -> Response<Full<Bytes>> {
    let key = is_websocket_upgrade(&req).filter(|_| serving.side.token_matches(req.uri().path()));
    let Some(key) = key else {
        return serving.side.site.respond(&req).await;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io: Box<dyn Io> = Box::new(TokioIo::new(upgraded));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws::config())).await;
        let news = ListenerNews::Incoming {
            stream: Box::new(WsStream::new(ws)),
            local,
            remote,
        };
        let _ = serving.news.send((serving.id, news)).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(SERVER, HeaderValue::from_static("nginx"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    r
}

async fn dial(target: Target) -> Result<CamouflagedStream, CamouflageError> {
    let Kind::Https { sni, pin, token } = target.kind else {
        return Err(CamouflageError::Refused("not a camouflaged address".into()));
    };
    let tcp = match &target.host {
        TargetHost::Ip(ip) => TcpStream::connect((*ip, target.port)).await?,
        TargetHost::Dns(name) => TcpStream::connect((name.as_str(), target.port)).await?,
    };
    tcp.set_nodelay(true)?;
    // The name TLS and Host carry: the share string's `sni`, else the DNS
    // host; an IP host is named by its address (no SNI, as browsers do).
    let (server_name, authority) = match (sni.as_ref(), &target.host) {
        (Some(name), _) | (None, TargetHost::Dns(name)) => (
            ServerName::try_from(name.clone()).map_err(|e| {
                CamouflageError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e))
            })?,
            name.clone(),
        ),
        (None, TargetHost::Ip(ip)) => (
            ServerName::IpAddress((*ip).into()),
            match ip {
                std::net::IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            },
        ),
    };
    let config = tls::client_config(pin)
        .map_err(|e| CamouflageError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let connector = TlsConnector::from(config);
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(CamouflageError::Tls)?;
    let token = token.unwrap_or_default();
    let request = Request::get(format!("wss://{authority}/{token}"))
        .header("Host", &authority)
        .header("User-Agent", tls::USER_AGENT)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .map_err(|e| CamouflageError::Refused(e.to_string()))?;
    let io: Box<dyn Io> = Box::new(tls);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(ws::config()))
        .await
        .map_err(|e| CamouflageError::Refused(e.to_string()))?;
    Ok(WsStream::new(ws))
}
