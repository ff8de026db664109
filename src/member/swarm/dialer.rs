//! Dialing: a thread that connects to the addresses in the book that are due, while the member
//! still fetches, each dial in a thread of its own, up to `max_peers` at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::member::peer::handshake::HANDSHAKE_TIMEOUT;
use crate::member::peer::{serve, Slot};
use crate::member::shared::{OnPanic, Shared};
use crate::member::Phase;

/// How often the connector looks for peers to dial when nothing wakes it.
const DIAL_TICK: Duration = Duration::from_millis(500);

pub fn connect_loop(shared: &Arc<Shared>) {
    while !shared.is_shutting_down() {
        // A member with every part only serves: the members that need it dial it.
        if shared.phase() == Phase::Fetching {
            let connected: HashSet<SocketAddr> = shared
                .peers
                .lock()
                .values()
                .filter_map(|l| l.listen_addr)
                .collect();
            let live = shared.book.outgoing.load(Ordering::Acquire);
            let room = shared.config.max_peers.saturating_sub(live);
            for addr in shared.book.take_due(&connected, room) {
                if !dial(shared, addr) {
                    shared.book.dial_ended(addr, false);
                }
            }
        }
        shared.book.wait_for_news(DIAL_TICK);
    }
}

/// Dials `addr` in a new thread, if a connection slot is free. Returns false when none is.
fn dial(shared: &Arc<Shared>, addr: SocketAddr) -> bool {
    let Some(slot) = Slot::take(&shared.book.outgoing, shared.config.max_peers) else {
        return false;
    };
    let for_dial = Arc::clone(shared);
    shared
        .spawn("peer-out", OnPanic::DropPeer, move || {
            let shared = for_dial;
            // Told to the book however the dial ends, a panic included, or the address would
            // stay marked as being dialed and never be dialed again.
            let mut ended = DialEnded {
                shared: &shared,
                addr,
                connected: false,
            };
            let stopping = || shared.is_shutting_down();
            let result = crate::net::connect(addr, HANDSHAKE_TIMEOUT, &stopping)
                .map_err(|e| anyhow::anyhow!("cannot connect: {e}"))
                .and_then(|stream| serve(&shared, stream, Some(addr), slot));
            match result {
                Ok(()) => ended.connected = true,
                Err(e) => log::debug!("peer {addr}: {e:#}"),
            }
        })
        .is_ok()
}

struct DialEnded<'a> {
    shared: &'a Shared,
    addr: SocketAddr,
    connected: bool,
}

impl Drop for DialEnded<'_> {
    fn drop(&mut self) {
        self.shared.book.dial_ended(self.addr, self.connected);
    }
}
