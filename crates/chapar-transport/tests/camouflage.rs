//! The camouflaged HTTPS transport between two real libp2p swarms over
//! loopback sockets, and what a censor's prober gets from the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chapar_transport::camouflage::{CamouflageKeys, CamouflageTransport, ServerSide, Site};
use chapar_transport::probe::probe_all;
use chapar_transport::share::{Host, HttpsShare, ShareAddr};
use chapar_transport::upgraded;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, Multiaddr, Swarm};

fn swarm(server: Option<Arc<ServerSide>>) -> Swarm<ping::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| upgraded(CamouflageTransport::new(server), key))
        .expect("transport")
        .with_behaviour(|_| {
            ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200)))
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

struct Relay {
    swarm: Swarm<ping::Behaviour>,
    addr: SocketAddr,
    keys: CamouflageKeys,
    _dir: tempfile::TempDir,
}

async fn relay(site: Site) -> Relay {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = CamouflageKeys::load_or_create(dir.path(), "notes.example.org").expect("keys");
    let side = Arc::new(ServerSide::new(&keys, site).expect("server side"));
    let mut swarm = swarm(Some(side));
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0/tls/http".parse().expect("multiaddr"))
        .expect("listen");
    let listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let port = listen
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("port");
    Relay {
        swarm,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        keys,
        _dir: dir,
    }
}

fn share(relay: &Relay, pin: Option<[u8; 32]>, token: String) -> Multiaddr {
    ShareAddr::Https(HttpsShare {
        host: Host::Ip(relay.addr.ip()),
        port: relay.addr.port(),
        token,
        sni: Some("notes.example.org".into()),
        pin,
        peer: *relay.swarm.local_peer_id(),
    })
    .to_multiaddr()
}

/// Drives both swarms until each has pinged the other, or a dial fails.
async fn connect(
    relay: &mut Relay,
    client: &mut Swarm<ping::Behaviour>,
    addr: Multiaddr,
) -> Result<(), String> {
    client.dial(addr).map_err(|e| e.to_string())?;
    let (mut relay_pinged, mut client_pinged) = (false, false);
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while !(relay_pinged && client_pinged) {
        tokio::select! {
            e = relay.swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(ping::Event { result: Ok(_), .. }) = e {
                    relay_pinged = true;
                }
            }
            e = client.select_next_some() => match e {
                SwarmEvent::Behaviour(ping::Event { result: Ok(_), .. }) => client_pinged = true,
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error.to_string()),
                _ => {}
            },
            _ = &mut deadline => return Err("timed out".into()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_runs_inside_https_with_the_secret_and_the_pinned_certificate() {
    let mut relay = relay(Site::built_in()).await;
    let mut client = swarm(None);
    let addr = share(&relay, relay.keys.pin(), relay.keys.token());
    connect(&mut relay, &mut client, addr)
        .await
        .expect("connected and pinged");
    assert!(client.is_connected(relay.swarm.local_peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_or_a_wrong_token_gets_no_connection() {
    let mut relay = relay(Site::built_in()).await;
    let mut client = swarm(None);
    let wrong_pin = share(&relay, Some([9; 32]), relay.keys.token());
    let err = connect(&mut relay, &mut client, wrong_pin)
        .await
        .expect_err("wrong pin refused");
    assert!(err.contains("TLS"), "{err}");
    let wrong_token = share(&relay, relay.keys.pin(), "AAAAAAAAAAAAAAAAAAAAAA".into());
    let err = connect(&mut relay, &mut client, wrong_token)
        .await
        .expect_err("wrong token refused");
    assert!(err.contains("404"), "{err}");
    // And no certificate authority vouches for a self-signed certificate.
    let no_pin = share(&relay, None, relay.keys.token());
    connect(&mut relay, &mut client, no_pin)
        .await
        .expect_err("unpinned self-signed refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prober_without_the_secret_sees_an_ordinary_web_server() {
    let site_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        site_dir.path().join("index.html"),
        "<h1>Bakery opening hours</h1>",
    )
    .expect("write");
    let relay = relay(Site::folder(site_dir.path().to_owned())).await;
    let addr = relay.addr;
    // The relay's swarm must run for its listener to accept.
    let running = tokio::spawn(async move {
        let mut relay = relay;
        loop {
            relay.swarm.select_next_some().await;
        }
    });
    let answers = probe_all(addr, "notes.example.org").await;
    running.abort();
    for a in &answers {
        assert!(
            a.telltales().is_empty(),
            "{} answered {:?}",
            a.probe,
            String::from_utf8_lossy(&a.answer)
        );
        eprintln!(
            "{}: tls={} {:?}",
            a.probe,
            a.tls,
            String::from_utf8_lossy(&a.answer).lines().next()
        );
    }
    let by = |name| answers.iter().find(|a| a.probe == name).expect("probe ran");
    let get = by("tls-get");
    assert!(get.tls);
    assert_eq!(get.http_status(), Some(200));
    let text = String::from_utf8_lossy(&get.answer);
    assert!(text.contains("Server: nginx"), "{text}");
    assert!(text.contains("Bakery opening hours"), "{text}");
    assert_eq!(by("tls-upgrade-guess").http_status(), Some(404));
    assert_eq!(by("http-get").http_status(), Some(400));
    assert!(String::from_utf8_lossy(&by("http-get").answer)
        .contains("plain HTTP request was sent to HTTPS port"));
    // Not TLS: the server closes, at most with a TLS alert record, as
    // any TLS server does.
    for name in ["multistream", "random"] {
        let answer = &by(name).answer;
        assert!(answer.is_empty() || answer[0] == 0x15, "{name}: {answer:?}");
    }
}
