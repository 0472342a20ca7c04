//! Super-seeding: while the mesh does not yet hold a whole copy of a
//! bundle, a node whose uplink is the scarcest link on the path (the
//! sender's machine; a gateway relay on a satellite link) carries each
//! chunk once before any chunk twice. A peer asking for a chunk already
//! sent to another is told "missing" and fetches it from that peer
//! instead. A chunk is sent again only [`Seeder::resend_after`] after it
//! last left: the peer that got it may have died with it, or the link may
//! have closed while it was crossing. (Waiting for every chunk to have left
//! once first would stall for good: chunks that left before tracking began
//! are never asked for again.)
//! Pure bookkeeping: the chunk server asks it before each chunk, and the
//! caller passes the clock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chapar_format::{BundleId, ChunkId};
use libp2p::PeerId;

/// What has left this node of each bundle it seeds.
#[derive(Debug)]
pub struct Seeder {
    resend_after: Duration,
    owner: HashMap<ChunkId, BundleId>,
    total: HashMap<BundleId, usize>,
    /// When each chunk last left, and for whom.
    last_sent: HashMap<BundleId, HashMap<ChunkId, (Instant, PeerId)>>,
    /// When set, only these peers are across the scarce link: the rest
    /// (a gateway's own country side) are served freely, and what they
    /// get does not count as having crossed.
    far_side: Option<HashSet<PeerId>>,
}

impl Seeder {
    /// A seeder that sends a chunk twice no sooner than `resend_after` apart.
    pub fn new(resend_after: Duration) -> Self {
        Self {
            resend_after,
            owner: HashMap::new(),
            total: HashMap::new(),
            last_sent: HashMap::new(),
            far_side: None,
        }
    }

    /// From now on only peers named by [`Seeder::on_far_side`] are across
    /// the scarce link (by default every peer is).
    pub fn only_far_side(&mut self) {
        self.far_side.get_or_insert_with(HashSet::new);
    }

    /// `peer` reached this node across the scarce link.
    pub fn on_far_side(&mut self, peer: PeerId) {
        if let Some(far) = &mut self.far_side {
            far.insert(peer);
        }
    }

    /// The least time between two sends of one chunk.
    pub fn resend_after(&self) -> Duration {
        self.resend_after
    }

    /// Whether `peer` is on this node's side of the scarce link: served
    /// freely, and not counted.
    fn on_near_side(&self, peer: &PeerId) -> bool {
        self.far_side
            .as_ref()
            .is_some_and(|far| !far.contains(peer))
    }

    /// Whether the bundle's chunks are being tracked already.
    pub fn knows(&self, bundle: &BundleId) -> bool {
        self.total.contains_key(bundle)
    }

    /// Starts tracking a bundle, with every chunk id it has.
    pub fn track(&mut self, bundle: BundleId, chunks: &[ChunkId]) {
        for c in chunks {
            self.owner.insert(*c, bundle);
        }
        self.total.insert(bundle, chunks.len());
    }

    /// Whether to send `chunk` to `peer` now; records it as sent if so.
    /// A chunk goes again at once to the peer it went to last: asking
    /// again means it did not arrive.
    pub fn allow(&mut self, chunk: &ChunkId, peer: &PeerId, now: Instant) -> bool {
        if self.on_near_side(peer) {
            return true;
        }
        let Some(bundle) = self.owner.get(chunk) else {
            return true;
        };
        let sent = self.last_sent.entry(*bundle).or_default();
        let allowed = match sent.get(chunk) {
            None => true,
            // The peer it went to asks again: it never got it (the
            // connection was cut while it crossed).
            Some((_, to)) if to == peer => true,
            Some((last, _)) => now.saturating_duration_since(*last) >= self.resend_after,
        };
        if allowed {
            sent.insert(*chunk, (now, *peer));
        }
        allowed
    }

    /// Notes that `chunk` finished leaving for `peer` at `now`: the wait
    /// before a resend counts from there (on a slow link a chunk takes
    /// long to go).
    pub fn finished(&mut self, chunk: &ChunkId, peer: &PeerId, now: Instant) {
        if self.on_near_side(peer) {
            return;
        }
        if let Some(bundle) = self.owner.get(chunk) {
            if let Some(at) = self
                .last_sent
                .get_mut(bundle)
                .and_then(|m| m.get_mut(chunk))
            {
                at.0 = now;
            }
        }
    }

    /// (distinct chunks sent, chunks in all) for a tracked bundle.
    pub fn handed_off(&self, bundle: &BundleId) -> Option<(usize, usize)> {
        let total = *self.total.get(bundle)?;
        let sent = self.last_sent.get(bundle).map_or(0, HashMap::len);
        Some((sent, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_leaves_again_only_after_the_resend_wait() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(11);
        let bundle = BundleId([1; 32]);
        let chunks: Vec<ChunkId> = (0..3u8).map(|i| ChunkId([i; 32])).collect();
        let mut seeder = Seeder::new(Duration::from_secs(10));
        seeder.track(bundle, &chunks);
        let (p, q) = (PeerId::random(), PeerId::random());
        assert!(seeder.allow(&chunks[0], &p, t0));
        assert!(
            !seeder.allow(&chunks[0], &q, t0),
            "just sent: the asker gets it elsewhere"
        );
        assert!(seeder.allow(&chunks[1], &p, t0));
        assert_eq!(seeder.handed_off(&bundle), Some((2, 3)));
        // Chunk 2 may never be asked of us again (it left before tracking
        // began, say); chunk 0 must not wait on it.
        assert!(
            seeder.allow(&chunks[0], &p, later),
            "sent long enough ago: maybe lost"
        );
        assert!(!seeder.allow(&chunks[0], &q, later), "just sent again");
        seeder.finished(&chunks[1], &p, later);
        assert!(
            !seeder.allow(&chunks[1], &q, later),
            "the wait counts from when it finished"
        );
        assert_eq!(
            seeder.handed_off(&bundle),
            Some((2, 3)),
            "distinct chunks that left"
        );
        assert!(
            seeder.allow(&ChunkId([9; 32]), &p, t0),
            "not tracked: always served"
        );
    }

    #[test]
    fn with_a_far_side_named_the_near_side_is_served_freely_and_not_counted() {
        let t0 = Instant::now();
        let bundle = BundleId([1; 32]);
        let chunk = ChunkId([7; 32]);
        let (near, far, far2) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut seeder = Seeder::new(Duration::from_secs(30));
        seeder.track(bundle, &[chunk]);
        seeder.only_far_side();
        seeder.on_far_side(far);
        seeder.on_far_side(far2);
        // A country-side relay takes the whole bundle: nothing crossed.
        // (Also: the far peer a chunk went to may ask again, below.)
        assert!(seeder.allow(&chunk, &near, t0));
        seeder.finished(&chunk, &near, t0);
        assert!(
            seeder.allow(&chunk, &near, t0),
            "the near side is never refused"
        );
        assert_eq!(seeder.handed_off(&bundle), Some((0, 1)));
        // Across the link, each chunk still goes once.
        assert!(seeder.allow(&chunk, &far, t0));
        assert!(!seeder.allow(&chunk, &far2, t0));
        assert!(
            seeder.allow(&chunk, &far, t0),
            "the peer it went to asks again: it did not arrive"
        );
        assert!(!seeder.allow(&chunk, &far2, t0));
        assert_eq!(seeder.handed_off(&bundle), Some((1, 1)));
    }
}
