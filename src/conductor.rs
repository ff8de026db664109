//! The conductor: the tracker that introduces members of a swarm to each other.
//!
//! Members find each other nowhere else, so the conductor has to stay up and answer quickly
//! while any number of clients, some slow or hostile, talk to it. It keeps only soft state: a
//! member list per swarm that members refresh by re-announcing every interval and that forgets
//! whoever stops doing so. Losing it (a restart) costs one announce round, nothing more.
//!
//! Design choices that follow from that:
//! - One blocking thread per client, capped in number, each with a per-line deadline and a
//!   line-length limit, so a stuck client holds only its own thread.
//! - All shared state sits behind one [`Mutex`] held only for in-memory bookkeeping; logging and
//!   socket I/O happen after it is released.
//! - Every table is capped (swarms, members per swarm, members in total), so memory is bounded
//!   whatever clients send.
//!
//! The same module holds the client side ([`announce`], [`leave`], [`stats`]) so that the
//! member and the tools speak the protocol through one implementation.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use log::{debug, info, warn};

use crate::orch::SwarmId;
use crate::wire::{
    ConductorReply, ConductorRequest, ConductorStats, LineReader, PeerId, WireError,
    MAX_PEERS_PER_REPLY,
};

/// Where the conductor listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9999";
/// How often members are told to re-announce unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
pub const DEFAULT_MAX_SWARMS: usize = 100_000;
pub const DEFAULT_MAX_SWARM_MEMBERS: usize = 100_000;
/// Caps the whole member table: about 100 bytes a member, so some 100 MB at most.
pub const DEFAULT_MAX_MEMBERS: usize = 1_000_000;
/// Shortest accepted announce interval: below this members would spend their time announcing.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted announce interval: beyond this the member lists go stale.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Slack on top of two missed intervals before a member is forgotten, so that one late
/// announce (a busy member, a slow network) does not drop it.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);
/// The summary log line comes at most this often, so a short interval does not flood the log.
const MIN_SUMMARY_PERIOD: Duration = Duration::from_secs(60);
/// A client turned away for lack of room gets this long to take its `ERROR busy`.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// After a persistent accept failure (out of file descriptors) retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long, and how many bytes, we read and discard before closing on a protocol error, so
/// that the client's unread bytes do not turn our close into a reset that destroys the `ERROR`.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: u64 = 64 * 1024;
/// Each expiry is logged on its own line up to this many per sweep; the rest are counted.
const MAX_EXPIRY_LINES: usize = 100;
/// Client threads only parse short lines and format small replies.
const CLIENT_STACK: usize = 256 * 1024;
/// Announces per second are averaged over this many seconds.
const RATE_WINDOW_SECS: usize = 60;

/// Everything the conductor needs to start.
#[derive(Debug, Clone)]
pub struct ConductorConfig {
    pub listen: SocketAddr,
    /// The re-announce interval told to members; expiry and reaping follow from it.
    pub interval: Duration,
    /// Most client connections served at once; more are answered `ERROR busy`.
    pub max_clients: usize,
    pub max_swarms: usize,
    pub max_swarm_members: usize,
    /// Most members over all swarms.
    pub max_members: usize,
    /// How long a new connection may take to send its first complete line.
    pub first_line_timeout: Duration,
    /// How long a connection may take to send each later line.
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for ConductorConfig {
    fn default() -> ConductorConfig {
        ConductorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9999)),
            interval: DEFAULT_INTERVAL,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_swarms: DEFAULT_MAX_SWARMS,
            max_swarm_members: DEFAULT_MAX_SWARM_MEMBERS,
            max_members: DEFAULT_MAX_MEMBERS,
            first_line_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Parses a duration written as a whole number and a unit: `500ms`, `30s`, `2m`, `1h`.
///
/// A unit is required: a bare `30` is as likely to mean milliseconds as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 500ms, 30s, 2m or 1h"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} does not start with a whole number"));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{number:?} is too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s, m or h")),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// The first 12 hex digits of a swarm id: enough to tell swarms apart in a log.
fn short(swarm: &SwarmId) -> String {
    let mut hex = swarm.to_hex();
    hex.truncate(12);
    hex
}

// ---------------------------------------------------------------------------------------------
// The member table

struct Member {
    addr: SocketAddr,
    peer_id: PeerId,
    last_seen: Instant,
}

/// One swarm's members, in a vector so that a random one is an index away, with an index by
/// address for joins, refreshes and leaves.
#[derive(Default)]
struct Swarm {
    members: Vec<Member>,
    by_addr: HashMap<SocketAddr, usize>,
}

impl Swarm {
    fn remove_at(&mut self, i: usize) -> Member {
        let gone = self.members.swap_remove(i);
        self.by_addr.remove(&gone.addr);
        if let Some(moved) = self.members.get(i) {
            self.by_addr.insert(moved.addr, i);
        }
        gone
    }

    /// Up to `k` distinct random members other than `asker`.
    fn sample(&self, asker: SocketAddr, k: usize) -> Vec<SocketAddr> {
        let n = self.members.len();
        let skip = self.by_addr.get(&asker).copied();
        let others = n - usize::from(skip.is_some());
        if others <= 2 * k {
            let mut all: Vec<SocketAddr> = self
                .members
                .iter()
                .map(|m| m.addr)
                .filter(|a| *a != asker)
                .collect();
            fastrand::shuffle(&mut all);
            all.truncate(k);
            return all;
        }
        // With more than 2k candidates fewer than half the draws are rejected, so this ends
        // quickly, and it costs O(k²) whatever the swarm size.
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let i = fastrand::usize(..n);
            if Some(i) != skip && !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked.into_iter().map(|i| self.members[i].addr).collect()
    }
}

/// Counts events per second over the last [`RATE_WINDOW_SECS`] seconds in a ring of buckets,
/// so the rate costs constant memory whatever the traffic.
struct Rate {
    origin: Instant,
    buckets: [u64; RATE_WINDOW_SECS],
    /// Seconds since `origin` of the newest bucket.
    head: u64,
}

impl Rate {
    fn new(origin: Instant) -> Rate {
        Rate {
            origin,
            buckets: [0; RATE_WINDOW_SECS],
            head: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        if second > self.head {
            let stale = (second - self.head).min(RATE_WINDOW_SECS as u64);
            for s in 1..=stale {
                self.buckets[((self.head + s) % RATE_WINDOW_SECS as u64) as usize] = 0;
            }
            self.head = second;
        }
    }

    fn record(&mut self, now: Instant) {
        self.advance(now);
        self.buckets[(self.head % RATE_WINDOW_SECS as u64) as usize] += 1;
    }

    fn per_second(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let elapsed = now.saturating_duration_since(self.origin).as_secs_f64();
        // The newest bucket is only partly filled: the window is the full older buckets plus
        // the part of the current second that has passed. At least a second, so that the first
        // few announces after start do not read as a huge rate.
        let full = (RATE_WINDOW_SECS - 1) as f64;
        let span = if elapsed < RATE_WINDOW_SECS as f64 {
            elapsed
        } else {
            full + elapsed.fract()
        };
        self.buckets.iter().sum::<u64>() as f64 / span.max(1.0)
    }
}

/// What an announce did to the table, for the log.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Joined,
    Refreshed,
    /// The same address came back with another peer id: the member restarted.
    Restarted,
}

struct Limits {
    max_swarms: usize,
    max_swarm_members: usize,
    max_members: usize,
}

/// All swarms and their members. Methods take `now` so that tests control time.
struct Registry {
    swarms: HashMap<SwarmId, Swarm>,
    members: usize,
    limits: Limits,
    rate: Rate,
    /// Announces refused for lack of room since the last summary.
    refused: u64,
}

impl Registry {
    fn new(limits: Limits, now: Instant) -> Registry {
        Registry {
            swarms: HashMap::new(),
            members: 0,
            limits,
            rate: Rate::new(now),
            refused: 0,
        }
    }

    fn announce(
        &mut self,
        swarm_id: SwarmId,
        addr: SocketAddr,
        peer_id: PeerId,
        now: Instant,
    ) -> Result<(Change, Vec<SocketAddr>), &'static str> {
        self.rate.record(now);
        let refusal = match self.swarms.get(&swarm_id) {
            None if self.swarms.len() >= self.limits.max_swarms => Some("too many swarms"),
            Some(swarm) if swarm.by_addr.contains_key(&addr) => None,
            Some(swarm) if swarm.members.len() >= self.limits.max_swarm_members => {
                Some("swarm is full")
            }
            _ if self.members >= self.limits.max_members => Some("too many members"),
            _ => None,
        };
        if let Some(why) = refusal {
            self.refused += 1;
            return Err(why);
        }
        let swarm = self.swarms.entry(swarm_id).or_default();
        let change = match swarm.by_addr.get(&addr) {
            Some(&i) => {
                let member = &mut swarm.members[i];
                member.last_seen = now;
                if member.peer_id == peer_id {
                    Change::Refreshed
                } else {
                    member.peer_id = peer_id;
                    Change::Restarted
                }
            }
            None => {
                swarm.by_addr.insert(addr, swarm.members.len());
                swarm.members.push(Member {
                    addr,
                    peer_id,
                    last_seen: now,
                });
                self.members += 1;
                Change::Joined
            }
        };
        Ok((change, swarm.sample(addr, MAX_PEERS_PER_REPLY)))
    }

    /// Removes the member if it is there under this peer id. A LEAVE with another peer id is
    /// ignored: it comes from an earlier run at the same address, late, and must not evict the
    /// run that replaced it.
    fn leave(&mut self, swarm_id: SwarmId, addr: SocketAddr, peer_id: PeerId) -> bool {
        let Some(swarm) = self.swarms.get_mut(&swarm_id) else {
            return false;
        };
        match swarm.by_addr.get(&addr) {
            Some(&i) if swarm.members[i].peer_id == peer_id => {
                swarm.remove_at(i);
                self.members -= 1;
                if swarm.members.is_empty() {
                    self.swarms.remove(&swarm_id);
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets members last seen before `cutoff`, and swarms left empty.
    fn expire(&mut self, cutoff: Instant) -> Vec<(SwarmId, SocketAddr)> {
        let mut expired = Vec::new();
        self.swarms.retain(|id, swarm| {
            let mut i = 0;
            while i < swarm.members.len() {
                if swarm.members[i].last_seen < cutoff {
                    expired.push((*id, swarm.remove_at(i).addr));
                } else {
                    i += 1;
                }
            }
            !swarm.members.is_empty()
        });
        self.members -= expired.len();
        expired
    }

    fn stats(&mut self, now: Instant) -> ConductorStats {
        ConductorStats {
            swarms: self.swarms.len() as u64,
            members: self.members as u64,
            announces_per_sec: self.rate.per_second(now),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server

struct Shared {
    config: ConductorConfig,
    registry: Mutex<Registry>,
    clients: AtomicUsize,
    /// Connections turned away for lack of room since the last summary.
    turned_away: AtomicU64,
}

impl Shared {
    /// The table stays consistent between statements, so a poisoned lock (which needs a panic,
    /// which we do not expect) is still safe to use; refusing service would be worse.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Holds one of the `max_clients` places for as long as its connection is served.
struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bound, not yet serving, conductor.
pub struct Conductor {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Conductor {
    /// Checks the configuration and binds the listening socket, so the caller can report the
    /// real address (port 0 picks a free one) before serving.
    pub fn bind(config: ConductorConfig) -> anyhow::Result<Conductor> {
        ensure!(
            (MIN_INTERVAL..=MAX_INTERVAL).contains(&config.interval),
            "interval {:?} is outside {MIN_INTERVAL:?}..={MAX_INTERVAL:?}",
            config.interval
        );
        ensure!(config.max_clients > 0, "max clients must be at least 1");
        ensure!(
            config.max_swarms > 0 && config.max_swarm_members > 0 && config.max_members > 0,
            "swarm and member limits must be at least 1"
        );
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let limits = Limits {
            max_swarms: config.max_swarms,
            max_swarm_members: config.max_swarm_members,
            max_members: config.max_members,
        };
        Ok(Conductor {
            listener,
            shared: Arc::new(Shared {
                config,
                registry: Mutex::new(Registry::new(limits, Instant::now())),
                clients: AtomicUsize::new(0),
                turned_away: AtomicU64::new(0),
            }),
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("cannot read the listening address")
    }

    /// Serves forever; returns only if it cannot start.
    pub fn run(self) -> anyhow::Result<()> {
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name("conductor-reaper".into())
            .spawn(move || reap_forever(&shared))
            .context("cannot start the reaper thread")?;
        let config = &self.shared.config;
        info!(
            "serving on {}: interval {:?}, at most {} clients",
            self.local_addr()?,
            config.interval,
            config.max_clients
        );
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) => {
                    warn!("cannot accept a connection: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn admit(&self, stream: TcpStream) {
        let shared = &self.shared;
        if shared.clients.fetch_add(1, Ordering::AcqRel) >= shared.config.max_clients {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            turn_away(shared, &stream);
            return;
        }
        let slot = ClientSlot(Arc::clone(shared));
        let spawned = thread::Builder::new()
            .name("conductor-client".into())
            .stack_size(CLIENT_STACK)
            .spawn(move || serve_client(slot, stream));
        // The connection went down with the closure; its client will retry.
        if let Err(e) = spawned {
            warn!("cannot start a client thread: {e}");
            shared.turned_away.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn turn_away(shared: &Shared, stream: &TcpStream) {
    shared.turned_away.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_write_timeout(Some(BUSY_WRITE_TIMEOUT));
    let _ = ConductorReply::Error("busy".into()).write_to(&mut &*stream);
}

/// A TCP stream whose reads and writes fail once a deadline passes, however the bytes trickle:
/// a plain socket timeout restarts with every byte, which would let a client hold a thread
/// indefinitely by sending, or taking, one byte at a time. It borrows the socket rather than
/// cloning it, so a client costs one file descriptor.
struct DeadlineStream<'a> {
    stream: &'a TcpStream,
    deadline: Cell<Instant>,
}

impl DeadlineStream<'_> {
    fn new(stream: &TcpStream, deadline: Instant) -> DeadlineStream<'_> {
        DeadlineStream {
            stream,
            deadline: Cell::new(deadline),
        }
    }

    fn time_left(&self) -> io::Result<Duration> {
        let left = self
            .deadline
            .get()
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        Ok(left)
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.time_left()?))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.time_left()?))?;
        let mut stream = self.stream;
        stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serve_client(slot: ClientSlot, stream: TcpStream) {
    let shared = &slot.0;
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(e) => {
            debug!("client gone before we could serve it: {e}");
            return;
        }
    };
    match converse(shared, &stream, peer) {
        Ok(()) => {}
        Err(e) if e.is_timeout() => debug!("client {peer}: timed out, closing"),
        Err(e) => debug!("client {peer}: {e}"),
    }
}

/// Answers requests until the client closes, goes quiet or sends something wrong.
fn converse(shared: &Shared, stream: &TcpStream, peer: SocketAddr) -> Result<(), WireError> {
    let config = &shared.config;
    // Replies are single small writes; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    let mut writer = DeadlineStream::new(stream, Instant::now());
    let mut reader = LineReader::new(BufReader::new(DeadlineStream::new(
        stream,
        Instant::now() + config.first_line_timeout,
    )));
    // An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d; other members must be
    // given the plain IPv4 address.
    let ip = peer.ip().to_canonical();
    loop {
        let request = match reader.read_line() {
            Ok(line) => ConductorRequest::parse(line),
            Err(WireError::Closed) => return Ok(()),
            Err(e @ (WireError::LineTooLong | WireError::NotText)) => Err(e),
            Err(e) => return Err(e),
        };
        writer.deadline.set(Instant::now() + config.write_timeout);
        match request {
            Ok(request) => answer(shared, ip, request).write_to(&mut writer)?,
            Err(e) => {
                debug!("client {peer}: {e}");
                ConductorReply::Error(e.to_string()).write_to(&mut writer)?;
                linger_and_close(stream);
                return Ok(());
            }
        }
        reader
            .get_ref()
            .get_ref()
            .deadline
            .set(Instant::now() + config.idle_timeout);
    }
}

/// Closes after an `ERROR` so that the client can read it: we send our end-of-stream first,
/// then drain what the client already sent (briefly, and only so much), because closing a
/// socket with unread input makes the kernel send a reset that can discard our reply.
fn linger_and_close(stream: &TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let drain = DeadlineStream::new(stream, Instant::now() + LINGER_TIME);
    let _ = io::copy(&mut drain.take(LINGER_BYTES), &mut io::sink());
}

fn answer(shared: &Shared, ip: IpAddr, request: ConductorRequest) -> ConductorReply {
    let now = Instant::now();
    match request {
        ConductorRequest::Announce {
            swarm,
            peer_id,
            port,
        } => {
            let addr = SocketAddr::new(ip, port);
            let result = shared.registry().announce(swarm, addr, peer_id, now);
            match result {
                Ok((change, peers)) => {
                    match change {
                        Change::Joined => info!("join {} {addr}", short(&swarm)),
                        Change::Restarted => {
                            info!("rejoin {} {addr} (new peer id)", short(&swarm))
                        }
                        Change::Refreshed => debug!("refresh {} {addr}", short(&swarm)),
                    }
                    ConductorReply::Peers {
                        interval_ms: shared.config.interval.as_millis() as u64,
                        peers,
                    }
                }
                Err(why) => {
                    debug!("refused {} {addr}: {why}", short(&swarm));
                    ConductorReply::Error(why.to_string())
                }
            }
        }
        ConductorRequest::Leave {
            swarm,
            peer_id,
            port,
        } => {
            let addr = SocketAddr::new(ip, port);
            let removed = shared.registry().leave(swarm, addr, peer_id);
            if removed {
                info!("leave {} {addr}", short(&swarm));
            }
            ConductorReply::Ok
        }
        ConductorRequest::Stats => ConductorReply::Stats(shared.registry().stats(now)),
    }
}

/// Expires silent members every half interval and logs a summary now and then.
fn reap_forever(shared: &Shared) {
    let interval = shared.config.interval;
    let max_age = 2 * interval + EXPIRY_GRACE;
    let summary_period = interval.max(MIN_SUMMARY_PERIOD);
    let mut next_summary = Instant::now() + summary_period;
    loop {
        thread::sleep(interval / 2);
        let now = Instant::now();
        // Early in the process's life no member can be that old yet.
        let expired = match now.checked_sub(max_age) {
            Some(cutoff) => shared.registry().expire(cutoff),
            None => Vec::new(),
        };
        for (swarm, addr) in expired.iter().take(MAX_EXPIRY_LINES) {
            info!("expire {} {addr}", short(swarm));
        }
        if expired.len() > MAX_EXPIRY_LINES {
            info!("expired {} more members", expired.len() - MAX_EXPIRY_LINES);
        }
        if now >= next_summary {
            next_summary = now + summary_period;
            let (stats, refused) = {
                let mut registry = shared.registry();
                (registry.stats(now), std::mem::take(&mut registry.refused))
            };
            let turned_away = shared.turned_away.swap(0, Ordering::Relaxed);
            info!(
                "swarms: {}  members: {}  announces/s: {:.1}  clients: {}  refused: {refused}  busy: {turned_away}",
                stats.swarms,
                stats.members,
                stats.announces_per_sec,
                shared.clients.load(Ordering::Relaxed),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side

/// Names the conductor in errors, with the address tried when the name was not one.
fn describe(conductor: &str, addr: SocketAddr) -> String {
    if conductor == addr.to_string() {
        format!("conductor {conductor}")
    } else {
        format!("conductor {conductor} ({addr})")
    }
}

/// Sends one request and reads the reply, within `timeout` from connecting to the last byte.
/// Name resolution happens before and is bounded only by the system resolver.
fn exchange(
    conductor: &str,
    request: &ConductorRequest,
    timeout: Duration,
) -> anyhow::Result<ConductorReply> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = conductor
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve conductor {conductor}"))?
        .collect();
    let mut failure = anyhow!("conductor {conductor}: the name resolves to no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let stream = match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => stream,
            Err(e) => {
                failure = anyhow!("{}: cannot connect: {e}", describe(conductor, addr));
                continue;
            }
        };
        return talk(stream, request, deadline).with_context(|| describe(conductor, addr));
    }
    Err(failure)
}

fn talk(
    stream: TcpStream,
    request: &ConductorRequest,
    deadline: Instant,
) -> anyhow::Result<ConductorReply> {
    let mut stream = DeadlineStream::new(&stream, deadline);
    stream
        .write_all(request.to_line().as_bytes())
        .context("cannot send the request")?;
    let mut reader = LineReader::new(BufReader::new(stream));
    let reply = ConductorReply::read_from(&mut reader).context("no valid reply")?;
    Ok(reply)
}

/// Joins or refreshes membership of `swarm` as a member accepting peers on `port`, and returns
/// the interval after which to announce again and some other members.
pub fn announce(
    conductor: &str,
    swarm: SwarmId,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<(Duration, Vec<SocketAddr>)> {
    let request = ConductorRequest::Announce {
        swarm,
        peer_id,
        port,
    };
    match exchange(conductor, &request, timeout)? {
        ConductorReply::Peers { interval_ms, peers } => {
            Ok((Duration::from_millis(interval_ms), peers))
        }
        ConductorReply::Error(why) => bail!("conductor {conductor} refused the announce: {why}"),
        other => bail!("conductor {conductor} answered an announce with {other:?}"),
    }
}

/// Tells the conductor this member is quitting, so others stop being sent to it at once.
pub fn leave(
    conductor: &str,
    swarm: SwarmId,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let request = ConductorRequest::Leave {
        swarm,
        peer_id,
        port,
    };
    match exchange(conductor, &request, timeout)? {
        ConductorReply::Ok => Ok(()),
        ConductorReply::Error(why) => bail!("conductor {conductor} refused the leave: {why}"),
        other => bail!("conductor {conductor} answered a leave with {other:?}"),
    }
}

/// The counters of a running conductor.
pub fn stats(conductor: &str, timeout: Duration) -> anyhow::Result<ConductorStats> {
    match exchange(conductor, &ConductorRequest::Stats, timeout)? {
        ConductorReply::Stats(stats) => Ok(stats),
        ConductorReply::Error(why) => bail!("conductor {conductor} refused STATS: {why}"),
        other => bail!("conductor {conductor} answered STATS with {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orch::Checksum;

    fn limits(max_swarms: usize, max_swarm_members: usize, max_members: usize) -> Limits {
        Limits {
            max_swarms,
            max_swarm_members,
            max_members,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        for bad in [
            "30",
            "",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "3d",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn samples_are_distinct_random_and_never_the_asker() {
        let now = Instant::now();
        let swarm = Checksum::of(b"s");
        let mut registry = Registry::new(limits(10, 1000, 1000), now);
        for port in 1..=300 {
            registry
                .announce(swarm, addr(port), PeerId::random(), now)
                .unwrap();
        }
        for asker in [1, 2, 150, 300] {
            let (_, peers) = registry
                .announce(swarm, addr(asker), PeerId::random(), now)
                .unwrap();
            assert_eq!(peers.len(), MAX_PEERS_PER_REPLY);
            assert!(!peers.contains(&addr(asker)));
            let mut unique = peers.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), peers.len());
        }
        // Small swarms, including the edge where rejection sampling would start.
        let small = Checksum::of(b"small");
        for port in 1..=(2 * MAX_PEERS_PER_REPLY as u16 + 2) {
            let (_, peers) = registry
                .announce(small, addr(port), PeerId::random(), now)
                .unwrap();
            assert_eq!(peers.len(), (port as usize - 1).min(MAX_PEERS_PER_REPLY));
            assert!(!peers.contains(&addr(port)));
        }
    }

    #[test]
    fn leave_expire_and_caps() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let (a, b) = (Checksum::of(b"a"), Checksum::of(b"b"));
        let id = PeerId::random();
        let mut registry = Registry::new(limits(2, 2, 3), start);
        assert_eq!(
            registry.announce(a, addr(1), id, start).unwrap().0,
            Change::Joined
        );
        assert_eq!(
            registry.announce(a, addr(1), id, start).unwrap().0,
            Change::Refreshed
        );
        let other = PeerId::random();
        assert_eq!(
            registry.announce(a, addr(1), other, start).unwrap().0,
            Change::Restarted
        );
        registry.announce(a, addr(2), id, later).unwrap();
        assert_eq!(
            registry.announce(a, addr(3), id, later),
            Err("swarm is full")
        );
        registry.announce(b, addr(1), id, later).unwrap();
        assert_eq!(
            registry.announce(Checksum::of(b"c"), addr(1), id, later),
            Err("too many swarms")
        );
        // Refreshing stays possible at every cap.
        registry.announce(a, addr(2), id, later).unwrap();
        assert_eq!(registry.refused, 2);

        // A late LEAVE from the previous run does not evict the new one.
        assert!(!registry.leave(a, addr(1), id));
        assert_eq!(registry.stats(later).members, 3);

        let expired = registry.expire(start + Duration::from_secs(1));
        assert_eq!(expired, vec![(a, addr(1))]);
        assert!(registry.leave(b, addr(1), id));
        let stats = registry.stats(later);
        assert_eq!((stats.swarms, stats.members), (1, 1));
        assert!(registry.leave(a, addr(2), id));
        assert!(registry.swarms.is_empty());
        assert_eq!(registry.members, 0);
    }

    #[test]
    fn total_member_cap() {
        let now = Instant::now();
        let id = PeerId::random();
        let mut registry = Registry::new(limits(10, 10, 2), now);
        registry
            .announce(Checksum::of(b"a"), addr(1), id, now)
            .unwrap();
        registry
            .announce(Checksum::of(b"b"), addr(1), id, now)
            .unwrap();
        assert_eq!(
            registry.announce(Checksum::of(b"a"), addr(2), id, now),
            Err("too many members")
        );
        // The refused announce created no empty swarm.
        assert_eq!(registry.stats(now).swarms, 2);
    }

    #[test]
    fn rate_covers_a_sliding_window() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        assert_eq!(rate.per_second(start), 0.0);
        for tenth in 0..100 {
            rate.record(start + Duration::from_millis(tenth * 100));
        }
        // 100 announces over 10 s.
        let r = rate.per_second(start + Duration::from_secs(10));
        assert!((r - 10.0).abs() < 0.01, "{r}");
        // After the window passes with no traffic, the rate falls to zero.
        let r = rate.per_second(start + Duration::from_secs(10 + RATE_WINDOW_SECS as u64));
        assert_eq!(r, 0.0);
        // A long gap followed by traffic does not mix in stale buckets.
        let t = start + Duration::from_secs(1000);
        rate.record(t);
        assert!((rate.per_second(t) - 1.0 / (RATE_WINDOW_SECS - 1) as f64).abs() < 0.01);
    }
}
