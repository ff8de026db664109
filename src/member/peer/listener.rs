//! The accept loop: each connection a peer opens gets a thread, up to `max_peers` at once.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use super::{serve, Slot};
use crate::member::shared::{OnPanic, Shared};

/// After a failed accept (out of file descriptors, say), retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Starts the thread that accepts peers until shutdown.
pub fn start(shared: &Arc<Shared>, listener: TcpListener) -> std::io::Result<()> {
    let for_loop = Arc::clone(shared);
    shared.spawn("listener", OnPanic::Fail, move || {
        accept_loop(&for_loop, &listener)
    })
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.is_shutting_down() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::debug!("cannot accept a peer: {e}");
                if shared.wait_for_shutdown(ACCEPT_BACKOFF) {
                    return;
                }
                continue;
            }
        };
        // Incoming and outgoing connections count apart, so that peers dialing us can never
        // leave us without room to dial the peers we need.
        let max = shared.config.max_peers;
        let Some(slot) = Slot::take(&shared.book.incoming, max) else {
            log::debug!("refusing a connection: {max} incoming connections already");
            continue;
        };
        let for_peer = Arc::clone(shared);
        let _ = shared.spawn("peer-in", OnPanic::DropPeer, move || {
            let remote = stream.peer_addr().ok();
            if let Err(e) = serve(&for_peer, stream, None, slot) {
                log::debug!("incoming peer {remote:?}: {e:#}");
            }
        });
    }
}
