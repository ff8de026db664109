//! The address book: every member address a member has heard of (from the conductor, from
//! peer exchange, from peers that connected), when each may be dialed again, and who is banned.
//! Bounded, so that peer exchange cannot grow it without limit.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};
use crate::wire::PeerId;

/// Longest wait before dialing again a peer that refused or failed.
const MAX_DIAL_BACKOFF: Duration = Duration::from_secs(30);
/// Most addresses remembered: peer exchange must not grow the book without bound.
const MAX_KNOWN_PEERS: usize = 4096;

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
    /// Banned peers, by id and by listen address: forever (`None`), or until a time.
    banned_ids: HashMap<PeerId, Option<Instant>>,
    banned_addrs: HashMap<SocketAddr, Option<Instant>>,
}

/// Whether a ban that lasts `until` holds at `now`.
fn in_force(until: Option<&Option<Instant>>, now: Instant) -> bool {
    until.is_some_and(|until| until.is_none_or(|t| t > now))
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
        let mut state = self.state.lock();
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

    /// Never talks to the peer again: it broke the protocol or sent bad data.
    pub fn ban(&self, peer_id: PeerId, listen_addr: Option<SocketAddr>) {
        let mut state = self.state.lock();
        state.banned_ids.insert(peer_id, None);
        if let Some(addr) = listen_addr {
            state.banned_addrs.insert(addr, None);
        }
    }

    /// Does not talk to the peer for `duration`: for what a liar and a congested link both
    /// cause (requests held without an answer), so that an honest peer behind a link that
    /// stalled, perhaps the last one with the parts we lack, is not lost for good.
    pub fn suspend(&self, peer_id: PeerId, listen_addr: Option<SocketAddr>, duration: Duration) {
        let until = Instant::now() + duration;
        // A ban for good stays one; a shorter suspension is lengthened.
        let lengthen = |ban: &mut Option<Instant>| {
            if let Some(t) = ban {
                *t = (*t).max(until);
            }
        };
        let mut state = self.state.lock();
        lengthen(state.banned_ids.entry(peer_id).or_insert(Some(until)));
        if let Some(addr) = listen_addr {
            lengthen(state.banned_addrs.entry(addr).or_insert(Some(until)));
        }
    }

    pub fn is_banned(&self, peer_id: PeerId, listen_addr: Option<SocketAddr>) -> bool {
        self.is_banned_at(peer_id, listen_addr, Instant::now())
    }

    fn is_banned_at(&self, peer_id: PeerId, listen_addr: Option<SocketAddr>, now: Instant) -> bool {
        let state = self.state.lock();
        in_force(state.banned_ids.get(&peer_id), now)
            || listen_addr.is_some_and(|a| in_force(state.banned_addrs.get(&a), now))
    }

    pub fn mark_self(&self, addr: SocketAddr) {
        self.state.lock().ourselves.insert(addr);
    }

    /// A dial (and the connection it made, if any) is over.
    pub fn dial_ended(&self, addr: SocketAddr, connected: bool) {
        let mut state = self.state.lock();
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
    pub fn take_due(&self, connected: &HashSet<SocketAddr>, limit: usize) -> Vec<SocketAddr> {
        let mut state = self.state.lock();
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
                    || in_force(banned_addrs.get(*addr), now))
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

    /// Waits until something changes or `timeout` passes.
    pub fn wait_for_news(&self, timeout: Duration) {
        let state = self.state.lock();
        let _ = self.changed.wait_timeout(state, timeout);
    }

    /// Wakes whoever waits for news (the member is shutting down).
    pub fn wake(&self) {
        self.changed.notify_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspension_ends_and_a_ban_does_not() {
        let book = Book::default();
        let (liar, stalled) = (PeerId::random(), PeerId::random());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        book.ban(liar, None);
        book.suspend(stalled, Some(addr), Duration::from_secs(30));
        let now = Instant::now();
        let later = now + Duration::from_secs(31);
        assert!(book.is_banned_at(stalled, None, now));
        assert!(book.is_banned_at(PeerId::random(), Some(addr), now));
        assert!(!book.is_banned_at(stalled, Some(addr), later));
        assert!(book.is_banned_at(liar, None, later));
        // Suspending a banned peer does not shorten its ban.
        book.suspend(liar, None, Duration::from_secs(1));
        assert!(book.is_banned_at(liar, None, later));
    }
}
