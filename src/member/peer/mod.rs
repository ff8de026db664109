//! One connection to another member, from the first byte to the close.
//!
//! - [`handshake`]: the `HELLO` exchange and what is checked before anything else is sent, after
//!   the Noise handshake in a private swarm;
//! - [`link`]: the connection's two byte streams, plain or sealed;
//! - [`reader`]: the thread that owns the conversation: it takes the peer's have-map and `HAVE`s,
//!   keeps requests in flight, verifies every part it receives before storing it, and queues
//!   uploads;
//! - [`writer`]: the thread that drains the connection's [`outbox`], control lines before part
//!   data, parts sent by the storage (`sendfile` from a file);
//! - [`listener`]: the accept loop.
//!
//! Two threads per connection, because two members uploading to each other over blocking sockets
//! would otherwise both block in `write` and never read.

pub mod handshake;
pub mod link;
pub mod listener;
pub mod outbox;
pub mod reader;
pub mod verifier;
pub mod writer;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};

use super::bitfield::{Bitfield, SharedBitfield};
use super::requests::Requests;
use super::shared::{OnPanic, Shared};
use super::{Event, FailureKind};
use crate::net::DeadlineStream;
use crate::sync::Mutex;
use crate::wire::{PeerId, PeerMessage};
use link::{PeerIn, PeerOut};
use outbox::{Outbox, Outgoing};
use reader::Conversation;
use verifier::Verifier;

pub use outbox::{queued_uploads_allowed, BASE_QUEUED_UPLOADS};

/// Unsent bytes the kernel may hold per connection (see [`crate::net::limit_unsent`]), so that
/// a `REQUEST` or `HAVE` written after a part leaves soon, not after megabytes of queued uploads
/// on a slow uplink.
const UNSENT_LOW_WATER: u32 = 128 << 10;

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
    /// Part bytes received from and sent to this peer, for the log line when it goes: who fed
    /// whom, in a swarm whose members' rates differ.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connected_at: Instant,
    /// Parts refused to this peer while we spread every part once: offered again (`HAVE`) when
    /// every part has gone out once. Without that, a peer that rejected-and-waits only asks
    /// again when we next say something, up to a ping interval later, and the last member of a
    /// swarm could wait that long for its last part.
    held_back: Mutex<Bitfield>,
    /// The parts the peer has told us it has (its have-map and `HAVE`s): we do not announce
    /// those to it, since it will never ask for them, until we are complete (see
    /// [`PeerLink::announce_complete`]).
    their_parts: SharedBitfield,
    /// The parts we have told the peer we have (our have-map and `HAVE`s): once complete we
    /// tell it the rest. Not the same as `their_parts`: a part stored before the peer's map
    /// arrived is told although the peer has it.
    told: SharedBitfield,
}

impl PeerLink {
    /// How many parts the peer has told us it has.
    pub fn parts_they_have(&self) -> u32 {
        self.their_parts.count()
    }

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

    fn note_received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn note_sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Our requests waiting for an answer on this connection.
    pub fn requests_out(&self) -> usize {
        self.requests.lock().out.len()
    }

    pub fn peer_is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    fn send(&self, message: PeerMessage) {
        self.outbox.push(Outgoing::Line(message));
    }

    /// Our file is complete: tells the peer of the parts we did not announce to it because it
    /// had them, so that it sees we have every part (and closes our connection once it is
    /// complete too).
    pub fn announce_complete(&self) {
        for index in self.told.missing() {
            self.tell(index);
        }
    }

    fn tell(&self, index: u32) {
        self.told.set(index);
        self.send(PeerMessage::Have(index));
    }
}

/// Counts connection threads so that peers cannot make us spawn without bound.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
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

/// Runs one connection from handshake to close. `dialed` is the address we dialed, for an
/// outgoing connection.
pub fn serve(
    shared: &Arc<Shared>,
    stream: TcpStream,
    dialed: Option<SocketAddr>,
    _slot: Slot,
) -> Result<()> {
    let Some(_tracked) = shared.track_socket(&stream) else {
        bail!("shutting down");
    };
    let addr = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    crate::net::limit_unsent(&stream, UNSENT_LOW_WATER);
    stream.set_write_timeout(Some(shared.config.peer_timeout))?;
    if shared.keys.is_some() && dialed.is_none() && shared.auth_refused(addr.ip()) {
        bail!("refused: too many failed handshakes from this address");
    }
    let channel = handshake::secure(shared, &stream, dialed)?;
    let mut input = PeerIn::new(
        DeadlineStream::within(&stream, handshake::HANDSHAKE_TIMEOUT),
        channel.as_ref(),
    );
    let mut output = PeerOut::new(stream.try_clone()?, channel.as_ref());
    let greeting = handshake::exchange(shared, &mut input, &mut output, dialed)?;
    let theirs = greeting.hello;
    let listen_addr = match dialed {
        Some(dialed) => Some(dialed),
        None => (theirs.listen_port != 0).then(|| SocketAddr::new(addr.ip(), theirs.listen_port)),
    };
    if shared.book.is_banned(theirs.peer_id, listen_addr) {
        bail!("peer is banned");
    }

    let link = Arc::new(PeerLink {
        peer_id: theirs.peer_id,
        addr,
        listen_addr,
        initiated_by_us: dialed.is_some(),
        stream: stream.try_clone()?,
        outbox: Outbox::new(queued_uploads_allowed(shared.orch.part_size)),
        requests: Mutex::default(),
        complete: AtomicBool::new(false),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        connected_at: Instant::now(),
        held_back: Mutex::new(Bitfield::new(shared.orch.part_count())),
        their_parts: SharedBitfield::new(shared.orch.part_count()),
        told: SharedBitfield::new(shared.orch.part_count()),
    });
    let mut registered = Registered::new(shared, &link)?;
    if let Some(listen_addr) = listen_addr {
        shared.book.learn(std::iter::once(listen_addr));
    }
    shared.emit(Event::PeerConnected { addr });
    log::info!(
        "peer {addr} connected ({})",
        if dialed.is_some() { "out" } else { "in" }
    );

    {
        let for_writer = Arc::clone(shared);
        let link = Arc::clone(&link);
        let started = shared.spawn("peer-writer", OnPanic::DropPeer, move || {
            let shared = for_writer;
            // Closes the link however the writer ends, a panic included.
            let _close = CloseOnDrop {
                shared: &shared,
                link: &link,
            };
            if let Err(e) = writer::write_loop(&shared, &link, output) {
                log::debug!("peer {}: writer: {e:#}", link.addr);
            }
        });
        if let Err(e) = started {
            registered.reason = Some(format!("cannot start its writer: {e}"));
            return Err(e.into());
        }
    }

    // The verifier thread lives in this scope: it ends, and is joined, with the conversation.
    let result = std::thread::scope(|scope| {
        let verifier = Verifier::start(scope, shared, &link)
            .map_err(|e| anyhow::anyhow!("cannot start its part verifier: {e}"))?;
        Conversation::new(shared, &link, greeting.rtt, verifier).run(input)
    });
    registered.reason = Some(match &result {
        Ok(()) => "closed".to_string(),
        Err(e) => format!("{e:#}"),
    });
    result
}

/// A registered connection; dropping it (at the end of [`serve`], or while a panic unwinds)
/// closes the link, takes it out of the peer table and reports why it went.
struct Registered<'a> {
    shared: &'a Shared,
    link: &'a Arc<PeerLink>,
    /// Why the connection ended; unset when it ends by a panic.
    reason: Option<String>,
}

impl<'a> Registered<'a> {
    /// Keeps one connection per pair of members. When both dial each other at once, both sides
    /// keep the connection dialed by the smaller peer id, so they agree without talking.
    fn new(shared: &'a Shared, link: &'a Arc<PeerLink>) -> Result<Registered<'a>> {
        let mut peers = shared.peers.lock();
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
        // The have-map must be the first message, and every part completed after it must
        // reach this peer as a `HAVE`: a part is marked ours before it is announced to the
        // peers then in the table, so a map taken under the table's lock, with the link entered
        // before that lock goes, misses no part. The locks are taken in the member's one order,
        // peer table before picker (see `crate::member::shared`): the picker first here, while
        // a status report held the table and waited for a connection's requests, whose reader
        // waited for the picker, was a deadlock.
        let map = {
            let picker = shared.picker.lock();
            link.told.set_all(picker.have());
            picker.have().as_bytes().to_vec()
        };
        link.outbox.push(Outgoing::HaveMap(map));
        peers.insert(link.peer_id, Arc::clone(link));
        Ok(Registered {
            shared,
            link,
            reason: None,
        })
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let (shared, link) = (self.shared, self.link);
        link.close(shared);
        let mut peers = shared.peers.lock();
        if peers
            .get(&link.peer_id)
            .is_some_and(|l| Arc::ptr_eq(l, link))
        {
            peers.remove(&link.peer_id);
        }
        drop(peers);
        shared.note_uploads_changed();
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| "internal error (see the log)".to_string());
        log::info!(
            "peer {} dropped: {reason} (after {:.1} s: {} bytes of parts received, {} sent)",
            link.addr,
            link.connected_at.elapsed().as_secs_f64(),
            link.bytes_in.load(Ordering::Relaxed),
            link.bytes_out.load(Ordering::Relaxed),
        );
        shared.emit(Event::PeerDropped {
            addr: link.addr,
            reason,
        });
    }
}

struct CloseOnDrop<'a> {
    shared: &'a Shared,
    link: &'a PeerLink,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.link.close(self.shared);
    }
}

/// Every part has gone out once: offers each peer the parts it was refused meanwhile.
pub fn offer_held_back(shared: &Shared) {
    let peers: Vec<Arc<PeerLink>> = shared.peers.lock().values().cloned().collect();
    let parts = shared.orch.part_count();
    for link in peers {
        let held_back = std::mem::replace(&mut *link.held_back.lock(), Bitfield::new(parts));
        for index in held_back.ones() {
            link.send(PeerMessage::Have(index));
        }
    }
}

/// Stores a verified part that came from `from` (a peer, or `None` for an HTTP origin): writes
/// it, hands the buffer to the whole-file hasher, marks it ours and announces it, and starts
/// the finisher after the last part. Returns a buffer for the caller's next part and whether
/// the part was new (not an endgame duplicate that lost the race). A disk error fails the
/// member.
pub fn store_part(
    shared: &Arc<Shared>,
    index: u32,
    buffer: Vec<u8>,
    from: Option<&PeerLink>,
) -> Result<(Vec<u8>, bool)> {
    let Some(span) = shared.orch.part_span(index) else {
        bail!("part {index} is not in the file");
    };
    if shared.picker.lock().have().get(index) {
        return Ok((buffer, false)); // an endgame duplicate that lost the race
    }
    if let Err(e) = shared.storage.write_at(span.offset, &buffer) {
        shared.picker.lock().release(index);
        shared.fail(
            FailureKind::Disk,
            format!("cannot write {}: {e}", shared.storage.name()),
        );
        bail!("disk error");
    }
    // Hand the buffer to the whole-file hasher before the part counts as ours, so that the
    // hasher finds it there rather than reading it back from disk.
    let buffer = shared.full_hash.part_done(index, buffer);
    let (new, done) = {
        let mut picker = shared.picker.lock();
        (picker.complete(index), picker.is_complete())
    };
    if new {
        shared
            .counters
            .bytes_down
            .fetch_add(span.len as u64, Ordering::Relaxed);
        announce_part(shared, index, from);
        if done {
            shared.all_parts_in();
        }
    }
    Ok((buffer, new))
}

/// Tells every peer that lacks a part we just stored about it, and cancels the endgame
/// duplicates of it (on every connection but the one it came from). A peer that has the part
/// never asks for it: a `HAVE` would only cost a packet and a wake-up at each end, and with
/// many members those were most of the messages.
fn announce_part(shared: &Shared, index: u32, from: Option<&PeerLink>) {
    let peers: Vec<Arc<PeerLink>> = shared.peers.lock().values().cloned().collect();
    for link in peers {
        let source = from.is_some_and(|from| std::ptr::eq(Arc::as_ptr(&link), from));
        if !source && link.requests.lock().cancel(index) {
            link.send(PeerMessage::Cancel(index));
        }
        if !link.their_parts.get(index) {
            link.tell(index);
        }
    }
}
