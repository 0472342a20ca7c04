//! Per-peer token buckets: pure logic, the caller passes the clock.
//!
//! Used to cap how many new descriptors one peer may hand us (a flood of
//! tiny, valid bundles would otherwise fill the store's books) and how
//! many streams one peer may open per second.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens a quiet peer has saved up.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One bucket per key, at most `max_keys` of them (buckets that have
/// refilled completely are dropped first; they carry no state).
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Eq + Hash + Copy> RateLimiter<K> {
    /// A limiter allowing `rate` to each key.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` if it has one.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        self.allow_n(key, 1, now)
    }

    /// Takes `n` tokens for `key` if it has them all.
    pub fn allow_n(&mut self, key: K, n: u32, now: Instant) -> bool {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.forget_full(now);
            if self.buckets.len() >= self.max_keys {
                // Every bucket is in use: a new key waits rather than
                // evicting someone's debt (which would reset their limit).
                return false;
            }
        }
        let rate = self.rate;
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            updated: now,
        });
        refill(bucket, rate, now);
        if bucket.tokens >= f64::from(n) {
            bucket.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }

    fn forget_full(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            refill(b, rate, now);
            b.tokens < f64::from(rate.burst)
        });
    }
}

fn refill(bucket: &mut Bucket, rate: Rate, now: Instant) {
    let elapsed = now
        .checked_duration_since(bucket.updated)
        .unwrap_or(Duration::ZERO);
    bucket.tokens =
        (bucket.tokens + elapsed.as_secs_f64() * rate.per_second).min(f64::from(rate.burst));
    bucket.updated = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        per_second: 1.0,
    };

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RATE, 16);
        assert!((0..3).all(|_| limiter.allow(1, t0)));
        assert!(!limiter.allow(1, t0), "burst spent");
        assert!(limiter.allow(2, t0), "another peer has its own bucket");
        assert!(!limiter.allow(1, t0 + Duration::from_millis(500)));
        assert!(limiter.allow(1, t0 + Duration::from_millis(1600)));
        assert!(!limiter.allow(1, t0 + Duration::from_millis(1700)));
        // Saving up is capped at the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| limiter.allow(1, later)));
        assert!(!limiter.allow(1, later));
    }

    #[test]
    fn bounded_keys_and_full_buckets_are_forgotten() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RATE, 2);
        assert!(limiter.allow(1, t0));
        assert!(limiter.allow(2, t0));
        assert!(!limiter.allow(3, t0), "no room while both owe tokens");
        assert!(
            limiter.allow(3, t0 + Duration::from_secs(5)),
            "refilled buckets make room"
        );
        assert!(limiter.buckets.len() <= 2);
    }

    #[test]
    fn asking_for_more_than_held_takes_nothing() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RATE, 4);
        assert!(!limiter.allow_n(1, 4, t0));
        assert!(limiter.allow_n(1, 3, t0));
    }
}
