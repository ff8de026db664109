//! Checking and storing the parts one connection receives, on a thread of its own.
//!
//! Why: the reader thread used to take a part off the socket, hash it, write it and only then
//! read the next one, so on a fast link the socket waited while the part was hashed, and one
//! thread carried a SHA-256 pass and both copies of every byte (socket to buffer, buffer to the
//! page cache). With the check and the write here, the reader reads the next part while this
//! thread hashes the last one, and the work spreads over the cores (the whole-file hasher is a
//! third thread). A part is handed over at a rendezvous: at most one part waits in the reader's
//! buffer while one is checked here, so a connection holds at most two part buffers, and the
//! buffers go back to the reader to be filled again (no allocation or zeroing per part).
//!
//! A part that fails its checksum bans the peer and closes the connection from here; the reader
//! then ends with the reason this thread recorded.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::Scope;

use super::{store_part, PeerLink};
use crate::member::shared::Shared;
use crate::member::Event;
use crate::orch::Checksum;
use crate::sync::Mutex;

/// Buffers kept for the reader to fill again: the one in the reader and the one here.
const SPARE_BUFFERS: usize = 2;

/// The reader's side of one connection's verifier thread.
pub struct Verifier {
    parts: SyncSender<(u32, Vec<u8>)>,
    spares: Receiver<Vec<u8>>,
    stopped: Arc<Mutex<Option<String>>>,
}

impl Verifier {
    /// Starts the thread in `scope`, so that it ends (and is joined) with the conversation.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        shared: &'scope Arc<Shared>,
        link: &'scope PeerLink,
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
    pub fn submit(&self, index: u32, part: Vec<u8>) -> Result<(), String> {
        self.parts.send((index, part)).map_err(|_| {
            self.stopped()
                .unwrap_or_else(|| "part verifier gone".into())
        })
    }

    /// A buffer to read the next part into: one given back, or a new one.
    pub fn spare(&self) -> Vec<u8> {
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
    link: &PeerLink,
    incoming: &Receiver<(u32, Vec<u8>)>,
    give_back: SyncSender<Vec<u8>>,
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
        let (buffer, new) =
            store_part(shared, index, part, Some(link)).map_err(|e| format!("{e:#}"))?;
        if new {
            shared.note_peer_used(link.peer_id);
        }
        // The reader may already hold enough spares; then this one is freed.
        let _ = give_back.try_send(buffer);
    }
    Ok(())
}
