//! `docs/nginx-chapar.conf`, run as it is written with Debian's nginx in
//! front of a relay: a second relay reaches the first through nginx's TLS
//! from its share string alone and replicates a bundle from it, and a
//! prober at nginx's port sees the decoy site and nothing of Chapar.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chapar_store::{import_folder, Role, Store};
use chapar_transport::camouflage::{CamouflageKeys, HTTPS_DIR};

use common::{metric, scrape, sealed_bundle, Relay};

/// nginx, killed when dropped.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed, and CI must not skip this test (apt-get install nginx-light)"
        );
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
    }
    found
}

fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("local addr").port()
}

/// The documented file with its placeholders filled in, inside a minimal
/// nginx.conf that keeps everything under `prefix`.
fn nginx_conf(prefix: &Path, cert: &Path, key: &Path, front: u16, relay: u16) -> PathBuf {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/nginx-chapar.conf");
    let server = std::fs::read_to_string(doc)
        .expect("docs/nginx-chapar.conf")
        .replace("FRONT_PORT", &format!("127.0.0.1:{front}"))
        .replace("RELAY_PORT", &relay.to_string())
        .replace("NAME", "notes.example.org")
        .replace("CERT", &cert.display().to_string())
        .replace("KEY", &key.display().to_string());
    std::fs::write(prefix.join("chapar.conf"), server).expect("write");
    let p = prefix.display();
    let main = format!(
        "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n\
         include {p}/chapar.conf;\n}}\n"
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, main).expect("write");
    path
}

fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_relay_behind_the_documented_nginx_config_is_reached_and_probed_through_it() {
    let Some(nginx) = nginx_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    // nginx's certificate: self-signed here, so the share string pins it.
    let nginx_keys = t.join("nginx-keys");
    CamouflageKeys::load_or_create(&nginx_keys, "notes.example.org").expect("certificate");
    let (cert, key) = (
        nginx_keys.join(HTTPS_DIR).join("cert.pem"),
        nginx_keys.join(HTTPS_DIR).join("key.pem"),
    );
    let (front, upstream) = (free_port(), free_port());
    let a_dir = t.join("a");
    let upstream_arg = format!("127.0.0.1:{upstream}");
    let front_arg = front.to_string();
    let cert_arg = cert.display().to_string();
    let site = t.join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    std::fs::write(site.join("index.html"), "<h1>Bakery opening hours</h1>").expect("write");
    let site_arg = site.display().to_string();
    let links: Vec<&str> = vec![
        "--https-listen",
        &upstream_arg,
        "--https-behind-proxy",
        "--https-cert",
        &cert_arg,
        "--https-public-port",
        &front_arg,
        "--https-site",
        &site_arg,
        "--public-host",
        "127.0.0.1",
    ];

    // The share string, from `id` with the same settings.
    let id = Command::new(env!("CARGO_BIN_EXE_chapar-relay"))
        .args(["id", "--json", "--data-dir"])
        .arg(&a_dir)
        .args(&links)
        .output()
        .expect("chapar-relay id");
    assert!(id.status.success(), "{id:?}");
    let id: serde_json::Value = serde_json::from_slice(&id.stdout).expect("json");
    let share = id["share"][0].as_str().expect("a share string").to_owned();
    assert!(
        share.starts_with(&format!("https://127.0.0.1:{front}/")),
        "{share}"
    );
    assert!(share.contains("?pin="), "{share}");

    let (bundle, bundle_id) = sealed_bundle(t);
    let b_dir = t.join("b");
    {
        let store = Store::open(&b_dir).expect("store");
        import_folder(&store, &bundle, Role::Relaying, |_| {}).expect("import");
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut a_args = links.clone();
    a_args.extend(["--metrics", &metrics]);
    let a = Relay::start_with(&a_dir, &[], &a_args);
    wait_until_listening(upstream);

    let prefix = t.join("nginx");
    std::fs::create_dir_all(&prefix).expect("mkdir");
    let conf = nginx_conf(&prefix, &cert, &key, front, upstream);
    let _nginx = Nginx(
        Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&prefix)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts"),
    );
    wait_until_listening(front);

    // B knows A only by its share string, and hands it the bundle.
    let b = Relay::start(&b_dir, &[share]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let complete = metric(&scrape(&metrics), "chapar_bundles_complete");
        if complete >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never completed bundle {bundle_id} through nginx (nginx's log: {})",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A prober at nginx's port sees the site, and nothing of Chapar.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let front_addr = std::net::SocketAddr::from(([127, 0, 0, 1], front));
    let answers = runtime.block_on(chapar_transport::probe::probe_all(
        front_addr,
        "notes.example.org",
    ));
    for answer in &answers {
        assert!(
            answer.telltales().is_empty(),
            "{}: {}",
            answer.probe,
            String::from_utf8_lossy(&answer.answer)
        );
    }
    let get = answers
        .iter()
        .find(|a| a.probe == "tls-get")
        .expect("tls-get ran");
    assert_eq!(get.http_status(), Some(200));
    assert!(String::from_utf8_lossy(&get.answer).contains("Bakery opening hours"));
    b.stop();
    a.stop();
}
