//! The whole file's SHA-256, computed while the download runs rather than in a second pass at
//! the end.
//!
//! SHA-256 can only take the file in order, while parts arrive in any order. A thread follows
//! the contiguous run of verified parts from the start of the file: peer threads hand it the
//! buffers of parts just verified (no copy, still hot in cache) when they are near the front,
//! and it reads back from disk the parts it was not handed. The picker keeps requests roughly in
//! file order, so on a fast download almost every part is handed over and the checksum is ready
//! moments after the last part.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::shared::{OnPanic, Shared};
use super::storage::PartBuffer;
use crate::orch::Checksum;
use crate::sync::{Condvar, Mutex};

/// Most bytes of handed-over parts held while waiting for the parts before them.
const MAX_PENDING_BYTES: usize = 16 << 20;
/// Hashed buffers kept to give back: one for each thread that hands parts over is plenty;
/// more would only hold memory (they used to pile up to the pending bytes again).
const MAX_SPARES: usize = 1;
/// How long a part waiting for room looks again without being woken (it is woken at every
/// part hashed, so this only bounds a missed wake-up).
const BUSY_RECHECK: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    /// The next part to feed the hasher.
    next: u32,
    /// Verified parts handed over ahead of `next`.
    pending: BTreeMap<u32, PartBuffer>,
    pending_bytes: usize,
    /// Buffers already hashed, given back to peer threads in exchange for theirs.
    spare: Vec<PartBuffer>,
    /// Bumped at every completed part, so the thread never sleeps through one.
    generation: u64,
    /// The thread has parts to hash (handed over or on disk) and is not waiting for one.
    busy: bool,
    /// The member is shutting down: nobody waits for the thread any more.
    stopping: bool,
    result: Option<Result<Checksum, String>>,
}

#[derive(Default)]
pub struct FullHasher {
    state: Mutex<State>,
    changed: Condvar,
}

impl FullHasher {
    /// A part was verified and stored (call before marking it as ours). Takes `buffer` when the hasher will want it soon, and
    /// returns a buffer for the caller's next part (its own back, or a spare).
    ///
    /// A part too far ahead of the hasher waits here while the hasher is busy with the parts
    /// before it: a part dropped instead must be read back from disk later, which (with writes
    /// past the page cache) costs a disk read on top of the hashing, so a hasher that fell
    /// behind once used to stay behind and read back nearly every part (1,003-1,014 of 1,024
    /// in a 1 GiB 1 -> 1 run). Waiting paces the download to the hasher, which has to hash
    /// every byte before the file is done anyway. It never waits on a hasher that waits for a
    /// missing part (that part may be the caller's next one): the part is then left on disk.
    pub fn part_done(&self, index: u32, buffer: PartBuffer) -> PartBuffer {
        let mut state = self.state.lock();
        state.generation += 1;
        self.changed.notify_all();
        // Only parts close enough to the front to be hashed soon are worth holding.
        let ahead = MAX_PENDING_BYTES / buffer.len().max(1);
        loop {
            if state.result.is_some() || state.stopping || index < state.next {
                return buffer;
            }
            let near = (index - state.next) as usize <= ahead;
            let fits =
                state.pending_bytes + buffer.len() <= MAX_PENDING_BYTES || state.pending.is_empty();
            if near && fits {
                state.pending_bytes += buffer.len();
                // An endgame duplicate of a part already handed over replaces it: same bytes.
                if let Some(old) = state.pending.insert(index, buffer) {
                    state.pending_bytes -= old.len();
                }
                let spare = state.spare.pop().unwrap_or_default();
                self.changed.notify_all();
                return spare;
            }
            if !state.busy {
                return buffer;
            }
            // Woken at each part the hasher finishes, and when it goes idle or stops.
            state = self.changed.wait_timeout(state, BUSY_RECHECK).0;
        }
    }

    /// Waits for the whole-file checksum; `None` if shutdown came first.
    pub fn wait(&self, shared: &Shared) -> Option<Result<Checksum, String>> {
        let mut state = self.state.lock();
        loop {
            if let Some(result) = &state.result {
                return Some(result.clone());
            }
            if shared.is_shutting_down() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .0;
        }
    }

    /// Wakes the thread and whoever waits for the result or for room (the member is shutting
    /// down).
    pub fn wake(&self) {
        self.state.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Starts the thread that follows the verified prefix.
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
        let for_thread = Arc::clone(shared);
        shared.spawn("full-hash", OnPanic::Fail, move || {
            let shared = for_thread;
            let result = follow_prefix(&shared);
            let hasher = &shared.full_hash;
            let mut state = hasher.state.lock();
            state.pending.clear();
            state.pending_bytes = 0;
            state.busy = false;
            if let Some(result) = result {
                state.result = Some(result);
            }
            hasher.changed.notify_all();
        })
    }
}

/// Hashes parts 0, 1, 2... as they become available; `None` on shutdown.
fn follow_prefix(shared: &Shared) -> Option<Result<Checksum, String>> {
    let hasher = &shared.full_hash;
    let parts = shared.orch.part_count();
    let mut sha = Sha256::new();
    let mut read_back = PartBuffer::default();
    let mut next = 0;
    let mut read_back_parts = 0u32;
    while next < parts {
        let generation = {
            let mut state = hasher.state.lock();
            if let Some(buffer) = state.pending.remove(&next) {
                state.pending_bytes -= buffer.len();
                state.busy = true;
                drop(state);
                sha.update(&buffer);
                let mut state = hasher.state.lock();
                if state.spare.len() < MAX_SPARES {
                    state.spare.push(buffer);
                }
                next += 1;
                state.next = next;
                hasher.changed.notify_all();
                continue;
            }
            state.generation
        };
        if shared.picker.lock().have().get(next) {
            hasher.state.lock().busy = true;
            let Some(span) = shared.orch.part_span(next) else {
                return Some(Err(format!("part {next} is not in the file")));
            };
            read_back.resize(span.len);
            if let Err(e) = shared.storage.read_at(span.offset, &mut read_back) {
                return Some(Err(format!(
                    "cannot read {} back: {e}",
                    shared.storage.name()
                )));
            }
            sha.update(&read_back);
            read_back_parts += 1;
            next += 1;
            hasher.state.lock().next = next;
            hasher.changed.notify_all();
            continue;
        }
        let mut state = hasher.state.lock();
        if state.busy {
            // Waiting for a part now: parts waiting for room must not wait on us.
            state.busy = false;
            hasher.changed.notify_all();
        }
        if state.generation == generation {
            let _ = hasher
                .changed
                .wait_timeout(state, Duration::from_millis(200));
        }
        if shared.is_shutting_down() {
            return None;
        }
    }
    log::debug!("whole-file checksum: {read_back_parts} of {parts} parts read back from disk");
    Some(Ok(Checksum(sha.finalize().into())))
}
