//! Our requests on one connection: which parts are out and since when, which were cancelled,
//! and how many to keep in flight ([`Pipeline`]).
//!
//! [`Requests`] is shared between the connection's reader, which sends and answers them, and
//! whichever thread completes a part, which cancels the endgame duplicate asked of another peer.
//!
//! How many requests to keep out follows the peer: enough bytes to cover its measured rate for
//! twice the measured round trip plus the threads' wake-ups at both ends, so that the link never
//! waits for a request, whatever its latency. A peer that is not yet measured gets the floor
//! (about 2 MiB, what the member always kept before); one that is link-limited ends at about
//! twice its bandwidth-delay product; one that is window-limited grows: its rate follows what is
//! in flight, so the target doubles each time the rate is measured again, like TCP's slow start.

use std::time::{Duration, Instant};

use super::peer::queued_uploads_allowed;
use super::rate::ByteRate;

/// Bytes of requests kept in flight per peer before its rate and round trip are known.
const FLOOR_BYTES: u64 = 2 << 20;
/// Fewest requests in flight per peer, and most for the floor.
const MIN_DEPTH: u64 = 2;
const MAX_FLOOR_DEPTH: u64 = 64;
/// How much more than rate × round trip to keep out: room for the rate to grow and for the
/// jitter of a real link.
const HEADROOM: f64 = 2.0;
/// Time beyond the round trip that requests in flight must also cover: the wake-ups of the
/// threads at both ends between a part's arrival and the peer sending the next one. On a busy
/// host these take milliseconds, longer than a fast local link's round trip: with 2 MiB in
/// flight a loopback transfer left both cores idle a fifth of the time. A link-limited peer
/// (100 Mbit/s: 250 KB in 20 ms) keeps the floor.
const WAKE_UP_SLACK: Duration = Duration::from_millis(20);
/// Most bytes in flight to one peer. Requests cost us nothing while out (the peer holds the
/// data); this bounds what one slow peer can hold of ours in the endgame. The protocol bounds
/// the count too: at most [`queued_uploads_allowed`] requests may wait at the peer.
const MAX_IN_FLIGHT_BYTES: u64 = 256 << 20;
/// The rate is measured over twice the round trip, within these bounds: long enough to span
/// several parts, short enough to follow a growing window quickly.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(300);
const MAX_RATE_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Requests {
    /// Parts requested and not yet received, rejected or cancelled.
    pub out: Vec<u32>,
    /// When each of `out` was sent, in the same order.
    sent: Vec<Instant>,
    /// Cancelled requests whose part may still arrive; accepted and discarded.
    pub cancelled: Vec<u32>,
}

impl Requests {
    pub fn push(&mut self, index: u32, now: Instant) {
        self.out.push(index);
        self.sent.push(now);
    }

    /// Takes `index` off the requests out; when it was sent, if it was out.
    pub fn take_out(&mut self, index: u32) -> Option<Instant> {
        let pos = self.out.iter().position(|&i| i == index)?;
        self.out.swap_remove(pos);
        Some(self.sent.swap_remove(pos))
    }

    /// Takes `index` off the cancelled requests; true if it was there.
    pub fn take_cancelled(&mut self, index: u32) -> bool {
        match self.cancelled.iter().position(|&i| i == index) {
            Some(pos) => {
                self.cancelled.swap_remove(pos);
                true
            }
            None => false,
        }
    }

    /// The part arrived from another peer: the request here is cancelled, and the part, if it
    /// still comes, discarded. True if it was out here.
    pub fn cancel(&mut self, index: u32) -> bool {
        let was_out = self.take_out(index).is_some();
        if was_out {
            self.cancelled.push(index);
        }
        was_out
    }

    /// Every request still out, and forgets them.
    pub fn take_all(&mut self) -> Vec<u32> {
        self.sent.clear();
        self.cancelled.clear();
        std::mem::take(&mut self.out)
    }
}

/// How many requests to keep in flight to one peer (see the module docs).
#[derive(Debug)]
pub struct Pipeline {
    /// `--pipeline`: a fixed depth instead.
    fixed: Option<usize>,
    part_size: u64,
    /// The shortest time from a request to its part's first byte: the round trip plus the
    /// peer's least time to start serving.
    min_rtt: Option<Duration>,
    /// Bytes received from this peer, from the connection's start.
    received: ByteRate,
}

impl Pipeline {
    pub fn new(fixed: Option<usize>, part_size: u64, now: Instant) -> Pipeline {
        // The rate counts from the connection's start, not from its first part.
        let mut received = ByteRate::new(MAX_RATE_WINDOW);
        received.note(0, now);
        Pipeline {
            fixed,
            part_size: part_size.max(1),
            min_rtt: None,
            received,
        }
    }

    /// A round trip seen: a request answered, or the handshake.
    pub fn note_round_trip(&mut self, sample: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(sample, |rtt| rtt.min(sample)));
    }

    /// `bytes` of part data came from this peer.
    pub fn note_received(&mut self, bytes: usize, now: Instant) {
        self.received.note(bytes as u64, now);
    }

    pub fn round_trip(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Bytes per second from this peer over the rate window; `None` until it spans enough.
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let window = self
            .min_rtt
            .map_or(MIN_RATE_WINDOW, |rtt| rtt * 2)
            .clamp(MIN_RATE_WINDOW, MAX_RATE_WINDOW);
        self.received.rate(window, MIN_RATE_WINDOW, now)
    }

    fn floor(&self) -> u64 {
        (FLOOR_BYTES / self.part_size).clamp(MIN_DEPTH, MAX_FLOOR_DEPTH)
    }

    /// The most requests ever kept in flight to one peer.
    pub fn cap(&self) -> usize {
        let by_bytes = (MAX_IN_FLIGHT_BYTES / self.part_size).max(MIN_DEPTH);
        by_bytes
            .min(queued_uploads_allowed(self.part_size) as u64)
            .max(self.floor()) as usize
    }

    /// Requests to keep in flight now.
    pub fn depth(&self, now: Instant) -> usize {
        if let Some(fixed) = self.fixed {
            return fixed;
        }
        let floor = self.floor();
        let (Some(rtt), Some(rate)) = (self.min_rtt, self.rate(now)) else {
            return floor as usize;
        };
        let target = rate * (HEADROOM * rtt.as_secs_f64() + WAKE_UP_SLACK.as_secs_f64());
        let parts = (target / self.part_size as f64).ceil();
        // `as` saturates: a huge rate only meets the cap.
        (parts as u64).clamp(floor, self.cap() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_out_and_cancelled() {
        let now = Instant::now();
        let mut requests = Requests::default();
        for i in [1, 2, 3] {
            requests.push(i, now + Duration::from_millis(u64::from(i)));
        }
        assert!(requests.cancel(2));
        assert!(!requests.cancel(9));
        assert_eq!(requests.take_out(2), None);
        assert!(requests.take_cancelled(2));
        assert!(!requests.take_cancelled(2));
        assert_eq!(requests.take_out(3), Some(now + Duration::from_millis(3)));
        assert_eq!(requests.out, [1]);
        assert_eq!(requests.take_all(), [1]);
        assert!(requests.out.is_empty());
    }

    #[test]
    fn the_floor_until_measured_then_a_fixed_depth_if_set() {
        let now = Instant::now();
        assert_eq!(Pipeline::new(None, 256 << 10, now).depth(now), 8);
        assert_eq!(Pipeline::new(None, 64 << 10, now).depth(now), 32);
        assert_eq!(Pipeline::new(None, 16 << 20, now).depth(now), 2);
        assert_eq!(Pipeline::new(Some(5), 16 << 20, now).depth(now), 5);
        assert_eq!(Pipeline::new(None, 0, now).depth(now), 64);
    }

    /// Feeds `pipeline` parts at `rate` bytes per second for `seconds`.
    fn feed(
        pipeline: &mut Pipeline,
        start: Instant,
        part: usize,
        rate: f64,
        seconds: f64,
    ) -> Instant {
        let step = Duration::from_secs_f64(part as f64 / rate);
        let mut now = start;
        while now < start + Duration::from_secs_f64(seconds) {
            now += step;
            pipeline.note_received(part, now);
        }
        now
    }

    #[test]
    fn the_rate_is_measured_over_the_window() {
        let start = Instant::now();
        let mut pipeline = Pipeline::new(None, 256 << 10, start);
        assert_eq!(pipeline.rate(start), None);
        let now = feed(&mut pipeline, start, 256 << 10, 50e6, 3.0);
        let rate = pipeline.rate(now).unwrap();
        assert!((rate - 50e6).abs() / 50e6 < 0.05, "{rate}");
        // The rate drops: the window forgets the old one.
        let now = feed(&mut pipeline, now, 256 << 10, 5e6, 3.0);
        let rate = pipeline.rate(now).unwrap();
        assert!((rate - 5e6).abs() / 5e6 < 0.1, "{rate}");
        assert!(pipeline.received.samples() < 100, "the window is bounded");
    }

    #[test]
    fn depth_covers_twice_the_bandwidth_delay_product_and_the_wake_ups_within_the_cap() {
        let part = 256usize << 10;
        let start = Instant::now();
        // 100 MB/s with a 50 ms round trip: 5 MB in flight on the link, 10 MB kept out, and
        // 2 MB more for the wake-ups at both ends.
        let mut pipeline = Pipeline::new(None, part as u64, start);
        pipeline.note_round_trip(Duration::from_millis(80));
        pipeline.note_round_trip(Duration::from_millis(50));
        let now = feed(&mut pipeline, start, part, 100e6, 2.0);
        assert_eq!(pipeline.round_trip(), Some(Duration::from_millis(50)));
        let depth = pipeline.depth(now);
        let expected = (100e6 * (2.0 * 0.05 + 0.02) / part as f64).ceil() as usize;
        assert!(depth.abs_diff(expected) <= 2, "{depth} vs {expected}");
        assert!(depth > 16, "more than the old fixed window");
        // A faster link or a longer trip meets the cap: 64 requests, the protocol's bound.
        pipeline.note_round_trip(Duration::from_millis(10));
        let mut far = Pipeline::new(None, part as u64, now);
        far.note_round_trip(Duration::from_millis(500));
        let later = feed(&mut far, now, part, 1e9, 2.0);
        assert_eq!(far.depth(later), 64);
        assert_eq!(far.cap(), 64);
        // Zero latency: a 100 Mbit/s link keeps the floor (20 ms of it is under one part)...
        let mut lan = Pipeline::new(None, part as u64, later);
        lan.note_round_trip(Duration::from_micros(100));
        let later = feed(&mut lan, later, part, 12.5e6, 1.0);
        assert_eq!(lan.depth(later), 8);
        // ... and a fast local one 20 ms of its rate: 6 MB, where 2 MB used to be kept.
        let mut local = Pipeline::new(None, part as u64, later);
        local.note_round_trip(Duration::from_micros(100));
        let later = feed(&mut local, later, part, 300e6, 1.0);
        let expected = (300e6 * (2.0 * 100e-6 + 0.02) / part as f64).ceil() as usize;
        assert!(
            local.depth(later).abs_diff(expected) <= 2,
            "{}",
            local.depth(later)
        );
        assert!(local.depth(later) > 16);
    }

    /// With a window-limited peer (the rate is what is in flight over the round trip), the
    /// depth grows each time the rate is measured again, until the link's rate stops it.
    #[test]
    fn a_window_limited_peer_grows_to_the_link() {
        let part = 256usize << 10;
        let rtt = Duration::from_millis(100);
        let link = 200e6;
        let mut now = Instant::now();
        let mut pipeline = Pipeline::new(None, part as u64, now);
        pipeline.note_round_trip(rtt);
        let mut depths = Vec::new();
        for _ in 0..12 {
            let in_flight = (pipeline.depth(now) * part) as f64;
            let rate = (in_flight / rtt.as_secs_f64()).min(link);
            now = feed(&mut pipeline, now, part, rate, 0.4);
            depths.push(pipeline.depth(now));
        }
        assert!(depths.windows(2).all(|w| w[1] >= w[0]), "{depths:?}");
        let bdp_parts = (link * rtt.as_secs_f64() / part as f64) as usize;
        let last = *depths.last().unwrap();
        assert!(
            last >= bdp_parts.min(64),
            "{depths:?}: short of the link's {bdp_parts} parts"
        );
    }
}
