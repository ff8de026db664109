//! The conductor's threads, from start to stop, and the conversation with each client.
//!
//! Why a module of its own: this is everything that blocks. The threads are
//! - the accept loop (`conductor-accept`): takes each connection, closes it, turns it away or
//!   admits it, starts its client thread, and joins client threads as they end, so the thread
//!   count is a real bound;
//! - one thread per admitted client (`conductor-client`), which answers requests until the
//!   client closes, goes quiet, sends something wrong or is evicted;
//! - the reaper (`conductor-reaper`): expires silent members every half interval and makes the
//!   summary (log line and event) every interval, at most once a minute;
//! - the closer (`conductor-closer`): closes the sockets the accept loop is done with, so that
//!   it never pays for a close itself;
//! - with a state file, the saver (`conductor-state`): writes the member table when it changed
//!   (see the state module); the table is read back before the accept loop starts, and written
//!   once more after every other thread has stopped.
//!
//! Stopping ([`stop`]) sets a flag, wakes the reaper (it waits on a condition variable, not in
//! a sleep) and wakes the accept loop by shutting the listening socket down: on Linux that
//! fails the blocked `accept` with `EINVAL`; where the system refuses, a connection of our own
//! wakes it instead. The accept loop then shuts every client's socket down, which ends their
//! threads wherever they block, joins them and the closer, and ends; the caller joins it and
//! the reaper, then sends the last summary and closes the event queue.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};

use super::admission::{hard_cap, stamp, Conn, Connections};
use super::events::{ConductorEvent, EventSink, EVENT_QUEUE};
use super::private::Private;
use super::registry::{source_of, Change, Changes, Limits, Registry, MAX_EXPIRY_LINES};
use super::state;
use super::{short, ConductorConfig, StartError, LOG_TARGET};
use crate::net::{self, DeadlineStream};
use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::wire::{ConductorReply, ConductorRequest, ConductorStats, LineReader, WireError};

/// Slack on top of two missed intervals before a member is forgotten, so that one late
/// announce (a busy member, a slow network) does not drop it.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);
/// The summary comes at most this often, so a short interval does not flood the log.
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
/// File descriptors needed besides one per client thread: stdio, the listener, the log file.
const FD_MARGIN: usize = 64;
/// Sockets waiting for the closer thread (each holds a descriptor).
const CLOSER_QUEUE: usize = 1024;
/// Read buffer of a client connection: requests are short lines.
const CLIENT_READ_BUFFER: usize = 2048;
/// How long, and how many bytes, we read and discard before closing on a protocol error, so
/// that the client's unread bytes do not turn our close into a reset that destroys the `ERROR`.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: u64 = 64 * 1024;
/// Client threads only parse short lines and format small replies.
const CLIENT_STACK: usize = 256 * 1024;
/// How long the connection that wakes the accept loop may take, where one is needed.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Set once the conductor is stopping. The reaper waits on it between sweeps, so that it
/// notices at once.
struct Stop {
    stopping: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.stopping.lock() = true;
        self.wake.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.stopping.lock()
    }

    /// Waits for `timeout`, or less if the conductor stops meanwhile; true if it is stopping.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.wake
            .wait_until(self.stopping.lock(), deadline, |stopping| *stopping)
    }
}

/// What every thread of one conductor shares.
pub(super) struct Shared {
    config: ConductorConfig,
    listener: TcpListener,
    pub(super) local_addr: SocketAddr,
    started: Instant,
    registry: Mutex<Registry>,
    /// Private swarms: their own table, and failed signatures per address.
    private: Private,
    connections: Mutex<Connections>,
    /// Connections turned away for lack of room since the last summary.
    turned_away: AtomicU64,
    /// Waiting connections closed to make room for newer ones since the last summary.
    evicted: AtomicU64,
    /// Connections closed on accept because they sent nothing for the first-line timeout.
    silent: AtomicU64,
    /// Whether the kernel holds back connections until they send (see [`net::defer_accept`]).
    deferred: bool,
    stop: Stop,
}

impl Shared {
    /// Binds the listening socket and sets up the tables; the receiver is the event queue's.
    pub(super) fn bind(
        config: ConductorConfig,
    ) -> Result<(Shared, Receiver<ConductorEvent>), StartError> {
        let cannot_listen = |source| StartError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).map_err(cannot_listen)?;
        let local_addr = listener.local_addr().map_err(cannot_listen)?;
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
        let (events, receiver) = EventSink::bounded(EVENT_QUEUE);
        let connections = Connections::new(&config, now);
        let shared = Shared {
            config,
            listener,
            local_addr,
            started: now,
            registry: Mutex::new(Registry::new(limits, now, events)),
            private: Private::new(limits, now),
            connections: Mutex::new(connections),
            turned_away: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            silent: AtomicU64::new(0),
            deferred,
            stop: Stop {
                stopping: Mutex::new(false),
                wake: Condvar::new(),
            },
        };
        Ok((shared, receiver))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock()
    }

    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock()
    }

    pub(super) fn stats(&self) -> ConductorStats {
        all_stats(self, Instant::now())
    }

    pub(super) fn clients(&self) -> usize {
        self.connections().clients().0
    }

    pub(super) fn dropped_events(&self) -> u64 {
        self.registry().events.dropped()
    }
}

/// The threads [`stop`] joins (the accept loop joins the others).
pub(super) struct Threads {
    accept: JoinHandle<()>,
    reaper: JoinHandle<()>,
    /// With a state file.
    saver: Option<JoinHandle<()>>,
}

/// Starts the reaper, the closer and the accept loop. On failure, those already started are
/// stopped and joined again.
pub(super) fn spawn(shared: &Arc<Shared>) -> Result<Threads, StartError> {
    let config = &shared.config;
    raise_fd_limit(
        hard_cap(config.max_clients)
            .saturating_add(CLOSER_QUEUE)
            .saturating_add(FD_MARGIN),
    );
    let reaper = {
        let shared = Arc::clone(shared);
        spawn_named("reaper", None, move || reap(&shared))?
    };
    let started = Closer::start().and_then(|closer| {
        info!(
            target: LOG_TARGET,
            "serving on {}: interval {:?}, at most {} clients ({} per address), {} members per address",
            shared.local_addr,
            config.interval,
            config.max_clients,
            config.max_clients_per_ip,
            config.max_members_per_ip,
        );
        shared
            .registry()
            .events
            .send(ConductorEvent::listening(shared.local_addr, config.interval));
        // Before the first connection is served, so that its answer has the old members.
        let saver = match &config.state {
            Some(path) => {
                restore(shared, path);
                let (shared, path) = (Arc::clone(shared), path.clone());
                Some(spawn_named("state", None, move || keep_saved(&shared, &path))?)
            }
            None => None,
        };
        let for_accept = Arc::clone(shared);
        // If this fails, the closer goes down with the closure, and its drop joins its thread.
        match spawn_named("accept", None, move || accept_loop(&for_accept, closer)) {
            Ok(accept) => Ok((accept, saver)),
            Err(e) => {
                shared.stop.set();
                if let Some(saver) = saver {
                    let _ = saver.join();
                }
                Err(e)
            }
        }
    });
    match started {
        Ok((accept, saver)) => Ok(Threads {
            accept,
            reaper,
            saver,
        }),
        Err(e) => {
            shared.stop.set();
            let _ = reaper.join();
            Err(e)
        }
    }
}

/// Stops every thread and returns once they are all joined, with the last counters, which
/// also go out as the last summary before the event queue is closed.
pub(super) fn stop(shared: &Shared, threads: Threads) -> ConductorStats {
    shared.stop.set();
    wake_accept(shared);
    let _ = threads.accept.join();
    let _ = threads.reaper.join();
    if let Some(saver) = threads.saver {
        let _ = saver.join();
    }
    if let Some(path) = &shared.config.state {
        save(shared, path, &mut false);
    }
    let stats = all_stats(shared, Instant::now());
    let failures = shared.private.failures.total();
    let mut registry = shared.registry();
    let summary = ConductorEvent::summary(&stats, failures, shared.started.elapsed(), true);
    registry.events.send(summary);
    registry.events.close();
    stats
}

/// Makes the accept loop's `accept` return (see the module docs).
fn wake_accept(shared: &Shared) {
    let Err(e) = rustix::net::shutdown(&shared.listener, rustix::net::Shutdown::Read) else {
        return;
    };
    debug!(target: LOG_TARGET, "cannot shut the listener down ({e}); connecting to wake it");
    let ip = match shared.local_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, shared.local_addr.port());
    if let Err(e) = TcpStream::connect_timeout(&addr, WAKE_TIMEOUT) {
        warn!(target: LOG_TARGET, "cannot wake the accept loop through {addr}: {e}");
    }
}

fn spawn_named(
    name: &'static str,
    stack: Option<usize>,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, StartError> {
    let mut builder = thread::Builder::new().name(format!("conductor-{name}"));
    if let Some(stack) = stack {
        builder = builder.stack_size(stack);
    }
    builder
        .spawn(body)
        .map_err(|source| StartError::Thread { name, source })
}

/// Each client holds a socket, and the usual soft limit of 1024 descriptors would run out before
/// the client cap is reached (accept would then fail instead of admitting or answering `busy`),
/// so raise it as far as the hard limit allows.
fn raise_fd_limit(wanted: usize) {
    let wanted = wanted as u64;
    let have = net::raise_fd_limit(wanted);
    if have < wanted {
        warn!(target: LOG_TARGET, "only {have} file descriptors allowed, {wanted} wanted: accepting may fail before the client cap");
    }
}

/// Accepts until the conductor stops, then ends every client thread and joins it.
fn accept_loop(shared: &Arc<Shared>, closer: Closer) {
    let mut last_warning: Option<Instant> = None;
    let mut failures = 0u64;
    // Every client thread not yet joined: the count of client threads that exist.
    let mut threads = HashMap::new();
    loop {
        let accepted = shared.listener.accept();
        if shared.stop.is_set() {
            break;
        }
        match accepted {
            Ok((stream, peer)) => admit(shared, &mut threads, &closer, stream, peer),
            Err(e) => {
                // Out of descriptors: shed the longest-waiting connection so that the next
                // accept finds one free, rather than leaving everyone in the backlog.
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
                ) && shared
                    .connections()
                    .evict(Instant::now(), |_, _, _| Some(()))
                {
                    shared.evicted.fetch_add(1, Ordering::Relaxed);
                }
                failures += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_PERIOD) {
                    warn!(target: LOG_TARGET, "cannot accept a connection: {e} ({failures} failures so far)");
                    last_warning = Some(Instant::now());
                }
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
    // Wherever each client thread blocks, reading a line or writing a reply, a shut-down socket
    // ends it at once.
    shared.connections().shut_all();
    for (_, handle) in threads {
        let _ = handle.join();
    }
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

fn admit(
    shared: &Arc<Shared>,
    threads: &mut HashMap<u64, JoinHandle<()>>,
    closer: &Closer,
    stream: TcpStream,
    peer: SocketAddr,
) {
    // Join the threads that have finished serving, so that the count below is of threads
    // that exist: a thread leaves the connection table just before it ends, and on an
    // overloaded machine "just before" can last. Joining one costs microseconds.
    let ended = shared.connections().take_ended();
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
            debug!(target: LOG_TARGET, "cannot start a client thread: {e}");
            shared.turned_away.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Closes sockets for the accept loop. A close is kernel work (a FIN; on loopback the other
/// side's processing too) that every connection waiting in the backlog behind would pay for;
/// under a flood of connections to turn away or close, the accept loop then only accepts and
/// hands them over. Dropping it closes what is queued and joins its thread.
struct Closer {
    /// None only while dropping.
    queue: Option<SyncSender<TcpStream>>,
    thread: Option<JoinHandle<()>>,
}

impl Closer {
    fn start() -> Result<Closer, StartError> {
        let (sender, receiver) = mpsc::sync_channel::<TcpStream>(CLOSER_QUEUE);
        // Ends when the sender is dropped.
        let thread = spawn_named("closer", Some(CLIENT_STACK), move || {
            receiver.into_iter().for_each(drop)
        })?;
        Ok(Closer {
            queue: Some(sender),
            thread: Some(thread),
        })
    }

    /// Closes `stream` soon; at once, here, if the closer is behind.
    fn close(&self, stream: TcpStream) {
        if let Some(queue) = &self.queue {
            match queue.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream) | TrySendError::Disconnected(stream)) => {
                    drop(stream)
                }
            }
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
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
        Err(e) if e.is_timeout() => debug!(target: LOG_TARGET, "client {peer}: timed out, closing"),
        Err(e) => debug!(target: LOG_TARGET, "client {peer}: {e}"),
    }
}

/// Answers requests until the client closes, goes quiet, sends something wrong or is evicted.
fn converse(shared: &Shared, conn: &Conn, peer: SocketAddr) -> Result<(), WireError> {
    let config = &shared.config;
    let stream = &conn.stream;
    let origin = shared.connections().origin();
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
    // The nonce of this connection's last CHALLENGE, for one signed request.
    let mut challenge = None;
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
                let reply = match request {
                    request @ (ConductorRequest::Challenge | ConductorRequest::Signed { .. }) => {
                        let in_private = |registry: &Mutex<Registry>, request| {
                            answer_in(shared, registry, ip, request)
                        };
                        shared
                            .private
                            .answer(ip, request, &mut challenge, in_private)
                    }
                    request => answer(shared, ip, request),
                };
                // A client that does not take its reply is as evictable as an idle one.
                conn.wait(stamp(origin, Instant::now()));
                reply.write_to(&mut writer)?;
            }
            Err(e) => {
                debug!(target: LOG_TARGET, "client {peer}: {e}");
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

/// Counters over the public and the private tables.
fn all_stats(shared: &Shared, now: Instant) -> ConductorStats {
    let public = shared.registry().stats(now);
    let private = shared.private.registry.lock().stats(now);
    ConductorStats {
        swarms: public.swarms + private.swarms,
        members: public.members + private.members,
        announces_per_sec: public.announces_per_sec + private.announces_per_sec,
    }
}

fn answer(shared: &Shared, ip: IpAddr, request: ConductorRequest) -> ConductorReply {
    match request {
        ConductorRequest::Stats => ConductorReply::Stats(all_stats(shared, Instant::now())),
        request => answer_in(shared, &shared.registry, ip, request),
    }
}

/// Answers `ANNOUNCE` and `LEAVE` from the member table `registry` (public or private).
fn answer_in(
    shared: &Shared,
    registry: &Mutex<Registry>,
    ip: IpAddr,
    request: ConductorRequest,
) -> ConductorReply {
    let now = Instant::now();
    match request {
        ConductorRequest::Announce {
            swarm,
            peer_id,
            port,
        } => {
            let addr = SocketAddr::new(ip, port);
            let result = registry.lock().announce(swarm, addr, peer_id, now);
            match result {
                Ok((change, peers)) => {
                    match change {
                        Change::Joined => {
                            info!(target: LOG_TARGET, "join {} {addr}", short(&swarm))
                        }
                        Change::Restarted => {
                            info!(target: LOG_TARGET, "rejoin {} {addr} (new peer id)", short(&swarm))
                        }
                        Change::Refreshed => {
                            debug!(target: LOG_TARGET, "refresh {} {addr}", short(&swarm))
                        }
                    }
                    ConductorReply::Peers {
                        interval_ms: shared.config.interval.as_millis() as u64,
                        peers,
                    }
                }
                Err(why) => {
                    debug!(target: LOG_TARGET, "refused {} {addr}: {why}", short(&swarm));
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
            let removed = registry.lock().leave(swarm, addr, peer_id);
            if removed {
                info!(target: LOG_TARGET, "leave {} {addr}", short(&swarm));
            }
            ConductorReply::Ok
        }
        _ => ConductorReply::Error("not a member request".into()),
    }
}

/// Expires silent members every half interval and makes a summary now and then, until the
/// conductor stops.
fn reap(shared: &Shared) {
    let interval = shared.config.interval;
    let max_age = 2 * interval + EXPIRY_GRACE;
    let summary_period = interval.max(MIN_SUMMARY_PERIOD);
    let mut next_summary = Instant::now() + summary_period;
    while !shared.stop.wait(interval / 2) {
        let now = Instant::now();
        // Early in the process's life no member can be that old yet.
        let expired = match now.checked_sub(max_age) {
            Some(cutoff) => {
                let mut expired = shared.registry().expire(cutoff);
                expired.extend(shared.private.registry.lock().expire(cutoff));
                expired
            }
            None => Vec::new(),
        };
        for (swarm, addr) in expired.iter().take(MAX_EXPIRY_LINES) {
            info!(target: LOG_TARGET, "expire {} {addr}", short(swarm));
        }
        if expired.len() > MAX_EXPIRY_LINES {
            info!(
                target: LOG_TARGET,
                "expired {} more members",
                expired.len() - MAX_EXPIRY_LINES
            );
        }
        if now >= next_summary {
            next_summary = now + summary_period;
            summarize(shared, now);
        }
    }
}

/// Puts back the members of the state file at `path`; a file that cannot be used is reported
/// and ignored.
fn restore(shared: &Shared, path: &Path) {
    let max_age = 2 * shared.config.interval + EXPIRY_GRACE;
    let shown = path.display().to_string();
    match state::load(path, max_age, Instant::now(), SystemTime::now()) {
        Ok(None) => {
            info!(target: LOG_TARGET, "no state file at {shown} yet: starting with no members")
        }
        Ok(Some(loaded)) => {
            let read = loaded.members.len() + loaded.private.len();
            let put_back_private = {
                let mut private = shared.private.registry.lock();
                loaded
                    .private
                    .into_iter()
                    .filter(|&(swarm, addr, peer_id, seen)| {
                        private.restore(swarm, addr, peer_id, seen)
                    })
                    .count()
            };
            let mut registry = shared.registry();
            let put_back = put_back_private
                + loaded
                    .members
                    .into_iter()
                    .filter(|&(swarm, addr, peer_id, seen)| {
                        registry.restore(swarm, addr, peer_id, seen)
                    })
                    .count();
            registry.events.send(ConductorEvent::StateLoaded {
                path: shown.clone(),
                members: put_back as u64,
                expired: loaded.expired,
            });
            drop(registry);
            let stats = all_stats(shared, Instant::now());
            info!(
                target: LOG_TARGET,
                "state from {shown}: {} members in {} swarms put back, {} expired meanwhile{}",
                put_back,
                stats.swarms,
                loaded.expired,
                match read - put_back {
                    0 => String::new(),
                    n => format!(", {n} over the caps"),
                }
            );
        }
        Err(e) => {
            let error = format!("{e:#}");
            warn!(target: LOG_TARGET, "ignoring the state file {shown}: {error}; starting with no members");
            shared
                .registry()
                .events
                .send(ConductorEvent::StateIgnored { path: shown, error });
        }
    }
}

/// Writes the state file when the table changed: joins, leaves and expiries within
/// [`state::SAVE_PERIOD`], refreshes every half interval, until the conductor stops.
fn keep_saved(shared: &Shared, path: &Path) {
    let refresh_period = (shared.config.interval / 2).max(state::SAVE_PERIOD);
    let mut saved = all_changes(shared);
    let mut saved_at = Instant::now();
    let mut failing = false;
    while !shared.stop.wait(state::SAVE_PERIOD) {
        let changes = all_changes(shared);
        let due = changes.membership != saved.membership
            || (changes.refreshes != saved.refreshes && saved_at.elapsed() >= refresh_period);
        if due {
            saved = save(shared, path, &mut failing);
            saved_at = Instant::now();
        }
    }
}

/// The changes of the public and the private tables together.
fn all_changes(shared: &Shared) -> Changes {
    let public = shared.registry().changes;
    public.plus(shared.private.registry.lock().changes)
}

/// Writes the state file now (the public and the private tables), and returns the changes it
/// covers. A failure is logged and told once until a save succeeds again (`failing`).
fn save(shared: &Shared, path: &Path, failing: &mut bool) -> Changes {
    // One table at a time: never both locks at once.
    let (private, private_changes) = {
        let private = shared.private.registry.lock();
        (private.snapshot(), private.changes)
    };
    let (members, public_changes, now, wall) = {
        let registry = shared.registry();
        let taken = (Instant::now(), SystemTime::now());
        (registry.snapshot(), registry.changes, taken.0, taken.1)
    };
    let changes = public_changes.plus(private_changes);
    let shown = path.display().to_string();
    match state::save(path, members, private, now, wall) {
        Ok(()) => {
            if std::mem::take(failing) {
                info!(target: LOG_TARGET, "state file {shown} written again");
            }
        }
        Err(e) if !*failing => {
            *failing = true;
            let error = format!("{e:#}");
            warn!(target: LOG_TARGET, "cannot write the state file {shown}: {error}");
            shared
                .registry()
                .events
                .send(ConductorEvent::StateNotSaved { path: shown, error });
        }
        Err(e) => debug!(target: LOG_TARGET, "cannot write the state file {shown}: {e:#}"),
    }
    changes
}

/// The summary: an event with the member counts, and a log line with the connection counters
/// since the last one too.
fn summarize(shared: &Shared, now: Instant) {
    let private_refused = shared.private.registry.lock().take_refused();
    let stats = all_stats(shared, now);
    let failures = shared.private.failures.total();
    let refused = {
        let mut registry = shared.registry();
        let uptime = now.saturating_duration_since(shared.started);
        registry
            .events
            .send(ConductorEvent::summary(&stats, failures, uptime, false));
        registry.take_refused() + private_refused
    };
    let turned_away = shared.turned_away.swap(0, Ordering::Relaxed);
    let evicted = shared.evicted.swap(0, Ordering::Relaxed);
    let silent = shared.silent.swap(0, Ordering::Relaxed);
    let (clients, sources) = shared.connections().clients();
    info!(
        target: LOG_TARGET,
        "{stats}  clients: {clients} from {sources} addresses  refused: {refused}  busy: {turned_away}  evicted: {evicted}  silent: {silent}  auth failures: {failures}",
    );
}
