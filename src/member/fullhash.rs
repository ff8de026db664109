//! The whole file's SHA-256, computed while the download runs rather than in a second pass at
//! the end.
//!
//! SHA-256 can only take the file in order, while parts arrive in any order. A thread follows
//! the contiguous run of verified parts from the start of the file: peer threads hand it the
//! buffers of parts just verified (no copy, still hot in cache) when they are near the front,
//! and it reads back from the file (from the page cache, usually) the parts it was not handed.
//! The picker keeps requests near file order but picks at random within a window that grows
//! with the requests in flight, so on a fast link most parts arrive further ahead than the
//! hasher holds and are read back (827-895 of 1,024 over loopback): one copy each, which costs
//! less than the memory to hold them (see `MAX_PENDING_BYTES`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::shared::{OnPanic, Shared};
use crate::orch::Checksum;
use crate::sync::{Condvar, Mutex};

/// Most bytes of handed-over parts held, the one being hashed included; one part of any size is
/// always taken. Parts further ahead are read back from the page cache (one copy, off the
/// critical path). Holding more costs a member's peak memory most with large parts: 8 MiB held
/// two 4 MiB parts of a 4 GiB file (peak RSS 31-35 MiB, 26.5 with one), while for 1 MiB parts
/// 6 MiB is as fast as 8.
const MAX_PENDING_BYTES: usize = 6 << 20;
/// Hashed buffers kept to give back: one for each thread that hands parts over is plenty;
/// more would only hold memory (they used to pile up to the pending bytes again).
const MAX_SPARES: usize = 1;

#[derive(Default)]
struct State {
    /// The next part to feed the hasher.
    next: u32,
    /// Verified parts handed over ahead of `next`.
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
    /// Buffers already hashed, given back to peer threads in exchange for theirs.
    spare: Vec<Vec<u8>>,
    /// Bumped at every completed part, so the thread never sleeps through one.
    generation: u64,
    result: Option<Result<Checksum, String>>,
}

#[derive(Default)]
pub struct FullHasher {
    state: Mutex<State>,
    changed: Condvar,
}

impl FullHasher {
    /// A part was verified and stored (call before marking it as ours). Takes `buffer` when the
    /// hasher will want it soon, and returns a buffer for the caller's next part (its own back,
    /// or a spare).
    pub fn part_done(&self, index: u32, buffer: Vec<u8>) -> Vec<u8> {
        let mut state = self.state.lock();
        state.generation += 1;
        // Only parts close enough to the front to be hashed soon are worth holding.
        let ahead = MAX_PENDING_BYTES / buffer.len().max(1);
        let near = index >= state.next && (index - state.next) as usize <= ahead;
        let fits =
            state.pending_bytes + buffer.len() <= MAX_PENDING_BYTES || state.pending_bytes == 0;
        let give_back = if near && fits && state.result.is_none() {
            state.pending_bytes += buffer.len();
            // An endgame duplicate of a part already handed over replaces it: same bytes.
            if let Some(old) = state.pending.insert(index, buffer) {
                state.pending_bytes -= old.len();
            }
            state.spare.pop().unwrap_or_default()
        } else {
            buffer
        };
        self.changed.notify_all();
        give_back
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

    /// Wakes the thread and whoever waits for the result (the member is shutting down).
    pub fn wake(&self) {
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
    let mut read_back = Vec::new();
    let mut parts_read_back = 0u32;
    let mut next = 0;
    while next < parts {
        let generation = {
            let mut state = hasher.state.lock();
            if let Some(buffer) = state.pending.remove(&next) {
                // Moved on before hashing, so that a late duplicate of this part is not held.
                next += 1;
                state.next = next;
                // The buffer counts against the pending bytes until it is hashed: it is held
                // as long as those waiting.
                drop(state);
                sha.update(&buffer);
                let mut state = hasher.state.lock();
                state.pending_bytes -= buffer.len();
                if state.spare.len() < MAX_SPARES {
                    state.spare.push(buffer);
                }
                continue;
            }
            state.generation
        };
        if shared.picker.lock().have().get(next) {
            let Some(span) = shared.orch.part_span(next) else {
                return Some(Err(format!("part {next} is not in the file")));
            };
            next += 1;
            hasher.state.lock().next = next;
            read_back.resize(span.len, 0);
            if let Err(e) = shared.storage.read_at(span.offset, &mut read_back) {
                return Some(Err(format!(
                    "cannot read {} back: {e}",
                    shared.storage.name()
                )));
            }
            sha.update(&read_back);
            parts_read_back += 1;
            continue;
        }
        let state = hasher.state.lock();
        if state.generation == generation {
            let _ = hasher
                .changed
                .wait_timeout(state, Duration::from_millis(200));
        }
        if shared.is_shutting_down() {
            return None;
        }
    }
    // Each part read back is a copy out of the page cache the hasher was not handed.
    log::debug!("whole-file hash: {parts_read_back} of {parts} parts read back from the file");
    Some(Ok(Checksum(sha.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `part_done` gives back: the caller's own buffer (not taken) or a spare.
    fn taken(hasher: &FullHasher, index: u32, len: usize) -> bool {
        hasher.part_done(index, vec![0; len]).len() != len
    }

    #[test]
    fn holds_parts_near_the_front_up_to_its_bytes_or_one_large_part() {
        let hasher = FullHasher::default();
        let mib = 1 << 20;
        assert!((0..6).all(|i| taken(&hasher, i, mib)));
        assert!(!taken(&hasher, 6, mib), "a seventh MiB");
        let large = FullHasher::default();
        assert!(taken(&large, 0, 4 * mib), "one part of any size");
        assert!(!taken(&large, 1, 4 * mib), "a second 4 MiB part");
        let far = FullHasher::default();
        assert!(
            !taken(&far, 7, mib),
            "too far ahead of the front to be hashed soon"
        );
    }
}
