//! The table of served connections: who gets a place, and who gives theirs up.
//!
//! Why a module of its own: this is the conductor's defence against clients that hold
//! connections without using them (slowloris, floods of idle sockets), and its rules are
//! subtle enough to be tested alone, on real sockets but without threads. No one address can
//! take all the places: connections are capped per source address (an IPv4 address or an IPv6
//! /64). At a cap, a connection that is waiting for a line is closed to make room: one of the
//! address holding the most connections when the newcomer's holds far fewer, else one that has
//! waited long enough to be stale. Honest clients send their request as soon as they connect,
//! so what gives way is stalled or slow; a flood of idle connections mostly pushes out its own
//! kind (see [`Connections::admit`]).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ConductorConfig;

/// Evicted connections whose threads have not ended yet may push the thread count over
/// `max_clients` by at most this fraction (and at least [`MIN_EVICTION_HEADROOM`]): the threads
/// end as soon as they see the close, within microseconds when the machine is not overloaded.
const EVICTION_HEADROOM_DIVISOR: usize = 8;
const MIN_EVICTION_HEADROOM: usize = 16;
/// A connection competes for its place with newcomers from addresses holding as many
/// connections as its own only once it has waited this long for a line: honest clients send
/// their request as soon as they connect, so by then it is stalled, slow or idle.
const EVICTABLE_AFTER: Duration = Duration::from_secs(2);

/// [`Conn::state`] while its thread answers a request: it is not to be evicted then.
const BUSY: u64 = u64::MAX;
/// [`Conn::state`] once evicted: the socket is shut down and its thread is ending.
const EVICTED: u64 = u64::MAX - 1;

/// One served connection, shared by its thread and the connection table (which shuts it down
/// to evict it: sharing the socket rather than cloning it keeps a client at one descriptor).
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    source: IpAddr,
    /// While the connection waits (for a line, or for the client to take a reply): when it
    /// started waiting, in microseconds since [`Connections::origin`]. Otherwise [`BUSY`] or
    /// [`EVICTED`]. Only the evictor sets `EVICTED`, only over a waiting time, and only the
    /// connection's own thread sets anything else, so a compare-and-swap decides who wins.
    state: AtomicU64,
}

impl Conn {
    /// Marks the connection as answering a request; false if it was evicted meanwhile.
    pub(super) fn begin_work(&self) -> bool {
        let current = self.state.load(Ordering::Acquire);
        current != EVICTED
            && self
                .state
                .compare_exchange(current, BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Marks the connection as waiting since `since`, unless it was evicted.
    pub(super) fn wait(&self, since: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != EVICTED).then_some(since)
            });
    }
}

/// Every served connection, with the counts the admission rules need.
pub(super) struct Connections {
    origin: Instant,
    conns: HashMap<u64, Arc<Conn>>,
    /// Connections not evicted, per source address (see [`super::source_of`]); no zero
    /// entries.
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
    pub(super) fn new(config: &ConductorConfig, origin: Instant) -> Connections {
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

    /// When waiting times are counted from.
    pub(super) fn origin(&self) -> Instant {
        self.origin
    }

    fn stamp(&self, now: Instant) -> u64 {
        stamp(self.origin, now)
    }

    /// Connections not evicted, and the source addresses they come from.
    pub(super) fn clients(&self) -> (usize, usize) {
        (self.live, self.per_source.len())
    }

    /// The connections whose threads have finished serving since the last call.
    pub(super) fn take_ended(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.ended)
    }

    /// Shuts every connection down, so that each thread serving one sees its client gone and
    /// ends: how a stopping conductor wakes threads blocked in a read or a write.
    pub(super) fn shut_all(&self) {
        for conn in self.conns.values() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
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
    pub(super) fn admit(
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
    pub(super) fn evict<K: Ord>(
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
    pub(super) fn remove(&mut self, id: u64) {
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
pub(super) fn hard_cap(max_clients: usize) -> usize {
    max_clients.saturating_add((max_clients / EVICTION_HEADROOM_DIVISOR).max(MIN_EVICTION_HEADROOM))
}

/// Microseconds from `origin` to `now`, as [`Conn::state`] stores them.
pub(super) fn stamp(origin: Instant, now: Instant) -> u64 {
    (now.saturating_duration_since(origin).as_micros() as u64).min(EVICTED - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

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
