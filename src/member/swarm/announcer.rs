//! Announcing to the conductor: at the interval it asks for (with jitter), with backoff while
//! it is away, and a `LEAVE` on the way out. Peers already known keep working meanwhile.

use std::time::Duration;

use crate::conductor;
use crate::member::shared::Shared;
use crate::member::Event;

/// How long one exchange with the conductor may take.
const CONDUCTOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest re-announce interval we accept from a conductor.
const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait between attempts while the conductor is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub fn announce_loop(shared: &Shared) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let stopping = || shared.is_shutting_down();
        let wait = match announce_once(shared, &stopping) {
            Ok((interval, peers)) => {
                backoff = Duration::from_secs(1);
                log::debug!(
                    "conductor: {} peers, next announce in {interval:?}",
                    peers.len()
                );
                shared.emit(Event::ConductorOk { peers: peers.len() });
                shared.book.learn(peers.into_iter());
                // Jitter spreads the announces of members that started together; the floor
                // keeps a broken conductor from making us announce in a tight loop.
                interval
                    .max(MIN_ANNOUNCE_INTERVAL)
                    .mul_f64(0.75 + 0.25 * fastrand::f64())
            }
            Err(_) if shared.is_shutting_down() => return,
            Err(e) => {
                let error = format!("{e:#}");
                // The error names the conductor already.
                log::warn!("{error}; retrying in {backoff:?}");
                shared.emit(Event::ConductorUnreachable {
                    error,
                    retry_in: backoff,
                });
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        if shared.wait_for_shutdown(wait) {
            return;
        }
    }
}

/// One announce: signed with the swarm's key in a private swarm.
fn announce_once(
    shared: &Shared,
    stopping: conductor::Cancelled,
) -> anyhow::Result<(Duration, Vec<std::net::SocketAddr>)> {
    let (to, id, port) = (&shared.orch.conductor, shared.peer_id, shared.listen_port);
    match &shared.keys {
        Some(keys) => conductor::announce_signed(to, keys, id, port, CONDUCTOR_TIMEOUT, stopping),
        None => conductor::announce_unless(to, shared.swarm, id, port, CONDUCTOR_TIMEOUT, stopping),
    }
}

/// Tells the conductor we are leaving, waiting at most `timeout`.
pub fn leave(shared: &Shared, timeout: Duration) {
    let (to, id, port) = (&shared.orch.conductor, shared.peer_id, shared.listen_port);
    let left = match &shared.keys {
        Some(keys) => conductor::leave_signed(to, keys, id, port, timeout),
        None => conductor::leave(to, shared.swarm, id, port, timeout),
    };
    if let Err(e) = left {
        log::debug!("could not tell the conductor we are leaving: {e:#}");
    }
}
