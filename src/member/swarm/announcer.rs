//! Announcing to the conductors: one loop per conductor, each at the interval its conductor
//! asks for (with jitter), and a `LEAVE` to every one of them on the way out. What they return
//! goes into one address book, so the peers of all of them are merged, and a conductor that is
//! down costs nothing but its own loop's retries: peers already known, and the other
//! conductors, keep working meanwhile.
//!
//! Why the loop watches its conductor between announces: the conductor keeps only soft state,
//! so one that restarted knows nobody until each member's next regular announce (30 s by
//! default), and a newcomer that asks it in the meantime hears of nobody. So
//! - a failed announce is retried soon, 0.5 s doubling to 2 s, not after the full interval
//!   (the first failure of an outage is a warning, later ones one in fifteen); if a probe
//!   connects meanwhile the conductor is up and refusing (or not answering), and the backoff
//!   goes on doubling to 30 s;
//! - between announces, a connect probe every second (a TCP handshake, closed at once with a
//!   reset: on Linux the conductor's deferred accept never even wakes for it) notices the
//!   conductor go away (a warning and a `ConductorUnreachable` event), and the first probe
//!   that connects again after that re-announces at once, so a restarted conductor hears from
//!   every live member within about a second of coming back, if it was away for longer than a
//!   probe period (a quicker restart goes unnoticed: that is what `--state` is for);
//! - a member still fetching that no connected peer can give anything (none connected, or
//!   only other newcomers) re-announces every second, so that it hears of the members the
//!   conductor learns about in the meantime.
//!
//! Every wait is on the member's shutdown signal, and every connection attempt is cancelled
//! by it, so `Member::quit` never waits for a conductor.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::conductor;
use crate::member::shared::Shared;
use crate::member::{Event, Phase};

/// How long one exchange with the conductor may take.
const CONDUCTOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest re-announce interval we accept from a conductor.
const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);
/// The first retry after a failed announce, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts while the conductor is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait between attempts while the conductor accepts connections but the announces
/// fail (it refuses them, or never answers): asking every 2 s would only load it.
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(30);
/// Failed announces in a row told as events at the start of an outage (the first is also a
/// warning); after them, one in [`REPORT_EVERY`] (about every 30 s at [`MAX_BACKOFF`]) is
/// both.
const REPORTED_FAILURES: u32 = 3;
const REPORT_EVERY: u32 = 15;
/// How often the conductor is probed between announces, and how long a probe may take; a
/// member still fetching that no connected peer can give a part announces this often instead.
const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// Announces to `conductor` until the member shuts down.
pub fn announce_loop(shared: &Shared, conductor: &str) {
    let mut backoff = FIRST_BACKOFF;
    // Announces failed in a row: the first few of an outage are reported, then only now and
    // then, so that a conductor gone for good is not a warning every two seconds.
    let mut failures = 0u32;
    // The conductor accepts connections but the announces fail.
    let mut refusing = false;
    loop {
        let (wait, answered) = match announce(shared, conductor) {
            Ok((interval, peers)) => {
                backoff = FIRST_BACKOFF;
                failures = 0;
                log::debug!(
                    "conductor {conductor}: {} peers, next announce in {interval:?}",
                    peers.len()
                );
                shared.emit(Event::ConductorOk {
                    conductor: conductor.to_string(),
                    peers: peers.len(),
                });
                shared.book.learn(peers.into_iter());
                // Jitter spreads the announces of members that started together; the floor
                // keeps a broken conductor from making us announce in a tight loop.
                let wait = interval
                    .max(MIN_ANNOUNCE_INTERVAL)
                    .mul_f64(0.75 + 0.25 * fastrand::f64());
                (wait, true)
            }
            Err(_) if shared.is_shutting_down() => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                let error = format!("{e:#}");
                // The error names the conductor already.
                let now_and_then = failures.is_multiple_of(REPORT_EVERY);
                if failures == 1 || now_and_then {
                    log::warn!("{error}; retrying in {backoff:?}");
                } else {
                    log::debug!("{error}; retrying in {backoff:?}");
                }
                if failures <= REPORTED_FAILURES || now_and_then {
                    shared.emit(Event::ConductorUnreachable {
                        conductor: conductor.to_string(),
                        error,
                        retry_in: backoff,
                    });
                }
                let wait = backoff;
                let cap = match refusing {
                    true => MAX_REFUSED_BACKOFF,
                    false => MAX_BACKOFF,
                };
                backoff = (backoff * 2).min(cap);
                (wait, false)
            }
        };
        match watch(shared, conductor, Instant::now() + wait, answered) {
            Watched::ShuttingDown => return,
            // The announce failed although a probe connected since: not an outage.
            Watched::Due { connected } => refusing = !answered && connected,
        }
    }
}

/// How a wait between announces ended.
enum Watched {
    ShuttingDown,
    /// Time to announce; `connected`: the last probe of the wait connected.
    Due {
        connected: bool,
    },
}

/// The one announce call, so that the request it sends is made in one place: signed with the
/// swarm's key in a private swarm.
fn announce(shared: &Shared, conductor: &str) -> anyhow::Result<(Duration, Vec<SocketAddr>)> {
    let stopping = || shared.is_shutting_down();
    let (id, port) = (shared.peer_id, shared.listen_port);
    match &shared.keys {
        Some(keys) => {
            conductor::announce_signed(conductor, keys, id, port, CONDUCTOR_TIMEOUT, &stopping)
        }
        None => conductor::announce_unless(
            conductor,
            shared.swarm,
            id,
            port,
            CONDUCTOR_TIMEOUT,
            &stopping,
        ),
    }
}

/// Waits until `until`, probing the conductor every [`PROBE_PERIOD`]; returns early when it
/// should be asked again at once: a probe connects after one found it away, or the member is
/// lonely after a good announce (it then asks every period). `answered`: the last announce
/// succeeded, so a probe that fails is news.
///
/// Only a failed probe makes a later good one a reason to announce early: a conductor that
/// accepts connections but refuses the announce (full, say) is asked again after the backoff,
/// not at every probe.
fn watch(shared: &Shared, conductor: &str, until: Instant, answered: bool) -> Watched {
    let mut away = false;
    let mut connected = false;
    // Resolved once for the probes of this wait, and again after a probe fails (the name may
    // point elsewhere now), so that probing costs no name lookup a second.
    let mut addrs = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if shared.wait_for_shutdown(left.min(PROBE_PERIOD)) {
            return Watched::ShuttingDown;
        }
        if Instant::now() >= until || (answered && lonely(shared)) {
            return Watched::Due { connected };
        }
        let probed = probe(shared, conductor, &mut addrs);
        connected = probed.is_ok();
        match probed {
            Ok(()) if away => {
                log::info!("conductor {conductor} answers again; announcing");
                return Watched::Due { connected };
            }
            Ok(()) => {}
            Err(error) if !away => {
                away = true;
                if answered {
                    log::warn!("{error}; announcing again once it answers");
                    shared.emit(Event::ConductorUnreachable {
                        conductor: conductor.to_string(),
                        error,
                        retry_in: PROBE_PERIOD,
                    });
                }
            }
            Err(_) => {}
        }
    }
}

/// Still fetching, and no connected peer has a part we lack (none connected, or only other
/// newcomers): the conductor may know of one any moment.
fn lonely(shared: &Shared) -> bool {
    shared.phase() == Phase::Fetching && !shared.picker.lock().any_part_to_fetch()
}

/// Whether a TCP connection to the conductor opens within [`PROBE_PERIOD`]; if not, why.
/// `addrs` are the conductor's addresses, resolved here when empty and emptied on a failure.
fn probe(shared: &Shared, conductor: &str, addrs: &mut Vec<SocketAddr>) -> Result<(), String> {
    let stopping = || shared.is_shutting_down();
    if addrs.is_empty() {
        *addrs = conductor
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve conductor {conductor}: {e}"))?
            .collect();
    }
    let mut failure = format!("conductor {conductor}: the name resolves to no address");
    for &addr in addrs.iter() {
        match crate::net::connect(addr, PROBE_PERIOD, &stopping) {
            Ok(stream) => {
                // A reset rather than a FIN: the conductor's kernel drops the connection
                // before anything above it sees it.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Err(e) => failure = format!("conductor {conductor}: cannot connect: {e}"),
        }
    }
    addrs.clear();
    Err(failure)
}

/// Tells every conductor we are leaving, all at once, waiting at most `timeout`.
pub fn leave(shared: &Shared, timeout: Duration) {
    std::thread::scope(|scope| {
        for conductor in &shared.conductors {
            let leave = move || {
                let (id, port) = (shared.peer_id, shared.listen_port);
                let left = match &shared.keys {
                    Some(keys) => conductor::leave_signed(conductor, keys, id, port, timeout),
                    None => conductor::leave(conductor, shared.swarm, id, port, timeout),
                };
                if let Err(e) = left {
                    log::debug!("could not tell conductor {conductor} we are leaving: {e:#}");
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("leave".into())
                .spawn_scoped(scope, leave)
            {
                log::debug!("conductor {conductor} not told we are leaving: no thread ({e})");
            }
        }
    });
}
