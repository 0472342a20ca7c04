//! Prometheus metrics: libp2p's own (connections, protocols, bandwidth,
//! gossip, Kademlia) and the node's (bundles, chunks, bytes, peers,
//! replication lag), and a minimal HTTP endpoint that serves them.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the node counts. Counters are shared handles: clones count into
/// the same value.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Chunks received from peers and verified (a chunk fetched twice counts twice).
    pub chunks_fetched: Counter,
    /// Their bytes.
    pub bytes_fetched: Counter,
    /// Chunks served to peers.
    pub chunks_served: Counter,
    /// Their bytes.
    pub bytes_served: Counter,
    /// Chunks rebuilt from parity when no peer could supply them.
    pub chunks_rebuilt: Counter,
    /// Chunk sessions given up on because the peer went silent while
    /// another peer held the whole bundle.
    pub requests_abandoned: Counter,
    /// Peers cut off for breaking a protocol.
    pub peers_banned: Counter,
    /// Gossip messages rejected as invalid.
    pub gossip_rejected: Counter,
    /// Descriptors refused by the flood cap.
    pub descriptors_refused: Counter,
    /// Peers connected now.
    pub peers_connected: Gauge,
    /// Bundles known (held in whole or in part, or wanted).
    pub bundles: Gauge,
    /// Bundles held complete.
    pub bundles_complete: Gauge,
    /// Chunks held.
    pub chunks_held: Gauge,
    /// Chunks of known bundles not yet held here: how far replication lags.
    pub replication_lag_chunks: Gauge,
}

impl NodeStats {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("chapar");
        r.register(
            "chunks_fetched",
            "Chunks received from peers and verified",
            self.chunks_fetched.clone(),
        );
        r.register(
            "chunk_bytes_in",
            "Bytes of verified chunks received from peers",
            self.bytes_fetched.clone(),
        );
        r.register(
            "chunks_served",
            "Chunks served to peers",
            self.chunks_served.clone(),
        );
        r.register(
            "chunk_bytes_out",
            "Bytes of chunks served to peers",
            self.bytes_served.clone(),
        );
        r.register(
            "chunks_rebuilt",
            "Chunks rebuilt from parity when no peer could supply them",
            self.chunks_rebuilt.clone(),
        );
        r.register(
            "requests_abandoned",
            "Chunk sessions given up on because the peer went silent while another held the whole bundle",
            self.requests_abandoned.clone(),
        );
        r.register(
            "peers_banned",
            "Peers cut off for breaking a protocol",
            self.peers_banned.clone(),
        );
        r.register(
            "gossip_rejected",
            "Gossip messages rejected as invalid",
            self.gossip_rejected.clone(),
        );
        r.register(
            "descriptors_refused",
            "New descriptors refused by the flood cap",
            self.descriptors_refused.clone(),
        );
        r.register(
            "peers_connected",
            "Peers connected now",
            self.peers_connected.clone(),
        );
        r.register("bundles", "Bundles known", self.bundles.clone());
        r.register(
            "bundles_complete",
            "Bundles held complete",
            self.bundles_complete.clone(),
        );
        r.register("chunks_held", "Chunks held", self.chunks_held.clone());
        r.register(
            "replication_lag_chunks",
            "Chunks of known bundles not yet held here",
            self.replication_lag_chunks.clone(),
        );
    }
}

/// Renders every metric in the OpenMetrics text format.
pub(crate) fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Largest request head we read; a scraper sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves `GET /metrics` on `listener` until the task is dropped. Any
/// other path gets 404; a client that sends nothing in 10 s is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: crate::NodeHandle) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = metrics.registry();
        tokio::spawn(async move {
            let head =
                match tokio::time::timeout(Duration::from_secs(10), read_head(&mut socket)).await {
                    Ok(Some(head)) => head,
                    _ => return,
                };
            let response = respond(&head, &registry);
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST_HEAD {
            return None;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn respond(head: &str, registry: &Arc<Registry>) -> String {
    let mut words = head.split_whitespace();
    let (method, path) = (words.next(), words.next());
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_metrics_and_404s_the_rest() {
        let mut registry = Registry::default();
        let stats = NodeStats::default();
        stats.register(&mut registry);
        stats.bytes_fetched.inc_by(42);
        let registry = Arc::new(registry);
        let ok = respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &registry);
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("chapar_chunk_bytes_in_total 42"), "{ok}");
        let missing = respond("GET / HTTP/1.1\r\n\r\n", &registry);
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let junk = respond("\u{0}\u{1}", &registry);
        assert!(junk.starts_with("HTTP/1.1 404"), "{junk}");
    }
}
