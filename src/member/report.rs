//! The two ways the `member` program shows a session: `--json` events on stdout
//! ([`JsonReport`], every event typed as docs/JSON.md documents it), or a progress bar on a
//! terminal ([`TerminalReport`], nothing at all without one).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::progress::{bar_message, Clock, Meter, Summary};
use super::session::Report;
use super::{Event, Member, Phase, Status};
use crate::cli::units::human_bytes;
use crate::cli::BarSlot;
use crate::json;

/// How often `--json` prints a `progress` event.
const JSON_PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The member's `--json` events (docs/JSON.md), but for `summary`, which is
/// [`Summary`], and `check`, which is [`super::check::CheckEvent`].
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MemberEvent<'a> {
    Start {
        orch: &'a str,
        file: &'a str,
        swarm: String,
        listen: SocketAddr,
        parts: u32,
        file_size: u64,
        parts_on_disk: u32,
    },
    Progress {
        parts_done: u32,
        parts_total: u32,
        bytes_done: u64,
        bytes_total: u64,
        bytes_down: u64,
        bytes_from_origin: u64,
        bytes_up: u64,
        peers: usize,
        rate: f64,
        eta_seconds: Option<f64>,
        seconds: f64,
        capped_up: bool,
        capped_down: bool,
    },
    PeerConnected {
        addr: SocketAddr,
    },
    PeerDropped {
        addr: SocketAddr,
        reason: &'a str,
    },
    PartRejected {
        part: u32,
        addr: SocketAddr,
    },
    ConductorUnreachable {
        conductor: &'a str,
        error: &'a str,
        retry_in_secs: f64,
    },
    ConductorOk {
        conductor: &'a str,
        peers: usize,
    },
    OriginDropped {
        url: &'a str,
        reason: &'a str,
    },
    Complete {
        download_seconds: f64,
        seconds: f64,
    },
}

impl<'a> MemberEvent<'a> {
    /// The JSON form of `event`; `None` for `Fatal`, which is reported once, as the error.
    pub fn of(event: &'a Event, member: &Member, clock: &Clock) -> Option<MemberEvent<'a>> {
        Some(match event {
            Event::PeerConnected { addr } => MemberEvent::PeerConnected { addr: *addr },
            Event::PeerDropped { addr, reason } => MemberEvent::PeerDropped {
                addr: *addr,
                reason,
            },
            Event::PartRejected { index, addr } => MemberEvent::PartRejected {
                part: *index,
                addr: *addr,
            },
            Event::ConductorUnreachable {
                conductor,
                error,
                retry_in,
            } => MemberEvent::ConductorUnreachable {
                conductor,
                error,
                retry_in_secs: (retry_in.as_secs_f64() * 10.0).round() / 10.0,
            },
            Event::ConductorOk { conductor, peers } => MemberEvent::ConductorOk {
                conductor,
                peers: *peers,
            },
            Event::OriginDropped { url, reason } => MemberEvent::OriginDropped { url, reason },
            Event::Complete => MemberEvent::Complete {
                download_seconds: json::seconds(clock.download_time()),
                seconds: json::seconds(member.elapsed()),
            },
            Event::Fatal { .. } => return None,
        })
    }

    pub fn progress(status: &Status, meter: &Meter, elapsed: Duration) -> MemberEvent<'a> {
        let rate = meter.rates().map_or(0.0, |(done, _)| done.round());
        let capped = meter.capped();
        let eta_seconds = meter
            .eta(status)
            .filter(|_| status.phase == Phase::Fetching)
            .map(|eta| (eta.as_secs_f64() * 10.0).round() / 10.0);
        MemberEvent::Progress {
            parts_done: status.parts_done,
            parts_total: status.parts_total,
            bytes_done: status.bytes_done,
            bytes_total: status.bytes_total,
            bytes_down: status.bytes_down,
            bytes_from_origin: status.bytes_from_origin,
            bytes_up: status.bytes_up,
            peers: status.peers,
            rate,
            eta_seconds,
            seconds: json::seconds(elapsed),
            capped_up: capped.up,
            capped_down: capped.down,
        }
    }
}

/// `--json`: one event a line on stdout.
pub struct JsonReport {
    orch_path: String,
    file: String,
    last_progress: Instant,
}

impl JsonReport {
    /// `orch_path` as given on the command line; `file` is the data file, `DIR/FILENAME`.
    pub fn new(orch_path: String, file: String) -> JsonReport {
        JsonReport {
            orch_path,
            file,
            last_progress: Instant::now(),
        }
    }
}

impl Report for JsonReport {
    fn started(&mut self, member: &Member, status: &Status) {
        json::print(&MemberEvent::Start {
            orch: &self.orch_path,
            file: &self.file,
            swarm: member.swarm().to_hex(),
            listen: member.local_addr(),
            parts: member.orch().part_count(),
            file_size: member.orch().file_size,
            parts_on_disk: status.parts_done,
        });
    }

    fn event(&mut self, event: &Event, member: &Member, clock: &Clock) {
        if let Some(line) = MemberEvent::of(event, member, clock) {
            json::print(&line);
        }
    }

    fn progress(&mut self, status: &Status, meter: &Meter, elapsed: Duration) {
        if self.last_progress.elapsed() >= JSON_PROGRESS_EVERY {
            self.last_progress = Instant::now();
            json::print(&MemberEvent::progress(status, meter, elapsed));
        }
    }

    fn sharing(&mut self) {}

    fn finished(&mut self, summary: &Summary) {
        json::print(summary);
    }
}

/// A progress bar on a terminal, with the few lines worth a person's attention above it; shows
/// nothing when there is no terminal.
pub struct TerminalReport {
    slot: BarSlot,
    file: String,
    interactive: bool,
    /// The conductors whose last word was a failure (said once, until it answers again).
    conductors_down: HashSet<String>,
}

impl TerminalReport {
    /// `slot` is where the logger finds the bar; `file` is the data file, `DIR/FILENAME`.
    pub fn new(slot: BarSlot, file: String, interactive: bool) -> TerminalReport {
        TerminalReport {
            slot,
            file,
            interactive,
            conductors_down: HashSet::new(),
        }
    }

    fn println(&self, line: String) {
        if let Some(bar) = self.slot.lock().as_ref() {
            bar.println(line);
        }
    }
}

impl Report for TerminalReport {
    fn started(&mut self, member: &Member, status: &Status) {
        if !self.interactive {
            return;
        }
        let orch = member.orch();
        let bar = ProgressBar::new(orch.file_size.max(1)).with_style(
            ProgressStyle::with_template("{spinner} [{bar:20}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_draw_target(ProgressDrawTarget::stdout());
        bar.set_message(bar_message(status, &Meter::default()));
        bar.set_position(status.bytes_done);
        if status.phase != Phase::Sharing {
            bar.println(format!(
                "fetching {} ({}, {} parts of {}) from swarm {}; press q to quit",
                self.file,
                human_bytes(orch.file_size),
                orch.part_count(),
                human_bytes(orch.part_size),
                &member.swarm().to_hex()[..12],
            ));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.slot.lock() = Some(bar);
    }

    fn event(&mut self, event: &Event, _member: &Member, _clock: &Clock) {
        match event {
            Event::ConductorUnreachable {
                conductor, error, ..
            } if self.conductors_down.insert(conductor.clone()) => {
                self.println(format!(
                    "conductor unreachable ({error}); retrying, working with known peers"
                ));
            }
            Event::ConductorOk { conductor, .. } if self.conductors_down.remove(conductor) => {
                self.println(format!("conductor {conductor} reachable again"));
            }
            Event::PartRejected { index, addr } => self.println(format!(
                "part {index} from {addr} failed its checksum; peer dropped"
            )),
            Event::OriginDropped { url, reason } => {
                self.println(format!("origin {url} dropped: {reason}"))
            }
            _ => {}
        }
    }

    fn progress(&mut self, status: &Status, meter: &Meter, _elapsed: Duration) {
        if let Some(bar) = self.slot.lock().as_ref() {
            bar.set_length(status.bytes_total.max(1));
            bar.set_position(status.bytes_done);
            bar.set_message(bar_message(status, meter));
        }
    }

    fn sharing(&mut self) {
        self.println(format!(
            "{} is complete and verified; sharing it. Press q to quit.",
            self.file
        ));
    }

    fn finished(&mut self, _summary: &Summary) {
        if let Some(bar) = self.slot.lock().take() {
            bar.finish_and_clear();
        }
    }
}
