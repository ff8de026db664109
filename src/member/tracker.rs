//! How a member finds peers: it announces to the conductor at the interval the conductor asks
//! for (with jitter, and with backoff while the conductor is away), learns addresses from the
//! conductor, from peer exchange and from peers that connect to it, and dials the ones it is
//! not connected to. Peers already known keep working while the conductor is down.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{peer, Event, Shared};
use crate::conductor;
use crate::wire::PeerId;

/// How long one exchange with the conductor may take.
const CONDUCTOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest re-announce interval we accept from a conductor.
const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait between attempts while the conductor is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait before dialing again a peer that refused or failed.
const MAX_DIAL_BACKOFF: Duration = Duration::from_secs(30);
/// Most addresses remembered: peer exchange must not grow the book without bound.
const MAX_KNOWN_PEERS: usize = 4096;
/// How often the connector looks for peers to dial when nothing wakes it.
const DIAL_TICK: Duration = Duration::from_millis(500);

#[derive(Default)]
struct KnownPeer {
    /// Dial under way, or connected through a dial of ours.
    busy: bool,
    failures: u32,
    next_try: Option<Instant>,
}

#[derive(Default)]
struct BookState {
    known: HashMap<SocketAddr, KnownPeer>,
    /// Our own listening addresses as others see them: never dialed.
    ourselves: HashSet<SocketAddr>,
    banned_ids: HashSet<PeerId>,
    banned_addrs: HashSet<SocketAddr>,
}

/// Everything a member knows about other members' addresses.
#[derive(Default)]
pub struct Book {
    state: Mutex<BookState>,
    changed: Condvar,
    /// Connections (and handshakes under way) that peers opened to us, and that we opened:
    /// each bounded by `max_peers`, which bounds the threads peers can cause.
    pub incoming: Arc<AtomicUsize>,
    pub outgoing: Arc<AtomicUsize>,
}

impl Book {
    pub fn learn(&self, addrs: impl Iterator<Item = SocketAddr>) {
        let mut state = self.state.lock().unwrap();
        let mut new = false;
        for addr in addrs {
            if addr.port() == 0 || state.known.contains_key(&addr) {
                continue;
            }
            // A full book makes room by forgetting an address that failed; one full of
            // addresses that may yet work keeps them.
            if state.known.len() >= MAX_KNOWN_PEERS && !forget_a_failed_address(&mut state.known) {
                break;
            }
            state.known.insert(addr, KnownPeer::default());
            new = true;
        }
        if new {
            self.changed.notify_all();
        }
    }

    pub fn ban(&self, peer_id: PeerId, listen_addr: Option<SocketAddr>) {
        let mut state = self.state.lock().unwrap();
        state.banned_ids.insert(peer_id);
        if let Some(addr) = listen_addr {
            state.banned_addrs.insert(addr);
        }
    }

    pub fn is_banned(&self, peer_id: PeerId, listen_addr: Option<SocketAddr>) -> bool {
        let state = self.state.lock().unwrap();
        state.banned_ids.contains(&peer_id)
            || listen_addr.is_some_and(|a| state.banned_addrs.contains(&a))
    }

    pub fn mark_self(&self, addr: SocketAddr) {
        self.state.lock().unwrap().ourselves.insert(addr);
    }

    /// A dial (and the connection it made, if any) is over.
    pub fn dial_ended(&self, addr: SocketAddr, connected: bool) {
        let mut state = self.state.lock().unwrap();
        if let Some(peer) = state.known.get_mut(&addr) {
            peer.busy = false;
            peer.failures = if connected { 0 } else { peer.failures + 1 };
            let backoff = Duration::from_millis(500 << peer.failures.min(6)).min(MAX_DIAL_BACKOFF);
            peer.next_try = Some(Instant::now() + backoff);
        }
        self.changed.notify_all();
    }

    /// Addresses worth dialing now, marked busy: those that failed least first, so that new
    /// addresses (from the conductor, say) do not wait behind many that keep failing.
    fn take_due(&self, connected: &HashSet<SocketAddr>, limit: usize) -> Vec<SocketAddr> {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let BookState {
            known,
            ourselves,
            banned_addrs,
            ..
        } = &mut *state;
        let mut due: Vec<(u32, SocketAddr)> = known
            .iter()
            .filter(|(addr, peer)| {
                !(peer.busy
                    || peer.next_try.is_some_and(|t| t > now)
                    || connected.contains(*addr)
                    || ourselves.contains(*addr)
                    || banned_addrs.contains(*addr))
            })
            .map(|(addr, peer)| (peer.failures, *addr))
            .collect();
        due.sort_unstable_by_key(|(failures, _)| *failures);
        due.truncate(limit);
        for (_, addr) in &due {
            if let Some(peer) = known.get_mut(addr) {
                peer.busy = true;
            }
        }
        due.into_iter().map(|(_, addr)| addr).collect()
    }

    fn wait_for_news(&self, timeout: Duration) {
        let state = self.state.lock().unwrap();
        let _ = self.changed.wait_timeout(state, timeout).unwrap();
    }
}

/// Forgets the known address that failed most often and is not being dialed. Without this, a
/// peer could fill the book with made-up addresses (`PEX`) and lock out the real members the
/// conductor names later.
fn forget_a_failed_address(known: &mut HashMap<SocketAddr, KnownPeer>) -> bool {
    let worst = known
        .iter()
        .filter(|(_, peer)| !peer.busy && peer.failures > 0)
        .max_by_key(|(_, peer)| peer.failures)
        .map(|(addr, _)| *addr);
    worst.is_some_and(|addr| known.remove(&addr).is_some())
}

/// Starts the announce loop and the connector.
pub fn start(shared: Arc<Shared>) -> Result<()> {
    let for_connector = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("announcer".into())
        .spawn(move || announce_loop(&shared))?;
    std::thread::Builder::new()
        .name("connector".into())
        .spawn(move || connect_loop(&for_connector))?;
    Ok(())
}

fn announce_loop(shared: &Shared) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = match conductor::announce(
            &shared.orch.conductor,
            shared.swarm,
            shared.peer_id,
            shared.listen_port,
            CONDUCTOR_TIMEOUT,
        ) {
            Ok((interval, peers)) => {
                backoff = Duration::from_secs(1);
                log::debug!(
                    "conductor: {} peers, next announce in {interval:?}",
                    peers.len()
                );
                shared.emit(Event::ConductorOk { peers: peers.len() });
                shared.tracker.learn(peers.into_iter());
                // Jitter spreads the announces of members that started together; the floor
                // keeps a broken conductor from making us announce in a tight loop.
                interval
                    .max(MIN_ANNOUNCE_INTERVAL)
                    .mul_f64(0.75 + 0.25 * fastrand::f64())
            }
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

fn connect_loop(shared: &Arc<Shared>) {
    while !shared.is_shutting_down() {
        // A member with every part only serves: the members that need it dial it.
        if shared.phase() == super::Phase::Fetching {
            let connected: HashSet<SocketAddr> = shared
                .peers
                .lock()
                .unwrap()
                .values()
                .filter_map(|l| l.listen_addr)
                .collect();
            let live = shared
                .tracker
                .outgoing
                .load(std::sync::atomic::Ordering::Acquire);
            let room = shared.config.max_peers.saturating_sub(live);
            for addr in shared.tracker.take_due(&connected, room) {
                if !peer::dial(shared, addr) {
                    shared.tracker.dial_ended(addr, false);
                }
            }
        }
        shared.tracker.wait_for_news(DIAL_TICK);
    }
}

/// Tells the conductor we are leaving, waiting at most `timeout`.
pub fn leave(shared: &Shared, timeout: Duration) {
    if let Err(e) = conductor::leave(
        &shared.orch.conductor,
        shared.swarm,
        shared.peer_id,
        shared.listen_port,
        timeout,
    ) {
        log::debug!("could not tell the conductor we are leaving: {e:#}");
    }
}
