//! A member of a swarm: fetches the parts it lacks from peers, verifies each one, and serves
//! every part it has to anyone who asks, from its first verified part to the moment it quits.
//!
//! Threads, all blocking:
//! - a listener thread accepts peers ([`peer::listen`]);
//! - each peer connection has a reader thread, which owns the conversation, and a writer thread,
//!   which drains its outbox; two threads because two members uploading to each other over
//!   blocking sockets would otherwise both block in `write` and never read ([`peer`]);
//! - a tracker thread announces to the conductor and a connector thread dials new peers
//!   ([`tracker`]);
//! - a finisher thread checks the whole file once the last part is in.
//!
//! They share one [`Shared`]: the piece picker behind a mutex, the table of live peers, counters
//! and the shutdown signal. Nothing holds a lock across network or disk I/O.

pub mod check;
pub mod fullhash;
pub mod peer;
pub mod picker;
pub mod spread;
pub mod storage;
pub mod tracker;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::orch::{Orchestra, SwarmId};
use crate::wire::PeerId;
use peer::PeerLink;
use picker::Picker;
use storage::{Paths, Storage};

/// How a member is run; the `member` binary fills this from its flags.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Most connections we open, and most peers open to us (each costs two threads and one
    /// part buffer).
    pub max_peers: usize,
    /// A peer that sends nothing, or no requested part, for this long is dropped.
    pub peer_timeout: Duration,
    /// Requests in flight per peer; `None` picks from the part size.
    pub pipeline: Option<usize>,
}

impl MemberConfig {
    pub fn new(dir: PathBuf) -> MemberConfig {
        MemberConfig {
            dir,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            max_peers: 32,
            peer_timeout: Duration::from_secs(20),
            pipeline: None,
        }
    }
}

/// Something the screen or a script may want to show.
#[derive(Debug, Clone)]
pub enum Event {
    PeerConnected {
        addr: SocketAddr,
    },
    PeerDropped {
        addr: SocketAddr,
        reason: String,
    },
    PartRejected {
        index: u32,
        addr: SocketAddr,
    },
    /// The conductor could not be reached; the member keeps trying.
    ConductorUnreachable {
        error: String,
        retry_in: Duration,
    },
    ConductorOk {
        peers: usize,
    },
    /// Every part is in and the whole file's checksum matched.
    Complete,
    /// The member cannot go on (disk error, inconsistent .orch); it is shutting down.
    Fatal {
        error: String,
    },
}

/// What kind of trouble stopped a member, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The .orch disagrees with itself or with the data.
    BadOrch,
    Network,
    Disk,
}

impl FailureKind {
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::BadOrch => crate::cli::exit::BAD_ORCH,
            FailureKind::Network => crate::cli::exit::NETWORK,
            FailureKind::Disk => crate::cli::exit::DISK,
        }
    }
}

/// Why a member could not start.
#[derive(Debug)]
pub struct StartError {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Fetching,
    Finishing,
    Sharing,
    Failed,
}

/// A snapshot for the progress display.
#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    pub parts_done: u32,
    pub parts_total: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub peers: usize,
    pub peers_used: usize,
    pub parts_rejected: u64,
}

/// Counters for the summary and the progress display.
#[derive(Default)]
pub struct Counters {
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    pub parts_rejected: AtomicU64,
}

/// State shared by all of a member's threads.
pub struct Shared {
    pub orch: Orchestra,
    pub swarm: SwarmId,
    pub peer_id: PeerId,
    pub config: MemberConfig,
    /// The port peers reach us on, as announced.
    pub listen_port: u16,
    /// The complete file was on disk at start: this member is an origin of the swarm.
    pub origin: bool,
    pub storage: Box<dyn Storage>,
    pub paths: Paths,
    pub picker: Mutex<Picker>,
    pub peers: Mutex<HashMap<PeerId, Arc<PeerLink>>>,
    pub tracker: tracker::Book,
    pub full_hash: fullhash::FullHasher,
    pub spread: spread::Spread,
    pub counters: Counters,
    peers_used: Mutex<HashSet<PeerId>>,
    events: Mutex<Sender<Event>>,
    phase: AtomicU8,
    /// Quitting soon: new requests are refused while uploads under way finish.
    draining: AtomicBool,
    shutdown: Mutex<bool>,
    shutdown_signal: Condvar,
    /// Counts uploads ended and connections gone, signalled for [`Member::finish_uploads`].
    uploads_changed: (Mutex<u64>, Condvar),
    fatal: Mutex<Option<(FailureKind, String)>>,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fetching,
            1 => Phase::Finishing,
            2 => Phase::Sharing,
            _ => Phase::Failed,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// True once the file is complete and verified: from then on we only serve.
    pub fn is_seeding(&self) -> bool {
        self.phase() == Phase::Sharing
    }

    pub fn emit(&self, event: Event) {
        if let Ok(events) = self.events.lock() {
            let _ = events.send(event);
        }
    }

    /// An upload ended or a connection went away: wakes [`Member::finish_uploads`].
    pub fn note_uploads_changed(&self) {
        let (count, signal) = &self.uploads_changed;
        *count.lock().unwrap() += 1;
        signal.notify_all();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.lock().unwrap()
    }

    /// Waits up to `timeout`; returns true if shutdown began meanwhile.
    pub fn wait_for_shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut down = self.shutdown.lock().unwrap();
        while !*down {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            down = self
                .shutdown_signal
                .wait_timeout(down, deadline - now)
                .unwrap()
                .0;
        }
        true
    }

    pub fn begin_shutdown(&self) {
        *self.shutdown.lock().unwrap() = true;
        self.shutdown_signal.notify_all();
        for link in self.peers.lock().unwrap().values() {
            link.close(self);
        }
    }

    /// Stops the member for a reason it cannot work around, keeping what is on disk.
    pub fn fail(&self, kind: FailureKind, error: String) {
        log::error!("{error}");
        self.fatal
            .lock()
            .unwrap()
            .get_or_insert((kind, error.clone()));
        self.set_phase(Phase::Failed);
        self.emit(Event::Fatal { error });
        self.begin_shutdown();
    }

    pub fn note_peer_used(&self, peer: PeerId) {
        self.peers_used.lock().unwrap().insert(peer);
    }

    /// Called by the thread that stored the last missing part.
    fn all_parts_in(self: &Arc<Self>) {
        if self
            .phase
            .compare_exchange(
                Phase::Fetching as u8,
                Phase::Finishing as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return;
        }
        let shared = Arc::clone(self);
        std::thread::Builder::new()
            .name("finisher".into())
            .spawn(move || {
                let expected = shared.orch.file_checksum;
                let result = match shared.full_hash.wait(&shared) {
                    None => return, // shutting down: the parts stay on disk
                    Some(Err(e)) => Err((FailureKind::Disk, e)),
                    Some(Ok(actual)) if actual != expected => Err((
                        FailureKind::BadOrch,
                        format!(
                            "{}: every part matched but the whole file's SHA-256 is {actual}, \
                             the .orch says {expected}; the .orch is inconsistent",
                            shared.paths.partial.display()
                        ),
                    )),
                    Some(Ok(_)) => storage::finish(&shared.paths)
                        .map_err(|e| (FailureKind::Disk, format!("{e:#}"))),
                };
                match result {
                    Ok(()) => {
                        log::info!("{} complete and verified", shared.paths.complete.display());
                        shared.set_phase(Phase::Sharing);
                        shared.emit(Event::Complete);
                        shared.drop_complete_peers();
                    }
                    Err((kind, error)) => shared.fail(kind, error),
                }
            })
            .expect("spawning the finisher thread");
    }

    /// Once we are complete, connections to peers that are complete too carry nothing.
    fn drop_complete_peers(&self) {
        for link in self.peers.lock().unwrap().values() {
            if link.peer_is_complete() {
                link.close(self);
            }
        }
    }
}

/// A running member.
pub struct Member {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    started: Instant,
}

impl Member {
    /// Checks what is on disk, binds the listener and starts every thread. `verify_progress`
    /// receives bytes checked while an existing file or partial download is verified.
    pub fn start(
        orch: Orchestra,
        config: MemberConfig,
        verify_progress: &dyn Fn(u64),
    ) -> Result<(Member, Receiver<Event>), StartError> {
        let prepared =
            storage::prepare(&config.dir, &orch, verify_progress).map_err(|error| StartError {
                kind: FailureKind::Disk,
                error,
            })?;
        let network = |error| StartError {
            kind: FailureKind::Network,
            error,
        };
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))
            .map_err(network)?;
        let local_addr = listener
            .local_addr()
            .context("listener has no address")
            .map_err(network)?;
        let complete = prepared.complete;
        let (events_tx, events_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            swarm: orch.swarm_id(),
            peer_id: PeerId::random(),
            listen_port: local_addr.port(),
            origin: complete,
            storage: prepared.storage,
            paths: prepared.paths,
            picker: Mutex::new(Picker::new(prepared.have)),
            peers: Mutex::new(HashMap::new()),
            tracker: tracker::Book::default(),
            full_hash: fullhash::FullHasher::default(),
            spread: spread::Spread::new(orch.part_count()),
            counters: Counters::default(),
            peers_used: Mutex::new(HashSet::new()),
            events: Mutex::new(events_tx),
            phase: AtomicU8::new(if complete {
                Phase::Sharing as u8
            } else {
                Phase::Fetching as u8
            }),
            draining: AtomicBool::new(false),
            shutdown: Mutex::new(false),
            shutdown_signal: Condvar::new(),
            uploads_changed: (Mutex::new(0), Condvar::new()),
            fatal: Mutex::new(None),
            orch,
            config,
        });
        log::info!(
            "swarm {} as {}; listening on {local_addr}; {} of {} parts on disk",
            &shared.swarm.to_hex()[..12],
            shared.peer_id,
            shared.picker.lock().unwrap().parts_done(),
            shared.orch.part_count()
        );
        if complete {
            shared.emit(Event::Complete);
        } else {
            fullhash::FullHasher::start(&shared)
                .context("cannot start the checksum thread")
                .map_err(network)?;
            if shared.orch.part_count() == 0 {
                shared.all_parts_in();
            }
        }
        peer::listen(Arc::clone(&shared), listener)
            .context("cannot start the listener thread")
            .map_err(network)?;
        tracker::start(Arc::clone(&shared))
            .context("cannot start the tracker threads")
            .map_err(network)?;
        Ok((
            Member {
                shared,
                local_addr,
                started: Instant::now(),
            },
            events_rx,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn swarm(&self) -> SwarmId {
        self.shared.swarm
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn status(&self) -> Status {
        let s = &self.shared;
        let (parts_done, bytes_done) = {
            let picker = s.picker.lock().unwrap();
            let done = picker.parts_done();
            let have_last = picker.have().get(s.orch.part_count().saturating_sub(1));
            let full_parts = u64::from(done - u32::from(have_last));
            let last_len = s
                .orch
                .part_span(s.orch.part_count().saturating_sub(1))
                .map_or(0, |(_, len)| len as u64);
            let bytes = full_parts * s.orch.part_size + if have_last { last_len } else { 0 };
            (done, bytes)
        };
        Status {
            phase: s.phase(),
            parts_done,
            parts_total: s.orch.part_count(),
            bytes_done,
            bytes_total: s.orch.file_size,
            bytes_down: s.counters.bytes_down.load(Ordering::Relaxed),
            bytes_up: s.counters.bytes_up.load(Ordering::Relaxed),
            peers: s.peers.lock().unwrap().len(),
            peers_used: s.peers_used.lock().unwrap().len(),
            parts_rejected: s.counters.parts_rejected.load(Ordering::Relaxed),
        }
    }

    /// Why the member stopped on its own, if it did.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared
            .fatal
            .lock()
            .unwrap()
            .as_ref()
            .map(|(_, e)| e.clone())
    }

    pub fn fatal_kind(&self) -> FailureKind {
        self.shared
            .fatal
            .lock()
            .unwrap()
            .as_ref()
            .map_or(FailureKind::Disk, |(k, _)| *k)
    }

    /// Before quitting: refuses new requests and waits up to `timeout` for the parts being sent
    /// to finish, so that peers do not lose a part half-received.
    pub fn finish_uploads(&self, timeout: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        let shared = &self.shared;
        let (count, signal) = &shared.uploads_changed;
        let deadline = Instant::now() + timeout;
        loop {
            // Read the count before looking, so a change while looking is not slept through.
            let seen = *count.lock().unwrap();
            let idle = shared
                .peers
                .lock()
                .unwrap()
                .values()
                .all(|l| l.uploads_idle());
            let left = deadline.saturating_duration_since(Instant::now());
            if idle || shared.is_shutting_down() || left.is_zero() {
                return;
            }
            let guard = count.lock().unwrap();
            if *guard == seen {
                let _ = signal.wait_timeout(guard, left).unwrap();
            }
        }
    }

    /// Leaves the swarm: tells the conductor (waiting at most `timeout`) and closes every
    /// connection. Verified parts stay on disk for the next run.
    pub fn quit(&self, timeout: Duration) {
        self.shared.begin_shutdown();
        tracker::leave(&self.shared, timeout);
    }
}
