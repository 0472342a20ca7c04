//! A peer that lies: it claims to hold a bundle and serves garbage under
//! the right chunk ids. The honest node cuts it off and completes the
//! bundle from an honest peer. A peer sending malformed frames is cut off
//! too, and the node keeps serving others.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use chapar_format::BundleId;
use chapar_mesh::start;
use chapar_store::{import_folder, Role, Store, StoreHandle};
use chapar_wire::{
    Inventory, InventoryEntry, Message, SyncResponse, CHUNK_PROTOCOL, SYNC_PROTOCOL,
};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol};

async fn read_frame(stream: &mut libp2p::Stream) -> Option<Message> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).await.ok()?;
    Message::decode(&body).ok()
}

/// A liar on loopback: claims `bundle` complete, serves flipped bytes.
/// Returns its address and a counter of connections it lost.
async fn liar(bundle: BundleId) -> (Multiaddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let mut control = swarm.behaviour().new_control();
    let mut syncs = control
        .accept(StreamProtocol::new(SYNC_PROTOCOL))
        .expect("sync");
    let mut chunks = control
        .accept(StreamProtocol::new(CHUNK_PROTOCOL))
        .expect("chunks");
    tokio::spawn(async move {
        while let Some((_, mut s)) = syncs.next().await {
            if let Some(Message::SyncRequest(_)) = read_frame(&mut s).await {
                let lie = Message::SyncResponse(SyncResponse {
                    inventory: Inventory {
                        bundles: vec![InventoryEntry {
                            bundle,
                            complete: true,
                            held: 9999,
                        }],
                    },
                    ..SyncResponse::default()
                });
                let _ = s.write_all(&lie.encode()).await;
                let _ = s.close().await;
            }
        }
    });
    let served = Arc::new(AtomicUsize::new(0));
    let served_count = served.clone();
    tokio::spawn(async move {
        while let Some((_, mut s)) = chunks.next().await {
            let served = served_count.clone();
            tokio::spawn(async move {
                while let Some(Message::ChunkRequest(ids)) = read_frame(&mut s).await {
                    for id in ids {
                        served.fetch_add(1, Ordering::Relaxed);
                        let garbage = Message::ChunkData {
                            id,
                            bytes: vec![0xAB; 4096],
                        };
                        if s.write_all(&garbage.encode()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let dropped = Arc::new(AtomicUsize::new(0));
    let dropped_count = dropped.clone();
    let local = *swarm.local_peer_id();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(address.with(libp2p::multiaddr::Protocol::P2p(local)));
                    }
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    dropped_count.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    (rx.await.expect("liar listens"), dropped, served)
}

async fn node(
    dir: &Path,
    preload: Option<&Path>,
    peers: Vec<Multiaddr>,
) -> (chapar_mesh::NodeHandle, StoreHandle) {
    let store = Store::open(dir).expect("store");
    if let Some(b) = preload {
        import_folder(&store, b, Role::Relaying, |_| {}).expect("import");
    }
    let store = StoreHandle::new(store);
    let mut config = common::isolated_config(peers);
    config.sync_interval = Duration::from_millis(300);
    (start(config, store.clone()).await.expect("starts"), store)
}

async fn first_addr(h: &chapar_mesh::NodeHandle) -> Multiaddr {
    for _ in 0..100 {
        if let Some(a) = h.listen_addrs().await.into_iter().next() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no listen address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_chunks_is_cut_off_and_the_bundle_completes_from_honest_peers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _) = common::sealed_bundle(tmp.path(), 200_000);
    let (liar_addr, liar_dropped, liar_served) = liar(id).await;
    let (honest, _) = node(&tmp.path().join("honest"), Some(&bundle), vec![]).await;
    let honest_addr = first_addr(&honest).await;
    // The victim meets the liar first, then the honest relay.
    let (victim, store) = node(&tmp.path().join("victim"), None, vec![liar_addr]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.dial(honest_addr).await;

    common::eventually("bundle never completed", Duration::from_secs(60), || {
        let store = store.clone();
        async move { common::complete(&store, id).await }
    })
    .await;
    assert!(
        liar_served.load(Ordering::Relaxed) > 0,
        "the liar was never asked: the test proved nothing"
    );
    assert!(
        liar_dropped.load(Ordering::Relaxed) > 0,
        "the liar was not cut off"
    );
    let report = store.call(|s| s.fsck(false)).await.expect("fsck");
    assert!(!report.damaged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_get_a_peer_cut_off_while_others_are_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, id, _) = common::sealed_bundle(tmp.path(), 200_000);
    let (target, _) = node(&tmp.path().join("target"), Some(&bundle), vec![]).await;
    let target_addr = first_addr(&target).await;

    // A raw client: an oversized frame header, then garbage, on both protocols.
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(target_addr.clone()).expect("dial");
    let target_peer = target.peer_id();
    let closed = Arc::new(AtomicUsize::new(0));
    let closed_count = closed.clone();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::ConnectionClosed { .. } = swarm.select_next_some().await {
                closed_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut stream = loop {
        match control
            .open_stream(target_peer, StreamProtocol::new(SYNC_PROTOCOL))
            .await
        {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _ = stream.write_all(&u32::MAX.to_be_bytes()).await;
    let _ = stream.write_all(&[0xff; 64]).await;
    let _ = stream.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while closed.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node kept a peer that sent an oversized frame"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And an honest relay still gets the whole bundle from it.
    let (_, store) = node(&tmp.path().join("honest"), None, vec![target_addr]).await;
    common::eventually("honest peer not served", Duration::from_secs(60), || {
        let store = store.clone();
        async move { common::complete(&store, id).await }
    })
    .await;
}
