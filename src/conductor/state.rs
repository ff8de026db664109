//! `conductor --state FILE`: the member lists kept across a restart.
//!
//! Why: the conductor keeps only soft state, refreshed by every member's announce, so one that
//! restarts knows nobody until the members announce again, and a newcomer asking meanwhile
//! hears of nobody. With a state file it starts with the lists it had: each member with the
//! time it was last seen, so that it expires as usual (two intervals and a second after its
//! last announce, counted across the restart by the wall clock) if it does not announce again.
//!
//! The file is JSON (serde), one object: a format name and version, and the members, those of
//! private swarms (the conductor's table of signed announces) marked `"private": true`. It is
//! replaced atomically (`crate::atomic_file`: a temporary file beside it, synced, renamed over
//! `FILE`, the folder synced),
//! so a crash leaves the old file or the new one, never half of one. The conductor writes it at
//! most every [`SAVE_PERIOD`] when members joined or left, every half interval when they only
//! refreshed, and once more as it stops.
//!
//! The file is outside input like any other: it is refused above [`MAX_STATE_BYTES`] before
//! being read, with more than [`MAX_STATE_MEMBERS`] members, or with any entry that is not a
//! valid one; a file refused is reported (log line and event) and ignored, never fatal. The
//! entries go through the same caps as announces. Saving keeps the [`MAX_STATE_MEMBERS`]
//! members seen last.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::orch::{Checksum, SwarmId};
use crate::wire::PeerId;

/// Most members a state file holds: some 150 bytes each, so about 30 MB.
pub const MAX_STATE_MEMBERS: usize = 200_000;
/// A larger file is refused unread.
pub const MAX_STATE_BYTES: u64 = 64 * 1024 * 1024;
/// Joins and leaves are saved at most this often.
pub const SAVE_PERIOD: Duration = Duration::from_millis(500);

const FORMAT: &str = "torrentnchill conductor state";
const VERSION: u32 = 1;

/// One member as the registry holds it: swarm, address, peer id, last seen.
pub(super) type Entry = (SwarmId, SocketAddr, PeerId, Instant);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    version: u32,
    members: Vec<SavedMember>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedMember {
    /// The swarm id, 64 hex digits.
    swarm: String,
    addr: SocketAddr,
    /// 32 hex digits.
    peer_id: String,
    /// When it last announced, in milliseconds since the Unix epoch.
    last_seen_unix_ms: u64,
    /// In the table of private swarms (signed announces); absent: the public one.
    #[serde(default, skip_serializing_if = "is_false")]
    private: bool,
}

fn is_false(flag: &bool) -> bool {
    !flag
}

/// What loading found: the members still fresh, and how many had expired meanwhile.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) members: Vec<Entry>,
    /// Members of private swarms, for the table of signed announces.
    pub(super) private: Vec<Entry>,
    pub(super) expired: u64,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the state file at `path`, as of `now` (`wall` on the wall clock): `Ok(None)` if there
/// is none yet; an error, naming the fault, for a file that cannot be used. Members last seen
/// longer than `max_age` ago are counted as expired, not returned.
pub(super) fn load(
    path: &Path,
    max_age: Duration,
    now: Instant,
    wall: SystemTime,
) -> anyhow::Result<Option<Loaded>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot open it"),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .context("cannot read it")?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        bail!("it is larger than {MAX_STATE_BYTES} bytes");
    }
    parse(&bytes, max_age, now, wall).map(Some)
}

fn parse(
    bytes: &[u8],
    max_age: Duration,
    now: Instant,
    wall: SystemTime,
) -> anyhow::Result<Loaded> {
    let state: StateFile = serde_json::from_slice(bytes).context("not a state file")?;
    if state.format != FORMAT || state.version != VERSION {
        bail!(
            "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
            state.format.chars().take(60).collect::<String>(),
            state.version
        );
    }
    if state.members.len() > MAX_STATE_MEMBERS {
        bail!(
            "{} members, more than the limit of {MAX_STATE_MEMBERS}",
            state.members.len()
        );
    }
    let wall_ms = unix_ms(wall);
    let mut loaded = Loaded {
        members: Vec::with_capacity(state.members.len()),
        private: Vec::new(),
        expired: 0,
    };
    for (i, saved) in state.members.iter().enumerate() {
        let bad = |what: &str| anyhow::anyhow!("member {}: {what}", i + 1);
        let swarm = Checksum::from_hex(&saved.swarm).ok_or_else(|| bad("bad swarm id"))?;
        let mut id = [0u8; 16];
        if saved.peer_id.len() != 32 || hex::decode_to_slice(&saved.peer_id, &mut id).is_err() {
            return Err(bad("bad peer id"));
        }
        if saved.addr.port() == 0 {
            return Err(bad("port 0"));
        }
        // A time ahead of our clock (it was set back) counts as just seen.
        let age = Duration::from_millis(wall_ms.saturating_sub(saved.last_seen_unix_ms));
        if age > max_age {
            loaded.expired += 1;
            continue;
        }
        let last_seen = now.checked_sub(age).unwrap_or(now);
        let table = match saved.private {
            true => &mut loaded.private,
            false => &mut loaded.members,
        };
        table.push((swarm, saved.addr, PeerId(id), last_seen));
    }
    Ok(loaded)
}

/// Replaces the state file at `path` with `members` and the `private` swarms' members (the
/// [`MAX_STATE_MEMBERS`] seen last of both), atomically. `now` and `wall` are the same moment
/// on both clocks.
pub(super) fn save(
    path: &Path,
    members: Vec<Entry>,
    private: Vec<Entry>,
    now: Instant,
    wall: SystemTime,
) -> anyhow::Result<()> {
    let mut members: Vec<(Entry, bool)> = members
        .into_iter()
        .map(|entry| (entry, false))
        .chain(private.into_iter().map(|entry| (entry, true)))
        .collect();
    if members.len() > MAX_STATE_MEMBERS {
        members.select_nth_unstable_by(MAX_STATE_MEMBERS - 1, |a, b| b.0 .3.cmp(&a.0 .3));
        members.truncate(MAX_STATE_MEMBERS);
    }
    let wall_ms = unix_ms(wall);
    let state = StateFile {
        format: FORMAT.to_string(),
        version: VERSION,
        members: members
            .into_iter()
            .map(|((swarm, addr, peer_id, last_seen), private)| {
                let age = now.saturating_duration_since(last_seen);
                SavedMember {
                    swarm: swarm.to_hex(),
                    addr,
                    peer_id: peer_id.to_string(),
                    last_seen_unix_ms: wall_ms
                        .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
                    private,
                }
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec(&state).context("cannot encode the member table")?;
    bytes.push(b'\n');
    crate::atomic_file::replace(path, &bytes, 0o666)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(61);

    fn entry(port: u16, last_seen: Instant) -> Entry {
        (
            Checksum::of(b"s"),
            SocketAddr::from(([10, 0, 0, 1], port)),
            PeerId::random(),
            last_seen,
        )
    }

    #[test]
    fn members_come_back_with_their_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load(&path, MAX_AGE, Instant::now(), SystemTime::now())
            .unwrap()
            .is_none());
        let now = Instant::now();
        let wall = SystemTime::now();
        let fresh = entry(1, now - Duration::from_secs(10));
        let old = entry(2, now - Duration::from_secs(50));
        save(&path, vec![fresh, old], Vec::new(), now, wall).unwrap();
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "only the state file, no temporary one");

        // Read back 5 s later: ages grow by the time the conductor was away.
        let later = now + Duration::from_secs(5);
        let loaded = load(&path, MAX_AGE, later, wall + Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.expired, 0);
        assert_eq!(loaded.members.len(), 2);
        for (got, want) in loaded.members.iter().zip([fresh, old]) {
            assert_eq!((got.0, got.1, got.2), (want.0, want.1, want.2));
            let age = later.duration_since(got.3).as_secs_f64();
            let want_age = later.duration_since(want.3).as_secs_f64();
            assert!((age - want_age).abs() < 0.01, "{age} {want_age}");
        }
        // 20 s later the old one is past its expiry and is only counted.
        let loaded = load(&path, MAX_AGE, later, wall + Duration::from_secs(20))
            .unwrap()
            .unwrap();
        assert_eq!((loaded.members.len(), loaded.expired), (1, 1));
        assert_eq!(loaded.members[0].1, fresh.1);
    }

    #[test]
    fn private_swarms_members_come_back_to_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (now, wall) = (Instant::now(), SystemTime::now());
        let (public, private) = (entry(1, now), entry(2, now));
        save(&path, vec![public], vec![private], now, wall).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"private\":true").count(), 1, "{text}");
        let loaded = load(&path, MAX_AGE, now, wall).unwrap().unwrap();
        assert_eq!(loaded.members.len(), 1);
        assert_eq!(loaded.members[0].1, public.1);
        assert_eq!(loaded.private.len(), 1);
        assert_eq!(loaded.private[0].1, private.1);
    }

    #[test]
    fn saving_keeps_the_members_seen_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = Instant::now();
        let extra = 10;
        let members: Vec<Entry> = (0..MAX_STATE_MEMBERS + extra)
            .map(|i| {
                entry(
                    1 + (i % 60_000) as u16,
                    now - Duration::from_millis(i as u64),
                )
            })
            .collect();
        let wall = SystemTime::now();
        save(&path, members, Vec::new(), now, wall).unwrap();
        let hour = Duration::from_secs(3600);
        let loaded = load(&path, hour, now, wall).unwrap().unwrap();
        assert_eq!(loaded.members.len(), MAX_STATE_MEMBERS);
        let oldest = loaded.members.iter().map(|m| m.3).min().unwrap();
        assert!(now.duration_since(oldest) < Duration::from_millis(MAX_STATE_MEMBERS as u64 + 5));
    }

    #[test]
    fn damaged_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = Instant::now();
        let wall = SystemTime::now();
        save(&path, vec![entry(1, now)], Vec::new(), now, wall).unwrap();
        let good = fs::read_to_string(&path).unwrap();
        let member = |swarm: &str, addr: &str, peer: &str| {
            format!(
                r#"{{"format":"{FORMAT}","version":1,"members":[{{"swarm":"{swarm}","addr":"{addr}","peer_id":"{peer}","last_seen_unix_ms":1}}]}}"#
            )
        };
        let swarm = Checksum::of(b"s").to_hex();
        let peer = "00".repeat(16);
        let cases = [
            (
                "truncated",
                good[..good.len() / 2].to_string(),
                "not a state file",
            ),
            ("empty", String::new(), "not a state file"),
            ("not JSON", "\u{0}\u{1}garbage".into(), "not a state file"),
            (
                "other format",
                good.replace(FORMAT, "something else"),
                "format",
            ),
            (
                "other version",
                good.replace("\"version\":1", "\"version\":7"),
                "version 7",
            ),
            (
                "unknown field",
                good.replace("\"version\"", "\"extra\":1,\"version\""),
                "not a state file",
            ),
            (
                "bad swarm",
                member("zz", "10.0.0.1:1", &peer),
                "bad swarm id",
            ),
            (
                "bad peer id",
                member(&swarm, "10.0.0.1:1", "12"),
                "bad peer id",
            ),
            (
                "bad address",
                member(&swarm, "10.0.0.1", &peer),
                "not a state file",
            ),
            ("port 0", member(&swarm, "10.0.0.1:0", &peer), "port 0"),
        ];
        for (case, text, why) in cases {
            fs::write(&path, text).unwrap();
            let err = load(&path, MAX_AGE, now, wall).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{case}: {err:#}");
        }
        // Too large: refused unread.
        let big = File::create(&path).unwrap();
        big.set_len(MAX_STATE_BYTES + 1).unwrap();
        let err = load(&path, MAX_AGE, now, wall).unwrap_err();
        assert!(format!("{err:#}").contains("larger than"), "{err:#}");
        // Too many members.
        let many: Vec<String> = (0..=MAX_STATE_MEMBERS)
            .map(|_| format!(r#"{{"swarm":"{swarm}","addr":"10.0.0.1:1","peer_id":"{peer}","last_seen_unix_ms":1}}"#))
            .collect();
        let text = format!(
            r#"{{"format":"{FORMAT}","version":1,"members":[{}]}}"#,
            many.join(",")
        );
        fs::write(&path, text).unwrap();
        let err = load(&path, MAX_AGE, now, wall).unwrap_err();
        assert!(
            format!("{err:#}").contains("more than the limit"),
            "{err:#}"
        );
    }
}
