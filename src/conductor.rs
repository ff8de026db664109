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
//! - No one address can take all the places: connections are capped per source address (an
//!   IPv4 address or an IPv6 /64). At a cap, a connection that is waiting for a line is closed
//!   to make room: one of the address holding the most connections when the newcomer's holds
//!   far fewer, else one that has waited long enough to be stale. Honest clients send their
//!   request as soon as they connect, so what gives way is stalled or slow; a flood of idle
//!   connections mostly pushes out its own kind (see `Connections::admit`).
//! - On Linux the kernel holds back a connection until its first bytes arrive (every client
//!   speaks first), so connections that never send cost no thread and no turn of the accept
//!   loop; one handed over still silent after the first-line timeout is closed at once.
//! - Client threads are joined by the accept loop, so the thread count is a real bound, not
//!   only a count of the connections being served.
//! - Members are capped per source address too, so one machine announcing thousands of ports
//!   cannot fill the tables or crowd out anyone else; it is refused past its cap.
//! - All shared state sits behind one [`Mutex`] held only for in-memory bookkeeping; logging and
//!   socket I/O happen after it is released.
//! - Every table is capped (swarms, members per swarm, members in total), so memory is bounded
//!   whatever clients send.
//!
//! The same module holds the client side ([`announce`], [`leave`], [`stats`]) so that the
//! member and the tools speak the protocol through one implementation.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use log::{debug, info, warn};

use crate::net::{self, DeadlineStream};
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
/// Shortest accepted announce interval: below this members would spend their time announcing.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted announce interval: beyond this the member lists go stale.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Slack on top of two missed intervals before a member is forgotten, so that one late
/// announce (a busy member, a slow network) does not drop it.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);
/// The summary log line comes at most this often, so a short interval does not flood the log.
const MIN_SUMMARY_PERIOD: Duration = Duration::from_secs(60);
/// After a persistent accept failure (out of file descriptors) retrying at once would spin;
/// short, because connections wait in the backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Accept failures are logged at most this often.
const ACCEPT_WARN_PERIOD: Duration = Duration::from_secs(10);
/// Connections the kernel queues for us while the accept loop is busy (capped by the system's
/// `somaxconn`). The standard library's 128 overflows under a burst of connections, and a
/// dropped SYN costs the client a one-second retransmission.
const LISTEN_BACKLOG: i32 = 4096;
/// Evicted connections whose threads have not ended yet may push the thread count over
/// `max_clients` by at most this fraction (and at least [`MIN_EVICTION_HEADROOM`]): the threads
/// end as soon as they see the close, within microseconds when the machine is not overloaded.
const EVICTION_HEADROOM_DIVISOR: usize = 8;
const MIN_EVICTION_HEADROOM: usize = 16;
/// File descriptors needed besides one per client thread: stdio, the listener, the log file.
const FD_MARGIN: usize = 64;
/// A connection competes for its place with newcomers from addresses holding as many
/// connections as its own only once it has waited this long for a line: honest clients send
/// their request as soon as they connect, so by then it is stalled, slow or idle.
const EVICTABLE_AFTER: Duration = Duration::from_secs(2);
/// Sockets waiting for the closer thread (each holds a descriptor).
const CLOSER_QUEUE: usize = 1024;
/// Read buffer of a client connection: requests are short lines.
const CLIENT_READ_BUFFER: usize = 2048;
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
}

impl Default for ConductorConfig {
    fn default() -> ConductorConfig {
        ConductorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9999)),
            interval: DEFAULT_INTERVAL,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_clients_per_ip: DEFAULT_MAX_CLIENTS_PER_IP,
            max_swarms: DEFAULT_MAX_SWARMS,
            max_swarm_members: DEFAULT_MAX_SWARM_MEMBERS,
            max_members: DEFAULT_MAX_MEMBERS,
            max_members_per_ip: DEFAULT_MAX_MEMBERS_PER_IP,
            first_line_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What the per-address caps count by: the IPv4 address, or the /64 network of an IPv6 address
/// (one machine is usually given a whole /64, so counting single IPv6 addresses would cap
/// nothing).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
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
    max_members_per_ip: usize,
}

/// All swarms and their members. Methods take `now` so that tests control time.
struct Registry {
    swarms: HashMap<SwarmId, Swarm>,
    members: usize,
    /// Members per source address (see [`source_of`]) over all swarms; no zero entries.
    per_source: HashMap<IpAddr, usize>,
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
            per_source: HashMap::new(),
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
        let source = source_of(addr.ip());
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        let refusal = match self.swarms.get(&swarm_id) {
            Some(swarm) if swarm.by_addr.contains_key(&addr) => None,
            _ if from_source >= self.limits.max_members_per_ip => {
                Some("too many members from this address")
            }
            None if self.swarms.len() >= self.limits.max_swarms => Some("too many swarms"),
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
                *self.per_source.entry(source).or_insert(0) += 1;
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
                if swarm.members.is_empty() {
                    self.swarms.remove(&swarm_id);
                }
                self.forget(addr);
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
        for (_, addr) in &expired {
            self.forget(*addr);
        }
        expired
    }

    /// Counts one member at `addr` out of the totals.
    fn forget(&mut self, addr: SocketAddr) {
        self.members -= 1;
        let source = source_of(addr.ip());
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
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
    connections: Mutex<Connections>,
    /// Connections turned away for lack of room since the last summary.
    turned_away: AtomicU64,
    /// Waiting connections closed to make room for newer ones since the last summary.
    evicted: AtomicU64,
    /// Connections closed on accept because they sent nothing for the first-line timeout.
    silent: AtomicU64,
    /// Whether the kernel holds back connections until they send (see [`defer_accept`]).
    deferred: bool,
}

impl Shared {
    /// The table stays consistent between statements, so a poisoned lock (which needs a panic,
    /// which we do not expect) is still safe to use; refusing service would be worse.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Same reasoning as for [`Shared::registry`].
    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`Conn::state`] while its thread answers a request: it is not to be evicted then.
const BUSY: u64 = u64::MAX;
/// [`Conn::state`] once evicted: the socket is shut down and its thread is ending.
const EVICTED: u64 = u64::MAX - 1;

/// One served connection, shared by its thread and the connection table (which shuts it down
/// to evict it: sharing the socket rather than cloning it keeps a client at one descriptor).
struct Conn {
    stream: TcpStream,
    source: IpAddr,
    /// While the connection waits (for a line, or for the client to take a reply): when it
    /// started waiting, in microseconds since [`Connections::origin`]. Otherwise [`BUSY`] or
    /// [`EVICTED`]. Only the evictor sets `EVICTED`, only over a waiting time, and only the
    /// connection's own thread sets anything else, so a compare-and-swap decides who wins.
    state: AtomicU64,
}

impl Conn {
    /// Marks the connection as answering a request; false if it was evicted meanwhile.
    fn begin_work(&self) -> bool {
        let current = self.state.load(Ordering::Acquire);
        current != EVICTED
            && self
                .state
                .compare_exchange(current, BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Marks the connection as waiting since `since`, unless it was evicted.
    fn wait(&self, since: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != EVICTED).then_some(since)
            });
    }
}

/// Every served connection, with the counts the admission rules need.
struct Connections {
    origin: Instant,
    conns: HashMap<u64, Arc<Conn>>,
    /// Connections not evicted, per source address (see [`source_of`]); no zero entries.
    per_source: HashMap<IpAddr, usize>,
    /// Connections not evicted.
    live: usize,
    next_id: u64,
    max: usize,
    max_per_source: usize,
    /// Most connections including evicted ones whose threads have not ended yet: the bound on
    /// client threads.
    hard_cap: usize,
    /// Connections whose threads have finished serving, for the acceptor to join.
    ended: Vec<u64>,
    /// No waiting connection is stale before this (see [`Connections::evict`]).
    no_stale_before: Instant,
}

impl Connections {
    fn new(config: &ConductorConfig, origin: Instant) -> Connections {
        Connections {
            origin,
            conns: HashMap::new(),
            per_source: HashMap::new(),
            live: 0,
            next_id: 0,
            max: config.max_clients,
            max_per_source: config.max_clients_per_ip,
            hard_cap: hard_cap(config.max_clients),
            ended: Vec::new(),
            no_stale_before: origin + EVICTABLE_AFTER,
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        stamp(self.origin, now)
    }

    /// Takes a new connection from `source`, or gives the stream back when there is no room.
    /// The boolean tells whether a waiting connection was closed to make room:
    /// - a source at its own cap is turned away: its connections end by their deadlines, and
    ///   replacing them as it reconnects would only let it churn threads (honest clients hold a
    ///   connection for milliseconds, so hundreds at once from one address are stalled ones);
    /// - at the overall cap, a newcomer takes the place of a waiting connection, chosen first
    ///   among those that have waited at least [`EVICTABLE_AFTER`] ("stale") of sources holding
    ///   more than twice as many connections as the newcomer's, then among any stale ones,
    ///   then among any of such heavier sources; within each, the heaviest source first, then
    ///   the oldest connection.
    ///
    /// So a client from an address with few connections (an honest member) gets in, a flood of
    /// idle connections only replaces stale ones, each place at most once per
    /// `EVICTABLE_AFTER`, and a connection about to send its request is cut last. Turning a
    /// client away costs no scan of the table in the common cases.
    fn admit(
        &mut self,
        stream: TcpStream,
        source: IpAddr,
        now: Instant,
    ) -> Result<(u64, Arc<Conn>, bool), TcpStream> {
        if self.conns.len() >= self.hard_cap {
            return Err(stream);
        }
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(stream);
        }
        let evicted = self.live >= self.max;
        if evicted {
            // No connection can be stale before this: skip the scan that would find none.
            let stale_possible = now >= self.no_stale_before;
            // Waiting since this stamp or earlier: stale.
            let stale =
                (now >= self.origin + EVICTABLE_AFTER).then(|| self.stamp(now - EVICTABLE_AFTER));
            let is_stale = |since: u64| stale.is_some_and(|stale| since <= stale);
            let heavier = |count: usize| count > from_source.saturating_mul(2);
            let heavier_exists = self.per_source.values().any(|&count| heavier(count));
            let made_room = (stale_possible || heavier_exists)
                && self.evict(now, |_, since, count| {
                    let tier = match (heavier(count), is_stale(since)) {
                        (true, true) => 0,
                        (false, true) => 1,
                        (true, false) => 2,
                        (false, false) => return None,
                    };
                    Some((tier, Reverse(count)))
                });
            if !made_room {
                return Err(stream);
            }
        }
        let conn = Arc::new(Conn {
            stream,
            source,
            state: AtomicU64::new(self.stamp(now)),
        });
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(id, Arc::clone(&conn));
        self.live += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
        Ok((id, conn, evicted))
    }

    /// Shuts down a waiting connection so that its thread ends and frees its place: of those
    /// for which `rank` (given the connection, since when it waits and how many connections
    /// its source holds) is not None, the lowest rank, and the longest waiting within it.
    /// False if none is eligible.
    fn evict<K: Ord>(
        &mut self,
        now: Instant,
        rank: impl Fn(&Conn, u64, usize) -> Option<K>,
    ) -> bool {
        // A failed swap means that connection just started work: look again, a few times.
        for _ in 0..4 {
            let mut oldest_waiting = u64::MAX;
            let victim = self
                .conns
                .values()
                .filter_map(|c| {
                    let since = c.state.load(Ordering::Acquire);
                    if since >= EVICTED {
                        return None;
                    }
                    oldest_waiting = oldest_waiting.min(since);
                    let count = self.per_source.get(&c.source).copied().unwrap_or(0);
                    Some(((rank(c, since, count)?, since), c))
                })
                .min_by(|a, b| a.0.cmp(&b.0))
                .map(|((_, since), c)| (since, Arc::clone(c)));
            let Some((since, conn)) = victim else {
                // Waiting times only grow newer (a connection waits again from the present,
                // newcomers start now), so none can be stale before the oldest one is.
                self.no_stale_before = if oldest_waiting == u64::MAX {
                    now
                } else {
                    self.origin + Duration::from_micros(oldest_waiting)
                } + EVICTABLE_AFTER;
                return false;
            };
            if conn
                .state
                .compare_exchange(since, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = conn.stream.shutdown(Shutdown::Both);
                self.count_out(conn.source);
                return true;
            }
        }
        false
    }

    /// Called by a connection's thread as it ends.
    fn remove(&mut self, id: u64) {
        self.ended.push(id);
        if let Some(conn) = self.conns.remove(&id) {
            // An evicted connection was counted out when it was evicted.
            if conn.state.load(Ordering::Acquire) != EVICTED {
                self.count_out(conn.source);
            }
        }
    }

    fn count_out(&mut self, source: IpAddr) {
        self.live -= 1;
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// Most client threads for a given `max_clients`: evicted connections whose threads have not
/// ended yet come on top.
fn hard_cap(max_clients: usize) -> usize {
    max_clients.saturating_add((max_clients / EVICTION_HEADROOM_DIVISOR).max(MIN_EVICTION_HEADROOM))
}

/// Microseconds from `origin` to `now`, as [`Conn::state`] stores them.
fn stamp(origin: Instant, now: Instant) -> u64 {
    (now.saturating_duration_since(origin).as_micros() as u64).min(EVICTED - 1)
}

/// Holds a place in the connection table for as long as its connection is served.
struct ClientSlot {
    shared: Arc<Shared>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.connections().remove(self.id);
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
            config.max_clients_per_ip > 0,
            "max clients per address must be at least 1"
        );
        ensure!(
            config.max_swarms > 0
                && config.max_swarm_members > 0
                && config.max_members > 0
                && config.max_members_per_ip > 0,
            "swarm and member limits must be at least 1"
        );
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        // If this fails the standard library's backlog stays, which still works.
        let _ = net::set_backlog(&listener, LISTEN_BACKLOG);
        let deferred = net::defer_accept(&listener, config.first_line_timeout);
        let limits = Limits {
            max_swarms: config.max_swarms,
            max_swarm_members: config.max_swarm_members,
            max_members: config.max_members,
            max_members_per_ip: config.max_members_per_ip,
        };
        let now = Instant::now();
        let connections = Connections::new(&config, now);
        Ok(Conductor {
            listener,
            shared: Arc::new(Shared {
                config,
                registry: Mutex::new(Registry::new(limits, now)),
                connections: Mutex::new(connections),
                turned_away: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                silent: AtomicU64::new(0),
                deferred,
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
        let config = &self.shared.config;
        raise_fd_limit(
            hard_cap(config.max_clients)
                .saturating_add(CLOSER_QUEUE)
                .saturating_add(FD_MARGIN),
        );
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name("conductor-reaper".into())
            .spawn(move || reap_forever(&shared))
            .context("cannot start the reaper thread")?;
        info!(
            "serving on {}: interval {:?}, at most {} clients ({} per address), {} members per address",
            self.local_addr()?,
            config.interval,
            config.max_clients,
            config.max_clients_per_ip,
            config.max_members_per_ip,
        );
        let mut last_warning: Option<Instant> = None;
        let mut failures = 0u64;
        // Every client thread not yet joined: the count of client threads that exist.
        let mut threads = HashMap::new();
        let closer = Closer::start()?;
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(&mut threads, &closer, stream, peer),
                Err(e) => {
                    // Out of descriptors: shed the longest-waiting connection so that the next
                    // accept finds one free, rather than leaving everyone in the backlog.
                    if matches!(
                        rustix::io::Errno::from_io_error(&e),
                        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
                    ) && self
                        .shared
                        .connections()
                        .evict(Instant::now(), |_, _, _| Some(()))
                    {
                        self.shared.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    failures += 1;
                    if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_PERIOD) {
                        warn!("cannot accept a connection: {e} ({failures} failures so far)");
                        last_warning = Some(Instant::now());
                    }
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn admit(
        &self,
        threads: &mut HashMap<u64, thread::JoinHandle<()>>,
        closer: &Closer,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let shared = &self.shared;
        // Join the threads that have finished serving, so that the count below is of threads
        // that exist: a thread leaves the connection table just before it ends, and on an
        // overloaded machine "just before" can last. Joining one costs microseconds.
        let ended = std::mem::take(&mut shared.connections().ended);
        for id in ended {
            if let Some(handle) = threads.remove(&id) {
                let _ = handle.join();
            }
        }
        // With deferred accept, a connection handed over before it sent anything has been
        // silent for the whole first-line timeout already: it is over its deadline.
        if shared.deferred && !net::has_sent(&stream) {
            shared.silent.fetch_add(1, Ordering::Relaxed);
            closer.close(stream);
            return;
        }
        if threads.len() >= hard_cap(shared.config.max_clients) {
            turn_away(shared, &stream);
            closer.close(stream);
            return;
        }
        let admitted = shared
            .connections()
            .admit(stream, source_of(peer.ip()), Instant::now());
        let (id, conn, evicted) = match admitted {
            Ok(admitted) => admitted,
            Err(stream) => {
                turn_away(shared, &stream);
                closer.close(stream);
                return;
            }
        };
        if evicted {
            shared.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let slot = ClientSlot {
            shared: Arc::clone(shared),
            id,
            conn,
        };
        let spawned = thread::Builder::new()
            .name("conductor-client".into())
            .stack_size(CLIENT_STACK)
            .spawn(move || serve_client(slot, peer));
        match spawned {
            Ok(handle) => {
                threads.insert(id, handle);
            }
            // The slot and the connection went down with the closure; its client will retry.
            Err(e) => {
                debug!("cannot start a client thread: {e}");
                shared.turned_away.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Each client holds a socket, and the usual soft limit of 1024 descriptors would run out before
/// the client cap is reached (accept would then fail instead of admitting or answering `busy`),
/// so raise it as far as the hard limit allows.
fn raise_fd_limit(wanted: usize) {
    let wanted = wanted as u64;
    let have = net::raise_fd_limit(wanted);
    if have < wanted {
        warn!("only {have} file descriptors allowed, {wanted} wanted: accepting may fail before the client cap");
    }
}

/// Closes sockets for the accept loop. A close is kernel work (a FIN; on loopback the other
/// side's processing too) that every connection waiting in the backlog behind would pay for;
/// under a flood of connections to turn away or close, the accept loop then only accepts and
/// hands them over.
struct Closer(mpsc::SyncSender<TcpStream>);

impl Closer {
    fn start() -> anyhow::Result<Closer> {
        let (sender, receiver) = mpsc::sync_channel::<TcpStream>(CLOSER_QUEUE);
        thread::Builder::new()
            .name("conductor-closer".into())
            .stack_size(CLIENT_STACK)
            // Ends when the accept loop drops the sender, that is never while serving.
            .spawn(move || receiver.into_iter().for_each(drop))
            .context("cannot start the closer thread")?;
        Ok(Closer(sender))
    }

    /// Closes `stream` soon; at once, here, if the closer is behind.
    fn close(&self, stream: TcpStream) {
        match self.0.try_send(stream) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(stream) | mpsc::TrySendError::Disconnected(stream)) => {
                drop(stream)
            }
        }
    }
}

/// Answers `ERROR busy` (the caller closes). Under a connection flood this is most of what the
/// accept loop does, while honest connections wait behind in the backlog, so it is one system
/// call that never blocks: a fresh socket's send buffer is empty.
fn turn_away(shared: &Shared, stream: &TcpStream) {
    shared.turned_away.fetch_add(1, Ordering::Relaxed);
    // A fresh socket's send buffer is empty, so this one call sends it all without blocking.
    let _ = net::send_now(stream, b"ERROR busy\n");
}

fn serve_client(slot: ClientSlot, peer: SocketAddr) {
    match converse(&slot.shared, &slot.conn, peer) {
        Ok(()) => {}
        Err(e) if e.is_timeout() => debug!("client {peer}: timed out, closing"),
        Err(e) => debug!("client {peer}: {e}"),
    }
}

/// Answers requests until the client closes, goes quiet, sends something wrong or is evicted.
fn converse(shared: &Shared, conn: &Conn, peer: SocketAddr) -> Result<(), WireError> {
    let config = &shared.config;
    let stream = &conn.stream;
    let origin = shared.connections().origin;
    // Replies are single small writes; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    let mut writer = DeadlineStream::new(stream, Instant::now());
    let mut reader = LineReader::new(BufReader::with_capacity(
        CLIENT_READ_BUFFER,
        DeadlineStream::new(stream, Instant::now() + config.first_line_timeout),
    ));
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
        if !conn.begin_work() {
            return Ok(());
        }
        writer.set_deadline(Instant::now() + config.write_timeout);
        match request {
            Ok(request) => {
                let reply = answer(shared, ip, request);
                // A client that does not take its reply is as evictable as an idle one.
                conn.wait(stamp(origin, Instant::now()));
                reply.write_to(&mut writer)?;
            }
            Err(e) => {
                debug!("client {peer}: {e}");
                conn.wait(stamp(origin, Instant::now()));
                ConductorReply::Error(e.to_string()).write_to(&mut writer)?;
                linger_and_close(stream);
                return Ok(());
            }
        }
        let now = Instant::now();
        conn.wait(stamp(origin, now));
        reader
            .get_ref()
            .get_ref()
            .set_deadline(now + config.idle_timeout);
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
            let evicted = shared.evicted.swap(0, Ordering::Relaxed);
            let silent = shared.silent.swap(0, Ordering::Relaxed);
            let (clients, sources) = {
                let connections = shared.connections();
                (connections.live, connections.per_source.len())
            };
            info!(
                "swarms: {}  members: {}  announces/s: {:.1}  clients: {clients} from {sources} addresses  refused: {refused}  busy: {turned_away}  evicted: {evicted}  silent: {silent}",
                stats.swarms,
                stats.members,
                stats.announces_per_sec,
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
            max_members_per_ip: usize::MAX,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
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

    #[test]
    fn members_are_capped_per_source_address() {
        let now = Instant::now();
        let (a, b) = (Checksum::of(b"a"), Checksum::of(b"b"));
        let id = PeerId::random();
        let mut registry = Registry::new(
            Limits {
                max_members_per_ip: 3,
                ..limits(10, 100, 100)
            },
            now,
        );
        // The cap counts over all swarms.
        registry.announce(a, addr(1), id, now).unwrap();
        registry.announce(a, addr(2), id, now).unwrap();
        registry.announce(b, addr(3), id, now).unwrap();
        assert_eq!(
            registry.announce(a, addr(4), id, now),
            Err("too many members from this address")
        );
        assert_eq!(
            registry.announce(Checksum::of(b"new"), addr(4), id, now),
            Err("too many members from this address")
        );
        // Members already there refresh, and other addresses are not affected.
        assert_eq!(
            registry.announce(a, addr(1), id, now).unwrap().0,
            Change::Refreshed
        );
        let other = SocketAddr::from(([10, 0, 0, 2], 4));
        registry.announce(a, other, id, now).unwrap();
        // Leaving and expiring give the places back.
        assert!(registry.leave(a, addr(1), id));
        registry.announce(a, addr(4), id, now).unwrap();
        let later = now + Duration::from_secs(5);
        registry.announce(a, addr(4), id, later).unwrap();
        assert_eq!(registry.expire(now + Duration::from_secs(1)).len(), 3);
        assert_eq!(registry.per_source.get(&addr(4).ip()), Some(&1));
        registry.announce(a, addr(5), id, later).unwrap();
        registry.announce(a, addr(6), id, later).unwrap();
        assert!(registry.announce(a, addr(7), id, later).is_err());
        assert_eq!(registry.members, 3);

        // IPv6 addresses count by /64; IPv4-mapped ones as IPv4.
        let v6 = |text: &str| SocketAddr::new(text.parse().unwrap(), 9);
        for host in ["fd00::1", "fd00::2", "fd00::3"] {
            registry.announce(a, v6(host), id, later).unwrap();
        }
        assert!(registry.announce(a, v6("fd00::4"), id, later).is_err());
        registry
            .announce(a, v6("fd00:0:0:1::4"), id, later)
            .unwrap();
        assert_eq!(source_of("::ffff:10.0.0.1".parse().unwrap()), addr(1).ip());
    }

    /// A connected pair on 127.0.0.1: the server's end, and the client's to keep it open.
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    /// True when the server's end of `client` is shut down.
    fn shut(client: &TcpStream) -> bool {
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        matches!((&*client).read(&mut [0u8; 1]), Ok(0) | Err(_)) && client.take_error().is_ok()
    }

    /// Admits connections into `table` at given times, keeping the client ends open.
    struct Admitter {
        listener: TcpListener,
        start: Instant,
        clients: Vec<TcpStream>,
    }

    impl Admitter {
        fn new() -> Admitter {
            Admitter {
                listener: TcpListener::bind("127.0.0.1:0").unwrap(),
                start: Instant::now(),
                clients: Vec::new(),
            }
        }

        fn table(&self, max_clients: usize, max_clients_per_ip: usize) -> Connections {
            let config = ConductorConfig {
                max_clients,
                max_clients_per_ip,
                ..ConductorConfig::default()
            };
            Connections::new(&config, self.start)
        }

        /// The connection and whether one was evicted for it, or None if turned away.
        fn admit(
            &mut self,
            table: &mut Connections,
            source: [u8; 4],
            ms: u64,
        ) -> Option<(Arc<Conn>, bool)> {
            let (server, client) = pair(&self.listener);
            self.clients.push(client);
            let now = self.start + Duration::from_millis(ms);
            table
                .admit(server, IpAddr::from(source), now)
                .map(|(_, conn, evicted)| (conn, evicted))
                .ok()
        }
    }

    fn evicted(conn: &Conn) -> bool {
        conn.state.load(Ordering::Acquire) == EVICTED
    }

    #[test]
    fn a_source_at_its_cap_is_turned_away() {
        let mut t = Admitter::new();
        let mut table = t.table(10, 2);
        let (abuser, honest) = ([10, 0, 0, 2], [10, 0, 0, 1]);
        let (a1, was_evicted) = t.admit(&mut table, abuser, 0).unwrap();
        assert!(!was_evicted);
        let (a2, _) = t.admit(&mut table, abuser, 1).unwrap();
        // Turned away however stale its own connections are, and nobody else's is touched.
        assert!(t.admit(&mut table, abuser, 2).is_none());
        assert!(t.admit(&mut table, abuser, 60_000).is_none());
        assert!(!evicted(&a1) && !evicted(&a2));
        let (_h1, _) = t.admit(&mut table, honest, 60_001).unwrap();
        assert_eq!((table.live, table.conns.len()), (3, 3));
        assert_eq!(table.per_source.get(&IpAddr::from(abuser)), Some(&2));
        // Threads ending free their places.
        for id in 0..table.next_id {
            table.remove(id);
        }
        assert_eq!((table.live, table.conns.len()), (0, 0));
        assert!(table.per_source.is_empty());
    }

    #[test]
    fn at_the_overall_cap_lighter_sources_get_in_first() {
        let mut t = Admitter::new();
        let mut table = t.table(4, 10);
        let (abuser, honest, other) = ([10, 0, 0, 2], [10, 0, 0, 1], [10, 0, 0, 3]);
        let (a1, _) = t.admit(&mut table, abuser, 0).unwrap();
        let (a2, _) = t.admit(&mut table, abuser, 1).unwrap();
        let (a3, _) = t.admit(&mut table, abuser, 2).unwrap();
        let (h1, _) = t.admit(&mut table, honest, 100).unwrap();
        // A newcomer from a source holding less than half as many takes the place of the heaviest source's oldest
        // waiting connection, even a fresh one.
        let (h2, was_evicted) = t.admit(&mut table, honest, 200).unwrap();
        assert!(was_evicted && evicted(&a1) && !evicted(&h1));
        // No source is heavier than the honest one now (2 each): turned away while everything
        // is fresh; later the stalest connection of all gives way.
        assert!(t.admit(&mut table, honest, 300).is_none());
        let (h3, was_evicted) = t.admit(&mut table, honest, 2500).unwrap();
        assert!(was_evicted && evicted(&a2) && !evicted(&a3) && !evicted(&h1));
        // Busy connections are never taken; stale ones of heavier sources go first.
        assert!(a3.begin_work() && h1.begin_work() && h2.begin_work());
        let (_o1, was_evicted) = t.admit(&mut table, other, 5000).unwrap();
        assert!(was_evicted && evicted(&h3));
        // An evicted connection cannot start work, and stays evicted.
        assert!(!h3.begin_work());
        h3.wait(table.stamp(t.start + Duration::from_secs(6)));
        assert!(evicted(&h3));
        // Nothing waiting is eligible: the newcomer's own source is the only waiting one, and
        // it is fresh.
        assert!(t.admit(&mut table, other, 5001).is_none());
        assert_eq!(table.live, 4);
        // The client of an evicted connection sees it closed.
        assert!(shut(&t.clients[0]));
    }

    #[test]
    fn the_thread_count_is_bounded_by_the_hard_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let now = Instant::now();
        let config = ConductorConfig {
            max_clients: 2,
            max_clients_per_ip: 1000,
            ..ConductorConfig::default()
        };
        let mut table = Connections::new(&config, now);
        let source = IpAddr::from([10, 0, 0, 1]);
        let mut keep = Vec::new();
        let mut admitted = 0;
        // Evicted connections whose threads have not ended yet (never removed here) count
        // against the hard cap.
        for i in 0..100 {
            let (server, client) = pair(&listener);
            keep.push(client);
            let now = now + EVICTABLE_AFTER * (i + 1);
            if table.admit(server, source, now).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, hard_cap(2));
        assert_eq!(table.conns.len(), hard_cap(2));
        assert_eq!(table.live, 2);
    }
}
