//! Checking and storing the parts one connection receives, on threads of their own.
//!
//! Why: the reader thread used to take a part off the socket, hash it, write it and only then
//! read the next one, so on a fast link the socket waited while the part was hashed, and one
//! thread carried a SHA-256 pass and both copies of every byte (socket to buffer, buffer to the
//! page cache). With the check and the write here, the reader reads the next part while these
//! threads hash the last ones, and the work spreads over the cores (the whole-file hasher is
//! another thread). Two threads check a connection's parts, and one more part may wait for
//! them: with a single checker taking parts at a rendezvous, a 1 GiB transfer from one seeder
//! left the two cores idle 14 % of it, each idle moment with the reader waiting to hand a part
//! over, the seeder waiting for the socket to drain and the whole-file hasher caught up
//! (`perf record -e sched:sched_switch`: see docs/BENCHMARKS.md). A connection holds at most
//! [`CHECKING_BYTES`] of parts beyond the one the reader fills (or one part of any size), and
//! the buffers go back to the reader to be filled again (no allocation or zeroing per part).
//!
//! A part that fails its checksum bans the peer and closes the connection from here; the reader
//! then ends with the reason the checker recorded.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::Scope;

use super::{store_part, PeerLink};
use crate::member::shared::Shared;
use crate::member::Event;
use crate::orch::Checksum;
use crate::sync::Mutex;

/// Most bytes of one connection's parts being checked or waiting to be, beyond the one the
/// reader fills: with 1 MiB parts two checkers and one part waiting, with 4 MiB parts (a 4 GiB
/// file's) one checker and none, so that a member's memory stays where it was for large parts.
const CHECKING_BYTES: u64 = 4 << 20;
/// Most parts checked or waiting at once: two checkers, one waiting.
const MAX_SLOTS: u64 = 3;
const MAX_CHECKERS: usize = 2;

/// How many threads check one connection's parts of `part_size` bytes, and how many parts may
/// wait for them (see [`CHECKING_BYTES`]).
fn checking_slots(part_size: u64) -> (usize, usize) {
    let slots = (CHECKING_BYTES / part_size.max(1)).clamp(1, MAX_SLOTS) as usize;
    let checkers = slots.min(MAX_CHECKERS);
    (checkers, slots - checkers)
}

/// The reader's side of one connection's checker threads.
pub struct Verifier {
    parts: SyncSender<(u32, Vec<u8>)>,
    spares: Receiver<Vec<u8>>,
    state: Arc<State>,
}

/// What the checkers tell the reader.
#[derive(Default)]
struct State {
    /// Why a checker stopped on its own, if one did.
    stopped: Mutex<Option<String>>,
    /// Parts handed over and not yet stored or refused.
    checking: Mutex<Vec<u32>>,
}

impl Verifier {
    /// Starts the threads in `scope`, so that they end (and are joined) with the conversation.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        shared: &'scope Arc<Shared>,
        link: &'scope PeerLink,
    ) -> std::io::Result<Verifier> {
        let (checkers, waiting) = checking_slots(shared.orch.part_size);
        let (parts, incoming) = mpsc::sync_channel(waiting);
        let incoming = Arc::new(Mutex::new(incoming));
        // Buffers kept for the reader to fill again: one for each part that can be held.
        let (give_back, spares) = mpsc::sync_channel(checkers + waiting + 1);
        let state = Arc::new(State::default());
        for started in 0..checkers {
            let incoming = Arc::clone(&incoming);
            let give_back = give_back.clone();
            let state = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("peer-verify".into())
                .spawn_scoped(scope, move || {
                    if let Err(reason) =
                        verify_and_store(shared, link, &incoming, &state, give_back)
                    {
                        state.stopped.lock().get_or_insert(reason);
                        // Wakes the reader wherever it waits, so the connection ends now.
                        link.close(shared);
                        release_the_rest(shared, &incoming, &state);
                    }
                });
            match spawned {
                Ok(_) => {}
                // One checker is enough to go on with, only slower on a fast link.
                Err(e) if started > 0 => {
                    log::debug!(
                        "peer {}: cannot start a second part checker: {e}",
                        link.addr
                    );
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Verifier {
            parts,
            spares,
            state,
        })
    }

    /// Hands over a part read in full (and expected: not an endgame duplicate); waits while
    /// every checker is busy and the parts that may wait are there. Fails only if the checkers
    /// are gone (a checker that fails takes and releases the parts handed over after it).
    pub fn submit(&self, index: u32, part: Vec<u8>) -> Result<(), String> {
        self.state.checking.lock().push(index);
        self.parts.send((index, part)).map_err(|_| {
            self.state.checking.lock().retain(|&i| i != index);
            self.stopped()
                .unwrap_or_else(|| "part verifier gone".into())
        })
    }

    /// Adds the parts handed over and still being checked to `asked`: not to be asked of this
    /// peer again meanwhile, though they are no longer among the requests out.
    pub fn add_checking(&self, asked: &mut Vec<u32>) {
        asked.extend(self.state.checking.lock().iter());
    }

    /// A buffer to read the next part into: one given back, or a new one.
    pub fn spare(&self) -> Vec<u8> {
        self.spares.try_recv().unwrap_or_default()
    }

    /// Why the verifier stopped on its own (a bad part, a disk error), if it did.
    pub fn stopped(&self) -> Option<String> {
        self.state.stopped.lock().clone()
    }
}

/// Checks each part it takes against the `.orch` and stores it, until the reader hangs up; an
/// error says why the connection must end.
fn verify_and_store(
    shared: &Arc<Shared>,
    link: &PeerLink,
    incoming: &Mutex<Receiver<(u32, Vec<u8>)>>,
    state: &State,
    give_back: SyncSender<Vec<u8>>,
) -> Result<(), String> {
    loop {
        // The lock is held only while waiting for the next part, not while checking it.
        let Ok((index, part)) = incoming.lock().recv() else {
            return Ok(());
        };
        let checked = check_and_store(shared, link, index, part);
        state.checking.lock().retain(|&i| i != index);
        // The reader may already hold enough spares; then this one is freed.
        let _ = give_back.try_send(checked?);
    }
}

/// After an error, takes the parts still handed over until the reader hangs up and gives their
/// requests back unchecked: a part left waiting in the channel would be dropped with it, and
/// never asked again.
fn release_the_rest(shared: &Shared, incoming: &Mutex<Receiver<(u32, Vec<u8>)>>, state: &State) {
    while let Ok((index, _)) = incoming.lock().recv() {
        shared.picker.lock().release(index);
        state.checking.lock().retain(|&i| i != index);
    }
}

/// Checks one part and stores it; returns its buffer for the reader to fill again.
fn check_and_store(
    shared: &Arc<Shared>,
    link: &PeerLink,
    index: u32,
    part: Vec<u8>,
) -> Result<Vec<u8>, String> {
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
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parts_get_two_checkers_and_one_waiting_large_parts_one_checker() {
        assert_eq!(checking_slots(256 << 10), (2, 1));
        assert_eq!(checking_slots(1 << 20), (2, 1));
        assert_eq!(checking_slots(2 << 20), (2, 0));
        assert_eq!(checking_slots(4 << 20), (1, 0));
        assert_eq!(checking_slots(64 << 20), (1, 0));
        assert_eq!(checking_slots(0), (2, 1));
    }
}
