//! A member of a swarm: fetches the parts it lacks from peers, verifies each one, and serves
//! every part it has to anyone who asks, from its first verified part to the moment it quits.
//!
//! [`Member::start`] returns a handle: [`Member::status`] for a snapshot, a channel of
//! [`Event`]s, and [`Member::quit`], which leaves the swarm and returns once every thread the
//! member started has ended (dropping the handle quits too). [`session`] drives a handle the way
//! the `member` program does (progress, quitting, the summary) for any [`session::Report`].
//!
//! Layout: [`shared`] is the state all threads share and their lifecycle; [`peer`] is one
//! connection (handshake, reader, writer, outbox, listener); [`swarm`] finds peers (address
//! book, announcer, dialer); [`picker`] keeps the facts behind every request and [`policy`]
//! chooses the part; [`requests`] is one connection's requests in flight; [`storage`] keeps
//! the file (on disk, or in memory for tests); [`fullhash`] checks the whole file while it
//! arrives; [`spread`] is an origin seeder's policy; [`origin`] takes parts from HTTP origins
//! (`--origin`); [`check`] is the offline `--check`.

pub mod bitfield;
pub mod check;
pub mod fair_share;
pub mod fullhash;
pub mod origin;
pub mod peer;
pub mod picker;
pub mod policy;
pub mod progress;
pub mod rate;
pub mod report;
pub mod requests;
pub mod session;
pub mod shared;
pub mod spread;
pub mod storage;
pub mod swarm;
pub mod throttle;
pub mod uplink;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::exit;
use crate::orch::{Orchestra, SwarmId};
use crate::secure::SwarmSecret;
use picker::Picker;
use policy::PolicyFactory;
use shared::Shared;
use storage::{FileStorageFactory, StorageFactory};
use throttle::{Pressure, TokenBucket};

/// Most peer connections a member opens, and most that peers open to it, unless told otherwise.
pub const DEFAULT_MAX_PEERS: usize = 32;
/// A peer that sends nothing we asked for for this long is dropped, unless told otherwise.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// How a member is run; the `member` binary fills this from its flags.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// Where the file is kept: a folder on disk, or memory in tests.
    pub storage: Arc<dyn StorageFactory>,
    pub listen: SocketAddr,
    /// Most connections we open, and most peers open to us (each costs two threads and one
    /// part buffer).
    pub max_peers: usize,
    /// A peer that sends nothing, or no requested part, for this long is dropped.
    pub peer_timeout: Duration,
    /// Requests in flight per peer; `None` follows each peer's rate and round trip.
    pub pipeline: Option<usize>,
    /// Caps in bytes per second over all connections (`--max-upload-rate`, ...).
    pub max_upload_rate: Option<u64>,
    pub max_download_rate: Option<u64>,
    /// Which part to ask for next.
    pub policy: PolicyFactory,
    /// Conductors to announce to instead of those on line 1 of the `.orch` (`--conductor`);
    /// empty: line 1's.
    pub conductors: Vec<String>,
    /// HTTP(S) URLs of the file, asked for parts the swarm does not give (`--origin`).
    pub origins: Vec<String>,
    /// Cap in bytes per second over all origin requests (`--origin-max-rate`).
    pub origin_max_rate: Option<u64>,
    /// A private swarm's secret (its key file): every peer link proves it and is encrypted,
    /// and conductor requests are signed. `None`: the public swarm of the `.orch`.
    pub secret: Option<SwarmSecret>,
}

impl MemberConfig {
    /// A member that keeps the file in `dir`.
    pub fn new(dir: PathBuf) -> MemberConfig {
        MemberConfig::with_storage(Arc::new(FileStorageFactory { dir }))
    }

    pub fn with_storage(storage: Arc<dyn StorageFactory>) -> MemberConfig {
        MemberConfig {
            storage,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            max_peers: DEFAULT_MAX_PEERS,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            pipeline: None,
            max_upload_rate: None,
            max_download_rate: None,
            policy: policy::rarest_first,
            conductors: Vec::new(),
            origins: Vec::new(),
            origin_max_rate: None,
            secret: None,
        }
    }
}

/// Something the screen or a script may want to show.
#[derive(Debug, Clone, PartialEq)]
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
    /// A conductor could not be reached; the member keeps trying.
    ConductorUnreachable {
        conductor: String,
        error: String,
        retry_in: Duration,
    },
    /// A conductor answered an announce with `peers` addresses.
    ConductorOk {
        conductor: String,
        peers: usize,
    },
    /// An HTTP origin served parts that failed their checksum, or a changed file, too often:
    /// it is not asked again in this run.
    OriginDropped {
        url: String,
        reason: String,
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
    /// A bug: a thread the member needs panicked.
    Internal,
}

impl FailureKind {
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::BadOrch => exit::BAD_ORCH,
            FailureKind::Network => exit::NETWORK,
            FailureKind::Disk => exit::DISK,
            FailureKind::Internal => exit::FAILURE,
        }
    }
}

/// Why a member could not start.
#[derive(Debug)]
pub struct StartError {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

impl From<StartError> for exit::Failure {
    fn from(e: StartError) -> exit::Failure {
        exit::Failure::new(e.kind.exit_code(), e.error)
    }
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
    /// Verified bytes received, from peers and origins.
    pub bytes_down: u64,
    /// Of those, the bytes from HTTP origins.
    pub bytes_from_origin: u64,
    pub bytes_up: u64,
    pub peers: usize,
    /// Requests out to all peers, waiting for their parts.
    pub requests_out: usize,
    pub peers_used: usize,
    pub parts_rejected: u64,
    /// From the start to the first part stored that was not there at start.
    pub first_part_after: Option<Duration>,
    /// How often each rate cap made connections wait, when there is one.
    pub upload_pressure: Option<Pressure>,
    pub download_pressure: Option<Pressure>,
}

/// A running member.
pub struct Member {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    started: Instant,
    quit: AtomicBool,
}

/// How long [`Member`]'s drop waits for the conductor to take the `LEAVE`.
const LEAVE_TIMEOUT_ON_DROP: Duration = Duration::from_millis(700);

impl Member {
    /// Checks what is there (through the configured storage), binds the listener and starts
    /// every thread. `verify_progress` receives bytes checked while an existing file or partial
    /// download is verified.
    pub fn start(
        orch: Orchestra,
        config: MemberConfig,
        verify_progress: &dyn Fn(u64),
    ) -> Result<(Member, Receiver<Event>), StartError> {
        let disk = |error| StartError {
            kind: FailureKind::Disk,
            error,
        };
        let network = |error| StartError {
            kind: FailureKind::Network,
            error,
        };
        let opened = config.storage.open(&orch, verify_progress).map_err(disk)?;
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))
            .map_err(network)?;
        let local_addr = listener
            .local_addr()
            .context("listener has no address")
            .map_err(network)?;
        let (events_tx, events_rx) = mpsc::channel();
        let complete = opened.complete;
        let shared = Arc::new(
            Shared::new(shared::Parts {
                picker: Picker::new(opened.have, (config.policy)()),
                storage: opened.storage,
                complete,
                listener: listener
                    .try_clone()
                    .context("cannot share the listener")
                    .map_err(network)?,
                events: events_tx,
                orch,
                config,
            })
            .context("cannot set up the member")
            .map_err(network)?,
        );
        let member = Member {
            shared: Arc::clone(&shared),
            local_addr,
            started: Instant::now(),
            quit: AtomicBool::new(false),
        };
        log::info!(
            "swarm {} as {}; listening on {local_addr}; {} of {} parts there",
            &shared.swarm.to_hex()[..12],
            shared.peer_id,
            shared.picker.lock().parts_done(),
            shared.orch.part_count()
        );
        // From here on, dropping `member` on an error stops what was started.
        let threads = || -> std::io::Result<()> {
            if complete {
                shared.emit(Event::Complete);
            } else {
                fullhash::FullHasher::start(&shared)?;
                if shared.orch.part_count() == 0 {
                    shared.all_parts_in();
                }
            }
            peer::listener::start(&shared, listener)?;
            swarm::start(&shared)?;
            origin::start(&shared)
        };
        threads()
            .context("cannot start the member's threads")
            .map_err(network)?;
        Ok((member, events_rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn swarm(&self) -> SwarmId {
        self.shared.swarm
    }

    pub fn orch(&self) -> &Orchestra {
        &self.shared.orch
    }

    /// The storage's name for the data: the file path being written or seeded.
    pub fn data_name(&self) -> String {
        self.shared.storage.name()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn status(&self) -> Status {
        let s = &self.shared;
        let (parts_done, bytes_done, first_part_at) = {
            let picker = s.picker.lock();
            let done = picker.parts_done();
            let has_last = s
                .orch
                .part_count()
                .checked_sub(1)
                .is_some_and(|last| picker.have().get(last));
            (
                done,
                s.orch.bytes_in(done, has_last),
                picker.first_new_part_at(),
            )
        };
        let (peers, requests_out) = {
            let links = s.peers.lock();
            let out = links.values().map(|link| link.requests_out()).sum();
            (links.len(), out)
        };
        Status {
            phase: s.phase(),
            parts_done,
            parts_total: s.orch.part_count(),
            bytes_done,
            bytes_total: s.orch.file_size,
            bytes_down: s.counters.bytes_down.load(Ordering::Relaxed),
            bytes_from_origin: s.counters.bytes_from_origin.load(Ordering::Relaxed),
            bytes_up: s.counters.bytes_up.load(Ordering::Relaxed),
            peers,
            requests_out,
            peers_used: s.peers_used(),
            parts_rejected: s.counters.parts_rejected.load(Ordering::Relaxed),
            first_part_after: first_part_at.map(|at| at.saturating_duration_since(self.started)),
            upload_pressure: s.upload_cap.as_ref().map(TokenBucket::pressure),
            download_pressure: s.download_cap.as_ref().map(TokenBucket::pressure),
        }
    }

    /// The member's threads still at work: 0 once [`Member::quit`] has returned.
    pub fn threads(&self) -> usize {
        self.shared.running_threads()
    }

    /// Why the member stopped on its own, if it did, as the failure to end the program with.
    pub fn failure(&self) -> Option<exit::Failure> {
        self.shared
            .fatal()
            .map(|(kind, error)| exit::Failure::new(kind.exit_code(), anyhow::anyhow!(error)))
    }

    /// Before quitting: refuses new requests and waits up to `timeout` for the parts being sent
    /// to finish, so that peers do not lose a part half-received.
    pub fn finish_uploads(&self, timeout: Duration) {
        self.shared.begin_draining();
        self.shared.wait_uploads_idle(timeout);
    }

    /// Leaves the swarm: closes every connection, tells the conductor (waiting at most
    /// `timeout` for it), and returns once every thread of the member has ended. Verified parts
    /// stay where they are for the next run. Calling it again does nothing.
    pub fn quit(&self, timeout: Duration) {
        if self.quit.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.begin_shutdown();
        swarm::leave(&self.shared, timeout);
        self.shared.join_threads();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.quit(LEAVE_TIMEOUT_ON_DROP);
    }
}
