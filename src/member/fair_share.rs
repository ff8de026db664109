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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::rate::ByteRate;
use crate::sync::Mutex;

/// How much more than an even share one connection may send, once paced.
const HEADROOM: f64 = 1.25;
/// A connection is paced once it has been sending this much more than an even share: below
/// the pace itself, so that a paced connection stays paced rather than bursting every other
/// part.
const PACED_ABOVE: f64 = 1.1;
/// Rates are measured over this span.
const WINDOW: Duration = Duration::from_secs(1);

/// What one connection has sent, for [`FairShare::begin`].
pub fn connection_rate() -> ByteRate {
    ByteRate::new(WINDOW)
}

fn rate(sent: &ByteRate, now: Instant) -> Option<f64> {
    sent.rate(WINDOW, WINDOW / 2, now)
}

pub struct FairShare {
    sending: AtomicUsize,
    sent: Mutex<ByteRate>,
}

impl Default for FairShare {
    fn default() -> FairShare {
        FairShare {
            sending: AtomicUsize::new(0),
            sent: Mutex::new(ByteRate::new(WINDOW)),
        }
    }
}

impl FairShare {
    /// A connection that has sent `own` (its [`connection_rate`]) starts a part; returns the
    /// rate to pace it at, `None` for no cap. Call [`FairShare::end`] after.
    pub fn begin(&self, own: &ByteRate, now: Instant) -> Option<u64> {
        let sending = self.sending.fetch_add(1, Ordering::AcqRel) + 1;
        if sending < 2 {
            return None;
        }
        let even = rate(&self.sent.lock(), now)? / sending as f64;
        (rate(own, now)? > PACED_ABOVE * even).then_some((HEADROOM * even) as u64)
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

    /// A connection that has sent `bytes_per_second` over the second before `now`.
    fn sent_at(bytes_per_second: f64, now: Instant) -> ByteRate {
        let mut sent = connection_rate();
        sent.note(0, now - WINDOW);
        sent.note(bytes_per_second as u64, now);
        sent
    }

    #[test]
    fn only_a_connection_above_its_share_is_paced_and_at_that_share() {
        let share = FairShare::default();
        // Later than any sample `sent_at` puts a second before it.
        let start = Instant::now() + WINDOW;
        let unmeasured = connection_rate();
        assert_eq!(
            share.begin(&sent_at(1e9, start), start),
            None,
            "one connection"
        );
        // 10 MB/s for a second, in parts of 100 kB.
        for i in 1..=100 {
            share.end(100_000, start + Duration::from_millis(10 * i));
            if i < 100 {
                share.begin(&unmeasured, start);
            }
        }
        let now = start + Duration::from_secs(1);
        assert_eq!(
            share.begin(&sent_at(9e6, now), now),
            None,
            "still one at a time"
        );
        // Two sending: an even share is 5 MB/s; paced above 5.5, at 6.25.
        assert_eq!(
            share.begin(&sent_at(5.4e6, now), now),
            None,
            "within its share"
        );
        share.end(0, now);
        let pace = share
            .begin(&sent_at(6e6, now), now)
            .expect("above its share: paced");
        let expected = 10e6 * HEADROOM / 2.0;
        assert!((pace as f64 - expected).abs() / expected < 0.05, "{pace}");
        assert_eq!(share.begin(&unmeasured, now), None, "not measured yet");
    }
}
