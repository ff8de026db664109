//! Rate caps (`--max-upload-rate`, `--max-download-rate`): one token bucket per direction,
//! shared by every connection of the process, so the cap holds however many peers there are.
//!
//! A connection asks the bucket before it sends (or reads) each chunk of part data. The bucket
//! hands out reservations in order: a chunk that finds too few tokens takes them on credit and
//! waits until the bucket has refilled to cover it. So the bytes let through in any span of
//! time `t` are at most `burst + rate × t`, whatever the number of threads asking, and the
//! waiting is itself the rate limit (the one place in the member where a thread sleeps for a
//! computed time rather than waiting on a condition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// The most bytes asked for in one go: parts are sent and read in chunks of this size under a
/// cap, so that connections take turns at a fine grain.
pub const CHUNK: usize = 64 << 10;

/// A token bucket refilled at `rate` bytes per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
    /// Requests answered, and those that had to wait: how often the cap is what limits.
    asked: AtomicU64,
    waited: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// May be negative: tokens reserved ahead of the refill.
    tokens: f64,
    refilled: Instant,
}

/// How often a bucket has made callers wait, as counters to take differences of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub asked: u64,
    pub waited: u64,
}

impl TokenBucket {
    /// A bucket for `rate` bytes per second, starting full. Its burst is a tenth of a second of
    /// the rate, and at least one [`CHUNK`].
    pub fn new(rate: u64) -> TokenBucket {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(CHUNK as f64);
        TokenBucket::with_burst(rate, burst, Instant::now())
    }

    fn with_burst(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                refilled: now,
            }),
            asked: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Reserves `bytes` (at most the burst: larger amounts are asked for in pieces) at `now`;
    /// returns how long to wait before using them.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        let bytes = (bytes as f64).min(self.burst);
        let mut state = self.state.lock();
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.refilled = state.refilled.max(now);
        state.tokens -= bytes;
        self.asked.fetch_add(1, Ordering::Relaxed);
        if state.tokens >= 0.0 {
            return Duration::ZERO;
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        Duration::from_secs_f64(-state.tokens / self.rate)
    }

    /// Waits until `bytes` may pass. `bytes` should be at most [`CHUNK`].
    pub fn take(&self, bytes: usize) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    pub fn pressure(&self) -> Pressure {
        Pressure {
            asked: self.asked.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
        }
    }
}

impl Pressure {
    /// Since `earlier`, did most requests have to wait? Then the cap is what limits the rate.
    pub fn limiting_since(self, earlier: Pressure) -> bool {
        let asked = self.asked.saturating_sub(earlier.asked);
        let waited = self.waited.saturating_sub(earlier.waited);
        asked > 0 && waited * 2 >= asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the pattern of requests, the bytes usable by any moment `t` after the start
        /// are at most the burst plus `rate × t`.
        #[test]
        fn no_burst_exceeds_its_size(
            rate in 1_000u32..10_000_000,
            burst in 1_000u32..1_000_000,
            asks in proptest::collection::vec((1usize..200_000, 0u64..50_000), 1..200),
        ) {
            let start = Instant::now();
            let bucket = TokenBucket::with_burst(f64::from(rate), f64::from(burst), start);
            let mut now = start;
            // (when the bytes may be used, how many)
            let mut granted: Vec<(f64, f64)> = Vec::new();
            for (bytes, gap_us) in asks {
                now += Duration::from_micros(gap_us);
                let mut left = bytes;
                while left > 0 {
                    let piece = left.min(burst as usize);
                    let wait = bucket.reserve(piece, now);
                    let at = (now + wait).duration_since(start).as_secs_f64();
                    granted.push((at, piece as f64));
                    left -= piece;
                }
            }
            granted.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut total = 0.0;
            for (at, bytes) in granted {
                total += bytes;
                // A microsecond of slack for the float rounding of the waits.
                let allowed = f64::from(burst) + f64::from(rate) * (at + 1e-6);
                prop_assert!(total <= allowed + 1.0, "{total} bytes by {at} s, allowed {allowed}");
            }
        }
    }

    #[test]
    fn a_steady_stream_gets_the_rate_and_reports_pressure() {
        let start = Instant::now();
        let bucket = TokenBucket::with_burst(1_000_000.0, 100_000.0, start);
        let before = bucket.pressure();
        // Ask for 64 KiB chunks as fast as the bucket allows, for ten simulated seconds.
        let mut now = start;
        let mut sent = 0usize;
        while now < start + Duration::from_secs(10) {
            now += bucket.reserve(CHUNK, now);
            sent += CHUNK;
        }
        let rate = sent as f64 / 10.0;
        assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.02, "{rate}");
        assert!(bucket.pressure().limiting_since(before));
        // A trickle well below the rate never waits.
        let calm = bucket.pressure();
        for _ in 0..10 {
            now += Duration::from_secs(1);
            assert_eq!(bucket.reserve(1000, now), Duration::ZERO);
        }
        assert!(!bucket.pressure().limiting_since(calm));
    }
}
