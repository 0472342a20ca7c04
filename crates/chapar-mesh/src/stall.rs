//! Which wanted bundles have stalled, and are due a check for a parity
//! repair (PROTOCOL section 8.7): pure bookkeeping, the caller passes the
//! clock and runs the repairs.
//!
//! A bundle is stalled when nothing of it has been in flight for
//! [`STALLED_FOR`]: no peer offers what it lacks (the holder died, a
//! super-seeder declined, the only link is down). It is due a check each
//! time it stalls with a different number of chunks missing, and never
//! while a check of it is running.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chapar_format::BundleId;

/// How long a bundle goes with nothing fetched for it before parity is
/// asked to finish it: long enough that a gap between two plans, or a
/// sync about to show a holder, does not count.
pub const STALLED_FOR: Duration = Duration::from_secs(1);

/// The stalled bundles and the repair checks made of them.
#[derive(Debug, Default)]
pub struct Stalls {
    /// Since when nothing has been in flight for each bundle.
    since: HashMap<BundleId, Instant>,
    /// How many chunks each lacked at its last check.
    checked: HashMap<BundleId, usize>,
    /// Checks (and repairs) running now.
    running: HashSet<BundleId>,
}

impl Stalls {
    /// The bundles due a check now, each marked as running. `lacking` is
    /// every wanted bundle with the number of chunks it lacks; `busy`, the
    /// bundles with chunks in flight. Bundles no longer wanted are
    /// forgotten.
    pub fn due(
        &mut self,
        lacking: &[(BundleId, usize)],
        busy: &HashSet<BundleId>,
        now: Instant,
    ) -> Vec<BundleId> {
        let mut due = Vec::new();
        for (bundle, missing) in lacking {
            if busy.contains(bundle) || self.running.contains(bundle) {
                self.since.remove(bundle);
                continue;
            }
            let since = *self.since.entry(*bundle).or_insert(now);
            if now.saturating_duration_since(since) < STALLED_FOR
                || self.checked.get(bundle) == Some(missing)
            {
                continue;
            }
            self.checked.insert(*bundle, *missing);
            self.running.insert(*bundle);
            due.push(*bundle);
        }
        let live: HashSet<BundleId> = lacking.iter().map(|(b, _)| *b).collect();
        self.checked.retain(|b, _| live.contains(b));
        self.since.retain(|b, _| live.contains(b));
        due
    }

    /// A check of `bundle` has ended, whatever it found.
    pub fn finished(&mut self, bundle: &BundleId) {
        self.running.remove(bundle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_due_once_per_stall_and_count_after_a_second_idle() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (a, b) = (BundleId([1; 32]), BundleId([2; 32]));
        let busy_b: HashSet<BundleId> = [b].into();
        let mut stalls = Stalls::default();
        assert!(stalls.due(&[(a, 5), (b, 9)], &busy_b, at(0)).is_empty());
        assert!(
            stalls.due(&[(a, 5), (b, 9)], &busy_b, at(900)).is_empty(),
            "idle, but not for long enough"
        );
        assert_eq!(stalls.due(&[(a, 5), (b, 9)], &busy_b, at(1000)), vec![a]);
        assert!(
            stalls.due(&[(a, 5)], &HashSet::new(), at(1500)).is_empty(),
            "a check is running"
        );
        stalls.finished(&a);
        assert!(stalls.due(&[(a, 5)], &HashSet::new(), at(2000)).is_empty());
        assert!(
            stalls.due(&[(a, 5)], &HashSet::new(), at(3100)).is_empty(),
            "idle long enough, but checked at this count already"
        );
        // Something arrived: busy again, then idle with fewer missing.
        let busy_a: HashSet<BundleId> = [a].into();
        assert!(stalls.due(&[(a, 4)], &busy_a, at(3200)).is_empty());
        assert!(stalls.due(&[(a, 3)], &HashSet::new(), at(3300)).is_empty());
        assert_eq!(stalls.due(&[(a, 3)], &HashSet::new(), at(4300)), vec![a]);
        stalls.finished(&a);
        // Complete, or no longer wanted: forgotten.
        assert!(stalls.due(&[], &HashSet::new(), at(5000)).is_empty());
        assert!(stalls.since.is_empty() && stalls.checked.is_empty());
    }
}
