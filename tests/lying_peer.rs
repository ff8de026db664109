//! Hostile peers: a scripted peer, written here against docs/PROTOCOL.md, that a real member
//! dials (the test announces it to the conductor) and that lies in one way or another. An honest
//! seeder (the real binary) joins once the liar has done its worst. Each time the member must
//! detect the lie, drop the liar (and ban it where the protocol says so), finish from the honest
//! seeder within its timeouts, and end with a file identical to the original.

mod common;

use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use torrentnchill::orch::Orchestra;
use torrentnchill::sync::Mutex;
use torrentnchill::wire::{Hello, LineReader, PeerId, PeerMessage, WireError};

const LIMIT: Duration = Duration::from_secs(60);
/// `--peer-timeout` of the member under test.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the member may take to notice, over its timeout, on a loaded machine.
const MARGIN: Duration = Duration::from_millis(2500);
/// The longest any scripted connection lives.
const CONNECTION_LIFE: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Answers a request with the right header and wrong bytes.
    WrongBytes,
    /// Answers a request with a PIECE one byte longer than the part.
    WrongLength,
    /// Sends a part (the right bytes) that was not requested.
    Unrequested,
    /// Sends a PIECE for a part past the end of the file.
    IndexOutOfRange,
    /// Sends 10 MB without a line end.
    HugeLine,
    /// Sends random bytes: [`garbage`].
    Garbage,
    /// Sends half of a requested part, then nothing, with the connection open.
    StallMidPart,
    /// Sends half of a requested part, then one byte a second: never silent, never done.
    TrickleMidPart,
    /// Accepts connections and never says a word.
    NeverAnswers,
    /// Answers HELLO, then nothing (no HAVEMAP).
    SilentAfterHello,
    /// Claims every part and serves none, with PINGs to look alive.
    ClaimsAllServesNone,
    /// Has nothing; sends thousands of made-up addresses in PEX lines, then idles (PINGs).
    PexFlood,
    /// Has nothing; floods requests for a part the member lacks and never reads the answers.
    RejectFlood,
}

/// A scripted peer listening on 127.0.0.1.
struct Liar {
    addr: SocketAddr,
    state: Arc<LiarState>,
    accept_thread: Option<JoinHandle<()>>,
}

struct LiarState {
    lie: Lie,
    orch: Orchestra,
    data: Vec<u8>,
    peer_id: PeerId,
    port: u16,
    connections: AtomicUsize,
    /// Bytes of requests flooded so far.
    flooded: AtomicUsize,
    /// When the liar did its thing, and when the member then closed the connection, per
    /// connection.
    lied: Mutex<Vec<(Instant, Option<Instant>)>>,
    stop: AtomicBool,
}

impl Liar {
    fn start(lie: Lie, orch: &Orchestra, data: &[u8]) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        if lie == Lie::RejectFlood {
            // A small receive buffer (inherited by accepted sockets): the member's answers
            // pile up on its side as soon as the flood starts, as with a far-away peer.
            small_receive_buffer(&listener);
        }
        let state = Arc::new(LiarState {
            lie,
            orch: orch.clone(),
            data: data.to_vec(),
            peer_id: PeerId::random(),
            port: addr.port(),
            connections: AtomicUsize::new(0),
            flooded: AtomicUsize::new(0),
            lied: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&state);
        let accept_thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if for_thread.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                for_thread.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&for_thread);
                std::thread::spawn(move || {
                    let _ = converse(&state, &stream);
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
        });
        Liar {
            addr,
            state,
            accept_thread: Some(accept_thread),
        }
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    fn times_lied(&self) -> usize {
        self.state.lied.lock().len()
    }

    /// For each lie whose connection the member closed: how long after the lie.
    fn detection_times(&self) -> Vec<Duration> {
        self.state
            .lied
            .lock()
            .iter()
            .filter_map(|(lied, closed)| closed.map(|c| c.duration_since(*lied)))
            .collect()
    }
}

fn small_receive_buffer(listener: &TcpListener) {
    socket2::SockRef::from(listener)
        .set_recv_buffer_size(4096)
        .expect("setsockopt SO_RCVBUF");
}

/// What [`Lie::Garbage`] sends: 64 KiB of random bytes, always the same ones. Their first line
/// ends at byte 509 and is not UTF-8, so the member must refuse it for exactly that reason
/// ([`a_random_garbage_line_is_refused`] checks that it is so).
fn garbage() -> Vec<u8> {
    sample_data(64 * 1024, 7)
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

impl LiarState {
    fn part(&self, index: u32) -> &[u8] {
        part_of(&self.orch, &self.data, index).expect("a part of the file")
    }

    /// Records a lie; returns its slot, to note when the member hangs up.
    fn lying(&self) -> usize {
        let mut lied = self.lied.lock();
        lied.push((Instant::now(), None));
        lied.len() - 1
    }

    fn hung_up(&self, slot: Option<usize>) {
        if let Some(slot) = slot {
            self.lied.lock()[slot].1 = Some(Instant::now());
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What came in: a line, nothing yet, or the end of the connection.
enum Incoming {
    Line(String),
    Nothing,
    Ended,
}

fn next_line(reader: &mut LineReader<BufReader<TcpStream>>) -> Incoming {
    match reader.read_line() {
        Ok(line) => Incoming::Line(line.to_string()),
        Err(e) if e.is_timeout() => Incoming::Nothing,
        Err(_) => Incoming::Ended,
    }
}

/// Plays the acceptor side of one connection from the member, lying as told.
fn converse(state: &LiarState, stream: &TcpStream) -> std::io::Result<()> {
    let orch = &state.orch;
    let parts = orch.part_count();
    let born = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut out = stream;
    let mut reader = LineReader::new(BufReader::new(stream.try_clone()?));
    let alive = |born: Instant| !state.stopped() && born.elapsed() < CONNECTION_LIFE;

    // The member dialed: its HELLO comes first.
    let hello = loop {
        match next_line(&mut reader) {
            Incoming::Line(line) => break line,
            Incoming::Nothing if alive(born) => {}
            _ => return Ok(()),
        }
    };
    let theirs = Hello::parse(&hello).expect("the member's HELLO");
    assert_eq!(theirs.swarm, orch.swarm_id());
    let mut slot = None;
    if state.lie == Lie::NeverAnswers {
        slot = Some(state.lying());
    } else {
        let ours = Hello {
            swarm: orch.swarm_id(),
            peer_id: state.peer_id,
            listen_port: state.port,
        };
        out.write_all(ours.to_line().as_bytes())?;
        if state.lie == Lie::SilentAfterHello {
            slot = Some(state.lying());
        } else {
            // The have-map: everything, or nothing for the liars that only talk.
            let mut map = have_map_of_all(parts);
            if matches!(state.lie, Lie::PexFlood | Lie::RejectFlood) {
                map.fill(0);
            }
            if state.lie == Lie::Unrequested {
                // Without the last part, which the member therefore never asks us for.
                let last = parts - 1;
                map[(last / 8) as usize] &= !(0x80 >> (last % 8));
            }
            out.write_all(
                PeerMessage::HaveMap { bytes: map.len() }
                    .to_line()
                    .as_bytes(),
            )?;
            out.write_all(&map)?;
        }
    }

    let part_len = |i: u32| orch.part_len(i);
    let mut requested = Vec::new();
    let mut got_their_map = false;
    let mut last_sent = Instant::now();
    let mut trickle: Option<(u32, usize)> = None;
    while alive(born) {
        // Liars that push rather than answer.
        if slot.is_none() {
            match state.lie {
                Lie::PexFlood => {
                    slot = Some(state.lying());
                    for line in 0..300u32 {
                        let addrs: Vec<String> = (0..16u32)
                            .map(|k| {
                                let n = line * 16 + k;
                                format!("127.1.{}.{}:9", n / 256, n % 256)
                            })
                            .collect();
                        out.write_all(format!("PEX {}\n", addrs.join(" ")).as_bytes())?;
                    }
                }
                Lie::RejectFlood => {
                    slot = Some(state.lying());
                    // 5 M requests, about 50 MB, as fast as the member takes them; never read.
                    let chunk = "REQUEST 0\n".repeat(10_000);
                    for _ in 0..500 {
                        if out.write_all(chunk.as_bytes()).is_err() || !alive(born) {
                            break;
                        }
                        state.flooded.fetch_add(chunk.len(), Ordering::SeqCst);
                    }
                    state.hung_up(slot);
                    return Ok(());
                }
                _ => {}
            }
        }
        if let Some((index, sent)) = trickle.as_mut() {
            // One byte a second: well inside the member's per-read timeout.
            if last_sent.elapsed() >= Duration::from_secs(1) && *sent < part_len(*index) {
                let byte = state.part(*index)[*sent];
                if out.write_all(&[byte]).is_err() {
                    break;
                }
                *sent += 1;
                last_sent = Instant::now();
            }
        }
        if matches!(state.lie, Lie::ClaimsAllServesNone | Lie::PexFlood)
            && last_sent.elapsed() >= Duration::from_millis(500)
        {
            out.write_all(b"PING\n")?;
            last_sent = Instant::now();
        }
        let line = match next_line(&mut reader) {
            Incoming::Line(line) => line,
            Incoming::Nothing => continue,
            Incoming::Ended => break,
        };
        if matches!(state.lie, Lie::NeverAnswers | Lie::SilentAfterHello) {
            continue;
        }
        let message = PeerMessage::parse(&line, parts, part_len)
            .unwrap_or_else(|e| panic!("the member sent {line:?}: {e}"));
        let index = match message {
            PeerMessage::HaveMap { bytes } => {
                assert!(!got_their_map, "two HAVEMAPs");
                got_their_map = true;
                let mut map = vec![0u8; bytes];
                if let Err(e) = reader.read_payload(&mut map) {
                    assert!(!matches!(e, WireError::Closed), "{e}");
                    break;
                }
                continue;
            }
            PeerMessage::Request(index) => index,
            _ => continue,
        };
        assert!(got_their_map, "a request before the have-map");
        requested.push(index);
        if slot.is_some() {
            continue; // one lie per connection; later requests go unanswered
        }
        let len = part_len(index);
        let header = |i: u32, len: usize| PeerMessage::Piece { index: i, len }.to_line();
        match state.lie {
            Lie::WrongBytes => {
                let mut bad = state.part(index).to_vec();
                bad[len / 2] ^= 0x01;
                slot = Some(state.lying());
                out.write_all(header(index, len).as_bytes())?;
                out.write_all(&bad)?;
            }
            Lie::WrongLength => {
                slot = Some(state.lying());
                out.write_all(format!("PIECE {index} {}\n", len + 1).as_bytes())?;
                out.write_all(&vec![0u8; len + 1])?;
            }
            Lie::Unrequested => {
                let other = parts - 1;
                slot = Some(state.lying());
                out.write_all(header(other, part_len(other)).as_bytes())?;
                out.write_all(state.part(other))?;
            }
            Lie::IndexOutOfRange => {
                slot = Some(state.lying());
                out.write_all(format!("PIECE {parts} {}\n", orch.part_size).as_bytes())?;
                out.write_all(&vec![0u8; orch.part_size as usize])?;
            }
            Lie::HugeLine => {
                slot = Some(state.lying());
                let _ = out.write_all(&vec![b'A'; 10_000_000]);
            }
            Lie::Garbage => {
                slot = Some(state.lying());
                let _ = out.write_all(&garbage());
            }
            Lie::StallMidPart | Lie::TrickleMidPart => {
                slot = Some(state.lying());
                out.write_all(header(index, len).as_bytes())?;
                out.write_all(&state.part(index)[..len / 2])?;
                if state.lie == Lie::TrickleMidPart {
                    trickle = Some((index, len / 2));
                    last_sent = Instant::now();
                }
            }
            Lie::ClaimsAllServesNone => slot = Some(state.lying()),
            Lie::NeverAnswers | Lie::SilentAfterHello | Lie::PexFlood | Lie::RejectFlood => {}
        }
    }
    state.hung_up(slot);
    Ok(())
}

/// One scripted liar, a member that meets it first, and an honest seeder that joins once the
/// liar has lied.
struct Scene {
    swarm: Sample,
    conductor: Conductor,
    liar: Liar,
    _listed: KeepAnnounced,
}

fn scene(lie: Lie, len: usize, part_size: &str) -> Scene {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let swarm = sample(
        "victim.bin",
        len,
        part_size,
        &conductor.addr,
        0x11e + len as u64,
    );
    let liar = Liar::start(lie, &swarm.orch, &swarm.data);
    let listed = keep_announced(
        &conductor.addr,
        swarm.orch.swarm_id(),
        liar.addr.port(),
        Duration::from_millis(400),
    );
    Scene {
        swarm,
        conductor,
        liar,
        _listed: listed,
    }
}

/// What happened to the member.
struct Outcome {
    events: Vec<serde_json::Value>,
    /// From the honest seeder's start to the member's exit.
    finish: Duration,
}

impl Outcome {
    /// The reasons the member gave for dropping the liar.
    fn drops_of(&self, liar: &Liar) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "peer_dropped" && e["addr"] == liar.addr.to_string().as_str())
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Scene {
    /// Runs a member that meets the liar first; starts the honest seeder once the liar lied.
    fn run_member(&self, extra: &[&str]) -> Outcome {
        let dir = self.swarm.dir("member");
        let timeout = PEER_TIMEOUT.as_secs_f64().to_string();
        let mut flags = vec!["--exit-when-done", "--peer-timeout", &timeout];
        flags.extend_from_slice(extra);
        let (mut member, events) = spawn_member("member", &self.swarm.orch_path, &dir, &flags);
        wait_until(LIMIT, "the liar to lie", || self.liar.times_lied() > 0);
        // The liar is the only peer until the member hangs up on it, so that every lie meets
        // the member's own defences rather than an honest seeder racing it. Past the longest
        // timeout that applies (the 5 s handshake), the honest seeder joins anyway, and the
        // test reports the lie as unnoticed.
        poll_until(Duration::from_secs(5) + MARGIN, || {
            !self.liar.detection_times().is_empty()
        });
        let honest = Instant::now();
        let (_seeder, _) = spawn_member(
            "honest seeder",
            &self.swarm.orch_path,
            &self.swarm.seed_dir,
            &[],
        );
        let status = member.wait_exit(LIMIT);
        let finish = honest.elapsed();
        let stderr = std::fs::read_to_string(dir.with_extension("stderr.log")).unwrap();
        assert!(status.success(), "member: {status}\n{stderr}");
        self.swarm.assert_copy(&dir, "the member");
        let events = read_events(&events);
        let summary = events
            .iter()
            .rev()
            .find(|e| e["event"] == "summary")
            .unwrap();
        assert_eq!(summary["complete"], true);
        Outcome { events, finish }
    }
}

/// A lie the protocol calls misbehaviour: the liar is dropped at once, banned (never dialed
/// again), and the member finishes from the honest seeder.
fn banned_for(lie: Lie, reason: &str) -> Outcome {
    let scene = scene(lie, 1024 * 1024 + 333, "16K");
    let outcome = scene.run_member(&[]);
    let drops = outcome.drops_of(&scene.liar);
    eprintln!(
        "{lie:?}: dropped for {drops:?}; detected in {:?}; finished {:.1} s after the honest \
         seeder started",
        scene.liar.detection_times(),
        outcome.finish.as_secs_f64()
    );
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert!(
        drops[0].starts_with("banned: ") && drops[0].contains(reason),
        "{lie:?}: dropped for {:?}",
        drops[0]
    );
    assert_eq!(
        scene.liar.connections(),
        1,
        "a banned peer was dialed again"
    );
    for took in scene.liar.detection_times() {
        assert!(took < MARGIN, "{lie:?} took {took:?} to be noticed");
    }
    drop(scene.conductor);
    outcome
}

#[test]
fn wrong_bytes_are_rejected_and_the_liar_banned() {
    let outcome = banned_for(Lie::WrongBytes, "failed its checksum");
    let rejected: Vec<_> = outcome
        .events
        .iter()
        .filter(|e| e["event"] == "part_rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let summary = outcome
        .events
        .iter()
        .rev()
        .find(|e| e["event"] == "summary");
    assert_eq!(summary.unwrap()["parts_rejected"], 1);
}

#[test]
fn a_wrong_length_is_refused_before_the_payload() {
    banned_for(Lie::WrongLength, "PIECE announces");
}

#[test]
fn a_part_nobody_asked_for_is_refused() {
    banned_for(Lie::Unrequested, "which we did not request");
}

#[test]
fn an_index_out_of_range_is_refused() {
    banned_for(Lie::IndexOutOfRange, "out of range");
}

#[test]
fn a_10_mb_line_is_refused_without_reading_it() {
    banned_for(Lie::HugeLine, "longer than 1024 bytes");
}

#[test]
fn a_random_garbage_line_is_refused() {
    // What the member must say follows from the bytes: their first line is short enough to be
    // read whole, and it is not text.
    let garbage = garbage();
    let line_end = garbage.iter().position(|&b| b == b'\n').unwrap();
    assert!(line_end <= torrentnchill::wire::MAX_LINE, "{line_end}");
    assert!(std::str::from_utf8(&garbage[..line_end]).is_err());
    banned_for(Lie::Garbage, "control line is not UTF-8 text");
}

#[test]
fn a_peer_that_claims_everything_and_serves_nothing_is_banned() {
    let scene = scene(Lie::ClaimsAllServesNone, 1024 * 1024 + 333, "16K");
    let outcome = scene.run_member(&[]);
    let drops = outcome.drops_of(&scene.liar);
    eprintln!(
        "ClaimsAllServesNone: dropped for {drops:?} after {:?}",
        scene.liar.detection_times()
    );
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert!(drops[0].contains("sent no requested part"), "{drops:?}");
    assert_eq!(scene.liar.connections(), 1);
    for took in scene.liar.detection_times() {
        assert!(took < PEER_TIMEOUT + MARGIN, "noticed after {took:?}");
    }
}

/// A lie that is not misbehaviour by the protocol (silence, a connection that stops): the
/// connection ends within the timeouts, the member may try the liar again, and finishes.
fn outlasted(lie: Lie, within: Duration) -> (Scene, Outcome) {
    let scene = scene(lie, 1024 * 1024 + 333, "16K");
    let outcome = scene.run_member(&[]);
    let detected = scene.liar.detection_times();
    eprintln!(
        "{lie:?}: {} connections, dropped for {:?}; noticed after {detected:?}; finished {:.1} s \
         after the honest seeder started",
        scene.liar.connections(),
        outcome.drops_of(&scene.liar),
        outcome.finish.as_secs_f64()
    );
    for took in &detected {
        assert!(*took < within, "{lie:?}: noticed after {took:?}");
    }
    (scene, outcome)
}

#[test]
fn a_peer_that_stalls_in_the_middle_of_a_part_is_dropped() {
    let (scene, outcome) = outlasted(Lie::StallMidPart, PEER_TIMEOUT + MARGIN);
    assert!(!outcome.drops_of(&scene.liar).is_empty());
    assert!(!scene.liar.detection_times().is_empty());
}

#[test]
fn a_peer_that_trickles_a_part_is_dropped() {
    // "No requested part for the peer timeout" is misbehaviour, however the bytes dribble in.
    let (scene, outcome) = outlasted(Lie::TrickleMidPart, PEER_TIMEOUT + MARGIN);
    let drops = outcome.drops_of(&scene.liar);
    assert!(!drops.is_empty(), "the trickling peer was never dropped");
}

#[test]
fn a_peer_that_answers_hello_then_nothing_is_dropped() {
    let (scene, outcome) = outlasted(Lie::SilentAfterHello, PEER_TIMEOUT + MARGIN);
    let drops = outcome.drops_of(&scene.liar);
    assert!(drops.iter().any(|d| d.contains("silent for")), "{drops:?}");
}

#[test]
fn a_peer_that_accepts_and_never_answers_does_not_hold_anyone_up() {
    // The handshake allows 5 s for the HELLO answer.
    let (scene, outcome) = outlasted(Lie::NeverAnswers, Duration::from_secs(5) + MARGIN);
    // It never completed a handshake, so it was never a peer.
    assert!(outcome.drops_of(&scene.liar).is_empty());
    assert!(outcome.finish < Duration::from_secs(5) + MARGIN);
}

#[test]
fn a_flood_of_made_up_addresses_does_not_hide_the_real_peers() {
    let scene = scene(Lie::PexFlood, 1024 * 1024 + 333, "16K");
    let outcome = scene.run_member(&[]);
    eprintln!(
        "PexFlood: finished {:.1} s after the honest seeder started",
        outcome.finish.as_secs_f64()
    );
    // It sent nothing wrong by the protocol: no ban.
    assert!(outcome
        .drops_of(&scene.liar)
        .iter()
        .all(|d| !d.starts_with("banned")));
}

#[test]
fn a_flood_of_requests_that_are_never_read_is_cut_short() {
    // The default peer timeout (20 s) gives the flood time to show; memory must stay bounded
    // and the flooder must be dropped long before the writer's timeout.
    let scene = scene(Lie::RejectFlood, 1024 * 1024 + 333, "16K");
    let dir = scene.swarm.dir("flooded");
    let (member, events) = spawn_member("member", &scene.swarm.orch_path, &dir, &[]);
    wait_until(LIMIT, "the flood to start", || scene.liar.times_lied() > 0);
    let started = Instant::now();
    let mut peak = 0;
    // Watch for 10 s, or until the member hangs up on the flood.
    while started.elapsed() < Duration::from_secs(10) && scene.liar.detection_times().is_empty() {
        peak = peak.max(rss_kib(member.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    peak = peak.max(rss_kib(member.pid()).unwrap_or(0));
    let took = scene.liar.detection_times();
    assert!(
        !took.is_empty() && took[0] < MARGIN,
        "the flood was not cut short: {took:?}, peak RSS {peak} KiB"
    );
    let dropped = wait_for_event(&events, "peer_dropped", LIMIT, |_| true);
    eprintln!(
        "RejectFlood: {} requests sent, peak RSS {peak} KiB, hung up after {took:?}: {}",
        scene.liar.state.flooded.load(Ordering::SeqCst) / 10,
        dropped["reason"]
    );
    assert!(peak < 100 * 1024, "the member grew to {peak} KiB");
    let reason = dropped["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("banned: ") && reason.contains("requests queued"),
        "{reason}"
    );
    drop(member);
}
