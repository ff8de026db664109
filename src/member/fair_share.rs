//! A spreading seeder's uplink shared evenly among the connections it is sending to.
//!
//! Why: a seeder that had the file from the start is the one source of the parts it has not
//! yet sent, and the parts each member receives from it are the ones that member must relay
//! to all the others. TCP does not share an uplink evenly among connections that started at
//! different moments: in the testbed's scenario 2 the two members that connected first got
//! 15-16 MB each from the seeder and the others 7-11, so those two held twice their share of
//! the parts everyone needed, and their uplinks became the swarm's bottleneck. So each
//! connection that sends a part is paced (in the kernel, `SO_MAX_PACING_RATE`) at a little
//! more than an even share of what the seeder has been sending, which leaves a slower
//! connection's unused share to the others, while no connection takes much more than its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// How much more than an even share one connection may send: room for the rate to grow and
/// for the connections that cannot use their share.
const HEADROOM: f64 = 1.25;
/// The seeder's rate is measured over this span.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct FairShare {
    sending: AtomicUsize,
    /// (when, bytes sent so far), oldest first, spanning the window.
    sent: Mutex<VecDeque<(Instant, u64)>>,
}

impl FairShare {
    /// A connection starts sending a part; returns the rate to pace it at, `None` for no cap
    /// (one connection, or the rate not measured yet). Call [`FairShare::end`] after it.
    pub fn begin(&self, now: Instant) -> Option<u64> {
        let sending = self.sending.fetch_add(1, Ordering::AcqRel) + 1;
        if sending < 2 {
            return None;
        }
        let rate = self.rate(now)?;
        Some((rate * HEADROOM / sending as f64) as u64)
    }

    /// The part is sent (or failed): `bytes` went out.
    pub fn end(&self, bytes: u64, now: Instant) {
        self.sending.fetch_sub(1, Ordering::AcqRel);
        let mut sent = self.sent.lock();
        let total = sent
            .back()
            .map_or(0, |&(_, total)| total)
            .saturating_add(bytes);
        sent.push_back((now, total));
        while sent.len() > 2 && now.saturating_duration_since(sent[1].0) > WINDOW {
            sent.pop_front();
        }
    }

    /// Bytes per second over the window; `None` until it spans most of one.
    fn rate(&self, now: Instant) -> Option<f64> {
        let sent = self.sent.lock();
        let (first, last) = (sent.front()?, sent.back()?);
        let span = now.saturating_duration_since(first.0);
        (span >= WINDOW / 2).then(|| (last.1 - first.1) as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_is_not_paced_and_several_share_the_measured_rate() {
        let share = FairShare::default();
        let start = Instant::now();
        assert_eq!(share.begin(start), None, "one connection");
        // 10 MB/s for a second, in parts of 100 kB.
        for i in 1..=100 {
            share.end(100_000, start + Duration::from_millis(10 * i));
            if i < 100 {
                share.begin(start);
            }
        }
        let now = start + Duration::from_secs(1);
        assert_eq!(share.begin(now), None, "still one at a time");
        let pace = share.begin(now).expect("two sending: paced");
        let expected = 10e6 * HEADROOM / 2.0;
        assert!((pace as f64 - expected).abs() / expected < 0.05, "{pace}");
        let third = share.begin(now).unwrap();
        assert!(
            third < pace,
            "three share it more thinly: {third} against {pace}"
        );
    }
}
