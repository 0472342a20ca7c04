//! How much to ask of each peer at once, from how fast its answers come:
//! pure bookkeeping, the caller passes the clock.
//!
//! A fixed batch and budget cannot suit both loopback at hundreds of MB/s
//! and a satellite window shared by three relays at a third of a MB/s
//! each. There a 4 MiB batch takes twelve seconds of open link, so it
//! outlasts the window: nothing that crossed is committed, or can be
//! shared on the far side, until the next window, and an 8 MiB budget
//! ties most of a bundle to one slow peer. So each peer's rate is
//! measured while it has requests outstanding, and its batch is sized to
//! about [`BATCH_TIME`] of transfer and its budget to [`BUDGET_TIME`].

use std::time::{Duration, Instant};

/// Transfer time one batch (the unit of request and of commit) aims at.
pub const BATCH_TIME: Duration = Duration::from_millis(250);
/// Transfer time the requests outstanding at one peer aim at.
pub const BUDGET_TIME: Duration = Duration::from_secs(1);
/// Batch size before anything is measured: small, so a slow first peer
/// commits something soon; a fast one outgrows it after one answer.
pub const FIRST_BATCH: u64 = 512 * 1024;
/// Smallest budget: room for a batch in flight and one queued behind it.
pub const MIN_BUDGET: u64 = 2 * FIRST_BATCH;
/// Weight of the newest sample in the running rate.
const NEW_SAMPLE_WEIGHT: f64 = 0.5;

/// One peer's measured rate.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    bytes_per_sec: Option<f64>,
    /// Since when the peer has had requests outstanding without an
    /// answer: the start of the interval the next answer is timed over.
    busy_since: Option<Instant>,
}

impl Pace {
    /// Requests were sent while `was_idle` (none were outstanding).
    pub fn asked(&mut self, was_idle: bool, now: Instant) {
        if was_idle || self.busy_since.is_none() {
            self.busy_since = Some(now);
        }
    }

    /// A batch's answers, `received` bytes of chunks, are in; `still_busy`
    /// if requests remain outstanding.
    pub fn answered(&mut self, received: u64, still_busy: bool, now: Instant) {
        if let Some(since) = self.busy_since {
            let took = now.saturating_duration_since(since).as_secs_f64();
            // A batch of refusals, or one timed over nothing, says little
            // of the link.
            if received > 0 && took > 0.0 {
                let sample = received as f64 / took;
                self.bytes_per_sec = Some(match self.bytes_per_sec {
                    Some(r) => r + NEW_SAMPLE_WEIGHT * (sample - r),
                    None => sample,
                });
            }
        }
        self.busy_since = still_busy.then_some(now);
    }

    /// Bytes measured per second, once anything has been.
    pub fn rate(&self) -> Option<f64> {
        self.bytes_per_sec
    }

    /// Bytes one batch should ask for, at most `max`.
    pub fn batch_bytes(&self, max: u64) -> u64 {
        match self.bytes_per_sec {
            None => FIRST_BATCH.min(max),
            Some(r) => ((r * BATCH_TIME.as_secs_f64()) as u64).clamp(1, max),
        }
    }

    /// Bytes that may be outstanding at this peer, at most `max`.
    pub fn budget(&self, max: u64) -> u64 {
        let wanted = match self.bytes_per_sec {
            None => MIN_BUDGET,
            Some(r) => ((r * BUDGET_TIME.as_secs_f64()) as u64).max(MIN_BUDGET),
        };
        wanted.min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_fast_peer_gets_big_batches_and_a_slow_one_small() {
        let t0 = Instant::now();
        let mut fast = Pace::default();
        assert_eq!(fast.batch_bytes(4 * MIB), FIRST_BATCH);
        assert_eq!(fast.budget(8 * MIB), MIN_BUDGET);
        fast.asked(true, t0);
        fast.answered(FIRST_BATCH, false, t0 + Duration::from_millis(2));
        assert_eq!(fast.batch_bytes(4 * MIB), 4 * MIB, "capped");
        assert_eq!(fast.budget(8 * MIB), 8 * MIB, "capped");

        // 330 kB/s: a third of a 1 MB/s window.
        let mut slow = Pace::default();
        slow.asked(true, t0);
        slow.answered(330_000, true, t0 + Duration::from_secs(1));
        assert_eq!(slow.batch_bytes(4 * MIB), 82_500);
        assert_eq!(slow.budget(8 * MIB), MIN_BUDGET);
        let rate = slow.rate().expect("measured");
        assert!((rate - 330_000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn each_answer_is_timed_from_the_one_before_while_busy() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        pace.asked(true, t0);
        // Asking more while busy does not restart the clock.
        pace.asked(false, t0 + Duration::from_millis(500));
        pace.answered(1_000_000, true, t0 + Duration::from_secs(1));
        pace.answered(2_000_000, false, t0 + Duration::from_secs(2));
        // Samples 1 MB/s then 2 MB/s, weighted half and half.
        assert_eq!(pace.rate(), Some(1_500_000.0));
        // Idle time (a closed window) is not counted against the link.
        pace.asked(true, t0 + Duration::from_secs(60));
        pace.answered(0, false, t0 + Duration::from_secs(61));
        assert_eq!(pace.rate(), Some(1_500_000.0), "refusals are no sample");
    }
}
