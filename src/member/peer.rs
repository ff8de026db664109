//! One connection to another member: the handshake, the reader thread that runs the
//! conversation, and the writer thread that sends what the reader (and the rest of the member)
//! queue for it.
//!
//! The reader is the only thread that reads the socket: it takes the peer's have-map and `HAVE`s,
//! keeps [`MemberConfig::pipeline`](super::MemberConfig) requests in flight, verifies every part
//! it receives against the `.orch` before writing it, and queues uploads for the writer. The
//! writer sends control lines before part data, so that our requests never wait behind an upload
//! to the same peer, and serves parts with `sendfile` straight from the file.

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::picker::Bitfield;
use super::{Event, Shared};
use crate::orch::Checksum;
use crate::wire::{have_map_len, Hello, LineReader, PeerId, PeerMessage, WireError, MAX_PEX};

/// How long a new connection may take to say `HELLO`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most uploads a peer may have queued with us; more is a protocol violation.
pub const MAX_QUEUED_UPLOADS: usize = 64;
/// Unsent bytes the kernel may hold per connection (see [`limit_unsent`]).
const UNSENT_LOW_WATER: usize = 128 << 10;
/// How long a part a peer rejected is asked from others only.
const REJECT_RETRY: Duration = Duration::from_secs(2);
/// Smallest choice of parts the picker randomizes over.
const MIN_PICK_WINDOW: u32 = 16;
/// Bytes of requests kept in flight per peer when the pipeline depth is not set.
const PIPELINE_BYTES: u64 = 2 << 20;

/// What a connection's writer sends next.
enum Outgoing {
    Line(PeerMessage),
    HaveMap(Vec<u8>),
    /// A part, and whether the spreading policy counted it (see [`Spread`]).
    ///
    /// [`Spread`]: super::spread::Spread
    Part {
        index: u32,
        counted: bool,
    },
}

/// What the writer does next.
enum Next {
    Send(Outgoing),
    /// Nothing to send for a while: time for a `PING`.
    Idle,
    Closed,
}

#[derive(Default)]
struct OutboxState {
    control: VecDeque<Outgoing>,
    /// Parts to send, each with whether the spreading policy counted it.
    uploads: VecDeque<(u32, bool)>,
    /// A part is being sent right now.
    sending: bool,
    /// `REJECT`s in `control`: answers to the peer's requests, bounded like queued uploads.
    rejects: usize,
    closed: bool,
}

/// The queue between the member and one connection's writer thread.
#[derive(Default)]
struct Outbox {
    state: Mutex<OutboxState>,
    ready: Condvar,
}

impl Outbox {
    fn push(&self, item: Outgoing) {
        let mut state = self.state.lock().unwrap();
        state.control.push_back(item);
        self.ready.notify_one();
    }

    fn push_upload(&self, index: u32, counted: bool) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.uploads.len() >= MAX_QUEUED_UPLOADS {
            return false;
        }
        state.uploads.push_back((index, counted));
        self.ready.notify_one();
        true
    }

    /// Queues a `REJECT`; false when [`MAX_QUEUED_UPLOADS`] are already waiting to be sent,
    /// which only a peer that floods requests without reading the answers can cause.
    fn push_reject(&self, index: u32) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.rejects >= MAX_QUEUED_UPLOADS {
            return false;
        }
        state.rejects += 1;
        state
            .control
            .push_back(Outgoing::Line(PeerMessage::Reject(index)));
        self.ready.notify_one();
        true
    }

    /// Drops queued uploads of `index`; returns how many the spreading policy had counted.
    fn cancel_upload(&self, index: u32) -> usize {
        let mut state = self.state.lock().unwrap();
        let before = state.uploads.iter().filter(|u| u.1).count();
        state.uploads.retain(|&(i, _)| i != index);
        before - state.uploads.iter().filter(|u| u.1).count()
    }

    /// Closes the queue and returns the counted uploads that will never be sent.
    fn close(&self) -> Vec<u32> {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        self.ready.notify_all();
        state
            .uploads
            .drain(..)
            .filter_map(|(index, counted)| counted.then_some(index))
            .collect()
    }

    fn upload_done(&self) {
        self.state.lock().unwrap().sending = false;
        self.ready.notify_all();
    }

    /// True when no part is queued or being sent.
    fn uploads_idle(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.uploads.is_empty() && !state.sending
    }

    /// The next item, control first; `None` after `idle` without one (time for a `PING`) or
    /// when closed (`Err`).
    /// `copies_sent` orders queued parts: fewest copies already sent first, so that a seeder
    /// sends every part once before it sends any part twice.
    fn next(&self, idle: Duration, copies_sent: impl Fn(u32) -> u16) -> Next {
        let mut state = self.state.lock().unwrap();
        let deadline = Instant::now() + idle;
        loop {
            if state.closed {
                return Next::Closed;
            }
            if let Some(item) = state.control.pop_front() {
                if matches!(item, Outgoing::Line(PeerMessage::Reject(_))) {
                    state.rejects = state.rejects.saturating_sub(1);
                }
                return Next::Send(item);
            }
            let fewest = (0..state.uploads.len()).min_by_key(|&i| copies_sent(state.uploads[i].0));
            if let Some((index, counted)) = fewest.and_then(|i| state.uploads.remove(i)) {
                state.sending = true;
                return Next::Send(Outgoing::Part { index, counted });
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Idle;
            }
            state = self.ready.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    fn is_empty(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.control.is_empty() && state.uploads.is_empty()
    }
}

/// Our requests on one connection, shared so that the thread that completes a part can cancel
/// the duplicate requested elsewhere in the endgame.
#[derive(Default)]
struct Requests {
    out: Vec<u32>,
    /// Cancelled requests whose part may still arrive; accepted and discarded.
    cancelled: Vec<u32>,
}

/// A live, registered connection, as the rest of the member sees it.
pub struct PeerLink {
    pub peer_id: PeerId,
    /// The socket's remote address.
    pub addr: SocketAddr,
    /// Where the peer accepts connections, when it does.
    pub listen_addr: Option<SocketAddr>,
    initiated_by_us: bool,
    stream: TcpStream,
    outbox: Outbox,
    requests: Mutex<Requests>,
    complete: AtomicBool,
    /// While a part's payload is being read: when it must be complete. The writer thread, which
    /// wakes at least every peer timeout / 3, closes the connection once it has passed, so that
    /// a peer cannot hold our requests forever by trickling a part a byte at a time.
    payload_deadline: Mutex<Option<Instant>>,
}

impl PeerLink {
    pub fn close(&self, shared: &Shared) {
        for index in self.outbox.close() {
            shared.spread.withdraw(index);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// True when this connection has no part queued or being sent.
    pub fn uploads_idle(&self) -> bool {
        self.outbox.uploads_idle()
    }

    pub fn peer_is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    fn send(&self, message: PeerMessage) {
        self.outbox.push(Outgoing::Line(message));
    }
}

/// Counts connection threads so that peers cannot make us spawn without bound.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts peers until shutdown.
pub fn listen(shared: Arc<Shared>, listener: TcpListener) -> Result<()> {
    std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if shared.is_shutting_down() {
                    break;
                }
                let Ok(stream) = stream else { continue };
                // Incoming and outgoing connections count apart, so that peers dialing us can
                // never leave us without room to dial the peers we need.
                let max = shared.config.max_peers;
                let Some(slot) = Slot::take(&shared.tracker.incoming, max) else {
                    log::debug!("refusing a connection: {max} incoming connections already");
                    continue;
                };
                let shared = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("peer-in".into())
                    .spawn(move || {
                        let remote = stream.peer_addr().ok();
                        if let Err(e) = run(&shared, stream, None, slot) {
                            log::debug!("incoming peer {remote:?}: {e:#}");
                        }
                    });
            }
        })?;
    Ok(())
}

/// Dials `addr` in a new thread, if a connection slot is free. Returns false when none is.
pub fn dial(shared: &Arc<Shared>, addr: SocketAddr) -> bool {
    let Some(slot) = Slot::take(&shared.tracker.outgoing, shared.config.max_peers) else {
        return false;
    };
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("peer-out".into())
        .spawn(move || {
            let result = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
                .map_err(|e| anyhow!("cannot connect: {e}"))
                .and_then(|stream| run(&shared, stream, Some(addr), slot));
            match result {
                Ok(()) => shared.tracker.dial_ended(addr, true),
                Err(e) => {
                    log::debug!("peer {addr}: {e:#}");
                    shared.tracker.dial_ended(addr, false);
                }
            }
        })
        .is_ok()
}

/// Runs one connection from handshake to close. `dialed` is the address we dialed, for an
/// outgoing connection.
fn run(
    shared: &Arc<Shared>,
    stream: TcpStream,
    dialed: Option<SocketAddr>,
    _slot: Slot,
) -> Result<()> {
    let addr = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    limit_unsent(&stream);
    stream.set_write_timeout(Some(shared.config.peer_timeout))?;
    let ours = Hello {
        swarm: shared.swarm,
        peer_id: shared.peer_id,
        listen_port: shared.listen_port,
    };
    let mut writer = &stream;
    if dialed.is_some() {
        writer.write_all(ours.to_line().as_bytes())?;
    }
    // The HELLO must arrive whole within the handshake timeout, however slowly it trickles.
    // It is read a byte at a time so that nothing after it is buffered away from the reader
    // that takes over the connection.
    let hello_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut hello = LineReader::new(BufReader::with_capacity(
        1,
        crate::net::DeadlineStream::new(&stream, hello_deadline),
    ));
    let theirs = Hello::parse(hello.read_line()?)?;
    let mut reader = LineReader::new(BufReader::with_capacity(256 << 10, stream.try_clone()?));
    if theirs.swarm != shared.swarm {
        let _ = writer.write_all(b"ERROR not in this swarm\n");
        bail!(
            "peer is in swarm {}, not ours",
            &theirs.swarm.to_hex()[..12]
        );
    }
    if dialed.is_none() {
        // Answer before judging the peer, so that a member that dialed itself sees its own id
        // and stops dialing that address.
        writer.write_all(ours.to_line().as_bytes())?;
    }
    if theirs.peer_id == shared.peer_id {
        if let Some(dialed) = dialed {
            shared.tracker.mark_self(dialed);
        }
        bail!("connected to ourselves");
    }
    let listen_addr = match dialed {
        Some(dialed) => Some(dialed),
        None => (theirs.listen_port != 0).then(|| SocketAddr::new(addr.ip(), theirs.listen_port)),
    };
    if shared.tracker.is_banned(theirs.peer_id, listen_addr) {
        bail!("peer is banned");
    }
    stream.set_read_timeout(Some(shared.config.peer_timeout))?;

    let link = Arc::new(PeerLink {
        peer_id: theirs.peer_id,
        addr,
        listen_addr,
        initiated_by_us: dialed.is_some(),
        stream: stream.try_clone()?,
        outbox: Outbox::default(),
        requests: Mutex::default(),
        complete: AtomicBool::new(false),
        payload_deadline: Mutex::new(None),
    });
    {
        // The have-map must be the first message: snapshotting it under the picker lock and
        // registering before releasing that lock means every part completed later reaches this
        // peer as a HAVE, after the map.
        let picker = shared.picker.lock().unwrap();
        link.outbox
            .push(Outgoing::HaveMap(picker.have().as_bytes().to_vec()));
        register(shared, &link)?;
    }
    if let Some(listen_addr) = listen_addr {
        shared.tracker.learn(std::iter::once(listen_addr));
    }
    shared.emit(Event::PeerConnected { addr });
    log::info!(
        "peer {addr} connected ({})",
        if dialed.is_some() { "out" } else { "in" }
    );

    let writer_thread = {
        let shared = Arc::clone(shared);
        let link = Arc::clone(&link);
        std::thread::Builder::new()
            .name("peer-writer".into())
            .spawn(move || {
                if let Err(e) = write_loop(&shared, &link, stream) {
                    log::debug!("peer {}: writer: {e:#}", link.addr);
                }
                link.close(&shared);
            })?
    };

    let mut conversation = Conversation::new(shared, &link);
    let result = conversation.run(&mut reader);
    conversation.end();
    link.close(shared);
    unregister(shared, &link);
    let _ = writer_thread.join();
    let reason = match &result {
        Ok(()) => "closed".to_string(),
        Err(e) => format!("{e:#}"),
    };
    log::info!("peer {addr} dropped: {reason}");
    shared.emit(Event::PeerDropped { addr, reason });
    result
}

/// Keeps one connection per pair of members. When both dial each other at once, both sides
/// keep the connection dialed by the smaller peer id, so they agree without talking.
fn register(shared: &Shared, link: &Arc<PeerLink>) -> Result<()> {
    let mut peers = shared.peers.lock().unwrap();
    if shared.is_shutting_down() {
        bail!("shutting down");
    }
    if let Some(existing) = peers.get(&link.peer_id) {
        let dialer_is_smaller = |by_us: bool| (shared.peer_id < link.peer_id) == by_us;
        let keep_new = existing.initiated_by_us != link.initiated_by_us
            && dialer_is_smaller(link.initiated_by_us);
        if !keep_new {
            bail!("already connected to this peer");
        }
        existing.close(shared);
    }
    peers.insert(link.peer_id, Arc::clone(link));
    Ok(())
}

fn unregister(shared: &Shared, link: &Arc<PeerLink>) {
    let mut peers = shared.peers.lock().unwrap();
    if peers
        .get(&link.peer_id)
        .is_some_and(|l| Arc::ptr_eq(l, link))
    {
        peers.remove(&link.peer_id);
        drop(peers);
        shared.note_uploads_changed();
    }
}

/// Tells every peer about a part we just stored, and cancels the endgame duplicates of it.
pub fn announce_part(shared: &Shared, index: u32, from: &PeerLink) {
    let peers: Vec<Arc<PeerLink>> = shared.peers.lock().unwrap().values().cloned().collect();
    for link in peers {
        if !std::ptr::eq(Arc::as_ptr(&link), from) {
            let mut requests = link.requests.lock().unwrap();
            if let Some(pos) = requests.out.iter().position(|&i| i == index) {
                requests.out.swap_remove(pos);
                requests.cancelled.push(index);
                link.send(PeerMessage::Cancel(index));
            }
        }
        link.send(PeerMessage::Have(index));
    }
}

/// The reader side of one connection.
struct Conversation<'a> {
    shared: &'a Arc<Shared>,
    link: &'a Arc<PeerLink>,
    their_have: Bitfield,
    got_have_map: bool,
    depth: usize,
    buffer: Vec<u8>,
    /// Parts this peer rejected, and when: not asked again for [`REJECT_RETRY`].
    rejected: Vec<(u32, Instant)>,
    /// When the oldest unanswered request was sent, or the last part arrived.
    last_progress: Instant,
}

impl<'a> Conversation<'a> {
    fn new(shared: &'a Arc<Shared>, link: &'a Arc<PeerLink>) -> Conversation<'a> {
        let part_size = shared.orch.part_size.max(1);
        let depth = shared
            .config
            .pipeline
            .unwrap_or_else(|| (PIPELINE_BYTES / part_size).clamp(2, 16) as usize);
        Conversation {
            shared,
            link,
            their_have: Bitfield::new(shared.orch.part_count()),
            got_have_map: false,
            depth,
            buffer: Vec::new(),
            rejected: Vec::new(),
            last_progress: Instant::now(),
        }
    }

    fn run<R: std::io::BufRead>(&mut self, reader: &mut LineReader<R>) -> Result<()> {
        self.send_pex();
        let parts = self.shared.orch.part_count();
        let orch = &self.shared.orch;
        let part_len = |i: u32| orch.part_span(i).map_or(0, |(_, len)| len);
        loop {
            if self.shared.is_shutting_down() {
                return Ok(());
            }
            let message = match reader.read_line() {
                Ok(line) => PeerMessage::parse(line, parts, part_len),
                Err(WireError::Closed) => return Ok(()),
                Err(e) if e.is_timeout() => {
                    bail!("silent for {:?}", self.shared.config.peer_timeout)
                }
                // A reset or a close mid-line is the network or a crash, not misbehaviour.
                Err(WireError::Io(e)) => bail!("{e}"),
                Err(e) => Err(e),
            };
            let message = message.map_err(|e| self.misbehaved(format!("{e}")))?;
            if !self.got_have_map && !matches!(message, PeerMessage::HaveMap { .. }) {
                return Err(self.misbehaved("first message was not HAVEMAP".into()));
            }
            match message {
                PeerMessage::HaveMap { bytes } => {
                    if self.got_have_map {
                        return Err(self.misbehaved("sent a second HAVEMAP".into()));
                    }
                    let mut map = vec![0u8; bytes];
                    reader.read_payload(&mut map)?;
                    self.their_have =
                        Bitfield::from_bytes(map, parts).map_err(|e| self.misbehaved(e))?;
                    self.got_have_map = true;
                    let mut picker = self.shared.picker.lock().unwrap();
                    for index in self.their_have.ones() {
                        picker.peer_has(index);
                    }
                }
                PeerMessage::Have(index) => {
                    if self.their_have.set(index) {
                        self.shared.picker.lock().unwrap().peer_has(index);
                    }
                }
                PeerMessage::Request(index) => self.serve(index)?,
                PeerMessage::Cancel(index) => {
                    for _ in 0..self.link.outbox.cancel_upload(index) {
                        self.shared.spread.withdraw(index);
                    }
                }
                PeerMessage::Reject(index) => {
                    let mut requests = self.link.requests.lock().unwrap();
                    if let Some(pos) = requests.out.iter().position(|&i| i == index) {
                        requests.out.swap_remove(pos);
                        self.shared.picker.lock().unwrap().release(index);
                    }
                    // Ask others for it; ask this peer again later (see `retry_rejected`).
                    if self.their_have.get(index) {
                        self.their_have.clear(index);
                        self.shared.picker.lock().unwrap().peer_lost(index);
                        self.rejected.push((index, Instant::now()));
                    }
                }
                PeerMessage::Piece { index, len } => self.receive(reader, index, len)?,
                PeerMessage::Pex(addrs) => self.shared.tracker.learn(addrs.into_iter()),
                PeerMessage::Ping => {}
            }
            self.retry_rejected();
            let complete = self.their_have.is_full();
            self.link.complete.store(complete, Ordering::Relaxed);
            if complete && self.shared.is_seeding() {
                return Ok(());
            }
            self.request_more();
            self.check_progress()?;
        }
    }

    fn serve(&mut self, index: u32) -> Result<()> {
        let have = self.shared.picker.lock().unwrap().have().get(index);
        // Only a member that had the file from the start spreads: it is the one source of the
        // parts nobody else has yet. A member that finished later serves freely.
        let seeding = self.shared.origin && self.shared.is_seeding();
        let refuse = self.shared.is_draining() || (seeding && !self.shared.spread.admit(index));
        if !have || refuse {
            if !self.link.outbox.push_reject(index) {
                return Err(
                    self.misbehaved(format!("more than {MAX_QUEUED_UPLOADS} requests queued"))
                );
            }
        } else if !self.link.outbox.push_upload(index, seeding) {
            if seeding {
                self.shared.spread.withdraw(index);
            }
            return Err(self.misbehaved(format!("more than {MAX_QUEUED_UPLOADS} requests queued")));
        }
        Ok(())
    }

    fn receive<R: std::io::BufRead>(
        &mut self,
        reader: &mut LineReader<R>,
        index: u32,
        len: usize,
    ) -> Result<()> {
        let expected = {
            let mut requests = self.link.requests.lock().unwrap();
            if let Some(pos) = requests.out.iter().position(|&i| i == index) {
                requests.out.swap_remove(pos);
                true
            } else if let Some(pos) = requests.cancelled.iter().position(|&i| i == index) {
                requests.cancelled.swap_remove(pos);
                false
            } else {
                return Err(self.misbehaved(format!("sent part {index}, which we did not request")));
            }
        };
        // `len` was checked against the .orch by the parser, so the buffer never exceeds the
        // largest part.
        self.buffer.resize(len, 0);
        // The peer timeout for each MiB: a slow link passes, a trickle does not.
        let allowed = self.shared.config.peer_timeout * len.div_ceil(1 << 20).max(1) as u32;
        let deadline = Instant::now() + allowed;
        *self.link.payload_deadline.lock().unwrap() = Some(deadline);
        let read = reader.read_payload(&mut self.buffer);
        *self.link.payload_deadline.lock().unwrap() = None;
        if read.is_err() && expected {
            // The request is over without the part: let it be asked again.
            self.shared.picker.lock().unwrap().release(index);
        }
        match read {
            Ok(()) => {}
            Err(_) if Instant::now() >= deadline => {
                return Err(self.misbehaved(format!("part {index} not complete after {allowed:?}")))
            }
            Err(e) if e.is_timeout() => bail!(
                "silent for {:?} in the middle of part {index}",
                self.shared.config.peer_timeout
            ),
            Err(e) => return Err(e.into()),
        }
        self.last_progress = Instant::now();
        if !expected {
            return Ok(());
        }
        let shared = self.shared;
        if Checksum::of(&self.buffer) != shared.orch.part_checksums[index as usize] {
            shared.picker.lock().unwrap().release(index);
            shared
                .counters
                .parts_rejected
                .fetch_add(1, Ordering::Relaxed);
            shared.emit(Event::PartRejected {
                index,
                addr: self.link.addr,
            });
            return Err(self.misbehaved(format!("part {index} failed its checksum")));
        }
        let Some((offset, _)) = shared.orch.part_span(index) else {
            unreachable!("the parser checked the index");
        };
        if shared.picker.lock().unwrap().have().get(index) {
            return Ok(()); // an endgame duplicate that lost the race
        }
        if let Err(e) = shared.storage.write_at(offset, &self.buffer) {
            shared.picker.lock().unwrap().release(index);
            shared.fail(
                super::FailureKind::Disk,
                format!("cannot write {}: {e}", shared.paths.partial.display()),
            );
            bail!("disk error");
        }
        // Hand the buffer to the whole-file hasher before the part counts as ours, so that the
        // hasher finds it there rather than reading it back from disk.
        let buffer = std::mem::take(&mut self.buffer);
        self.buffer = shared.full_hash.part_done(index, buffer);
        let (new, done) = {
            let mut picker = shared.picker.lock().unwrap();
            (picker.complete(index), picker.is_complete())
        };
        if new {
            shared
                .counters
                .bytes_down
                .fetch_add(len as u64, Ordering::Relaxed);
            shared.note_peer_used(self.link.peer_id);
            announce_part(shared, index, self.link);
            if done {
                shared.all_parts_in();
            }
        }
        Ok(())
    }

    /// A peer that rejected a part may serve it later (a seeder spreading parts does once it
    /// has sent every part once), and may be the only one with it.
    fn retry_rejected(&mut self) {
        let now = Instant::now();
        let shared = self.shared;
        let their_have = &mut self.their_have;
        self.rejected.retain(|&(index, when)| {
            if now.duration_since(when) < REJECT_RETRY {
                return true;
            }
            if their_have.set(index) {
                shared.picker.lock().unwrap().peer_has(index);
            }
            false
        });
    }

    /// Keeps `depth` requests in flight to this peer.
    fn request_more(&mut self) {
        if !self.got_have_map {
            return;
        }
        let mut requests = self.link.requests.lock().unwrap();
        if requests.out.is_empty() {
            self.last_progress = Instant::now();
        }
        // Enough choice that members fetching from one seeder rarely ask for the same part,
        // little enough that parts arrive near file order (see Picker::pick).
        let peers = self.shared.peers.lock().unwrap().len() as u32;
        let window = (2 * peers * self.depth as u32).max(MIN_PICK_WINDOW);
        while requests.out.len() < self.depth {
            let picked =
                self.shared
                    .picker
                    .lock()
                    .unwrap()
                    .pick(&self.their_have, &requests.out, window);
            let Some(index) = picked else { break };
            requests.out.push(index);
            self.link.send(PeerMessage::Request(index));
        }
    }

    /// Drops a peer that holds our requests without answering: it claims parts it never sends.
    fn check_progress(&self) -> Result<()> {
        let waiting = !self.link.requests.lock().unwrap().out.is_empty();
        if waiting && self.last_progress.elapsed() > self.shared.config.peer_timeout {
            return Err(self.misbehaved(format!(
                "sent no requested part for {:?}",
                self.shared.config.peer_timeout
            )));
        }
        Ok(())
    }

    fn send_pex(&self) {
        let peers: Vec<SocketAddr> = self
            .shared
            .peers
            .lock()
            .unwrap()
            .values()
            .filter(|l| l.peer_id != self.link.peer_id)
            .filter_map(|l| l.listen_addr)
            .take(MAX_PEX)
            .collect();
        if !peers.is_empty() {
            self.link.send(PeerMessage::Pex(peers));
        }
    }

    /// Bans the peer for the rest of this run and returns the error that ends the connection.
    fn misbehaved(&self, why: String) -> anyhow::Error {
        self.shared
            .tracker
            .ban(self.link.peer_id, self.link.listen_addr);
        anyhow!("banned: {why}")
    }

    /// Gives back every request still out and the peer's share of availability.
    fn end(&mut self) {
        let requests = std::mem::take(&mut *self.link.requests.lock().unwrap());
        let mut picker = self.shared.picker.lock().unwrap();
        for index in requests.out {
            picker.release(index);
        }
        picker.peer_gone(&self.their_have);
    }
}

/// The writer side of one connection: control lines first, then parts.
fn write_loop(shared: &Shared, link: &PeerLink, stream: TcpStream) -> Result<()> {
    let mut out = BufWriter::with_capacity(64 << 10, &stream);
    let ping_every = shared.config.peer_timeout / 3;
    loop {
        let overdue = *link.payload_deadline.lock().unwrap();
        if overdue.is_some_and(|deadline| Instant::now() >= deadline) {
            // The reader, stuck in that payload, sees the close and bans the peer.
            link.close(shared);
            return Ok(());
        }
        let item = match link
            .outbox
            .next(ping_every, |index| shared.spread.copies_sent(index))
        {
            Next::Closed => return Ok(()),
            Next::Idle => {
                out.write_all(PeerMessage::Ping.to_line().as_bytes())?;
                out.flush()?;
                continue;
            }
            Next::Send(item) => item,
        };
        match item {
            Outgoing::Line(message) => out.write_all(message.to_line().as_bytes())?,
            Outgoing::HaveMap(map) => {
                debug_assert_eq!(map.len(), have_map_len(shared.orch.part_count()));
                out.write_all(
                    PeerMessage::HaveMap { bytes: map.len() }
                        .to_line()
                        .as_bytes(),
                )?;
                out.write_all(&map)?;
            }
            Outgoing::Part { index, counted } => {
                let Some((offset, len)) = shared.orch.part_span(index) else {
                    continue;
                };
                let sent = out
                    .write_all(PeerMessage::Piece { index, len }.to_line().as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(anyhow::Error::from)
                    .and_then(|()| send_part(shared, &stream, offset, len));
                link.outbox.upload_done();
                shared.note_uploads_changed();
                if let Err(e) = sent {
                    if counted {
                        shared.spread.withdraw(index);
                    }
                    return Err(e);
                }
                shared.spread.sent(index);
                shared
                    .counters
                    .bytes_up
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
        }
        if link.outbox.is_empty() {
            out.flush()?;
        }
    }
}

/// Keeps at most [`UNSENT_LOW_WATER`] bytes queued unsent in the kernel, so that a `REQUEST`
/// or `HAVE` written after a part leaves soon, not after megabytes of queued uploads on a slow
/// uplink. Best effort: without it the member still works, only with more latency.
fn limit_unsent(stream: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    let value = UNSENT_LOW_WATER as libc::c_int;
    // SAFETY: setsockopt on an open socket with a pointer to a c_int of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sends `len` bytes of the file from `offset` with `sendfile`, so part data goes from the page
/// cache to the socket without passing through our memory.
fn send_part(shared: &Shared, stream: &TcpStream, offset: u64, len: usize) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let Some(file) = shared.storage.file() else {
        let mut buf = vec![0u8; len];
        shared.storage.read_at(offset, &mut buf)?;
        return Ok((&*stream).write_all(&buf)?);
    };
    let file_fd = file.as_raw_fd();
    let mut off = libc::off_t::try_from(offset)?;
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open for the duration of the call; `off` is a valid
        // pointer to the file offset, which sendfile advances.
        let sent = unsafe { libc::sendfile(stream.as_raw_fd(), file_fd, &mut off, left) };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(anyhow!("sending part data: {e}"));
        }
        if sent == 0 {
            bail!("file ended while sending a part");
        }
        left -= sent as usize;
    }
    Ok(())
}
