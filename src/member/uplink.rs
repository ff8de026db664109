//! While a member is behind its peers, its uploads stay a little under its uplink.
//!
//! Why: the acknowledgements of what a member downloads leave by its uplink, behind whatever it
//! uploads. A member whose uploads fill a slow uplink delays its own acknowledgements, and the
//! peers sending to it slow down: in the testbed's scenario 3 (uplinks of 20-100 Mbit/s) the
//! uplink queues of the 20-47 Mbit/s members held 27-43 ms of data at the median sample, and
//! those members finished last, 1.4 × T_min. Capped at 90 % of their uplinks they download at
//! full rate. But a cap costs its tenth of the uplink where the uplinks are the swarm's
//! bottleneck and every download waits on what others can send (scenario 2), so it is on only
//! where it pays: while this member holds fewer parts than the median peer still downloading,
//! by more than a few percent of the file ([`Lag`]). The member whose uploads hold its downloads
//! back falls behind; members that all wait on the same supply stay together and are never
//! capped. (A cap that follows the queueing delay of the connections we upload on instead, as
//! LEDBAT does, mistakes the receivers' download queues for ours: see docs/BENCHMARKS.md.)
//!
//! The capacity is measured, not told: the rate in the second half of a second during which
//! some part was being sent all the time (the first half fills the queues; a second with gaps
//! says only that peers asked for less), the second highest of the last five such seconds once
//! three are measured (the first busy seconds at a long round trip run below the uplink). While
//! the cap is on, every fourth second is capped a quarter above the estimate instead, so that
//! the estimate can follow an uplink that is faster than it says.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::Mutex;

const WINDOW: Duration = Duration::from_secs(1);
/// Of the estimated capacity, what uploads may use while the cap is on.
const SHARE: f64 = 0.9;
/// One window in this many is capped higher, to measure.
const PROBE_EVERY: u64 = 4;
const PROBE_SHARE: f64 = 1.25;
/// A window measures the capacity when some part was being sent for this much of its second half.
const BUSY: f64 = 0.95;
/// Measured windows the estimate is the second highest of: a part counts whole in the window
/// it ends in, so one window's rate is rough, and a busy window's is below the uplink's
/// while the connections' congestion windows still grow.
const MEASURES: usize = 5;
/// Measured windows before any cap.
const MIN_MEASURES: usize = 3;

/// How far behind its peers a member is, as parts: ours against theirs.
pub struct Lag {
    /// Parts the member holds.
    pub ours: u32,
    /// Parts each connected peer holds that is still downloading.
    pub theirs: Vec<u32>,
    pub parts: u32,
}

impl Lag {
    /// Behind by more than this fraction of the file: the cap goes on.
    const BEHIND: f64 = 0.03;

    /// Whether we hold fewer parts than the median of the peers still downloading, by more
    /// than [`Lag::BEHIND`] of the file.
    pub fn is_behind(mut self) -> bool {
        self.theirs.retain(|&count| count < self.parts);
        if self.theirs.is_empty() {
            return false;
        }
        self.theirs.sort_unstable();
        let median = self.theirs[self.theirs.len() / 2];
        f64::from(median.saturating_sub(self.ours)) > Lag::BEHIND * f64::from(self.parts)
    }
}

#[derive(Default)]
pub struct UplinkGovernor {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Windows since the first upload, and when the current one started.
    window: u64,
    started: Option<Instant>,
    /// Bytes sent, and time with a part being sent, in the current window's second half.
    late_bytes: u64,
    late_busy: Duration,
    /// Parts being sent now, and since when one has been.
    sending: usize,
    busy_since: Option<Instant>,
    /// The measured windows' rates, oldest first, bytes per second, and the estimate taken
    /// from them (kept, since every part asks for it).
    rates: VecDeque<f64>,
    capacity: Option<f64>,
    /// Whether we are behind, and the window that was last checked in.
    behind: bool,
    checked: Option<u64>,
}

impl Inner {
    fn half(&self) -> Option<Instant> {
        Some(self.started? + WINDOW / 2)
    }

    /// Counts busy time up to `now` within the second half.
    fn account_busy(&mut self, now: Instant) {
        if let (Some(since), Some(half)) = (self.busy_since, self.half()) {
            let from = since.max(half);
            self.late_busy += now.saturating_duration_since(from);
            self.busy_since = Some(now);
        }
    }

    /// Ends the window once it is over, measuring the capacity from it if it was busy and not
    /// held under the estimate.
    fn roll(&mut self, now: Instant) {
        let Some(started) = self.started else {
            return;
        };
        let elapsed = now.saturating_duration_since(started);
        if elapsed < WINDOW {
            return;
        }
        self.account_busy(now);
        let late = elapsed - WINDOW / 2;
        let capped = self.behind && !self.probing();
        // A window that ran long (no part started or ended for a while) was not busy.
        if !capped && elapsed < 2 * WINDOW && self.late_busy >= late.mul_f64(BUSY) {
            if self.rates.len() == MEASURES {
                self.rates.pop_front();
            }
            self.rates
                .push_back(self.late_bytes as f64 / late.as_secs_f64());
            self.capacity = estimate(&self.rates);
        }
        self.window += 1;
        self.started = Some(now);
        self.late_bytes = 0;
        self.late_busy = Duration::ZERO;
    }

    fn probing(&self) -> bool {
        self.capacity.is_none() || self.window.is_multiple_of(PROBE_EVERY)
    }
}

/// The second highest of the measured rates, once there are enough of them.
fn estimate(rates: &VecDeque<f64>) -> Option<f64> {
    if rates.len() < MIN_MEASURES {
        return None;
    }
    let mut sorted: Vec<f64> = rates.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() - 2).copied()
}

impl UplinkGovernor {
    /// A part starts going out on one connection; returns the rate that connection may send at,
    /// bytes per second (`None`: no cap), its share of what all uploads together may use.
    /// `behind` tells whether we are behind our peers (see [`Lag`]); it is asked once a window,
    /// without the governor's lock held. Call [`UplinkGovernor::end`] after.
    pub fn begin(&self, now: Instant, behind: impl FnOnce() -> bool) -> Option<u64> {
        let check = {
            let mut inner = self.inner.lock();
            inner.roll(now);
            inner.checked != Some(inner.window)
        };
        let behind = check.then(behind);
        let mut inner = self.inner.lock();
        if let Some(behind) = behind {
            if behind != inner.behind {
                log::info!(
                    "uplink: {}; capacity estimate {:.1} Mbit/s",
                    if behind {
                        "behind the peers, uploads capped"
                    } else {
                        "caught up, uploads not capped"
                    },
                    inner.capacity.unwrap_or(0.0) * 8e-6
                );
            }
            inner.behind = behind;
            inner.checked = Some(inner.window);
        }
        inner.started.get_or_insert(now);
        inner.sending += 1;
        inner.busy_since.get_or_insert(now);
        if !inner.behind {
            return None;
        }
        let share = if inner.probing() { PROBE_SHARE } else { SHARE };
        let sending = inner.sending as f64;
        inner.capacity.map(|c| (c * share / sending) as u64)
    }

    /// The part is sent (or failed): `bytes` went out.
    pub fn end(&self, bytes: u64, now: Instant) {
        let mut inner = self.inner.lock();
        inner.roll(now);
        inner.account_busy(now);
        if inner.half().is_some_and(|half| now >= half) {
            inner.late_bytes = inner.late_bytes.saturating_add(bytes);
        }
        inner.sending = inner.sending.saturating_sub(1);
        if inner.sending == 0 {
            inner.busy_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One connection sends parts of `part` bytes back to back, each taking 10 ms, from `from`
    /// for `seconds`; returns the time after the last and the last part's cap.
    fn send_for(
        governor: &UplinkGovernor,
        from: Instant,
        seconds: u64,
        part: u64,
        behind: bool,
    ) -> (Instant, Option<u64>) {
        let mut now = from;
        let mut cap = None;
        while now < from + Duration::from_secs(seconds) {
            cap = governor.begin(now, || behind);
            now += 10 * MS;
            governor.end(part, now);
        }
        (now, cap)
    }

    #[test]
    fn no_cap_while_the_member_keeps_up_with_its_peers() {
        let governor = UplinkGovernor::default();
        let (_, cap) = send_for(&governor, Instant::now(), 8, 10_000, false);
        assert_eq!(cap, None);
    }

    #[test]
    fn behind_its_peers_a_member_sends_at_most_nine_tenths_of_what_its_busy_seconds_measured() {
        let governor = UplinkGovernor::default();
        // 10,000 bytes every 10 ms: 1 MB/s.
        let (now, _) = send_for(&governor, Instant::now(), 6, 10_000, false);
        let mut caps = Vec::new();
        let mut now = now;
        for _ in 0..8 {
            let (later, cap) = send_for(&governor, now, 1, 10_000, true);
            caps.push(cap.expect("capped while behind"));
            now = later;
        }
        let near = |cap: u64, want: f64| (cap as f64 - want).abs() < want * 0.03;
        assert!(
            caps.iter().all(|&c| near(c, 0.9e6) || near(c, 1.25e6)),
            "{caps:?}"
        );
        let probes = caps.iter().filter(|&&c| near(c, 1.25e6)).count();
        assert_eq!(probes, 2, "one second in four probes: {caps:?}");
    }

    #[test]
    fn the_estimate_is_not_pulled_up_by_one_burst_nor_measured_from_idle_seconds() {
        let governor = UplinkGovernor::default();
        let (now, _) = send_for(&governor, Instant::now(), 3, 10_000, false);
        // A second in which the parts went into the socket ten times as fast.
        let (now, _) = send_for(&governor, now, 1, 100_000, false);
        // Seconds with a gap: one part, then nothing for most of the second.
        let mut now = now;
        for _ in 0..3 {
            governor.begin(now, || false);
            governor.end(1_000_000, now + 10 * MS);
            now += Duration::from_secs(1);
        }
        let (_, cap) = send_for(&governor, now, 1, 10_000, true);
        let cap = cap.expect("capped while behind") as f64;
        assert!(
            (cap - 0.9e6).abs() < 0.03 * 0.9e6 || (cap - 1.25e6).abs() < 0.03 * 1.25e6,
            "{cap}"
        );
    }

    #[test]
    fn the_cap_is_shared_by_the_connections_sending() {
        let governor = UplinkGovernor::default();
        let (now, _) = send_for(&governor, Instant::now(), 6, 10_000, false);
        let (now, _) = send_for(&governor, now, 1, 10_000, true);
        let one = governor.begin(now, || true).expect("capped") as f64;
        let two = governor.begin(now, || true).expect("capped") as f64;
        assert!((two - one / 2.0).abs() <= 1.0, "{one} then {two}");
    }

    #[test]
    fn behind_means_more_than_three_percent_of_the_file_below_the_median_peer_downloading() {
        let lag = |ours, theirs: &[u32]| Lag {
            ours,
            theirs: theirs.to_vec(),
            parts: 1000,
        };
        assert!(lag(100, &[140, 131, 90]).is_behind());
        assert!(!lag(100, &[130, 129, 90]).is_behind(), "30 parts is 3 %");
        assert!(
            !lag(100, &[1000, 1000, 120]).is_behind(),
            "seeders do not count"
        );
        assert!(!lag(0, &[1000]).is_behind(), "only seeders");
        assert!(!lag(0, &[]).is_behind());
    }
}
