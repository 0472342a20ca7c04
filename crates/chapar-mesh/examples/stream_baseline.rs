//! Baseline for the relay replication benchmark: raw `libp2p-stream`
//! throughput over the transport a Chapar node uses (TCP with nodelay,
//! Noise, Yamux; the same libp2p and libp2p-stream versions), with no
//! framing, hashing or storage on either side.
//!
//! Two processes, like two relays:
//!
//! ```text
//! stream_baseline serve [LISTEN_MULTIADDR]   # default /ip4/127.0.0.1/tcp/0
//!     prints "listening <addr>/p2p/<peer id>", then reads and discards
//!     every stream it is sent, answering each with the byte count
//! stream_baseline send ADDR BYTES [STREAM_BYTES [PARALLEL]]
//!     dials ADDR (with /p2p/), opens one stream, writes BYTES in 1 MiB
//!     writes, half-closes it and waits for the receiver's count; with
//!     STREAM_BYTES, sends BYTES as a fresh stream per STREAM_BYTES, up to
//!     PARALLEL (default 1) at once, the way the replicator fetches batches
//! ```
//!
//! PARALLEL above 1 shows a limit of libp2p-stream 0.5: its queue of
//! inbound streams holds none, so streams that arrive together are dropped
//! (debug log "Channel is full, dropping inbound stream") and the sender
//! sees "connection is closed"; this program then stops with that error.
//!
//! `send` prints one line: bytes, seconds, MB/s (MB = 10^6 bytes) from the
//! stream opening to the receiver's acknowledgement of the last byte, and
//! its own peak RSS. `serve` prints the same for each stream it received.
//! `scripts/bench-replication.sh` runs both next to the relays.
//!
//! Both sides run tokio with two worker threads, as `chapar-relay` does.
//! They also speak QUIC (`serve /ip4/127.0.0.1/udp/0/quic-v1`), so the two
//! transports a node uses can be compared on the same machine.

use std::error::Error;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The benchmark's own protocol: bytes one way, an 8-byte count back.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/chapar-bench/stream-baseline/1");
/// Size of each write on the sending side (and of the read buffer).
const WRITE: usize = 1024 * 1024;

fn usage() -> ! {
    eprintln!(
        "usage: stream_baseline serve [LISTEN_MULTIADDR]\n       stream_baseline send ADDR/p2p/PEER BYTES [STREAM_BYTES [PARALLEL]]"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    // Quiet unless RUST_LOG asks (e.g. RUST_LOG=yamux=debug).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve"] => runtime.block_on(serve("/ip4/127.0.0.1/tcp/0".parse()?)),
        ["serve", listen] => runtime.block_on(serve(listen.parse()?)),
        ["send", addr, bytes, ref rest @ ..] if rest.len() <= 2 => {
            let bytes = count(bytes)?;
            let per_stream = match rest.first() {
                Some(n) => count(n)?.max(1),
                None => bytes.max(1),
            };
            let parallel = match rest.get(1) {
                Some(n) => count(n)?.max(1) as usize,
                None => 1,
            };
            runtime.block_on(send(addr.parse()?, bytes, per_stream, parallel))
        }
        _ => usage(),
    }
}

fn count(s: &str) -> Result<u64> {
    s.parse().map_err(|_| format!("{s:?}: not a number").into())
}

/// A swarm built the way `chapar_mesh::start` builds its own (TCP and
/// QUIC), with only the stream behaviour.
fn swarm() -> Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

/// Peak resident set size of this process, in MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn report(what: &str, bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what} {bytes} bytes in {secs:.3} s: {:.1} MB/s (MB = 10^6 bytes); peak RSS {:.1} MiB",
        bytes as f64 / secs / 1e6,
        peak_rss_mib()
    );
}

async fn serve(listen: Multiaddr) -> Result<()> {
    let mut swarm = swarm()?;
    let mut incoming = swarm.behaviour().new_control().accept(PROTOCOL)?;
    swarm.listen_on(listen)?;
    let local = *swarm.local_peer_id();
    // Each stream gets its own task at once: the inbound queue holds none.
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            tokio::spawn(async move {
                if let Err(e) = receive(stream).await {
                    eprintln!("stream from {peer} failed: {e}");
                }
            });
        }
    });
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            println!("listening {}", address.with(Protocol::P2p(local)));
        }
    }
}

/// Reads and discards until the sender half-closes, then answers with the
/// count.
async fn receive(mut stream: libp2p::Stream) -> Result<()> {
    let mut buf = vec![0u8; WRITE];
    let mut total = 0u64;
    let mut started = None;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        started.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.close().await?;
    report(
        "received",
        total,
        started.map_or(Duration::ZERO, |t| t.elapsed()),
    );
    Ok(())
}

async fn send(addr: Multiaddr, bytes: u64, per_stream: u64, parallel: usize) -> Result<()> {
    let Some(peer) = addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    }) else {
        return Err(format!("{addr}: no /p2p/<peer id> in the address").into());
    };
    let mut swarm = swarm()?;
    let control = swarm.behaviour().new_control();
    swarm.dial(addr)?;
    connected(&mut swarm, peer).await?;
    // The swarm must keep being polled for the connection to serve streams.
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let sizes: Vec<u64> = (0..bytes.div_ceil(per_stream))
        .map(|i| per_stream.min(bytes - i * per_stream))
        .collect();
    let streams = sizes.len();
    let start = Instant::now();
    let mut sends = futures::stream::iter(sizes)
        .map(|n| send_one(control.clone(), peer, n))
        .buffer_unordered(parallel);
    while let Some(done) = sends.next().await {
        done?;
    }
    let elapsed = start.elapsed();
    let what = if streams == 1 {
        "sent".to_string()
    } else {
        format!("sent ({streams} streams of <= {per_stream} bytes, {parallel} at once)")
    };
    report(&what, bytes, elapsed);
    Ok(())
}

/// One stream: open it, write `bytes`, half-close, wait for the count.
async fn send_one(mut control: libp2p_stream::Control, peer: PeerId, bytes: u64) -> Result<()> {
    let mut stream = control
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let block: Vec<u8> = (0..WRITE).map(|i| (i * 31 % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WRITE as u64) as usize;
        stream.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let received = u64::from_be_bytes(count);
    if received != bytes {
        return Err(format!("sent {bytes} bytes, the receiver counted {received}").into());
    }
    Ok(())
}

/// Drives the swarm until a connection to `peer` is up (30 s at most).
async fn connected(swarm: &mut Swarm<libp2p_stream::Behaviour>, peer: PeerId) -> Result<()> {
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    return Ok(())
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(format!("dial failed: {error}"))
                }
                _ => {}
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err("no connection after 30 s".into()),
    }
}
