//! A link between real sockets on 127.0.0.1: an echo server or a byte
//! sink behind it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use chapar_link::{Link, Schedule, Shape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

const LOOPBACK: &str = "127.0.0.1:0";
const PATIENCE: Duration = Duration::from_secs(5);

/// Echoes every connection back until it closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads one connection to its end and reports how many bytes came.
async fn sink() -> (SocketAddr, oneshot::Receiver<u64>) {
    let listener = TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let n = tokio::io::copy(&mut s, &mut tokio::io::sink())
            .await
            .unwrap();
        let _ = tx.send(n);
    });
    (addr, rx)
}

async fn link_to(target: SocketAddr, shape: Shape) -> Link {
    Link::start(LOOPBACK.parse().unwrap(), target, shape)
        .await
        .unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

/// Sends `data` through `stream` and reads the echo back.
async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = stream.split();
    let mut back = vec![0u8; data.len()];
    let (sent, got) = tokio::join!(w.write_all(data), r.read_exact(&mut back));
    sent.unwrap();
    got.unwrap();
    back
}

/// Whether the link turns a connection away: the connect fails, or the
/// connection ends (reset or end of stream) before anything comes back.
async fn turned_away(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return true;
    };
    let _ = s.write_all(b"hello").await;
    let mut byte = [0u8; 1];
    matches!(
        timeout(PATIENCE, s.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bytes_pass_unchanged_and_are_counted_each_way() {
    let link = link_to(echo_server().await, Shape::default()).await;
    let data = pattern(300_000);
    let mut s = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, &data).await, data);
    assert_eq!(link.bytes_forwarded(), (300_000, 300_000));
    assert_eq!(link.connections_accepted(), 1);
    assert_eq!(link.connections_refused(), 0);
}

#[tokio::test]
async fn an_orderly_close_is_passed_on_with_everything_before_it() {
    let (target, received) = sink().await;
    let link = link_to(target, Shape::default()).await;
    let mut s = TcpStream::connect(link.local_addr()).await.unwrap();
    s.write_all(&pattern(200_000)).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(timeout(PATIENCE, received).await.unwrap().unwrap(), 200_000);
    // The sink closed its side in turn: the client sees end of stream.
    let mut rest = Vec::new();
    timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn going_down_cuts_open_connections_and_turns_new_ones_away_until_it_is_up_again() {
    // The target end is watched too: it must see the cut, not hang.
    let listener = TcpListener::bind(LOOPBACK).await.unwrap();
    let target = listener.local_addr().unwrap();
    let (target_saw, target_end) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        let mut more = [0u8; 1];
        let _ = target_saw.send(s.read(&mut more).await.map_err(|e| e.kind()));
        // Then echo whatever comes on later connections.
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let link = link_to(target, Shape::default()).await;
    let mut open = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut open, b"hello").await, b"hello");

    link.set_up(false);
    assert!(!link.is_up());
    let mut byte = [0u8; 1];
    let client_saw = timeout(PATIENCE, open.read(&mut byte))
        .await
        .expect("the client end was not cut");
    assert!(
        matches!(client_saw, Ok(0) | Err(_)),
        "client read {client_saw:?}"
    );
    let target_saw = timeout(PATIENCE, target_end)
        .await
        .expect("the target end was not cut")
        .unwrap();
    assert!(
        matches!(target_saw, Ok(0) | Err(_)),
        "target read {target_saw:?}"
    );
    assert!(turned_away(link.local_addr()).await);
    assert!(link.connections_refused() >= 1);

    link.set_up(true);
    let mut again = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"again").await, b"again");
    assert_eq!(link.connections_accepted(), 2);
}

#[tokio::test]
async fn a_stalled_link_holds_bytes_without_closing_and_then_delivers_them_in_order() {
    let link = link_to(echo_server().await, Shape::default()).await;
    let mut s = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"before").await, b"before");

    link.set_stalled(true);
    let held = pattern(100_000);
    s.write_all(&held).await.unwrap();
    let mut back = vec![0u8; held.len()];
    // Nothing comes back, and the connection is neither closed nor reset.
    assert!(
        timeout(Duration::from_millis(500), s.read_exact(&mut back[..1]))
            .await
            .is_err(),
        "a stalled link delivered bytes"
    );
    assert_eq!(link.bytes_forwarded(), (6, 6), "only what passed before");

    link.set_stalled(false);
    timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("the held bytes never came")
        .unwrap();
    assert_eq!(back, held);
    assert_eq!(link.bytes_forwarded(), (100_006, 100_006));
    assert_eq!(link.connections_accepted(), 1, "one connection throughout");
}

#[tokio::test]
async fn a_link_that_starts_down_carries_nothing_and_counts_no_open_time() {
    let link = link_to(
        echo_server().await,
        Shape {
            rate_bytes_per_sec: None,
            initially_up: false,
        },
    )
    .await;
    assert!(turned_away(link.local_addr()).await);
    assert_eq!(link.open_time(), Duration::ZERO);
    assert_eq!(link.bytes_forwarded(), (0, 0));
    assert_eq!(link.connections_accepted(), 0);

    link.set_up(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    link.set_up(false);
    let open = link.open_time();
    assert!(open >= Duration::from_millis(100), "{open:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(link.open_time(), open, "the clock ran while down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_one_megabyte_a_second_takes_over_a_second_and_a_half_for_two() {
    let (target, received) = sink().await;
    let link = link_to(
        target,
        Shape {
            rate_bytes_per_sec: Some(1_000_000),
            initially_up: true,
        },
    )
    .await;
    let started = Instant::now();
    let mut s = TcpStream::connect(link.local_addr()).await.unwrap();
    s.write_all(&pattern(2_000_000)).await.unwrap();
    s.shutdown().await.unwrap();
    let got = timeout(Duration::from_secs(30), received)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(got, 2_000_000);
    // A lower bound only: a busy machine may be slower, never faster.
    assert!(took >= Duration::from_millis(1500), "2 MB in {took:?}");
    assert_eq!(link.bytes_forwarded().0, 2_000_000);
}

#[tokio::test]
async fn a_rate_of_zero_is_refused() {
    let err = Link::start(
        LOOPBACK.parse().unwrap(),
        LOOPBACK.parse().unwrap(),
        Shape {
            rate_bytes_per_sec: Some(0),
            initially_up: true,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_schedule_opens_and_closes_the_link_until_stopped() {
    let link = link_to(
        echo_server().await,
        Shape {
            rate_bytes_per_sec: None,
            initially_up: false,
        },
    )
    .await;
    let started = Instant::now();
    link.run_schedule(Schedule {
        up: Duration::from_millis(150),
        down: Duration::from_millis(150),
    });
    // It starts with an up window, then closes, then opens again.
    wait_until("never up", || link.is_up()).await;
    let mut s = TcpStream::connect(link.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"window").await, b"window");
    wait_until("never went down", || !link.is_up()).await;
    assert!(turned_away(link.local_addr()).await || link.is_up());
    wait_until("never came back up", || link.is_up()).await;
    wait_until("never went down again", || !link.is_up()).await;

    link.stop_schedule();
    let elapsed = started.elapsed();
    let open = link.open_time();
    assert!(open >= Duration::from_millis(250), "{open:?}");
    assert!(open < elapsed, "{open:?} of {elapsed:?}");
    // Stopped: the link stays as it was left.
    let state = link.is_up();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(link.is_up(), state);
}

#[tokio::test]
async fn shutdown_cuts_connections_and_releases_the_port() {
    let link = link_to(echo_server().await, Shape::default()).await;
    let addr = link.local_addr();
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut open, b"hi").await, b"hi");
    drop(link);
    let mut byte = [0u8; 1];
    let saw = timeout(PATIENCE, open.read(&mut byte)).await.unwrap();
    assert!(matches!(saw, Ok(0) | Err(_)), "read {saw:?}");
    // The listener goes as the task winds down: connects are then refused.
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
