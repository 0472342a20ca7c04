//! Super-seeding: while the mesh does not yet hold a whole copy of a
//! bundle sealed here, the sender's uplink — often the scarcest link in
//! the whole path — carries each chunk once before any chunk twice. A
//! peer asking for a chunk already sent to another is told "missing" and
//! fetches it from that peer instead; once every chunk has left once, the
//! sender serves anything (a relay may have died with its copy).
//! Pure bookkeeping; the chunk server asks it before each chunk.

use std::collections::{HashMap, HashSet};

use chapar_format::{BundleId, ChunkId};

/// What has left this node of each bundle sealed here.
#[derive(Debug, Default)]
pub struct Seeder {
    owner: HashMap<ChunkId, BundleId>,
    total: HashMap<BundleId, usize>,
    served: HashMap<BundleId, HashSet<ChunkId>>,
}

impl Seeder {
    /// Whether the bundle's chunks are being tracked already.
    pub fn knows(&self, bundle: &BundleId) -> bool {
        self.total.contains_key(bundle)
    }

    /// Starts tracking a bundle sealed here, with every chunk id it has.
    pub fn track(&mut self, bundle: BundleId, chunks: &[ChunkId]) {
        for c in chunks {
            self.owner.insert(*c, bundle);
        }
        self.total.insert(bundle, chunks.len());
    }

    /// Whether to send `chunk` now; records it as sent if so.
    pub fn allow(&mut self, chunk: &ChunkId) -> bool {
        let Some(bundle) = self.owner.get(chunk) else {
            return true;
        };
        let total = self.total.get(bundle).copied().unwrap_or(0);
        let served = self.served.entry(*bundle).or_default();
        if served.contains(chunk) {
            return served.len() >= total;
        }
        served.insert(*chunk);
        true
    }

    /// (unique chunks sent, chunks in all) for a bundle sealed here.
    pub fn handed_off(&self, bundle: &BundleId) -> Option<(usize, usize)> {
        let total = *self.total.get(bundle)?;
        let served = self.served.get(bundle).map_or(0, HashSet::len);
        Some((served, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_chunk_once_before_any_twice() {
        let bundle = BundleId([1; 32]);
        let chunks: Vec<ChunkId> = (0..3u8).map(|i| ChunkId([i; 32])).collect();
        let mut seeder = Seeder::default();
        seeder.track(bundle, &chunks);
        assert!(seeder.allow(&chunks[0]));
        assert!(
            !seeder.allow(&chunks[0]),
            "sent once already; others unsent"
        );
        assert!(seeder.allow(&chunks[1]));
        assert_eq!(seeder.handed_off(&bundle), Some((2, 3)));
        assert!(seeder.allow(&chunks[2]));
        assert!(
            seeder.allow(&chunks[0]),
            "every chunk has left: serve anything"
        );
        assert_eq!(seeder.handed_off(&bundle), Some((3, 3)));
        assert!(seeder.allow(&ChunkId([9; 32])), "not ours: always served");
    }
}
