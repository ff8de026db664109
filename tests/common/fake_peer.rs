//! An in-process peer that a member under test dials: it speaks the member-to-member protocol
//! of docs/PROTOCOL.md (section 4) with nothing but [`torrentnchill::wire`] and
//! [`torrentnchill::orch`], so that a test can put a peer with a known behaviour in front of a
//! member without starting a second member, and count what it sent.
//!
//! It only accepts (a member dials it; announce its port to a conductor, or hand the member its
//! address). Each connection is one conversation thread, plus a keep-alive thread for the
//! behaviours that stay talkative; the threads are named `fp<port>-...` so that a test counting
//! threads can tell them apart. Dropping the [`FakePeer`] stops and joins every one of them.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use torrentnchill::orch::Orchestra;
use torrentnchill::sync::Mutex;
use torrentnchill::wire::{have_map_len, Hello, LineReader, PeerId, PeerMessage, WireError};

/// How long the member's `HELLO` may take (the member's own handshake limit).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// Longest silence from the member before the fake peer hangs up. A member pings long before.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Longest a write may block, a part included.
const WRITE_LIMIT: Duration = Duration::from_secs(30);
/// A talkative fake peer sends `PING` after this long without sending anything, so that even a
/// member with a short `--peer-timeout` never drops it for silence.
const PING_EVERY: Duration = Duration::from_millis(250);

/// How a [`FakePeer`] behaves once a member has dialed it. Every behaviour completes the
/// handshake and sends a have-map of every part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves every `REQUEST` with its `PIECE`, and keeps the connection alive with `PING`s.
    Honest,
    /// Like [`Behaviour::Honest`], but the parts in the set are sent with one bit of their
    /// middle byte flipped, so they fail their checksum.
    Corrupt(BTreeSet<u32>),
    /// Never sends another byte after its have-map: requests are read and never answered.
    Stall,
    /// A seeder spreading its parts, as far as one connection sees it: the first `REQUEST` for
    /// each part on a connection gets `REJECT`, a second one the part. It sends nothing
    /// unasked (no `PING`), like a peer whose keep-alive interval is longer than the member's
    /// timeout.
    RefuseFirstAsk,
    /// On its first connection, like [`Behaviour::Stall`] but with `PING`s (a link that
    /// stalled, not a dead one); on every later connection, honest.
    StallsFirstConnection,
}

impl Behaviour {
    /// Whether it sends `PING`s to keep the connection alive.
    fn talkative(&self) -> bool {
        !matches!(self, Behaviour::Stall | Behaviour::RefuseFirstAsk)
    }
}

/// A fake peer listening on 127.0.0.1 (an ephemeral port) until dropped.
pub struct FakePeer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    orch: Orchestra,
    data: Arc<Vec<u8>>,
    behaviour: Behaviour,
    peer_id: PeerId,
    port: u16,
    stop: AtomicBool,
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// The parts it says it has: all of them unless started with [`FakePeer::start_holding`].
    holds: Option<BTreeSet<u32>>,
    /// Every `HAVE` the member sent it, in order.
    haves: Mutex<Vec<u32>>,
    bytes_sent: AtomicU64,
    /// Each accepted connection (to shut it down) and the thread conversing on it.
    conversations: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

impl FakePeer {
    /// Listens on 127.0.0.1:0 for members of `orch`'s swarm; `data` is the whole file.
    pub fn start(orch: &Orchestra, data: Arc<Vec<u8>>, behaviour: Behaviour) -> FakePeer {
        FakePeer::start_with(orch, data, behaviour, None)
    }

    /// Like [`FakePeer::start`], but its have-map lists only the parts in `holds` (and it is
    /// asked for nothing else).
    pub fn start_holding(
        orch: &Orchestra,
        data: Arc<Vec<u8>>,
        behaviour: Behaviour,
        holds: BTreeSet<u32>,
    ) -> FakePeer {
        FakePeer::start_with(orch, data, behaviour, Some(holds))
    }

    fn start_with(
        orch: &Orchestra,
        data: Arc<Vec<u8>>,
        behaviour: Behaviour,
        holds: Option<BTreeSet<u32>>,
    ) -> FakePeer {
        assert_eq!(
            data.len() as u64,
            orch.file_size,
            "the fake peer's data is not the file the .orch describes"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let shared = Arc::new(Shared {
            orch: orch.clone(),
            data,
            behaviour,
            peer_id: PeerId::random(),
            port: addr.port(),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            holds,
            haves: Mutex::new(Vec::new()),
            bytes_sent: AtomicU64::new(0),
            conversations: Mutex::new(Vec::new()),
        });
        let for_thread = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name(format!("fp{}-accept", addr.port()))
            .spawn(move || accept_loop(&for_thread, &listener))
            .expect("spawn the accept thread");
        FakePeer {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer id it says in its `HELLO`.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// Bytes of part data (`PIECE` payloads) sent so far, corrupt ones included.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, whatever became of them.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The `HAVE`s the member sent so far, in order.
    pub fn haves(&self) -> Vec<u32> {
        self.shared.haves.lock().clone()
    }

    /// `REQUEST`s received so far, answered or not.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The accept loop sees `stop` as soon as one more connection comes: this one.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        // No conversation starts any more; shutting the sockets down ends each one's reads and
        // writes at once.
        let conversations = std::mem::take(&mut *self.shared.conversations.lock());
        for (stream, thread) in conversations {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = thread.join();
        }
    }
}

/// The have-map of a peer with every one of `parts` parts (docs/PROTOCOL.md, section 4.3).
pub fn have_map_of_all(parts: u32) -> Vec<u8> {
    let mut map = vec![0u8; have_map_len(parts)];
    for i in 0..parts {
        map[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    map
}

/// The have-map of a peer with the parts in `holds`.
pub fn have_map_of(parts: u32, holds: &BTreeSet<u32>) -> Vec<u8> {
    let mut map = vec![0u8; have_map_len(parts)];
    for &i in holds.iter().filter(|&&i| i < parts) {
        map[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    map
}

/// The bytes of part `index` of `data`, as `orch` cuts it; `None` past the end.
pub fn part_of<'a>(orch: &Orchestra, data: &'a [u8], index: u32) -> Option<&'a [u8]> {
    let span = orch.part_span(index)?;
    let (offset, len) = (span.offset, span.len);
    let start = usize::try_from(offset).ok()?;
    data.get(start..start.checked_add(len)?)
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let first = shared.connections.fetch_add(1, Ordering::SeqCst) == 0;
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let for_thread = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("fp{}-conn", shared.port))
            .spawn(move || {
                // An error ends only this conversation: the member sees the connection close.
                let _ = converse(&for_thread, &stream, first);
                let _ = stream.shutdown(Shutdown::Both);
            });
        if let Ok(thread) = spawned {
            shared.conversations.lock().push((handle, thread));
        }
    }
}

/// The sending half of a connection, shared by the conversation and its keep-alive.
struct Writer {
    stream: TcpStream,
    last_sent: Instant,
}

impl Writer {
    /// Writes `parts` back to back, so that a `PIECE` header and its payload are never split
    /// by a `PING`.
    fn send(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        for bytes in parts {
            self.stream.write_all(bytes)?;
        }
        self.last_sent = Instant::now();
        Ok(())
    }
}

/// Plays the acceptor's side of one connection (docs/PROTOCOL.md, sections 4.1 to 4.5).
fn converse(shared: &Shared, stream: &TcpStream, first: bool) -> Result<(), WireError> {
    let orch = &shared.orch;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_LIMIT))?;
    stream.set_write_timeout(Some(WRITE_LIMIT))?;
    let mut reader = LineReader::new(BufReader::new(stream.try_clone()?));
    let writer = Mutex::new(Writer {
        stream: stream.try_clone()?,
        last_sent: Instant::now(),
    });

    // The member dialed, so its HELLO comes first; ours answers it.
    let theirs = Hello::parse(reader.read_line()?)?;
    if theirs.swarm != orch.swarm_id() {
        writer.lock().send(&[b"ERROR not in this swarm\n"])?;
        return Ok(());
    }
    let ours = Hello {
        swarm: orch.swarm_id(),
        peer_id: shared.peer_id,
        listen_port: shared.port,
    };
    let map = match &shared.holds {
        None => have_map_of_all(orch.part_count()),
        Some(holds) => have_map_of(orch.part_count(), holds),
    };
    let map_header = PeerMessage::HaveMap { bytes: map.len() }.to_line();
    writer
        .lock()
        .send(&[ours.to_line().as_bytes(), map_header.as_bytes(), &map])?;
    stream.set_read_timeout(Some(IDLE_LIMIT))?;

    // The keep-alive stops when `conversing` is dropped, at the end of the conversation.
    let (conversing, ended) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        if shared.behaviour.talkative() {
            let writer = &writer;
            let _ = std::thread::Builder::new()
                .name(format!("fp{}-ping", shared.port))
                .spawn_scoped(scope, move || keep_alive(writer, &ended));
        }
        let result = serve(shared, &mut reader, &writer, first);
        drop(conversing);
        result
    })
}

/// Sends `PING` whenever nothing else was sent for [`PING_EVERY`], until `ended` closes.
fn keep_alive(writer: &Mutex<Writer>, ended: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(PING_EVERY) {
        let mut writer = writer.lock();
        if writer.last_sent.elapsed() >= PING_EVERY && writer.send(&[b"PING\n"]).is_err() {
            return;
        }
    }
}

/// Reads the member's messages until it hangs up, answering requests as the behaviour says.
fn serve(
    shared: &Shared,
    reader: &mut LineReader<BufReader<TcpStream>>,
    writer: &Mutex<Writer>,
    first_connection: bool,
) -> Result<(), WireError> {
    let orch = &shared.orch;
    let parts = orch.part_count();
    let part_len = |i: u32| orch.part_len(i);
    let mut refused = BTreeSet::new();
    loop {
        let line = match reader.read_line() {
            Ok(line) => line.to_string(),
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let index = match PeerMessage::parse(&line, parts, part_len)? {
            PeerMessage::HaveMap { bytes } => {
                reader.read_payload(&mut vec![0u8; bytes])?;
                continue;
            }
            PeerMessage::Request(index) => index,
            PeerMessage::Have(index) => {
                shared.haves.lock().push(index);
                continue;
            }
            _ => continue,
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let corrupt = match &shared.behaviour {
            Behaviour::Stall => continue,
            Behaviour::StallsFirstConnection if first_connection => continue,
            Behaviour::StallsFirstConnection => false,
            Behaviour::Honest => false,
            Behaviour::Corrupt(parts) => parts.contains(&index),
            Behaviour::RefuseFirstAsk => {
                if refused.insert(index) {
                    let reject = PeerMessage::Reject(index).to_line();
                    writer.lock().send(&[reject.as_bytes()])?;
                    continue;
                }
                false
            }
        };
        let part = part_of(orch, &shared.data, index).ok_or(WireError::IndexOutOfRange {
            index: u64::from(index),
            parts,
        })?;
        let payload = if corrupt {
            let mut bad = part.to_vec();
            bad[part.len() / 2] ^= 0x01;
            Cow::Owned(bad)
        } else {
            Cow::Borrowed(part)
        };
        let header = PeerMessage::Piece {
            index,
            len: part.len(),
        }
        .to_line();
        writer.lock().send(&[header.as_bytes(), &payload])?;
        shared
            .bytes_sent
            .fetch_add(payload.len() as u64, Ordering::SeqCst);
    }
}
