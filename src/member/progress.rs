//! What a run of a member has done, in numbers people and scripts read: recent rates and an
//! ETA ([`Meter`]), when the download ran ([`Clock`]), and the one-line account at the end
//! ([`Summary`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::throttle::Pressure;
use super::{Phase, Status};
use crate::cli::units::{human_bytes, human_duration};

/// When the download ran: from the start of the swarm session to the verified file.
#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    /// There was something to fetch when the member started.
    fetching: bool,
    done: Option<Instant>,
}

impl Clock {
    pub fn new(start: Instant, fetching: bool) -> Clock {
        Clock {
            start,
            fetching,
            done: None,
        }
    }

    /// The file is complete (the first call counts).
    pub fn finished(&mut self, at: Instant) {
        if self.fetching && self.done.is_none() {
            self.done = Some(at);
        }
    }

    /// How long the download took, or has taken so far; zero when there was none.
    pub fn download_time(&self) -> Duration {
        if !self.fetching {
            return Duration::ZERO;
        }
        self.done
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.start)
    }

    pub fn fetching(&self) -> bool {
        self.fetching
    }
}

/// One look at the status, for the meter.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    bytes_done: u64,
    bytes_up: u64,
    upload_pressure: Option<Pressure>,
    download_pressure: Option<Pressure>,
}

/// Recent rates, from the last few seconds of samples, and whether a rate cap is what limits
/// them.
#[derive(Debug, Default)]
pub struct Meter {
    samples: VecDeque<Sample>,
}

/// Which rate caps are what limits the transfer now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capped {
    pub up: bool,
    pub down: bool,
}

impl Meter {
    const WINDOW: Duration = Duration::from_secs(5);

    /// Caps are judged over a shorter window than rates, so the bar says so soon.
    const CAP_WINDOW: Duration = Duration::from_secs(1);

    pub fn sample(&mut self, now: Instant, status: &Status) {
        self.samples.push_back(Sample {
            at: now,
            bytes_done: status.bytes_done,
            bytes_up: status.bytes_up,
            upload_pressure: status.upload_pressure,
            download_pressure: status.download_pressure,
        });
        while self.samples.len() > 2
            && now.saturating_duration_since(self.samples[0].at) > Self::WINDOW
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second of (verified file data, upload) over the window, once it spans enough
    /// time to mean something.
    pub fn rates(&self) -> Option<(f64, f64)> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.at.saturating_duration_since(first.at).as_secs_f64();
        (span >= 0.3).then(|| {
            (
                last.bytes_done.saturating_sub(first.bytes_done) as f64 / span,
                last.bytes_up.saturating_sub(first.bytes_up) as f64 / span,
            )
        })
    }

    /// Whether the upload and download caps made most of the last second's chunks wait.
    pub fn capped(&self) -> Capped {
        let Some(last) = self.samples.back() else {
            return Capped::default();
        };
        let since = last.at.checked_sub(Self::CAP_WINDOW);
        let first = self
            .samples
            .iter()
            .find(|s| since.is_none_or(|since| s.at >= since))
            .unwrap_or(last);
        let limiting = |now: Option<Pressure>, then: Option<Pressure>| match (now, then) {
            (Some(now), Some(then)) => now.limiting_since(then),
            _ => false,
        };
        Capped {
            up: limiting(last.upload_pressure, first.upload_pressure),
            down: limiting(last.download_pressure, first.download_pressure),
        }
    }

    pub fn eta(&self, status: &Status) -> Option<Duration> {
        let (rate, _) = self.rates()?;
        let left = status.bytes_total.saturating_sub(status.bytes_done);
        (rate >= 1.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }
}

fn percent(status: &Status) -> u64 {
    if status.bytes_total == 0 {
        return 100;
    }
    (u128::from(status.bytes_done) * 100 / u128::from(status.bytes_total)) as u64
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `123/768 parts 16% 21.40 MiB/s ETA 3s 2 peers`, or what the member does once it has it all.
pub fn bar_message(status: &Status, meter: &Meter) -> String {
    let (rate_done, rate_up) = meter.rates().unwrap_or((0.0, 0.0));
    let capped = meter.capped();
    let mark = |on: bool| if on { " (capped)" } else { "" };
    let peers = plural(status.peers as u64, "peer", "peers");
    let head = format!(
        "{}/{} parts {}%",
        status.parts_done,
        status.parts_total,
        percent(status)
    );
    match status.phase {
        Phase::Fetching => format!(
            "{head} {}/s{} ETA {} {peers}",
            human_bytes(rate_done as u64),
            mark(capped.down),
            meter
                .eta(status)
                .map_or_else(|| "--".to_string(), human_duration),
        ),
        Phase::Finishing => format!("{head} checking the whole file {peers}"),
        Phase::Sharing => format!(
            "{head} sharing {}/s up {peers}",
            human_bytes(rate_up as u64)
        ),
        Phase::Failed => format!("{head} stopped"),
    }
}

/// What a run did, for the last line and the `summary` event.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename = "summary")]
pub struct Summary {
    pub complete: bool,
    pub parts_done: u32,
    pub parts_total: u32,
    pub bytes_down: u64,
    pub bytes_from_origin: u64,
    pub bytes_up: u64,
    /// The whole session, from joining the swarm to leaving it.
    pub seconds: f64,
    /// The download alone (zero when the file was complete at start).
    pub download_seconds: f64,
    /// Bytes per second over the download time.
    pub rate_down: f64,
    pub peers_used: usize,
    pub parts_rejected: u64,
    /// From the start to the first new part verified and stored; null when none came.
    pub first_part_seconds: Option<f64>,
    #[serde(skip)]
    fetched: bool,
    #[serde(skip)]
    failed: bool,
}

impl Summary {
    pub fn new(status: &Status, clock: &Clock, session: Duration) -> Summary {
        let download = clock.download_time();
        let rate_down = if download.is_zero() {
            0.0
        } else {
            (status.bytes_down as f64 / download.as_secs_f64().max(1e-3)).round()
        };
        Summary {
            complete: status.phase == Phase::Sharing,
            parts_done: status.parts_done,
            parts_total: status.parts_total,
            bytes_down: status.bytes_down,
            bytes_from_origin: status.bytes_from_origin,
            bytes_up: status.bytes_up,
            seconds: crate::json::seconds(session),
            download_seconds: crate::json::seconds(download),
            rate_down,
            peers_used: status.peers_used,
            parts_rejected: status.parts_rejected,
            first_part_seconds: status.first_part_after.map(crate::json::seconds),
            fetched: clock.fetching(),
            failed: status.phase == Phase::Failed,
        }
    }

    /// `done: 48.0 MiB down in 2.3 s (20.9 MiB/s), 12.0 MiB up, 3 peers used, 0 parts rejected`;
    /// with an origin, `48.0 MiB down (6.00 MiB from origins) in ...`.
    pub fn line(&self) -> String {
        let tail = format!(
            "{}, {}",
            plural(self.peers_used as u64, "peer used", "peers used"),
            plural(self.parts_rejected, "part rejected", "parts rejected")
        );
        if !self.fetched {
            return format!(
                "seeded: nothing to fetch, {} up in {:.1} s, {tail}",
                human_bytes(self.bytes_up),
                self.seconds
            );
        }
        let verdict = if self.complete {
            "done".to_string()
        } else {
            format!(
                "{} at {}/{} parts (verified parts are kept)",
                if self.failed { "failed" } else { "stopped" },
                self.parts_done,
                self.parts_total
            )
        };
        let from_origins = if self.bytes_from_origin > 0 {
            format!(" ({} from origins)", human_bytes(self.bytes_from_origin))
        } else {
            String::new()
        };
        format!(
            "{verdict}: {}{from_origins} down in {:.1} s ({}/s), {} up, {tail}",
            human_bytes(self.bytes_down),
            self.download_seconds,
            human_bytes(self.rate_down as u64),
            human_bytes(self.bytes_up),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: Phase, bytes_done: u64, bytes_up: u64) -> Status {
        Status {
            phase,
            parts_done: (bytes_done / 100) as u32,
            parts_total: 10,
            bytes_done,
            bytes_total: 1000,
            bytes_down: bytes_done,
            bytes_from_origin: 0,
            bytes_up,
            peers: 1,
            requests_out: 0,
            peers_used: 2,
            parts_rejected: 1,
            first_part_after: None,
            upload_pressure: None,
            download_pressure: None,
        }
    }

    #[test]
    fn rates_and_eta_over_the_window() {
        let start = Instant::now();
        let mut meter = Meter::default();
        meter.sample(start, &status(Phase::Fetching, 0, 0));
        assert!(meter.rates().is_none(), "one sample is no rate");
        let now = start + Duration::from_secs(1);
        let half = status(Phase::Fetching, 500, 100);
        meter.sample(now, &half);
        let (down, up) = meter.rates().unwrap();
        assert!((down - 500.0).abs() < 1.0 && (up - 100.0).abs() < 1.0);
        assert_eq!(meter.eta(&half).unwrap().as_secs(), 1);
        assert_eq!(
            bar_message(&half, &meter),
            "5/10 parts 50% 500 B/s ETA 1s 1 peer"
        );
    }

    #[test]
    fn a_cap_that_makes_most_chunks_wait_is_shown() {
        let start = Instant::now();
        let mut meter = Meter::default();
        let at = |meter: &mut Meter, ms: u64, waited: u64| {
            let mut s = status(Phase::Fetching, ms, 0);
            s.download_pressure = Some(Pressure { asked: ms, waited });
            meter.sample(start + Duration::from_millis(ms), &s);
        };
        at(&mut meter, 0, 0);
        at(&mut meter, 500, 10);
        assert_eq!(meter.capped(), Capped::default());
        at(&mut meter, 1000, 900);
        assert_eq!(
            meter.capped(),
            Capped {
                up: false,
                down: true
            }
        );
        assert!(bar_message(&status(Phase::Fetching, 1000, 0), &meter).contains("(capped)"));
    }

    #[test]
    fn summary_lines() {
        let start = Instant::now();
        let mut clock = Clock::new(start, true);
        clock.finished(start + Duration::from_secs(2));
        let done = Summary::new(
            &status(Phase::Sharing, 1000, 0),
            &clock,
            Duration::from_secs(3),
        );
        assert_eq!(
            done.line(),
            "done: 1000 B down in 2.0 s (500 B/s), 0 B up, 2 peers used, 1 part rejected"
        );
        assert_eq!(done.rate_down, 500.0);
        let mut from_origin = status(Phase::Sharing, 1000, 0);
        from_origin.bytes_from_origin = 600;
        assert!(Summary::new(&from_origin, &clock, Duration::from_secs(3))
            .line()
            .starts_with("done: 1000 B (600 B from origins) down in 2.0 s"));
        let stopped = Summary::new(
            &status(Phase::Fetching, 300, 0),
            &Clock::new(start, true),
            Duration::from_secs(3),
        );
        assert!(stopped.line().starts_with("stopped at 3/10 parts"));
        let seeded = Summary::new(
            &status(Phase::Sharing, 1000, 2048),
            &Clock::new(start, false),
            Duration::from_secs(3),
        );
        assert!(seeded
            .line()
            .starts_with("seeded: nothing to fetch, 2.00 KiB up"));
        assert_eq!(seeded.download_seconds, 0.0);
    }
}
