//! Which bundles to evict when the quota is full: pure logic, no I/O.
//!
//! Order (documented in `docs/STORE.md`): expired bundles first (earliest
//! expiry first), then bundles some of whose recipients have receipted,
//! then lowest priority, then oldest. Bundles sealed here and bundles
//! being received for this node's own keys are never evicted.

use chapar_format::BundleId;

use crate::record::Role;

/// What eviction needs to know of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The bundle.
    pub id: BundleId,
    /// Its role here.
    pub role: Role,
    /// Unix expiry.
    pub expires_at: u64,
    /// Some (not all) recipients have receipted.
    pub partly_receipted: bool,
    /// Replication priority (higher is kept longer).
    pub priority: u8,
    /// When this store first took it (unix seconds).
    pub added_at: u64,
    /// Bytes it would free.
    pub bytes: u64,
}

fn sort_key(c: &Candidate, now: u64) -> (u8, u64, u8, u8, u64) {
    let expired = c.expires_at <= now;
    (
        u8::from(!expired),
        if expired { c.expires_at } else { 0 },
        u8::from(!c.partly_receipted),
        c.priority,
        c.added_at,
    )
}

/// Evictable bundles, first to go first.
pub fn eviction_order(candidates: &[Candidate], now: u64) -> Vec<&Candidate> {
    let mut order: Vec<&Candidate> = candidates.iter().filter(|c| c.role.evictable()).collect();
    order.sort_by_key(|c| (sort_key(c, now), c.id));
    order
}

/// The shortest prefix of the eviction order that frees `needed` bytes,
/// never touching `keep`; `None` if even evicting everything allowed is
/// not enough (then nothing at all is evicted).
pub fn plan_eviction(
    candidates: &[Candidate],
    needed: u64,
    now: u64,
    keep: &[BundleId],
) -> Option<Vec<BundleId>> {
    let mut freed = 0u64;
    let mut plan = Vec::new();
    for c in eviction_order(candidates, now) {
        if freed >= needed {
            break;
        }
        if keep.contains(&c.id) || c.bytes == 0 {
            continue;
        }
        freed += c.bytes;
        plan.push(c.id);
    }
    (freed >= needed).then_some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(
        n: u8,
        role: Role,
        expires_at: u64,
        partly: bool,
        priority: u8,
        added_at: u64,
    ) -> Candidate {
        Candidate {
            id: BundleId([n; 32]),
            role,
            expires_at,
            partly_receipted: partly,
            priority,
            added_at,
            bytes: 100,
        }
    }

    #[test]
    fn order_is_expired_then_receipted_then_priority_then_age() {
        let now = 1000;
        let all = vec![
            c(1, Role::Relaying, 5000, false, 10, 50),
            c(2, Role::Relaying, 900, false, 200, 10), // expired
            c(3, Role::Relaying, 5000, true, 200, 10), // partly receipted
            c(4, Role::Relaying, 5000, false, 10, 40), // same priority, older than 1
            c(5, Role::Sealed, 1, false, 0, 0),        // own: never
            c(6, Role::Receiving, 1, false, 0, 0),     // incoming for us: never
            c(7, Role::Relaying, 800, false, 255, 99), // expired earlier than 2
            c(8, Role::Relaying, 5000, false, 9, 99),  // lowest priority
        ];
        let order: Vec<u8> = eviction_order(&all, now)
            .iter()
            .map(|c| c.id.0[0])
            .collect();
        assert_eq!(order, vec![7, 2, 3, 8, 4, 1]);
    }

    #[test]
    fn plan_frees_enough_or_nothing() {
        let all = vec![
            c(1, Role::Relaying, 5000, false, 10, 50),
            c(2, Role::Relaying, 5000, false, 20, 50),
            c(3, Role::Sealed, 0, false, 0, 0),
        ];
        assert_eq!(
            plan_eviction(&all, 150, 0, &[]),
            Some(vec![BundleId([1; 32]), BundleId([2; 32])])
        );
        assert_eq!(
            plan_eviction(&all, 50, 0, &[BundleId([1; 32])]),
            Some(vec![BundleId([2; 32])])
        );
        assert_eq!(plan_eviction(&all, 201, 0, &[]), None);
        assert_eq!(plan_eviction(&all, 0, 0, &[]), Some(vec![]));
    }
}
