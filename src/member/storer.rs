//! Storing verified parts on one thread for the whole member.
//!
//! Why: writes go past the page cache where the file system allows (storage/direct.rs), so a
//! write waits for the disk. A connection's verifier that hashed a part and then waited for its
//! write kept the socket waiting for both: 1 -> 1 over loopback took 1.81 s where the cached
//! writes took 1.52 (issue 13, docs/BENCHMARKS.md). Here the verifiers hash the next parts while
//! this thread writes the last ones, and with one writer the connections no longer contend for
//! the file's inode lock (seen in the 1 -> 4 profile).
//!
//! A part counts as ours only once it is written (see [`store_part`]): a peer served it is
//! sent what the disk holds. The queue is short, so a slow disk holds back the verifiers and,
//! through them, the readers, instead of piling parts up in memory.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use super::peer::{store_part, PeerLink};
use super::shared::{OnPanic, Shared};
use super::storage::PartBuffer;
use crate::sync::Mutex;

/// Verified parts waiting for the disk, over all connections.
const QUEUE: usize = 4;

/// A verified part on its way to the disk.
pub struct StoreJob {
    pub index: u32,
    pub buffer: PartBuffer,
    /// The connection it came from: credited with it, and not sent a cancel for it.
    pub from: Arc<PeerLink>,
    /// Where the buffer goes once written, for that connection's reader to fill again.
    pub give_back: SyncSender<PartBuffer>,
}

/// The queue to the storer thread.
pub struct Storer {
    /// Taken at shutdown: the thread ends once it has stored what was queued before.
    jobs: Mutex<Option<SyncSender<StoreJob>>>,
    /// Taken by the thread when it starts.
    waiting: Mutex<Option<Receiver<StoreJob>>>,
}

impl Default for Storer {
    fn default() -> Storer {
        let (jobs, waiting) = mpsc::sync_channel(QUEUE);
        Storer {
            jobs: Mutex::new(Some(jobs)),
            waiting: Mutex::new(Some(waiting)),
        }
    }
}

impl Storer {
    /// Queues a verified part; waits while the queue is full. Fails once the member is
    /// shutting down.
    pub fn submit(&self, job: StoreJob) -> Result<(), String> {
        let stopped = || "the member is shutting down".to_string();
        // Cloned so that the wait for room is not under the lock `close` takes.
        let jobs = self.jobs.lock().clone().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }

    /// No more parts: the thread stores those queued and ends.
    pub fn close(&self) {
        self.jobs.lock().take();
    }

    /// Starts the thread; it ends when the member shuts down ([`Storer::close`]).
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
        let Some(jobs) = shared.storer.waiting.lock().take() else {
            return Err(std::io::Error::other("the part storer was started twice"));
        };
        let for_thread = Arc::clone(shared);
        shared.spawn("part-store", OnPanic::Fail, move || {
            store_all(&for_thread, &jobs)
        })
    }
}

/// Stores every part queued until the queue is closed and empty.
fn store_all(shared: &Arc<Shared>, jobs: &Receiver<StoreJob>) {
    for job in jobs {
        // A disk error fails the member inside `store_part`; nothing more to do here.
        let Ok((buffer, new)) = store_part(shared, job.index, job.buffer, Some(&job.from)) else {
            continue;
        };
        if new {
            shared.note_peer_used(job.from.peer_id);
        }
        // The reader may already hold enough spares; then this one is freed.
        let _ = job.give_back.try_send(buffer);
    }
}
