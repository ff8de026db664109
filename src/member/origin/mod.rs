//! HTTP origins (`member FILE.orch --origin URL`): a server that has the file (a web server,
//! an object store, an artifact repository) and serves byte ranges of it. A member takes parts
//! from it as from a peer, every part verified by its SHA-256 and then stored and announced
//! (`HAVE`) exactly like a part from a peer, so the other members get it from this member and
//! the origin sends about one copy of the file to the whole swarm, not one per member.
//!
//! The swarm comes first. An origin is asked for a part only
//! - when no connected peer has it (after a short grace at start, for the first peers to say
//!   what they have), each member taking first its own share of those parts (see [`share`]),
//!   or
//! - when the peers together deliver less than one origin request does (measured), and then
//!   for a part nobody is asked for, or else a second copy of one asked from a peer.
//!
//! At most [`MAX_IN_FLIGHT`] origin requests are out at once, and one once two peers are
//! giving us parts: several members asking at once keep the origin's uplink busy, while a
//! member fed by peers needs the origin only for the parts nobody has yet.
//!
//! A request that fails ([`http`] names why: a `200`, a `416`, a wrong range or length, a
//! redirect loop, an early close, a stall) is logged and retried after a back-off (1 s,
//! doubling to 30 s). A part that fails its checksum, or an answer showing that the file on the
//! server changed (`If-Range` with the validator first seen, [`range::Validator`]), counts
//! against the origin, which is dropped after [`MAX_STRIKES`]. Nothing but verified bytes are
//! ever written.

pub mod http;
pub mod range;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::member::peer::store_part;
use crate::member::picker::Outside;
use crate::member::shared::{OnPanic, Shared};
use crate::member::throttle::TokenBucket;
use crate::member::{Event, Phase};
use crate::orch::Checksum;
use crate::sync::Mutex;
use http::{Client, Failure, Limits};
use range::Validator;

/// Most origin requests out at once per member: enough to keep a distant origin's link full
/// while the swarm has nothing, few enough that a dozen members do not crowd it.
pub const MAX_IN_FLIGHT: usize = 3;
/// Peers giving us parts beyond which one origin request at a time is enough.
const FED_BY_PEERS: usize = 2;
/// Parts failing their checksum (or answers from a changed file) before an origin is dropped.
pub const MAX_STRIKES: u32 = 3;
/// How long after start the swarm has to say what it has before the origin is asked: a
/// conductor answer, handshakes and have-maps take a few ms on a LAN.
const GRACE: Duration = Duration::from_millis(200);
/// The window over which the peers' delivery rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle origin worker looks again.
const TURN: Duration = Duration::from_millis(100);

/// Whether `text` is a URL an origin can be: http or https, with a host.
pub fn check_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| format!("{text:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || text.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(text.to_string())
}

struct Origin {
    url: String,
    state: Mutex<OriginState>,
}

#[derive(Default)]
struct OriginState {
    validator: Option<Validator>,
    strikes: u32,
    dropped: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
}

/// The origins of one member, shared by its origin workers.
struct Origins {
    list: Vec<Origin>,
    next: Mutex<usize>,
    client: Client,
    cap: Option<TokenBucket>,
    started: Instant,
    /// One request's rate, bytes per second (moving average), once measured.
    request_rate: Mutex<Option<f64>>,
    /// (when, bytes from peers then): the oldest sample within [`RATE_WINDOW`].
    peer_samples: Mutex<Vec<(Instant, u64)>>,
    /// Parts being fetched from origins now. Taken before the picker's lock.
    asked: Mutex<Vec<u32>>,
}

/// Starts the origin workers when the member has origins and parts to fetch.
pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    if shared.config.origins.is_empty() || shared.is_seeding() {
        return Ok(());
    }
    let origins = Arc::new(Origins {
        list: shared
            .config
            .origins
            .iter()
            .map(|url| Origin {
                url: url.clone(),
                state: Mutex::default(),
            })
            .collect(),
        next: Mutex::new(0),
        client: Client::default(),
        cap: shared.config.origin_max_rate.map(TokenBucket::new),
        started: Instant::now(),
        request_rate: Mutex::new(None),
        peer_samples: Mutex::new(Vec::new()),
        asked: Mutex::new(Vec::new()),
    });
    for slot in 0..MAX_IN_FLIGHT {
        let shared_for = Arc::clone(shared);
        let origins = Arc::clone(&origins);
        shared.spawn("origin", OnPanic::Fail, move || {
            work(&shared_for, &origins, slot)
        })?;
    }
    Ok(())
}

/// One origin request slot: `slot` works only while the budget allows that many requests.
/// It waits a turn only when it had nothing to do, so a busy slot asks again at once.
fn work(shared: &Arc<Shared>, origins: &Origins, slot: usize) {
    let mut buffer = Vec::new();
    loop {
        if shared.is_shutting_down() || shared.phase() != Phase::Fetching {
            return;
        }
        if origins.list.iter().all(|o| o.state.lock().dropped) {
            if slot == 0 {
                log::warn!("no origin left; fetching from peers only");
            }
            return;
        }
        let worked = turn(shared, origins, slot, &mut buffer);
        if !worked && shared.wait_for_shutdown(TURN) {
            return;
        }
    }
}

/// One request, if one is due now; false when there was none to make.
fn turn(shared: &Arc<Shared>, origins: &Origins, slot: usize, buffer: &mut Vec<u8>) -> bool {
    if origins.started.elapsed() < GRACE || slot >= budget(shared) {
        return false;
    }
    let Some(origin) = origins.ready() else {
        return false;
    };
    let Some(index) = pick(shared, origins) else {
        return false;
    };
    let outcome = fetch(shared, origins, origin, index, buffer);
    origins.asked.lock().retain(|&i| i != index);
    if outcome.is_err() {
        shared.picker.lock().release(index);
    }
    match outcome {
        Ok(()) | Err(Failure::Stopped) => {}
        Err(Failure::Retry(why)) => origin.back_off(index, &why),
        Err(Failure::Changed(why)) => origin.strike(shared, index, &why),
    }
    true
}

/// Origin requests allowed at once now (see the module docs).
fn budget(shared: &Shared) -> usize {
    let feeding = shared
        .peers
        .lock()
        .values()
        .filter(|link| link.requests_out() > 0)
        .count();
    if feeding >= FED_BY_PEERS {
        1
    } else {
        MAX_IN_FLIGHT
    }
}

/// The part to ask an origin for, counted as in flight and noted in `origins.asked`; `None`
/// when the swarm has it covered. Last comes a second copy of a part asked from a peer, when
/// the peers are slow: else the download would wait for a slow peer's requests to drain.
fn pick(shared: &Shared, origins: &Origins) -> Option<u32> {
    let share = share(shared);
    // Held while picking, so that no other origin request takes ours for a peer's.
    let mut asked = origins.asked.lock();
    let unavailable = shared
        .picker
        .lock()
        .pick_outside(Outside::Unavailable, share, &asked);
    let index = match unavailable {
        Some(index) => index,
        None => {
            let peers_rate = origins.peers_rate(shared)?;
            let origin_rate = *origins.request_rate.lock();
            if origin_rate.is_some_and(|origin| peers_rate >= origin) {
                return None;
            }
            let mut picker = shared.picker.lock();
            picker
                .pick_outside(Outside::Unrequested, share, &asked)
                .or_else(|| picker.pick_outside(Outside::Duplicate, share, &asked))?
        }
    };
    asked.push(index);
    Some(index)
}

/// Our share of the parts nobody has: `(rank, n)`, our rank among ourselves and the connected
/// peers still fetching, by peer id. Members that see the same peers (a full mesh) split the
/// file between them without a word and ask the origin for different parts, where random
/// picks would collide more and more often as the parts nobody has run out (in the testbed,
/// about one part in eight came twice).
fn share(shared: &Shared) -> (u32, u32) {
    let peers = shared.peers.lock();
    let fetching = peers.values().filter(|link| !link.peer_is_complete());
    let (mut below, mut members) = (0u32, 1u32);
    for link in fetching {
        members += 1;
        if link.peer_id < shared.peer_id {
            below += 1;
        }
    }
    (below, members)
}

fn fetch(
    shared: &Arc<Shared>,
    origins: &Origins,
    origin: &Origin,
    index: u32,
    buffer: &mut Vec<u8>,
) -> Result<(), Failure> {
    let span = shared
        .orch
        .part_span(index)
        .ok_or_else(|| Failure::Retry(format!("part {index} is not in the file")))?;
    // As for a peer: the peer timeout per MiB; under a cap, also the time the cap takes when
    // every origin request shares it.
    let timeout = shared.config.peer_timeout;
    let mut allowed = timeout * span.len.div_ceil(1 << 20).max(1) as u32;
    if let Some(cap) = &origins.cap {
        let shared_rate = (cap.rate() / MAX_IN_FLIGHT as u64).max(1);
        allowed += Duration::from_secs_f64(span.len as f64 / shared_rate as f64);
    }
    let started = Instant::now();
    let limits = Limits {
        deadline: started + allowed,
        idle: timeout,
        cap: origins.cap.as_ref(),
        stopping: &|| shared.is_shutting_down(),
    };
    let validator = origin.state.lock().validator.clone();
    let seen = origins.client.fetch(
        &origin.url,
        span,
        shared.orch.file_size,
        validator.as_ref(),
        &limits,
        buffer,
    )?;
    if Checksum::of(buffer) != shared.orch.part_checksums[index as usize] {
        shared
            .counters
            .parts_rejected
            .fetch_add(1, Ordering::Relaxed);
        return Err(Failure::Changed(format!(
            "part {index} failed its checksum"
        )));
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    origins.note_rate(span.len as f64 / seconds);
    {
        let mut state = origin.state.lock();
        if state.validator.is_none() {
            state.validator = seen;
        }
        state.backoff = Duration::ZERO;
        state.retry_at = None;
    }
    let taken = std::mem::take(buffer);
    // A store that fails has failed the member (a disk error) and given the part back.
    if let Ok((back, new)) = store_part(shared, index, taken, None) {
        *buffer = back;
        if new {
            shared
                .counters
                .bytes_from_origin
                .fetch_add(span.len as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

impl Origins {
    /// The next origin, in turn, that is neither dropped nor waiting out a back-off.
    fn ready(&self) -> Option<&Origin> {
        let mut next = self.next.lock();
        let now = Instant::now();
        for _ in 0..self.list.len() {
            let origin = &self.list[*next % self.list.len()];
            *next = (*next + 1) % self.list.len();
            let state = origin.state.lock();
            if !state.dropped && state.retry_at.is_none_or(|at| at <= now) {
                return Some(origin);
            }
        }
        None
    }

    fn note_rate(&self, rate: f64) {
        let mut average = self.request_rate.lock();
        *average = Some(average.map_or(rate, |old| 0.7 * old + 0.3 * rate));
    }

    /// Bytes per second the peers delivered over the last [`RATE_WINDOW`]; `None` until the
    /// window has passed once.
    fn peers_rate(&self, shared: &Shared) -> Option<f64> {
        let now = Instant::now();
        let counters = &shared.counters;
        let from_peers = counters
            .bytes_down
            .load(Ordering::Relaxed)
            .saturating_sub(counters.bytes_from_origin.load(Ordering::Relaxed));
        let mut samples = self.peer_samples.lock();
        samples.push((now, from_peers));
        // Keep one sample older than the window, to measure across all of it.
        while samples.len() > 2 && now.duration_since(samples[1].0) >= RATE_WINDOW {
            samples.remove(0);
        }
        let (then, bytes) = *samples.first()?;
        let span = now.duration_since(then);
        (span >= RATE_WINDOW).then(|| from_peers.saturating_sub(bytes) as f64 / span.as_secs_f64())
    }
}

impl Origin {
    fn back_off(&self, index: u32, why: &str) {
        let mut state = self.state.lock();
        state.backoff = (state.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        state.retry_at = Some(Instant::now() + state.backoff);
        log::warn!(
            "origin {}: part {index}: {why}; retrying in {:?}",
            self.url,
            state.backoff
        );
    }

    fn strike(&self, shared: &Shared, index: u32, why: &str) {
        let strikes = {
            let mut state = self.state.lock();
            if state.dropped {
                return;
            }
            state.strikes += 1;
            state.dropped = state.strikes >= MAX_STRIKES;
            state.strikes
        };
        if strikes < MAX_STRIKES {
            self.back_off(index, &format!("{why} (strike {strikes} of {MAX_STRIKES})"));
            return;
        }
        let reason = format!("{why}; {MAX_STRIKES} strikes");
        log::warn!("origin {} dropped: part {index}: {reason}", self.url);
        shared.emit(Event::OriginDropped {
            url: self.url.clone(),
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_urls() {
        for good in [
            "http://mirror.example/x.iso",
            "https://10.0.0.1:8443/a/b?c=d",
        ] {
            assert_eq!(check_url(good).as_deref(), Ok(good));
        }
        for bad in [
            "ftp://x/y",
            "mirror.example/x",
            "http://",
            "https:///x",
            "http://a b/c",
        ] {
            assert!(check_url(bad).is_err(), "{bad} accepted");
        }
    }
}
