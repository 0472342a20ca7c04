//! An in-process TCP link shaper and fault proxy.
//!
//! A [`Link`] listens on one address and forwards every connection it
//! accepts to one target address, byte for byte, while the caller decides
//! what the link between them is like:
//!
//! - **throttled**: a token bucket per direction ([`Shape::rate_bytes_per_sec`]);
//! - **cut and healed**: [`Link::set_up`]`(false)` resets every connection in
//!   flight and refuses new ones, `set_up(true)` carries them again;
//! - **stalled**: [`Link::set_stalled`]`(true)` stops carrying bytes but
//!   keeps every connection open, as when a satellite window closes under
//!   a TCP connection that waits for it to reopen; `set_stalled(false)`
//!   carries on where it stopped;
//! - **open in windows**: [`Link::run_schedule`] toggles it on a
//!   [`Schedule`], like a satellite gateway whose international link opens
//!   for a few minutes at a time;
//! - **measured**: bytes each way, connections carried and refused, and the
//!   time the link has been up, so a caller can report useful bytes against
//!   what the link could have carried (rate × open time).
//!
//! It exists for Chapar's mesh tests (partition and heal relays), for
//! `chapar demo` (a throttled, intermittent gateway) and for scenario tests
//! that count bytes. It is not a general-purpose proxy: one target, TCP
//! only, no latency or loss model.
//!
//! Memory is bounded: each connection uses two fixed [`BUFFER_SIZE`]
//! buffers, at most [`MAX_CONNECTIONS`] are carried at once, and nothing is
//! queued beyond that.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use chapar_link::{Link, Schedule, Shape};
//!
//! let target = "127.0.0.1:4701".parse().expect("addr");
//! let shape = Shape { rate_bytes_per_sec: Some(64 * 1024), initially_up: false };
//! let link = Link::start("127.0.0.1:0".parse().expect("addr"), target, shape).await?;
//! // Dial link.local_addr() instead of the target. Open 30 s in every 5 min:
//! link.run_schedule(Schedule { up: Duration::from_secs(30), down: Duration::from_secs(270) });
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Size of each of the two copy buffers a connection uses.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// Connections carried at once; more are refused like connections made
/// while the link is down.
pub const MAX_CONNECTIONS: usize = 256;

/// What the link is like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per second the link carries **in each direction**, shared by
    /// all connections through it (it models one link, not one connection:
    /// two connections each get about half). `None` carries as fast as the
    /// sockets go. Bursts are limited to about 50 ms worth of bytes.
    /// `Some(0)` is refused by [`Link::start`]: a link that carries nothing
    /// is a link that is down.
    pub rate_bytes_per_sec: Option<u64>,
    /// Whether the link starts up.
    pub initially_up: bool,
}

impl Default for Shape {
    /// Unthrottled and up.
    fn default() -> Self {
        Self {
            rate_bytes_per_sec: None,
            initially_up: true,
        }
    }
}

/// A link that opens and closes in turn: up for `up`, then down for
/// `down`, and again. Each is raised to at least 1 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// How long each window the link is up lasts.
    pub up: Duration,
    /// How long the link stays down between windows.
    pub down: Duration,
}

/// The link's state, published to the accept task.
#[derive(Debug, Clone, Copy)]
struct State {
    up: bool,
    /// How many times the link went down: the accept task cuts every
    /// connection when this changes, even if it came back up meanwhile.
    cuts: u64,
    /// When the current up window began.
    up_since: Option<Instant>,
    /// Time up in earlier windows.
    up_before: Duration,
}

impl State {
    fn open_time(&self) -> Duration {
        self.up_before + self.up_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// What the tasks share with the [`Link`].
struct Shared {
    local_addr: SocketAddr,
    state: watch::Sender<State>,
    /// Whether bytes are held rather than carried.
    stalled: watch::Sender<bool>,
    to_target: AtomicU64,
    from_target: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Token buckets toward the target and back; `None` when unthrottled.
    buckets: Option<[Bucket; 2]>,
}

impl Shared {
    fn set_up(&self, up: bool) {
        let changed = self.state.send_if_modified(|s| {
            if s.up == up {
                return false;
            }
            s.up = up;
            if up {
                s.up_since = Some(Instant::now());
            } else {
                s.cuts += 1;
                if let Some(t) = s.up_since.take() {
                    s.up_before += t.elapsed();
                }
            }
            true
        });
        if changed {
            tracing::debug!(link = %self.local_addr, up, "link state");
        }
    }
}

/// A token bucket: refills at `rate` bytes per second up to `burst`, and
/// lets a taker go into debt, which it then sleeps off. Takers queue in
/// the order they arrive, each waiting for the debt ahead of it.
struct Bucket {
    rate: f64,
    burst: f64,
    /// Largest read, so that a slow link moves small pieces often rather
    /// than one 64 KiB piece a minute.
    grain: usize,
    /// (tokens, when they were counted)
    level: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        // 50 ms of traffic at a time.
        let grain = usize::try_from(rate / 20)
            .unwrap_or(BUFFER_SIZE)
            .clamp(1, BUFFER_SIZE);
        Self {
            rate: rate as f64,
            burst: grain as f64,
            grain,
            level: Mutex::new((grain as f64, Instant::now())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (f64, Instant)> {
        // The critical section cannot panic halfway; a poisoned lock still
        // holds a consistent level.
        self.level.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `n` bytes may pass.
    async fn take(&self, n: usize) {
        let wait = {
            let mut level = self.lock();
            let now = Instant::now();
            let refill = now.duration_since(level.1).as_secs_f64() * self.rate;
            level.0 = (level.0 + refill).min(self.burst) - n as f64;
            level.1 = now;
            if level.0 < 0.0 {
                Duration::from_secs_f64(-level.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A running link: a listener whose connections are forwarded to one
/// target while the link is up. Dropping it (or [`Link::shutdown`]) stops
/// the listener, the schedule and every connection.
pub struct Link {
    shared: Arc<Shared>,
    target: SocketAddr,
    accept_task: JoinHandle<()>,
    schedule: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("local_addr", &self.shared.local_addr)
            .field("target", &self.target)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Binds `listen` (port 0 picks a free port; see [`Link::local_addr`])
    /// and starts forwarding connections to `target`. Must be called
    /// within a tokio runtime.
    ///
    /// Fails if `listen` cannot be bound, or `shape` asks for a rate of 0.
    pub async fn start(listen: SocketAddr, target: SocketAddr, shape: Shape) -> io::Result<Link> {
        if shape.rate_bytes_per_sec == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a link rate of 0 bytes per second: use a link that is down instead",
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (state, state_rx) = watch::channel(State {
            up: shape.initially_up,
            cuts: 0,
            up_since: shape.initially_up.then(Instant::now),
            up_before: Duration::ZERO,
        });
        let shared = Arc::new(Shared {
            local_addr,
            state,
            stalled: watch::Sender::new(false),
            to_target: AtomicU64::new(0),
            from_target: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            buckets: shape
                .rate_bytes_per_sec
                .map(|r| [Bucket::new(r), Bucket::new(r)]),
        });
        tracing::debug!(link = %local_addr, %target, ?shape, "link started");
        let accept_task = tokio::spawn(accept_loop(listener, target, shared.clone(), state_rx));
        Ok(Link {
            shared,
            target,
            accept_task,
            schedule: Mutex::new(None),
        })
    }

    /// The address the link listens on: dial this instead of the target.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Whether the link is up now.
    pub fn is_up(&self) -> bool {
        self.shared.state.borrow().up
    }

    /// Brings the link up or down; setting the state it is already in does
    /// nothing.
    ///
    /// Going down resets every connection in flight at once (both ends see
    /// a connection reset) and from then on refuses new connections, until
    /// the link goes up again. It does not stop a running schedule, which
    /// sets the state again at its next window edge.
    pub fn set_up(&self, up: bool) {
        self.shared.set_up(up);
    }

    /// Stalls the link, or lets it carry again. A stalled link holds every
    /// byte it reads (at most one buffer per direction of each
    /// connection; TCP's flow control stops the senders) and delivers
    /// nothing, without closing or resetting any connection; new ones are
    /// accepted and held too. Stalled time still counts as open time.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
        tracing::debug!(link = %self.shared.local_addr, stalled, "link stall");
    }

    /// Toggles the link on `schedule`, starting now with an up window,
    /// until [`Link::stop_schedule`] or shutdown. Replaces any schedule
    /// already running.
    pub fn run_schedule(&self, schedule: Schedule) {
        let up = schedule.up.max(Duration::from_millis(1));
        let down = schedule.down.max(Duration::from_millis(1));
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            // Deadlines on a fixed cadence, so windows do not drift.
            let mut edge = Instant::now();
            loop {
                shared.set_up(true);
                edge += up;
                tokio::time::sleep_until(edge).await;
                shared.set_up(false);
                edge += down;
                tokio::time::sleep_until(edge).await;
            }
        });
        if let Some(old) = self.schedule_slot().replace(task) {
            old.abort();
        }
    }

    /// Stops a running schedule, leaving the link in the state it is in.
    pub fn stop_schedule(&self) {
        if let Some(task) = self.schedule_slot().take() {
            task.abort();
        }
    }

    fn schedule_slot(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes delivered so far: (toward the target, back from it).
    pub fn bytes_forwarded(&self) -> (u64, u64) {
        (
            self.shared.to_target.load(Ordering::Relaxed),
            self.shared.from_target.load(Ordering::Relaxed),
        )
    }

    /// Connections accepted while the link was up and forwarded (or at
    /// least tried: a target that refuses still counts).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused: made while the link was down, or beyond
    /// [`MAX_CONNECTIONS`].
    pub fn connections_refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Total time the link has been up so far, the current window included.
    pub fn open_time(&self) -> Duration {
        self.shared.state.borrow().open_time()
    }

    /// Stops the schedule, the listener and every connection (they are
    /// reset). The listening port is released as the task winds down, a
    /// moment later. Calling it again does nothing.
    pub fn shutdown(&self) {
        self.stop_schedule();
        self.shared.set_up(false);
        // Dropping the accept task drops its listener and its set of
        // connection tasks, which aborts them all.
        self.accept_task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepts connections, forwards them while the link is up, and cuts them
/// all when it goes down. Owns every connection task: when this task is
/// dropped, they are too.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut state: watch::Receiver<State>,
) {
    let mut connections = JoinSet::new();
    let mut cuts = state.borrow().cuts;
    loop {
        tokio::select! {
            // A cut is handled before any connection that arrived after it.
            biased;
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *state.borrow_and_update();
                if now.cuts != cuts {
                    cuts = now.cuts;
                    tracing::debug!(link = %shared.local_addr, connections = connections.len(), "cutting connections");
                    connections.abort_all();
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, from)) => {
                    if !state.borrow().up || connections.len() >= MAX_CONNECTIONS {
                        // Refuse by accepting and resetting at once, rather
                        // than by not accepting. The kernel completes the
                        // TCP handshake for a listener that does not call
                        // accept (up to its backlog), so a dialer such as
                        // libp2p's TCP transport would sit in its
                        // security handshake until its upgrade timeout
                        // (seconds) before failing, and redial slowly; a
                        // reset fails its dial at once, as a cut link
                        // should. Closing the listener instead would give
                        // "connection refused", just as fast, but could
                        // lose the port to another socket before the link
                        // came back up, breaking the address callers hold.
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::trace!(link = %shared.local_addr, %from, "refused");
                        let _ = client.set_zero_linger();
                        drop(client);
                        continue;
                    }
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(carry(client, target, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, usually: do not spin.
                    tracing::debug!(link = %shared.local_addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Both sockets of one forwarded connection. Unless the connection ended
/// cleanly, dropping it resets both (`SO_LINGER` 0), so a cut or an abort
/// reads as a broken link at both ends, not as an orderly close. A clean
/// end keeps the ordinary close, which delivers what is still buffered.
struct Pair {
    client: TcpStream,
    server: Option<TcpStream>,
    clean: bool,
}

impl Drop for Pair {
    fn drop(&mut self) {
        if !self.clean {
            let _ = self.client.set_zero_linger();
            if let Some(server) = &self.server {
                let _ = server.set_zero_linger();
            }
        }
    }
}

/// Forwards one connection until both directions end.
async fn carry(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let mut pair = Pair {
        client,
        server: None,
        clean: false,
    };
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(link = %shared.local_addr, %target, error = %e, "target unreachable");
            return;
        }
    };
    // Forward small writes at once: the proxy must not add Nagle delays
    // the endpoints turned off.
    let _ = pair.client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let server = pair.server.insert(server);
    let (mut client_read, mut client_write) = pair.client.split();
    let (mut server_read, mut server_write) = server.split();
    let (to_bucket, from_bucket) = match &shared.buckets {
        Some([to, from]) => (Some(to), Some(from)),
        None => (None, None),
    };
    let outcome = tokio::try_join!(
        pump(
            &mut client_read,
            &mut server_write,
            &shared.to_target,
            (to_bucket, shared.stalled.subscribe())
        ),
        pump(
            &mut server_read,
            &mut client_write,
            &shared.from_target,
            (from_bucket, shared.stalled.subscribe())
        ),
    );
    // An error on either side resets both (on drop); two orderly ends
    // close both in order.
    pair.clean = outcome.is_ok();
}

/// Copies one direction until end of stream, then passes the end on
/// (half-close). An error ends the whole connection.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    counter: &AtomicU64,
    (bucket, mut stalled): (Option<&Bucket>, watch::Receiver<bool>),
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    let max = bucket.map_or(BUFFER_SIZE, |b| b.grain);
    loop {
        let n = from.read(&mut buf[..max]).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        // The sender is gone only when the link is: then the pump ends.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return Ok(());
        }
        if let Some(bucket) = bucket {
            bucket.take(n).await;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
