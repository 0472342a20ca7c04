//! What a censor's active prober sends a suspected server, and what comes
//! back: so an operator can check a relay (`chapar-relay probe`), and the
//! tests can play the censor. A prober has no secret; a relay must give
//! it nothing that names libp2p or Chapar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Strings that would give a relay away if an answer held them.
pub const TELLTALES: [&str; 7] = [
    "multistream",
    "/noise",
    "yamux",
    "libp2p",
    "chapar",
    "/p2p/",
    "/ipfs/",
];

/// Most bytes kept of one answer.
const MAX_ANSWER: u64 = 64 * 1024;
/// How long a probe waits for the server to answer and close.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One probe and the server's answer.
#[derive(Debug, Clone)]
pub struct ProbeAnswer {
    /// Which probe (`multistream`, `random`, `http-get`, `tls-get`, `tls-upgrade-guess`).
    pub probe: &'static str,
    /// Whether the TLS handshake (for the TLS probes) succeeded.
    pub tls: bool,
    /// What came back before the server closed or the probe gave up.
    pub answer: Vec<u8>,
}

impl ProbeAnswer {
    /// The telltale strings the answer holds (case-insensitive).
    pub fn telltales(&self) -> Vec<&'static str> {
        let text = String::from_utf8_lossy(&self.answer).to_lowercase();
        TELLTALES.into_iter().filter(|t| text.contains(t)).collect()
    }

    /// The HTTP status code, if the answer is an HTTP response.
    pub fn http_status(&self) -> Option<u16> {
        let text = std::str::from_utf8(self.answer.get(..12)?).ok()?;
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> Vec<u8> {
    let mut answer = Vec::new();
    let talk = async {
        s.write_all(request).await?;
        s.flush().await?;
        (&mut s).take(MAX_ANSWER).read_to_end(&mut answer).await
    };
    let _ = tokio::time::timeout(PROBE_TIMEOUT, talk).await;
    answer
}

async fn plain(addr: SocketAddr, probe: &'static str, request: &[u8]) -> ProbeAnswer {
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => exchange(s, request).await,
        _ => Vec::new(),
    };
    ProbeAnswer {
        probe,
        tls: false,
        answer,
    }
}

async fn over_tls(
    addr: SocketAddr,
    server_name: &str,
    probe: &'static str,
    request: &[u8],
) -> ProbeAnswer {
    let mut result = ProbeAnswer {
        probe,
        tls: false,
        answer: Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()
    else {
        return result;
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    if let Ok(Ok(tls)) = tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        result.tls = true;
        result.answer = exchange(tls, request).await;
    }
    result
}

/// Runs every probe against `addr` (naming `server_name` in TLS and in
/// `Host`), one after another.
pub async fn probe_all(addr: SocketAddr, server_name: &str) -> Vec<ProbeAnswer> {
    let get = format!(
        "GET / HTTP/1.1\r\nHost: {server_name}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let guess = format!(
        "GET /{} HTTP/1.1\r\nHost: {server_name}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 16]>())
    );
    let random: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    vec![
        plain(addr, "multistream", b"\x13/multistream/1.0.0\n").await,
        plain(addr, "random", &random).await,
        plain(addr, "http-get", get.as_bytes()).await,
        over_tls(addr, server_name, "tls-get", get.as_bytes()).await,
        over_tls(addr, server_name, "tls-upgrade-guess", guess.as_bytes()).await,
    ]
}
