//! The conductor: the tracker that introduces members of a swarm to each other.
//!
//! Members find each other nowhere else, so the conductor has to stay up and answer quickly
//! while any number of clients, some slow or hostile, talk to it. It keeps only soft state: a
//! member list per swarm that members refresh by re-announcing every interval and that forgets
//! whoever stops doing so. Losing it (a restart) costs the time until members notice and
//! announce again (about a second: they watch for it); with a state file
//! ([`ConductorConfig::state`]) not even that.
//!
//! It runs as a service inside whatever process starts it: [`Conductor::start`] binds and starts
//! its threads and returns a handle, which reports the counters ([`Conductor::stats`]) and typed
//! events ([`Conductor::take_events`]), and whose [`Conductor::shutdown`] (or drop) stops and
//! joins every thread it started. The `conductor` binary is flags, this handle, and printing.
//!
//! The module is cut by concept:
//! - `registry`: the member table (swarms, sampling, per-source caps, the announce rate), and
//!   where join, leave and expire events are made;
//! - `admission`: the table of served connections, their per-address caps and which one gives
//!   way to a newcomer;
//! - `server`: the threads (accept loop, one per client, reaper, closer) and the conversation
//!   with a client;
//! - `client`: the calls members and tools make ([`announce`], [`leave`], [`stats`]), so that
//!   both sides of the protocol live in one place;
//! - `events`: the typed events and the bounded queue that carries them;
//! - `state`: the state file (`--state`) that keeps the member table across a restart.
//!
//! Design choices that follow from staying up under load:
//! - One blocking thread per client, capped in number, each with a per-line deadline and a
//!   line-length limit, so a stuck client holds only its own thread.
//! - No one address can take all the places: connections are capped per source address (an
//!   IPv4 address or an IPv6 /64). At a cap, a connection that is waiting for a line is closed
//!   to make room (see the admission module), so a flood of idle connections mostly pushes out
//!   its own kind.
//! - On Linux the kernel holds back a connection until its first bytes arrive (every client
//!   speaks first), so connections that never send cost no thread and no turn of the accept
//!   loop; one handed over still silent after the first-line timeout is closed at once.
//! - Client threads are joined by the accept loop, so the thread count is a real bound, not
//!   only a count of the connections being served.
//! - Members are capped per source address too, so one machine announcing thousands of ports
//!   cannot fill the tables or crowd out anyone else; it is refused past its cap.
//! - Shared state sits behind [`crate::sync::Mutex`]es (which do not poison: a panic in one
//!   client thread must not stop the others) held only for in-memory bookkeeping; logging and
//!   socket I/O happen after they are released.
//! - Every table is capped (swarms, members per swarm, members in total), and so is the event
//!   queue, so memory is bounded whatever clients send and whether or not anyone reads events.

mod admission;
mod client;
mod events;
mod private;
mod registry;
mod server;
mod signed;
mod state;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::cli::exit::{self, Failure};
use crate::orch::SwarmId;

pub use crate::wire::ConductorStats;
pub use client::{announce, announce_unless, leave, stats, Cancelled};
pub use events::{ConductorEvent, StatsEvent, EVENT_QUEUE};
pub use registry::source_of;
pub use signed::{announce_signed, leave_signed};
pub use state::{MAX_STATE_BYTES, MAX_STATE_MEMBERS};

/// Where the conductor listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9999));
/// How often members are told to re-announce unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
/// Most connections from one source address at once. Members open one short connection per
/// announce, so even hundreds of members behind one NAT address rarely hold more than a few.
pub const DEFAULT_MAX_CLIENTS_PER_IP: usize = 256;
/// Most members one source address holds over all swarms: generous for many members behind one
/// NAT address, small enough that one machine cannot crowd a swarm's answers or the tables.
pub const DEFAULT_MAX_MEMBERS_PER_IP: usize = 1024;
pub const DEFAULT_MAX_SWARMS: usize = 100_000;
pub const DEFAULT_MAX_SWARM_MEMBERS: usize = 100_000;
/// Caps the whole member table: about 100 bytes a member, so some 100 MB at most.
pub const DEFAULT_MAX_MEMBERS: usize = 1_000_000;
/// Honest clients send their request as soon as they connect.
pub const DEFAULT_FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest accepted announce interval: below this members would spend their time announcing.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted announce interval: beyond this the member lists go stale.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The module's log lines keep the target they had when it was one file, so that log filters
/// and the lines shown in the README stay as they were.
const LOG_TARGET: &str = "torrentnchill::conductor";

/// Everything the conductor needs to start.
#[derive(Debug, Clone)]
pub struct ConductorConfig {
    pub listen: SocketAddr,
    /// The re-announce interval told to members; expiry and reaping follow from it.
    pub interval: Duration,
    /// Most client connections served at once. At the cap a newcomer takes the place of the
    /// oldest connection that is waiting for a line; if none is, it is answered `ERROR busy`.
    pub max_clients: usize,
    /// Most connections from one source address (IPv4 address or IPv6 /64); at the cap a
    /// newcomer takes the place of that source's oldest waiting connection.
    pub max_clients_per_ip: usize,
    pub max_swarms: usize,
    pub max_swarm_members: usize,
    /// Most members over all swarms.
    pub max_members: usize,
    /// Most members one source address (IPv4 address or IPv6 /64) holds over all swarms;
    /// announces of new members past it are refused.
    pub max_members_per_ip: usize,
    /// How long a new connection may take to send its first complete line.
    pub first_line_timeout: Duration,
    /// How long a connection may take to send each later line.
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Where the member table is kept across restarts (`--state`): read at start (a damaged
    /// file is reported and ignored), written atomically as it changes and as it stops.
    pub state: Option<PathBuf>,
}

impl Default for ConductorConfig {
    fn default() -> ConductorConfig {
        ConductorConfig {
            listen: DEFAULT_LISTEN,
            interval: DEFAULT_INTERVAL,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_clients_per_ip: DEFAULT_MAX_CLIENTS_PER_IP,
            max_swarms: DEFAULT_MAX_SWARMS,
            max_swarm_members: DEFAULT_MAX_SWARM_MEMBERS,
            max_members: DEFAULT_MAX_MEMBERS,
            max_members_per_ip: DEFAULT_MAX_MEMBERS_PER_IP,
            first_line_timeout: DEFAULT_FIRST_LINE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            state: None,
        }
    }
}

impl ConductorConfig {
    /// Refuses an interval or a limit the conductor cannot work with.
    fn validate(&self) -> Result<(), StartError> {
        let refuse = |why: String| Err(StartError::Config(why));
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return refuse(format!(
                "interval {:?} is outside {MIN_INTERVAL:?}..={MAX_INTERVAL:?}",
                self.interval
            ));
        }
        if self.max_clients == 0 {
            return refuse("max clients must be at least 1".into());
        }
        if self.max_clients_per_ip == 0 {
            return refuse("max clients per address must be at least 1".into());
        }
        if [
            self.max_swarms,
            self.max_swarm_members,
            self.max_members,
            self.max_members_per_ip,
        ]
        .contains(&0)
        {
            return refuse("swarm and member limits must be at least 1".into());
        }
        Ok(())
    }
}

/// Why [`Conductor::start`] failed; the kinds differ in who can fix it.
#[derive(Debug)]
pub enum StartError {
    /// An interval or a limit is out of range: the caller's mistake.
    Config(String),
    /// The address cannot be listened on: in use, not this machine's, or not permitted.
    Listen { addr: SocketAddr, source: io::Error },
    /// The system would not start one of the conductor's threads.
    Thread {
        name: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(why) => f.write_str(why),
            StartError::Listen { addr, .. } => write!(f, "cannot listen on {addr}"),
            StartError::Thread { name, .. } => write!(f, "cannot start the {name} thread"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(_) => None,
            StartError::Listen { source, .. } | StartError::Thread { source, .. } => Some(source),
        }
    }
}

/// How the programs report a conductor that did not start: the kinds differ in exit code.
impl From<StartError> for Failure {
    fn from(error: StartError) -> Failure {
        let code = match error {
            StartError::Config(_) => exit::USAGE,
            StartError::Listen { .. } => exit::NETWORK,
            StartError::Thread { .. } => exit::FAILURE,
        };
        Failure::new(code, error)
    }
}

/// The counters as people read them, `swarms: 2  members: 3  announces/s: 0.5`: what
/// `conductor --stats` prints, and how the summary log line starts.
impl fmt::Display for ConductorStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "swarms: {}  members: {}  announces/s: {:.1}",
            self.swarms, self.members, self.announces_per_sec
        )
    }
}

/// A running conductor. Dropping it stops it as [`Conductor::shutdown`] does.
pub struct Conductor {
    shared: Arc<server::Shared>,
    /// None once stopped.
    threads: Option<server::Threads>,
    events: Option<mpsc::Receiver<ConductorEvent>>,
    local_addr: SocketAddr,
}

impl Conductor {
    /// Checks the configuration, binds the listening socket and starts every thread: once this
    /// returns, connections are being accepted on [`Conductor::local_addr`].
    pub fn start(config: ConductorConfig) -> Result<Conductor, StartError> {
        config.validate()?;
        let (shared, events) = server::Shared::bind(config)?;
        let shared = Arc::new(shared);
        let threads = server::spawn(&shared)?;
        Ok(Conductor {
            local_addr: shared.local_addr,
            shared,
            threads: Some(threads),
            events: Some(events),
        })
    }

    /// The address it accepts members on: the real port when the configuration said port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters `STATS` answers with, read in this process.
    pub fn stats(&self) -> ConductorStats {
        self.shared.stats()
    }

    /// Client connections being served now. Connections closed to make room for others whose
    /// threads are still ending are not counted.
    pub fn clients(&self) -> usize {
        self.shared.clients()
    }

    /// The events, from [`ConductorEvent::Listening`] on, for the one consumer that asks first
    /// (None afterwards). The queue holds at most [`EVENT_QUEUE`] events: a consumer that falls
    /// that far behind, or nobody reading at all, loses the newest ones, counted by
    /// [`Conductor::dropped_events`], and never slows the conductor down. The receiver ends
    /// after the last [`ConductorEvent::Summary`], once the conductor has stopped.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<ConductorEvent>> {
        self.events.take()
    }

    /// Events lost because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events()
    }

    /// Stops accepting, closes every connection, and returns once every thread the conductor
    /// started has ended and been joined, with the counters as it stopped (also sent as the
    /// last [`ConductorEvent::Summary`]).
    pub fn shutdown(mut self) -> ConductorStats {
        self.stop()
    }

    fn stop(&mut self) -> ConductorStats {
        match self.threads.take() {
            Some(threads) => server::stop(&self.shared, threads),
            None => self.shared.stats(),
        }
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first 12 hex digits of a swarm id: enough to tell swarms apart in a log.
fn short(swarm: &SwarmId) -> String {
    let mut hex = swarm.to_hex();
    hex.truncate(12);
    hex
}
