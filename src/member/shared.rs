//! The state every thread of a member shares, and the threads' lifecycle.
//!
//! One [`Shared`] per member: the piece picker, the table of live peers, the address book,
//! counters, the phase, and the shutdown signal. Nothing holds one of its locks across network
//! or disk I/O. Every thread a member starts goes through [`Shared::spawn`], which keeps its
//! handle so that [`Shared::join_threads`] can wait for all of them, and which catches a panic:
//! a peer thread's panic drops that peer (its cleanup runs as the stack unwinds), any other
//! thread's panic fails the member with a clear error. Locks are [`crate::sync::Mutex`], which
//! does not poison, so a panic never stops the other threads. Where one lock is taken while
//! another is held, the order is: the peer table, then a connection's requests, then the
//! picker.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fair_share::FairShare;
use super::fullhash::FullHasher;
use super::peer::PeerLink;
use super::picker::Picker;
use super::spread::Spread;
use super::storage::Storage;
use super::swarm::Book;
use super::throttle::TokenBucket;
use super::uplink::{Lag, UplinkGovernor};
use super::{Event, FailureKind, MemberConfig, Phase};
use crate::orch::{Orchestra, SwarmId};
use crate::secure::{AuthFailures, SwarmKeys};
use crate::sync::{panic_message, Condvar, Mutex};
use crate::wire::PeerId;

/// Counters for the summary and the progress display.
#[derive(Default)]
pub struct Counters {
    /// Verified bytes received, from peers and origins.
    pub bytes_down: AtomicU64,
    /// Of those, the bytes from HTTP origins.
    pub bytes_from_origin: AtomicU64,
    pub bytes_up: AtomicU64,
    pub parts_rejected: AtomicU64,
}

/// What a panic in a thread means for the member.
#[derive(Clone, Copy, Debug)]
pub enum OnPanic {
    /// A connection's thread: that peer is dropped, the member goes on.
    DropPeer,
    /// A thread the member cannot do without: the member fails.
    Fail,
}

/// State shared by all of a member's threads.
pub struct Shared {
    pub orch: Orchestra,
    /// Where we announce: [`MemberConfig::conductors`], or else line 1 of the `.orch`.
    pub conductors: Vec<String>,
    /// The `.orch`'s swarm id, or a private swarm's (the public key of its [`SwarmKeys`]).
    pub swarm: SwarmId,
    pub peer_id: PeerId,
    /// A private swarm's keys, derived from `config.secret`.
    pub keys: Option<SwarmKeys>,
    /// Failed proofs of the key by peers that dialed us, per address.
    pub auth_failures: AuthFailures,
    pub config: MemberConfig,
    /// The port peers reach us on, as announced.
    pub listen_port: u16,
    /// The complete file was there at start: this member is an origin of the swarm.
    pub origin: bool,
    pub storage: Box<dyn Storage>,
    pub picker: Mutex<Picker>,
    pub peers: Mutex<HashMap<PeerId, Arc<PeerLink>>>,
    pub book: Book,
    pub full_hash: FullHasher,
    pub spread: Spread,
    /// A spreading seeder's uplink shared evenly among its connections ([`FairShare`]).
    pub fair_share: FairShare,
    pub counters: Counters,
    /// `--max-upload-rate` and `--max-download-rate`, shared by every connection.
    pub upload_cap: Option<TokenBucket>,
    pub download_cap: Option<TokenBucket>,
    /// While we download, our uploads yield to our downloads when we fall behind.
    pub uplink: UplinkGovernor,
    peers_used: Mutex<HashSet<PeerId>>,
    events: Sender<Event>,
    phase: AtomicU8,
    /// Quitting soon: new requests are refused while uploads under way finish.
    draining: AtomicBool,
    shutdown: Mutex<bool>,
    shutdown_signal: Condvar,
    /// Counts uploads ended and connections gone, signalled for `Member::finish_uploads`.
    uploads_changed: (Mutex<u64>, Condvar),
    fatal: Mutex<Option<(FailureKind, String)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Every connection's socket from its first byte, handshakes included, so that shutdown
    /// can wake every thread blocked on one.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    /// A handle on the listening socket, to wake the accept loop at shutdown.
    listener: TcpListener,
}

/// What [`Shared::new`] needs besides the configuration.
pub struct Parts {
    pub orch: Orchestra,
    pub config: MemberConfig,
    pub storage: Box<dyn Storage>,
    pub picker: Picker,
    pub complete: bool,
    /// A handle on the listening socket (the accept loop owns another).
    pub listener: TcpListener,
    pub events: Sender<Event>,
}

impl Shared {
    pub fn new(parts: Parts) -> std::io::Result<Shared> {
        let listen_port = parts.listener.local_addr()?.port();
        let conductors = match parts.config.conductors.is_empty() {
            true => parts.orch.conductors(),
            false => parts.config.conductors.clone(),
        };
        let keys = parts
            .config
            .secret
            .as_ref()
            .map(|secret| SwarmKeys::derive(secret, parts.orch.swarm_id()));
        Ok(Shared {
            conductors,
            swarm: keys
                .as_ref()
                .map_or_else(|| parts.orch.swarm_id(), |k| k.swarm),
            keys,
            auth_failures: AuthFailures::default(),
            peer_id: PeerId::random(),
            listen_port,
            origin: parts.complete,
            storage: parts.storage,
            picker: Mutex::new(parts.picker),
            peers: Mutex::new(HashMap::new()),
            book: Book::default(),
            full_hash: FullHasher::default(),
            spread: Spread::new(parts.orch.part_count()),
            fair_share: FairShare::default(),
            counters: Counters::default(),
            upload_cap: parts.config.max_upload_rate.map(TokenBucket::new),
            download_cap: parts.config.max_download_rate.map(TokenBucket::new),
            uplink: UplinkGovernor::default(),
            peers_used: Mutex::new(HashSet::new()),
            events: parts.events,
            phase: AtomicU8::new(if parts.complete {
                Phase::Sharing as u8
            } else {
                Phase::Fetching as u8
            }),
            draining: AtomicBool::new(false),
            shutdown: Mutex::new(false),
            shutdown_signal: Condvar::new(),
            uploads_changed: (Mutex::new(0), Condvar::new()),
            fatal: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
            listener: parts.listener,
            orch: parts.orch,
            config: parts.config,
        })
    }

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

    /// How many parts we hold against our peers (for the [`UplinkGovernor`]).
    pub fn lag(&self) -> Lag {
        let theirs = self
            .peers
            .lock()
            .values()
            .map(|link| link.parts_they_have())
            .collect();
        Lag {
            ours: self.picker.lock().parts_done(),
            theirs,
            parts: self.orch.part_count(),
        }
    }

    /// True once the file is complete and verified: from then on we only serve.
    pub fn is_seeding(&self) -> bool {
        self.phase() == Phase::Sharing
    }

    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Starts a thread of this member (see the module docs). Refused once shutdown began, so
    /// that [`Shared::join_threads`] sees every thread there will be.
    pub fn spawn(
        self: &Arc<Self>,
        name: &str,
        on_panic: OnPanic,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let mut threads = self.threads.lock();
        if self.is_shutting_down() {
            return Err(std::io::Error::other("the member is shutting down"));
        }
        // Handles of threads that ended are dropped, so the list stays as long as the threads.
        threads.retain(|thread| !thread.is_finished());
        let shared = Arc::clone(self);
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let Err(payload) = panic::catch_unwind(AssertUnwindSafe(work)) else {
                    return;
                };
                let message = panic_message(payload.as_ref());
                match on_panic {
                    OnPanic::DropPeer => {
                        log::error!("internal error in {thread_name}: {message}; peer dropped")
                    }
                    OnPanic::Fail => shared.fail(
                        FailureKind::Internal,
                        format!("internal error in the {thread_name} thread: {message}"),
                    ),
                }
            })?;
        threads.push(handle);
        Ok(())
    }

    /// Threads started through [`Shared::spawn`] whose work has not ended yet.
    pub fn running_threads(&self) -> usize {
        self.threads
            .lock()
            .iter()
            .filter(|thread| !thread.is_finished())
            .count()
    }

    /// Waits for every thread started through [`Shared::spawn`]. Only after
    /// [`Shared::begin_shutdown`], and never from one of those threads.
    pub fn join_threads(&self) {
        loop {
            let threads = std::mem::take(&mut *self.threads.lock());
            if threads.is_empty() {
                return;
            }
            for thread in threads {
                let _ = thread.join();
            }
        }
    }

    /// Keeps `stream` where shutdown finds it, until the returned guard is dropped. `None` once
    /// shutdown began: the connection must not start.
    pub fn track_socket(&self, stream: &TcpStream) -> Option<TrackedSocket<'_>> {
        let clone = stream.try_clone().ok()?;
        let mut sockets = self.sockets.lock();
        if self.is_shutting_down() {
            return None;
        }
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        sockets.insert(id, clone);
        Some(TrackedSocket { shared: self, id })
    }

    /// An upload ended or a connection went away: wakes `Member::finish_uploads`.
    pub fn note_uploads_changed(&self) {
        let (count, signal) = &self.uploads_changed;
        *count.lock() += 1;
        signal.notify_all();
    }

    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// No connection has a part queued or being sent: the uplink has nothing to do.
    pub fn uploads_idle(&self) -> bool {
        self.peers.lock().values().all(|l| l.uploads_idle())
    }

    /// Waits until every connection's uploads are idle, shutdown begins, or `timeout` passes.
    pub fn wait_uploads_idle(&self, timeout: Duration) {
        let (count, signal) = &self.uploads_changed;
        let deadline = Instant::now() + timeout;
        loop {
            // Read the count before looking, so a change while looking is not slept through.
            let seen = *count.lock();
            if self.uploads_idle() || self.is_shutting_down() || Instant::now() >= deadline {
                return;
            }
            let guard = count.lock();
            signal.wait_until(guard, deadline, |now| *now != seen);
        }
    }

    /// Counts a failed proof of the swarm's key by the peer at the other end of `stream`.
    pub fn auth_failed(&self, stream: &TcpStream) {
        if let Ok(addr) = stream.peer_addr() {
            if self.auth_failures.record(addr.ip(), Instant::now()) {
                log::info!(
                    "refusing {} for {:?}: too many failed handshakes",
                    addr.ip(),
                    crate::secure::failures::REFUSAL
                );
            }
        }
    }

    /// True while peers from `ip` are refused for failed proofs.
    pub fn auth_refused(&self, ip: std::net::IpAddr) -> bool {
        self.auth_failures.is_refused(ip, Instant::now())
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.lock()
    }

    /// Waits up to `timeout`; returns true if shutdown began meanwhile.
    pub fn wait_for_shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.shutdown_signal
            .wait_until(self.shutdown.lock(), deadline, |down| *down)
    }

    /// Stops everything: flags shutdown and wakes every thread that waits on something, so that
    /// each of them ends promptly.
    pub fn begin_shutdown(&self) {
        {
            let _threads = self.threads.lock();
            *self.shutdown.lock() = true;
        }
        self.shutdown_signal.notify_all();
        let links: Vec<Arc<PeerLink>> = self.peers.lock().values().cloned().collect();
        for link in links {
            link.close(self);
        }
        for socket in self.sockets.lock().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // On Linux this makes a blocked accept return at once.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Read);
        self.book.wake();
        self.full_hash.wake();
        self.note_uploads_changed();
    }

    /// Stops the member for a reason it cannot work around, keeping what is on disk.
    pub fn fail(&self, kind: FailureKind, error: String) {
        log::error!("{error}");
        self.fatal.lock().get_or_insert((kind, error.clone()));
        self.set_phase(Phase::Failed);
        self.emit(Event::Fatal { error });
        self.begin_shutdown();
    }

    pub fn fatal(&self) -> Option<(FailureKind, String)> {
        self.fatal.lock().clone()
    }

    pub fn note_peer_used(&self, peer: PeerId) {
        self.peers_used.lock().insert(peer);
    }

    pub fn peers_used(&self) -> usize {
        self.peers_used.lock().len()
    }

    /// Called by the thread that stored the last missing part: checks the whole file in a
    /// thread of its own and, if it matches, finishes the download.
    pub fn all_parts_in(self: &Arc<Self>) {
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
        let started = self.spawn("finisher", OnPanic::Fail, move || shared.finish());
        if let Err(e) = started {
            if !self.is_shutting_down() {
                self.fail(
                    FailureKind::Internal,
                    format!("cannot start the finisher thread: {e}"),
                );
            }
        }
    }

    fn finish(&self) {
        let expected = self.orch.file_checksum;
        let result = match self.full_hash.wait(self) {
            None => return, // shutting down: the parts stay on disk
            Some(Err(e)) => Err((FailureKind::Disk, e)),
            Some(Ok(actual)) if actual != expected => Err((
                FailureKind::BadOrch,
                format!(
                    "{}: every part matched but the whole file's SHA-256 is {actual}, \
                     the .orch says {expected}; the .orch is inconsistent",
                    self.storage.name()
                ),
            )),
            Some(Ok(_)) => self
                .storage
                .finish()
                .map_err(|e| (FailureKind::Disk, format!("{e:#}"))),
        };
        match result {
            Ok(()) => {
                log::info!("{} complete and verified", self.storage.name());
                self.set_phase(Phase::Sharing);
                self.emit(Event::Complete);
                self.drop_complete_peers();
            }
            Err((kind, error)) => self.fail(kind, error),
        }
    }

    /// Once we are complete, connections to peers that are complete too carry nothing; the
    /// others learn that we are complete.
    fn drop_complete_peers(&self) {
        let links: Vec<Arc<PeerLink>> = self.peers.lock().values().cloned().collect();
        for link in links {
            if link.peer_is_complete() {
                link.close(self);
            } else {
                link.announce_complete();
            }
        }
    }
}

/// A socket that [`Shared::begin_shutdown`] shuts down; forgotten when dropped.
pub struct TrackedSocket<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for TrackedSocket<'_> {
    fn drop(&mut self) {
        self.shared.sockets.lock().remove(&self.id);
    }
}
