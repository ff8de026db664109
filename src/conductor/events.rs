//! What the conductor tells whoever runs it, as typed events rather than log text.
//!
//! The `--json` output of the `conductor` binary is these events serialized, so they carry
//! exactly the fields docs/JSON.md documents for the conductor (a test below checks it). They are
//! made where the change happens: joins and leaves in the registry as the table changes (under
//! its lock, so their order is the table's), expiries and summaries in the reaper.
//!
//! They travel through a bounded queue ([`EVENT_QUEUE`]): a consumer that falls behind, or
//! nobody reading at all, must cost the conductor neither memory nor time, so an event that
//! finds the queue full is dropped and counted instead of waited for.

use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::orch::SwarmId;
use crate::wire::ConductorStats;

/// Most events waiting for their consumer.
pub const EVENT_QUEUE: usize = 4096;

/// One thing that happened to a running conductor. Numbers are rounded as the JSON line shows
/// them: seconds to milliseconds, announce rates to tenths.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConductorEvent {
    /// Accepting connections; always the first event.
    Listening {
        addr: SocketAddr,
        interval_secs: f64,
    },
    /// A member joined a swarm, or came back at the same address with a new peer id
    /// (`rejoin`: it restarted).
    Join {
        #[serde(serialize_with = "short_hex")]
        swarm: SwarmId,
        addr: SocketAddr,
        rejoin: bool,
    },
    /// A member said it is quitting and was removed.
    Leave {
        #[serde(serialize_with = "short_hex")]
        swarm: SwarmId,
        addr: SocketAddr,
    },
    /// A member stopped announcing and was forgotten.
    Expire {
        #[serde(serialize_with = "short_hex")]
        swarm: SwarmId,
        addr: SocketAddr,
    },
    /// The state file was read at start: `members` put back, `expired` too old to keep.
    StateLoaded {
        path: String,
        members: u64,
        expired: u64,
    },
    /// The state file could not be used (damaged, too large, unreadable) and was ignored:
    /// the conductor starts with empty lists.
    StateIgnored { path: String, error: String },
    /// The state file could not be written; the conductor keeps trying as the table changes.
    StateNotSaved { path: String, error: String },
    /// Members expired in the same sweep beyond the first 100, which have an
    /// [`ConductorEvent::Expire`] each.
    ExpireMore { count: u64 },
    /// The counters, every interval but at most once a minute, and once more (`last`) as the
    /// conductor stops.
    Summary {
        swarms: u64,
        members: u64,
        announces_per_sec: f64,
        /// Signed requests for private swarms refused since start (bad or missing signature).
        auth_failures: u64,
        /// Since the conductor started.
        seconds: f64,
        last: bool,
    },
}

impl ConductorEvent {
    pub(super) fn listening(addr: SocketAddr, interval: Duration) -> ConductorEvent {
        ConductorEvent::Listening {
            addr,
            interval_secs: crate::json::seconds(interval),
        }
    }

    pub(super) fn summary(
        stats: &ConductorStats,
        auth_failures: u64,
        uptime: Duration,
        last: bool,
    ) -> ConductorEvent {
        ConductorEvent::Summary {
            swarms: stats.swarms,
            members: stats.members,
            announces_per_sec: tenths(stats.announces_per_sec),
            auth_failures,
            seconds: crate::json::seconds(uptime),
            last,
        }
    }
}

/// `conductor --stats HOST:PORT --json`: the counters of a running conductor, asked over TCP.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename = "stats")]
pub struct StatsEvent {
    /// `HOST:PORT`, as given.
    pub conductor: String,
    pub swarms: u64,
    pub members: u64,
    pub announces_per_sec: f64,
}

impl StatsEvent {
    pub fn new(conductor: &str, stats: &ConductorStats) -> StatsEvent {
        StatsEvent {
            conductor: conductor.to_string(),
            swarms: stats.swarms,
            members: stats.members,
            announces_per_sec: tenths(stats.announces_per_sec),
        }
    }
}

/// A rate as the summary line shows it, to one decimal.
fn tenths(rate: f64) -> f64 {
    (rate * 10.0).round() / 10.0
}

/// Swarms appear in events as in the log: the first 12 hex digits of their id.
fn short_hex<S: Serializer>(swarm: &SwarmId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&super::short(swarm))
}

/// The conductor's end of the event queue.
pub(super) struct EventSink {
    /// None once closed, or once the consumer is gone.
    sender: Option<SyncSender<ConductorEvent>>,
    dropped: u64,
}

impl EventSink {
    pub(super) fn bounded(capacity: usize) -> (EventSink, Receiver<ConductorEvent>) {
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let sink = EventSink {
            sender: Some(sender),
            dropped: 0,
        };
        (sink, receiver)
    }

    /// Queues `event` if there is room, never waiting.
    pub(super) fn send(&mut self, event: ConductorEvent) {
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(_)) => self.sender = None,
        }
    }

    /// Ends the consumer's receiver once it has taken what is queued.
    pub(super) fn close(&mut self) {
        self.sender = None;
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orch::Checksum;
    use std::collections::BTreeSet;

    /// The fields and types docs/JSON.md lists for each of the conductor's events.
    fn documented() -> Vec<(String, Vec<(String, String)>)> {
        let doc = include_str!("../../docs/JSON.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("`conductor`"))
            .expect("docs/JSON.md has a conductor section");
        let cell = |text: &str| text.trim().trim_matches('`').to_string();
        section
            .split("\n### ")
            .skip(1)
            .map(|block| {
                let name = cell(block.lines().next().unwrap_or_default());
                let fields = block
                    .lines()
                    .filter_map(|line| {
                        let cells: Vec<&str> = line.strip_prefix('|')?.split('|').collect();
                        let key = cells.first()?.trim();
                        (key.starts_with('`') && cells.len() >= 3)
                            .then(|| (cell(key), cells[1].trim().to_string()))
                    })
                    .collect();
                (name, fields)
            })
            .collect()
    }

    #[test]
    fn every_event_has_exactly_the_documented_fields() {
        let swarm = Checksum::of(b"s");
        let addr = SocketAddr::from(([127, 0, 0, 1], 4000));
        let stats = ConductorStats {
            swarms: 1,
            members: 2,
            announces_per_sec: 0.26,
        };
        let events = [
            serde_json::to_string(&ConductorEvent::listening(
                addr,
                Duration::from_millis(1500),
            )),
            serde_json::to_string(&ConductorEvent::Join {
                swarm,
                addr,
                rejoin: true,
            }),
            serde_json::to_string(&ConductorEvent::Leave { swarm, addr }),
            serde_json::to_string(&ConductorEvent::Expire { swarm, addr }),
            serde_json::to_string(&ConductorEvent::ExpireMore { count: 17 }),
            serde_json::to_string(&ConductorEvent::StateLoaded {
                path: "state.json".into(),
                members: 3,
                expired: 1,
            }),
            serde_json::to_string(&ConductorEvent::StateIgnored {
                path: "state.json".into(),
                error: "not a state file".into(),
            }),
            serde_json::to_string(&ConductorEvent::StateNotSaved {
                path: "state.json".into(),
                error: "cannot create it".into(),
            }),
            serde_json::to_string(&ConductorEvent::summary(
                &stats,
                0,
                Duration::from_micros(61_234_567),
                true,
            )),
            serde_json::to_string(&StatsEvent::new("tracker.lan:9999", &stats)),
        ];
        let documented = documented();
        // Every documented event but `error` (the binary's, shared by every program) is here.
        assert_eq!(documented.len(), events.len() + 1);
        for line in events {
            let line = line.unwrap();
            assert!(line.starts_with(r#"{"event":""#), "{line}");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            let object = event.as_object().unwrap();
            let name = object["event"].as_str().unwrap();
            let (_, fields) = documented
                .iter()
                .find(|(documented, _)| documented == name)
                .unwrap_or_else(|| panic!("{name} is not in docs/JSON.md"));
            let keys: BTreeSet<&String> = object.keys().collect();
            let want: BTreeSet<&String> = fields.iter().map(|(key, _)| key).collect();
            assert_eq!(keys, want, "{name}");
            for (key, ty) in fields {
                let value = &object[key];
                let fits = match ty.as_str() {
                    "string" => value.is_string(),
                    "integer" => value.is_u64(),
                    "number" => value.is_number(),
                    "boolean" => value.is_boolean(),
                    other => panic!("{name}.{key}: unexpected type {other}"),
                };
                assert!(fits, "{name}.{key} should be {ty}: {value}");
            }
        }
    }

    #[test]
    fn values_are_shown_as_the_log_shows_them() {
        let swarm = Checksum::of(b"s");
        let addr: SocketAddr = "[::1]:4000".parse().unwrap();
        let line = serde_json::to_string(&ConductorEvent::Join {
            swarm,
            addr,
            rejoin: false,
        })
        .unwrap();
        let short = &swarm.to_hex()[..12];
        assert_eq!(
            line,
            format!(r#"{{"event":"join","swarm":"{short}","addr":"[::1]:4000","rejoin":false}}"#)
        );
        let stats = ConductorStats {
            swarms: 3,
            members: 4,
            announces_per_sec: 12.345,
        };
        let line = serde_json::to_string(&ConductorEvent::summary(
            &stats,
            0,
            Duration::from_micros(1_234_567),
            false,
        ))
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"summary","swarms":3,"members":4,"announces_per_sec":12.3,"auth_failures":0,"seconds":1.235,"last":false}"#
        );
        let line = serde_json::to_string(&ConductorEvent::ExpireMore { count: 5 }).unwrap();
        assert_eq!(line, r#"{"event":"expire_more","count":5}"#);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (mut sink, receiver) = EventSink::bounded(2);
        for count in 0..5 {
            sink.send(ConductorEvent::ExpireMore { count });
        }
        assert_eq!(sink.dropped(), 3);
        // The oldest are kept; once read, there is room again.
        assert_eq!(
            receiver.try_recv(),
            Ok(ConductorEvent::ExpireMore { count: 0 })
        );
        sink.send(ConductorEvent::ExpireMore { count: 9 });
        sink.close();
        let rest: Vec<ConductorEvent> = receiver.iter().collect();
        assert_eq!(
            rest,
            [
                ConductorEvent::ExpireMore { count: 1 },
                ConductorEvent::ExpireMore { count: 9 }
            ]
        );
        // Sending after close, or with nobody left to read, costs nothing and counts nothing.
        sink.send(ConductorEvent::ExpireMore { count: 10 });
        assert_eq!(sink.dropped(), 3);
    }
}
