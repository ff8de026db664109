//! Bytes per second over a recent span: a running total sampled at each part, measured back
//! from now.
//!
//! Why one type: a connection's requests follow the rate it receives at
//! ([`super::requests::Pipeline`]) and a spreading seeder's even shares the rates it sends at
//! ([`super::fair_share`]); both are the same estimate over different spans.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct ByteRate {
    /// (when, bytes so far), oldest first: each one kept while the one after it is younger
    /// than `keep`, so that a rate over `keep` always finds its start.
    samples: VecDeque<(Instant, u64)>,
    keep: Duration,
}

impl ByteRate {
    /// Rates over spans up to `keep` can be asked for.
    pub fn new(keep: Duration) -> ByteRate {
        ByteRate {
            samples: VecDeque::new(),
            keep,
        }
    }

    pub fn note(&mut self, bytes: u64, now: Instant) {
        let total = self.total().saturating_add(bytes);
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now.saturating_duration_since(self.samples[1].0) > self.keep
        {
            self.samples.pop_front();
        }
    }

    /// Bytes noted so far.
    pub fn total(&self) -> u64 {
        self.samples.back().map_or(0, |&(_, total)| total)
    }

    /// Samples held (bounded by `keep`).
    #[cfg(test)]
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Bytes per second over the last `window` (from the newest sample at or before its start,
    /// or the oldest there is); `None` while that spans less than `at_least`.
    pub fn rate(&self, window: Duration, at_least: Duration, now: Instant) -> Option<f64> {
        let since = now.checked_sub(window)?;
        let start = self
            .samples
            .iter()
            .rev()
            .find(|(when, _)| *when <= since)
            .or_else(|| self.samples.front())?;
        let span = now.saturating_duration_since(start.0);
        (span >= at_least).then(|| (self.total() - start.1) as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_the_window_and_the_samples_are_bounded() {
        let second = Duration::from_secs(1);
        let start = Instant::now();
        let mut rate = ByteRate::new(second);
        assert_eq!(rate.rate(second, second / 2, start + second), None);
        for i in 1..=300 {
            rate.note(
                if i <= 100 { 200_000 } else { 50_000 },
                start + Duration::from_millis(10 * i),
            );
        }
        let now = start + Duration::from_secs(3);
        let r = rate.rate(second, second / 2, now).unwrap();
        assert!((r - 5e6).abs() / 5e6 < 0.05, "{r}");
        assert!(rate.samples() < 110, "the samples are bounded");
        assert_eq!(rate.total(), 100 * 200_000 + 200 * 50_000);
        // Too short a span to say.
        let mut fresh = ByteRate::new(second);
        fresh.note(1000, now);
        assert_eq!(fresh.rate(second, second / 2, now + second / 4), None);
    }
}
