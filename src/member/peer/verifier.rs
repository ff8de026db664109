//! Checking the parts one connection receives, on a thread of its own.
//!
//! Why: the reader thread used to take a part off the socket, hash it, write it and only then
//! read the next one, so on a fast link the socket waited while the part was hashed. Here the
//! reader reads the next part while this thread hashes the last one, and the work spreads over
//! the cores (the whole-file hasher and the member's [`Storer`](crate::member::storer) are
//! threads of their own). A part is handed over at a rendezvous: at most one part waits in the
//! reader's buffer while one is checked here; a checked part goes to the storer's short queue,
//! and its buffer comes back to the reader to be filled again (no allocation or zeroing per
//! part).
//!
//! A part that fails its checksum bans the peer and closes the connection from here; the reader
//! then ends with the reason this thread recorded.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::Scope;

use super::PeerLink;
use crate::member::shared::Shared;
use crate::member::storage::PartBuffer;
use crate::member::storer::StoreJob;
use crate::member::Event;
use crate::orch::Checksum;
use crate::sync::Mutex;

/// Buffers kept for the reader to fill again: the one in the reader and the one here.
const SPARE_BUFFERS: usize = 2;

/// The reader's side of one connection's verifier thread.
pub struct Verifier {
    parts: SyncSender<(u32, PartBuffer)>,
    spares: Receiver<PartBuffer>,
    stopped: Arc<Mutex<Option<String>>>,
}

impl Verifier {
    /// Starts the thread in `scope`, so that it ends (and is joined) with the conversation.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        shared: &'scope Arc<Shared>,
        link: &'scope Arc<PeerLink>,
    ) -> std::io::Result<Verifier> {
        let (parts, incoming) = mpsc::sync_channel(0);
        let (give_back, spares) = mpsc::sync_channel(SPARE_BUFFERS);
        let stopped = Arc::new(Mutex::new(None));
        let why = Arc::clone(&stopped);
        std::thread::Builder::new()
            .name("peer-verify".into())
            .spawn_scoped(scope, move || {
                if let Err(reason) = verify_and_store(shared, link, &incoming, give_back) {
                    *why.lock() = Some(reason);
                    // Wakes the reader wherever it waits, so the connection ends now.
                    link.close(shared);
                }
                // Only now may the reader's next hand-over fail: the reason is there first.
                drop(incoming);
            })?;
        Ok(Verifier {
            parts,
            spares,
            stopped,
        })
    }

    /// Hands over a part read in full (and expected: not an endgame duplicate); waits while the
    /// part before it is still being checked. Fails once the verifier has stopped, with why.
    pub fn submit(&self, index: u32, part: PartBuffer) -> Result<(), String> {
        self.parts.send((index, part)).map_err(|_| {
            self.stopped()
                .unwrap_or_else(|| "part verifier gone".into())
        })
    }

    /// A buffer to read the next part into: one given back, or a new one.
    pub fn spare(&self) -> PartBuffer {
        self.spares.try_recv().unwrap_or_default()
    }

    /// Why the verifier stopped on its own (a bad part, a disk error), if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.lock().clone()
    }
}

/// Checks each part against the `.orch` and stores it, until the reader hangs up; an error
/// says why the connection must end.
fn verify_and_store(
    shared: &Arc<Shared>,
    link: &Arc<PeerLink>,
    incoming: &Receiver<(u32, PartBuffer)>,
    give_back: SyncSender<PartBuffer>,
) -> Result<(), String> {
    for (index, part) in incoming {
        let Some(expected) = shared.orch.part_checksums.get(index as usize) else {
            shared.picker.lock().release(index);
            return Err(format!("part {index} is not in the file"));
        };
        if Checksum::of(&part) != *expected {
            shared.picker.lock().release(index);
            shared
                .counters
                .parts_rejected
                .fetch_add(1, Ordering::Relaxed);
            shared.emit(Event::PartRejected {
                index,
                addr: link.addr,
            });
            shared.book.ban(link.peer_id, link.listen_addr);
            return Err(format!("banned: part {index} failed its checksum"));
        }
        shared.storer.submit(StoreJob {
            index,
            buffer: part,
            from: Arc::clone(link),
            give_back: give_back.clone(),
        })?;
    }
    Ok(())
}
