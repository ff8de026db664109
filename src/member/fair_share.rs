//! A spreading seeder's uplink shared evenly among the connections it is sending to.
//!
//! Why: a seeder that had the file from the start is the one source of the parts it has not
//! yet sent, and the parts each member receives from it are the ones that member must relay
//! to all the others. TCP does not share an uplink evenly among connections that started at
//! different moments: in the testbed's scenario 2 the seeder sent 5-28 MB to the fifteen
//! members, so the few with the most held the parts everyone needed, and their uplinks became
//! the swarm's bottleneck. So a connection that has been sending more than a little over an
//! even share of what the seeder sends is paced (in the kernel, `SO_MAX_PACING_RATE`) at that
//! share. The others are not paced at all: connections that grow together (a fresh start on a
//! long round trip) grow as fast as TCP lets them, and a slower connection's unused share goes
//! to the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// How much more than an even share one connection may send, once paced.
const HEADROOM: f64 = 1.25;
/// A connection is paced once it has been sending this much more than an even share: below
/// the pace itself, so that a paced connection stays paced rather than bursting every other
/// part.
const PACED_ABOVE: f64 = 1.1;
/// Rates are measured over this span.
const WINDOW: Duration = Duration::from_secs(1);

/// Bytes sent over the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct SendRate {
    /// (when, bytes sent so far), oldest first, spanning the window.
    sent: VecDeque<(Instant, u64)>,
}

impl SendRate {
    pub fn note(&mut self, bytes: u64, now: Instant) {
        let total = self
            .sent
            .back()
            .map_or(0, |&(_, t)| t)
            .saturating_add(bytes);
        self.sent.push_back((now, total));
        while self.sent.len() > 2 && now.saturating_duration_since(self.sent[1].0) > WINDOW {
            self.sent.pop_front();
        }
    }

    /// Bytes per second over the window; `None` until it spans half of one.
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let (first, last) = (self.sent.front()?, self.sent.back()?);
        let span = now.saturating_duration_since(first.0);
        (span >= WINDOW / 2).then(|| (last.1 - first.1) as f64 / span.as_secs_f64())
    }
}

#[derive(Default)]
pub struct FairShare {
    sending: AtomicUsize,
    sent: Mutex<SendRate>,
}

impl FairShare {
    /// A connection that has been sending at `own` bytes per second (its [`SendRate`]) starts
    /// a part; returns the rate to pace it at, `None` for no cap. Call [`FairShare::end`] after.
    pub fn begin(&self, own: Option<f64>, now: Instant) -> Option<u64> {
        let sending = self.sending.fetch_add(1, Ordering::AcqRel) + 1;
        if sending < 2 {
            return None;
        }
        let even = self.sent.lock().rate(now)? / sending as f64;
        (own? > PACED_ABOVE * even).then_some((HEADROOM * even) as u64)
    }

    /// The part is sent (or failed): `bytes` went out.
    pub fn end(&self, bytes: u64, now: Instant) {
        self.sending.fetch_sub(1, Ordering::AcqRel);
        self.sent.lock().note(bytes, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_above_its_share_is_paced_and_at_that_share() {
        let share = FairShare::default();
        let start = Instant::now();
        assert_eq!(share.begin(Some(1e9), start), None, "one connection");
        // 10 MB/s for a second, in parts of 100 kB.
        for i in 1..=100 {
            share.end(100_000, start + Duration::from_millis(10 * i));
            if i < 100 {
                share.begin(None, start);
            }
        }
        let now = start + Duration::from_secs(1);
        assert_eq!(share.begin(Some(9e6), now), None, "still one at a time");
        // Two sending: an even share is 5 MB/s; paced above 5.5, at 6.25.
        assert_eq!(share.begin(Some(5.4e6), now), None, "within its share");
        share.end(0, now);
        let pace = share.begin(Some(6e6), now).expect("above its share: paced");
        let expected = 10e6 * HEADROOM / 2.0;
        assert!((pace as f64 - expected).abs() / expected < 0.05, "{pace}");
        assert_eq!(share.begin(None, now), None, "not measured yet");
    }

    #[test]
    fn the_rate_is_measured_over_the_last_second() {
        let start = Instant::now();
        let mut rate = SendRate::default();
        assert_eq!(rate.rate(start), None);
        for i in 1..=300 {
            rate.note(
                if i <= 100 { 200_000 } else { 50_000 },
                start + Duration::from_millis(10 * i),
            );
        }
        let now = start + Duration::from_secs(3);
        let r = rate.rate(now).unwrap();
        assert!((r - 5e6).abs() / 5e6 < 0.05, "{r}");
        assert!(rate.sent.len() < 110, "the window is bounded");
    }
}
