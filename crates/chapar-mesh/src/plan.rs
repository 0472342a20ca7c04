//! Which chunks to fetch from which peer, next: pure logic, no I/O.
//!
//! Bundles are served in order of priority (higher first), then expiry
//! (sooner first), then rarity (held by fewer peers first). Within a
//! bundle, chunks are spread over the peers that hold it, least-loaded
//! first, so different chunks come from different peers at once. In-flight
//! bytes are bounded per peer and in total.

use std::collections::{HashMap, HashSet};

use chapar_format::{BundleId, ChunkId};

/// A bundle this node wants chunks of.
#[derive(Debug, Clone)]
pub struct Want {
    /// The bundle.
    pub bundle: BundleId,
    /// Higher first.
    pub priority: u8,
    /// Unix expiry; sooner first.
    pub expires_at: u64,
    /// Chunks not held here, in the order they should come.
    pub missing: Vec<ChunkId>,
    /// Upper bound on one chunk's size (the bundle's chunk size).
    pub chunk_size: u32,
}

/// What a peer is known to hold of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holding {
    /// Every chunk.
    Complete,
    /// Some chunks (asking may return "missing").
    Partial,
}

/// Limits on requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes requested and not yet received, from one peer.
    pub per_peer_bytes: u64,
    /// Bytes requested and not yet received, from all peers.
    pub total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_peer_bytes: 8 * 1024 * 1024,
            total_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Plans requests.
///
/// `holdings[peer]` says what each connected peer holds; `in_flight` is
/// what is already requested (chunk → bytes reserved, and per peer);
/// `budgets[peer]`, where given, lowers `limits.per_peer_bytes` for a
/// peer measured to be slow; returns new requests per peer. `P` is the
/// peer identifier.
pub fn plan<P: Copy + Eq + std::hash::Hash + Ord>(
    wants: &[Want],
    holdings: &HashMap<P, HashMap<BundleId, Holding>>,
    (in_flight_chunks, in_flight_bytes): (&HashSet<ChunkId>, &HashMap<P, u64>),
    lacking: &HashSet<(P, ChunkId)>,
    limits: Limits,
    budgets: &HashMap<P, u64>,
) -> HashMap<P, Vec<ChunkId>> {
    let mut load: HashMap<P, u64> = in_flight_bytes.clone();
    let mut total: u64 = load.values().sum();
    let mut out: HashMap<P, Vec<ChunkId>> = HashMap::new();
    let holders_of = |bundle: &BundleId| -> Vec<(P, Holding)> {
        let mut v: Vec<(P, Holding)> = holdings
            .iter()
            .filter_map(|(p, h)| h.get(bundle).map(|k| (*p, *k)))
            .collect();
        v.sort();
        v
    };
    let mut order: Vec<&Want> = wants.iter().collect();
    order.sort_by_key(|w| {
        let holders = holders_of(&w.bundle).len();
        (
            std::cmp::Reverse(w.priority),
            w.expires_at,
            holders,
            w.bundle,
        )
    });
    for want in order {
        let holders = holders_of(&want.bundle);
        if holders.is_empty() {
            continue;
        }
        let cost = u64::from(want.chunk_size);
        for chunk in &want.missing {
            if total + cost > limits.total_bytes {
                return out;
            }
            if in_flight_chunks.contains(chunk) {
                continue;
            }
            // Least-loaded holder with room (an idle peer always has room
            // for one chunk, however large); complete holders before
            // partial; never one that said it lacks this chunk.
            let best = holders
                .iter()
                .filter(|(p, _)| !lacking.contains(&(*p, *chunk)))
                .filter(|(p, _)| {
                    let l = load.get(p).copied().unwrap_or(0);
                    let budget = budgets
                        .get(p)
                        .map_or(limits.per_peer_bytes, |b| (*b).min(limits.per_peer_bytes));
                    l == 0 || l + cost <= budget
                })
                .min_by_key(|(p, h)| {
                    (
                        *h == Holding::Partial,
                        load.get(p).copied().unwrap_or(0),
                        *p,
                    )
                });
            let Some((peer, _)) = best else {
                continue;
            };
            *load.entry(*peer).or_default() += cost;
            total += cost;
            out.entry(*peer).or_default().push(*chunk);
        }
    }
    out
}

/// Leaves `benched` peers (given up on for going silent) holding only
/// the bundles no other peer holds whole, so nothing new waits on a link
/// that stalled while a sure alternative exists, and nothing that only
/// they hold is given up.
pub fn bench<P: Copy + Eq + std::hash::Hash>(
    holdings: &mut HashMap<P, HashMap<BundleId, Holding>>,
    benched: &HashSet<P>,
) {
    let whole_elsewhere: HashSet<BundleId> = holdings
        .iter()
        .filter(|(p, _)| !benched.contains(p))
        .flat_map(|(_, h)| h.iter())
        .filter(|(_, h)| **h == Holding::Complete)
        .map(|(b, _)| *b)
        .collect();
    for p in benched {
        if let Some(h) = holdings.get_mut(p) {
            h.retain(|b, _| !whole_elsewhere.contains(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(n: u8, priority: u8, expires_at: u64, chunks: u8) -> Want {
        Want {
            bundle: BundleId([n; 32]),
            priority,
            expires_at,
            missing: (0..chunks)
                .map(|i| ChunkId([n.wrapping_mul(31).wrapping_add(i); 32]))
                .collect(),
            chunk_size: 1024,
        }
    }

    fn holds(entries: &[(u8, &[(u8, Holding)])]) -> HashMap<u8, HashMap<BundleId, Holding>> {
        entries
            .iter()
            .map(|(peer, bundles)| {
                (
                    *peer,
                    bundles
                        .iter()
                        .map(|(b, h)| (BundleId([*b; 32]), *h))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn spreads_chunks_over_holders_within_limits() {
        let wants = vec![want(1, 100, 10, 8)];
        let holdings = holds(&[
            (1, &[(1, Holding::Complete)]),
            (2, &[(1, Holding::Complete)]),
        ]);
        let limits = Limits {
            per_peer_bytes: 3 * 1024,
            total_bytes: 100 * 1024,
        };
        let p = plan(
            &wants,
            &holdings,
            (&HashSet::new(), &HashMap::new()),
            &HashSet::new(),
            limits,
            &HashMap::new(),
        );
        assert_eq!(p[&1].len(), 3);
        assert_eq!(p[&2].len(), 3);
        let all: HashSet<_> = p.values().flatten().collect();
        assert_eq!(all.len(), 6, "a chunk was asked of two peers");

        // Peer 1 measured slow: its own, smaller budget holds.
        let budgets: HashMap<u8, u64> = [(1, 1024)].into();
        let p = plan(
            &wants,
            &holdings,
            (&HashSet::new(), &HashMap::new()),
            &HashSet::new(),
            limits,
            &budgets,
        );
        assert_eq!(p[&1].len(), 1);
        assert_eq!(p[&2].len(), 3);
    }

    #[test]
    fn higher_priority_then_sooner_expiry_go_first_under_a_tight_budget() {
        let wants = vec![want(1, 10, 5, 2), want(2, 200, 50, 2), want(3, 200, 20, 2)];
        let holdings = holds(&[(
            1,
            &[
                (1, Holding::Complete),
                (2, Holding::Complete),
                (3, Holding::Complete),
            ],
        )]);
        let limits = Limits {
            per_peer_bytes: 3 * 1024,
            total_bytes: 3 * 1024,
        };
        let p = plan(
            &wants,
            &holdings,
            (&HashSet::new(), &HashMap::new()),
            &HashSet::new(),
            limits,
            &HashMap::new(),
        );
        let got = &p[&1];
        assert_eq!(got.len(), 3);
        assert_eq!(&got[..2], &wants[2].missing[..]); // priority 200, expires 20
        assert_eq!(got[2], wants[1].missing[0]); // then priority 200, expires 50
    }

    #[test]
    fn skips_chunks_in_flight_bundles_nobody_has_and_prefers_complete_holders() {
        let wants = vec![want(1, 1, 1, 3), want(9, 255, 1, 3)];
        let holdings = holds(&[
            (1, &[(1, Holding::Partial)]),
            (2, &[(1, Holding::Complete)]),
        ]);
        let busy: HashSet<ChunkId> = [wants[0].missing[0]].into();
        let p = plan(
            &wants,
            &holdings,
            (&busy, &HashMap::new()),
            &HashSet::new(),
            Limits::default(),
            &HashMap::new(),
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[&2], wants[0].missing[1..].to_vec());
        // A chunk the complete holder said it lacks goes to the partial one.
        let lacking: HashSet<(u8, ChunkId)> = [(2, wants[0].missing[1])].into();
        let p = plan(
            &wants,
            &holdings,
            (&busy, &HashMap::new()),
            &lacking,
            Limits::default(),
            &HashMap::new(),
        );
        assert_eq!(p[&1], vec![wants[0].missing[1]]);
    }

    #[test]
    fn a_benched_peer_keeps_only_what_no_one_else_holds_whole() {
        let mut holdings = holds(&[
            (1, &[(1, Holding::Complete), (2, Holding::Complete)]),
            (2, &[(1, Holding::Complete), (2, Holding::Partial)]),
            (3, &[(3, Holding::Complete)]),
        ]);
        bench(&mut holdings, &[1, 3].into());
        // Bundle 1 is whole at peer 2; bundle 2 only partly; bundle 3 is
        // held by benched peer 3 alone.
        assert_eq!(
            holdings[&1].keys().collect::<Vec<_>>(),
            [&BundleId([2; 32])]
        );
        assert_eq!(holdings[&2].len(), 2, "peers not benched keep everything");
        assert_eq!(
            holdings[&3].len(),
            1,
            "what only a benched peer holds stays"
        );
    }
}
