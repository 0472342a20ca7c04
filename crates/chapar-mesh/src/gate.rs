//! The descriptor flood cap. Anyone can seal tiny valid bundles by the
//! thousand; each one a relay accepts costs it a row in its books and a
//! place in every inventory it sends. New descriptors are therefore
//! admitted at a bounded rate per peer and only while the node tracks
//! fewer than a set number of bundles. Descriptors already known cost
//! nothing and always pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chapar_format::Descriptor;
use libp2p::PeerId;

use crate::ratelimit::{Rate, RateLimiter};

/// Latest expiry accepted, from now: a descriptor claiming to live longer
/// is malformed or hostile (it could never be collected).
pub const MAX_LIFETIME: Duration = Duration::from_secs(400 * 24 * 3600);

/// Whether a descriptor's expiry makes sense at `now` (Unix seconds).
pub(crate) fn expiry_is_sane(descriptor: &Descriptor, now: u64) -> bool {
    descriptor.expires_at > now && descriptor.expires_at <= now + MAX_LIFETIME.as_secs()
}

/// Admits new descriptors; shared by gossip validation and the sync.
#[derive(Debug)]
pub(crate) struct DescriptorGate {
    per_peer: Mutex<RateLimiter<PeerId>>,
    max_bundles: usize,
    /// Bundles the node tracks, as last counted by the replicator.
    pub(crate) known_bundles: AtomicUsize,
    refused: prometheus_client::metrics::counter::Counter,
}

impl DescriptorGate {
    pub(crate) fn new(
        rate: Rate,
        max_bundles: usize,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            refused,
            per_peer: Mutex::new(RateLimiter::new(rate, 4096)),
            max_bundles,
            known_bundles: AtomicUsize::new(0),
        }
    }

    /// Whether one more new descriptor from `peer` may be taken in.
    pub(crate) fn admit(&self, peer: PeerId) -> bool {
        if self.known_bundles.load(Ordering::Relaxed) >= self.max_bundles {
            self.refused.inc();
            return false;
        }
        let admitted = match self.per_peer.lock() {
            Ok(mut limiter) => limiter.allow(peer, Instant::now()),
            Err(_) => false,
        };
        if admitted {
            // Counted now, so a burst within one tick cannot overshoot.
            self.known_bundles.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.inc();
        }
        admitted
    }

    /// Gives back an admission whose descriptor was not stored after all.
    pub(crate) fn unadmit(&self) {
        let _ = self
            .known_bundles
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
}
