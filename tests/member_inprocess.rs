//! A `Member` run in this process, with the file in memory, against in-process fake peers and an
//! in-process conductor: no binaries, no disk. Complements the end-to-end tests, which run the
//! real programs: here a test can see the member's storage, events and threads directly.
//!
//! The tests share one lock: the thread-count test counts the whole process's member threads,
//! so no other member may run beside it.

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{poll_until, sample_data, wait_for, wait_until, Behaviour, DelayLink, FakePeer};
use torrentnchill::conductor::{self, Conductor, ConductorConfig};
use torrentnchill::member::peer::reader::STALL_SUSPENSION;
use torrentnchill::member::policy::{Ask, PartsView, PiecePolicy, RarestFirst};
use torrentnchill::member::storage::MemoryStorageFactory;
use torrentnchill::member::{Event, Member, MemberConfig, Phase};
use torrentnchill::orch::{Checksum, Orchestra};
use torrentnchill::sync::Mutex;
use torrentnchill::wire::{have_map_len, Hello, LineReader, PeerId, PeerMessage};

const LIMIT: Duration = Duration::from_secs(30);
const PART: u64 = 16 << 10;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A file of `parts` parts of 16 KiB (the last one short) and its `.orch` for `conductor`.
fn swarm_file(parts: u64, conductor: SocketAddr, seed: u64) -> (Orchestra, Arc<Vec<u8>>) {
    let data = sample_data((parts * PART - 1000) as usize, seed);
    let part_checksums = data.chunks(PART as usize).map(Checksum::of).collect();
    let orch = Orchestra::new(
        &conductor.to_string(),
        "inprocess.bin",
        Checksum::of(&data),
        data.len() as u64,
        PART,
        part_checksums,
    )
    .unwrap();
    (orch, Arc::new(data))
}

fn start_conductor() -> Conductor {
    Conductor::start(ConductorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        interval: Duration::from_millis(300),
        ..ConductorConfig::default()
    })
    .unwrap()
}

/// Tells the conductor about `peer`, as a member would announce itself.
fn announce(orch: &Orchestra, peer: &FakePeer) {
    conductor::announce(
        &orch.conductor,
        orch.swarm_id(),
        peer.peer_id(),
        peer.addr().port(),
        LIMIT,
    )
    .unwrap();
}

/// A member keeping the file in memory, listening on 127.0.0.1.
fn member_config(storage: &MemoryStorageFactory) -> MemberConfig {
    let mut config = MemberConfig::with_storage(Arc::new(storage.clone()));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.peer_timeout = Duration::from_secs(1);
    config
}

/// The events up to `Complete` (or a failure, which fails the test).
fn events_until_complete(events: &Receiver<Event>) -> Vec<Event> {
    events_until_complete_within(events, LIMIT)
}

/// [`events_until_complete`], for a fetch that may take `limit`.
fn events_until_complete_within(events: &Receiver<Event>, limit: Duration) -> Vec<Event> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("not complete within {limit:?}; events: {seen:?}"));
        if let Event::Fatal { error } = &event {
            panic!("the member failed: {error}");
        }
        let complete = event == Event::Complete;
        seen.push(event);
        if complete {
            return seen;
        }
    }
}

fn assert_stored(storage: &MemoryStorageFactory, data: &[u8]) {
    let stored = storage.storage().expect("the member opened its storage");
    assert!(stored.is_finished(), "the download was not finished");
    assert!(
        stored.contents() == data,
        "the stored bytes differ from the file"
    );
}

#[test]
fn a_clean_fetch_from_an_honest_peer() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(40, conductor.local_addr(), 1);
    let peer = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    announce(&orch, &peer);
    let storage = MemoryStorageFactory::empty();
    let (member, events) = Member::start(orch, member_config(&storage), &|_| {}).unwrap();
    let seen = events_until_complete(&events);
    assert!(seen.contains(&Event::PeerConnected { addr: peer.addr() }));
    assert_stored(&storage, &data);
    let status = member.status();
    assert_eq!(status.phase, Phase::Sharing);
    assert_eq!((status.parts_done, status.parts_rejected), (40, 0));
    assert_eq!(status.bytes_down, data.len() as u64);
    assert_eq!(
        peer.bytes_sent(),
        data.len() as u64,
        "no part was sent twice"
    );
    member.quit(LIMIT);
    conductor.shutdown();
}

#[test]
fn a_lying_peer_is_dropped_and_its_parts_come_from_another() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(40, conductor.local_addr(), 2);
    let every_part: BTreeSet<u32> = (0..40).collect();
    let liar = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Corrupt(every_part));
    announce(&orch, &liar);
    let storage = MemoryStorageFactory::empty();
    let (member, events) = Member::start(orch.clone(), member_config(&storage), &|_| {}).unwrap();
    // Once the liar has been caught, an honest peer comes along.
    let rejected = wait_for(LIMIT, "a rejected part", || {
        events
            .recv_timeout(LIMIT)
            .ok()
            .and_then(|event| match event {
                Event::PartRejected { index, addr } => Some((index, addr)),
                _ => None,
            })
    });
    assert_eq!(rejected.1, liar.addr());
    let honest = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    announce(&orch, &honest);
    let seen = events_until_complete(&events);
    let liar_dropped = seen.iter().any(|event| {
        matches!(event, Event::PeerDropped { addr, reason }
            if *addr == liar.addr() && reason.contains("failed its checksum"))
    });
    assert!(liar_dropped, "the liar was not dropped for it: {seen:?}");
    assert_stored(&storage, &data);
    assert!(member.status().parts_rejected >= 1);
    // Banned: the liar is never connected to again.
    let connections = liar.connections();
    member.quit(LIMIT);
    assert_eq!(liar.connections(), connections);
    conductor.shutdown();
}

#[test]
fn a_stalled_peer_is_dropped_and_the_rest_comes_from_another() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(40, conductor.local_addr(), 3);
    let stalled = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Stall);
    announce(&orch, &stalled);
    let storage = MemoryStorageFactory::empty();
    let (member, events) = Member::start(orch.clone(), member_config(&storage), &|_| {}).unwrap();
    let (addr, reason) = wait_for(LIMIT, "the stalled peer dropped", || {
        events
            .recv_timeout(LIMIT)
            .ok()
            .and_then(|event| match event {
                Event::PeerDropped { addr, reason } => Some((addr, reason)),
                _ => None,
            })
    });
    assert_eq!(addr, stalled.addr());
    // It sends nothing at all, so the connection's silence ends it (or, if a PING had come,
    // the requests it never answered).
    assert!(
        reason == "silent for 1s" || reason.contains("sent no requested part"),
        "dropped for {reason:?}"
    );
    assert!(stalled.requests() > 0);
    assert_eq!(member.status().parts_done, 0);
    let honest = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    announce(&orch, &honest);
    events_until_complete(&events);
    assert_stored(&storage, &data);
    member.quit(LIMIT);
    conductor.shutdown();
}

/// A peer that held our requests is only suspended: it may be the one source there is, behind a
/// link that stalled for a while (TCP backing off after losses).
#[test]
fn a_peer_that_stalled_is_dialed_again_after_its_suspension() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(40, conductor.local_addr(), 8);
    let peer = FakePeer::start(&orch, Arc::clone(&data), Behaviour::StallsFirstConnection);
    announce(&orch, &peer);
    let storage = MemoryStorageFactory::empty();
    let (member, events) = Member::start(orch.clone(), member_config(&storage), &|_| {}).unwrap();
    let seen = events_until_complete_within(&events, STALL_SUSPENSION + LIMIT);
    let reason = seen
        .iter()
        .find_map(|event| match event {
            Event::PeerDropped { reason, .. } => Some(reason),
            _ => None,
        })
        .expect("the stalled connection was dropped");
    assert!(reason.contains("sent no requested part"), "{reason}");
    assert_eq!(peer.connections(), 2);
    assert_stored(&storage, &data);
    member.quit(LIMIT);
    conductor.shutdown();
}

/// A part is announced only to peers that lack it; once complete, the member tells the others
/// of the parts it did not announce, so that each sees it complete.
#[test]
fn parts_are_announced_to_the_peers_that_lack_them_and_completion_to_all() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(24, conductor.local_addr(), 9);
    let seeder = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    let holds: BTreeSet<u32> = (0..orch.part_count()).filter(|i| i % 2 == 0).collect();
    let half = FakePeer::start_holding(&orch, Arc::clone(&data), Behaviour::Honest, holds.clone());
    announce(&orch, &seeder);
    announce(&orch, &half);
    let storage = MemoryStorageFactory::empty();
    let (member, events) = Member::start(orch.clone(), member_config(&storage), &|_| {}).unwrap();
    events_until_complete_within(&events, LIMIT);
    assert_stored(&storage, &data);
    let every_part: BTreeSet<u32> = (0..orch.part_count()).collect();
    wait_until(LIMIT, "the half peer to hear of every part", || {
        half.haves().into_iter().collect::<BTreeSet<u32>>() == every_part
    });
    // The seeder has every part, and says so in its have-map; only a part stored between
    // the connection's start and that map's arrival may still be told to it (before the
    // change, 23 of 24 were).
    let told_seeder = seeder.haves();
    assert!(
        told_seeder.len() < every_part.len() / 4,
        "the seeder, which has every part, heard {told_seeder:?}"
    );
    let haves = half.haves();
    for index in &holds {
        let told = haves.iter().filter(|&h| h == index).count();
        assert_eq!(
            told, 1,
            "part {index}, which it had, told once (at the end, or before its map came)"
        );
    }
    member.quit(LIMIT);
    conductor.shutdown();
}

/// The names of the threads a member starts (see `Shared::spawn`).
const MEMBER_THREADS: [&str; 8] = [
    "listener",
    "peer-in",
    "peer-out",
    "peer-writer",
    "announcer",
    "connector",
    "full-hash",
    "finisher",
];

/// Threads of this process whose name is one of a member's.
fn member_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|name| MEMBER_THREADS.contains(&name.trim()))
        .count()
}

/// After `quit`, every thread's work has ended (it was joined), and the system's threads are
/// gone too: a joined thread's entry leaves `/proc` a moment after its work ends.
fn assert_all_threads_ended(member: &Member) {
    assert_eq!(member.threads(), 0, "threads still at work after quit");
    assert!(
        poll_until(LIMIT, || member_threads() == 0),
        "{} member threads left after quit",
        member_threads()
    );
}

#[test]
fn quit_joins_every_thread_even_in_the_middle_of_a_fetch() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(40, conductor.local_addr(), 4);
    // A stalled peer keeps the member fetching, with connections and requests in flight.
    let stalled = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Stall);
    announce(&orch, &stalled);
    assert_eq!(
        member_threads(),
        0,
        "a member of another test is still running"
    );
    let storage = MemoryStorageFactory::empty();
    let mut config = member_config(&storage);
    config.peer_timeout = Duration::from_secs(60);
    let (member, events) = Member::start(orch, config, &|_| {}).unwrap();
    wait_for(LIMIT, "a connection to the stalled peer", || {
        events
            .recv_timeout(LIMIT)
            .ok()
            .filter(|event| matches!(event, Event::PeerConnected { .. }))
    });
    wait_until(LIMIT, "requests to the stalled peer", || {
        stalled.requests() > 0
    });
    let running = member_threads();
    // listener, announcer, connector, full-hash, and a reader and a writer for the peer.
    assert!(running >= 6, "only {running} member threads");
    assert!(
        member.threads() >= 6,
        "{} threads at work",
        member.threads()
    );
    member.quit(LIMIT);
    assert_all_threads_ended(&member);
    drop(member);
    conductor.shutdown();
}

#[test]
fn quit_does_not_wait_out_a_conductor_that_never_answers() {
    let _alone = ONE_AT_A_TIME.lock();
    // A conductor that takes connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (orch, _) = swarm_file(4, silent.local_addr().unwrap(), 6);
    assert_eq!(
        member_threads(),
        0,
        "a member of another test is still running"
    );
    let storage = MemoryStorageFactory::empty();
    let (member, _events) = Member::start(orch, member_config(&storage), &|_| {}).unwrap();
    // The announce is under way, waiting for an answer that never comes.
    let (_announce, _) = silent.accept().unwrap();
    // Quitting gives the LEAVE almost no time, so only the joining waits for the announcer.
    member.quit(Duration::from_millis(1));
    assert_all_threads_ended(&member);
}

/// A policy that panics the first time it is asked, in whichever peer thread asks.
struct PanicsOnce;

static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl PiecePolicy for PanicsOnce {
    fn pick(&mut self, parts: &PartsView, ask: &Ask) -> Option<u32> {
        if !PANICKED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug in a piece policy, on purpose");
        }
        RarestFirst.pick(parts, ask)
    }
}

#[test]
fn a_panic_in_a_peer_thread_drops_that_peer_not_the_member() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(20, conductor.local_addr(), 5);
    let peer = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    announce(&orch, &peer);
    let storage = MemoryStorageFactory::empty();
    let mut config = member_config(&storage);
    config.policy = || Box::new(PanicsOnce);
    let (member, events) = Member::start(orch, config, &|_| {}).unwrap();
    let seen = events_until_complete(&events);
    assert!(PANICKED.load(std::sync::atomic::Ordering::SeqCst));
    let dropped_for_the_panic = seen.iter().any(|event| {
        matches!(event, Event::PeerDropped { reason, .. } if reason.contains("internal error"))
    });
    assert!(dropped_for_the_panic, "{seen:?}");
    // The peer was dialed again and served the whole file.
    assert!(peer.connections() >= 2);
    assert_stored(&storage, &data);
    member.quit(LIMIT);
    conductor.shutdown();
}

/// Through a link with a 60 ms round trip, the member keeps more requests out than the old
/// fixed window (2 MiB of parts, 16 requests for these 16 KiB parts) once it has measured the
/// peer, and fetches the whole file.
#[test]
fn requests_in_flight_follow_the_round_trip() {
    let _alone = ONE_AT_A_TIME.lock();
    let conductor = start_conductor();
    let (orch, data) = swarm_file(1600, conductor.local_addr(), 7);
    let peer = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    let link = DelayLink::start(peer.addr(), Duration::from_millis(30));
    conductor::announce(
        &orch.conductor,
        orch.swarm_id(),
        peer.peer_id(),
        link.addr().port(),
        LIMIT,
    )
    .unwrap();
    let storage = MemoryStorageFactory::empty();
    let (member, events) = Member::start(orch, member_config(&storage), &|_| {}).unwrap();
    let mut most_out = 0;
    let fetched = poll_until(Duration::from_secs(120), || {
        let status = member.status();
        most_out = most_out.max(status.requests_out);
        status.phase == Phase::Sharing
    });
    assert!(fetched, "not complete; {:?}", member.status());
    assert!(
        most_out > 16,
        "at most {most_out} requests out: no more than the old fixed window"
    );
    assert_stored(&storage, &data);
    drop(events);
    member.quit(LIMIT);
    drop(link);
    conductor.shutdown();
}

/// A seeder spreading every part once refuses a second copy of a part while another part has
/// not gone out yet, and offers the refused part again (`HAVE`) as soon as every part has gone
/// out once. Without the offer, the asker would only ask again after the seeder next said
/// something (a ping, seconds later), and the last member of a swarm waited that long for its
/// last part.
/// A seeder spreading every part once (an origin seeder, a 60 s peer timeout so that it pings
/// no one during a test), and a raw connection to it that has said HELLO and an empty have-map.
struct SpreadingSeeder {
    seeder: Member,
    orch: Orchestra,
    reader: LineReader<BufReader<TcpStream>>,
    out: TcpStream,
}

impl SpreadingSeeder {
    fn start(parts: u32) -> (SpreadingSeeder, Conductor) {
        let conductor = start_conductor();
        let (orch, data) = swarm_file(parts.into(), conductor.local_addr(), 11);
        let storage = MemoryStorageFactory::with_bytes(Arc::clone(&data));
        let mut config = member_config(&storage);
        // No ping during the test: every line the seeder sends is one it had a reason to send.
        config.peer_timeout = Duration::from_secs(60);
        let (seeder, _events) = Member::start(orch.clone(), config, &|_| {}).unwrap();
        let (reader, out) = SpreadingSeeder::connect(&seeder, &orch);
        let session = SpreadingSeeder {
            seeder,
            orch,
            reader,
            out,
        };
        (session, conductor)
    }

    /// A raw connection to `seeder` that has said HELLO and an empty have-map, and read the
    /// seeder's have-map.
    fn connect(seeder: &Member, orch: &Orchestra) -> (LineReader<BufReader<TcpStream>>, TcpStream) {
        let stream = TcpStream::connect(seeder.local_addr()).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let mut out = stream.try_clone().unwrap();
        let hello = Hello {
            swarm: orch.swarm_id(),
            peer_id: PeerId::random(),
            listen_port: 0,
        };
        out.write_all(hello.to_line().as_bytes()).unwrap();
        let mut reader = LineReader::new(BufReader::new(stream));
        Hello::parse(reader.read_line().unwrap()).unwrap();
        let line = reader.read_line().unwrap().to_string();
        match PeerMessage::parse(&line, orch.part_count(), |i| orch.part_len(i)).unwrap() {
            PeerMessage::HaveMap { bytes } => reader.read_payload(&mut vec![0; bytes]).unwrap(),
            other => panic!("expected the seeder's have-map first, got {other:?}"),
        }
        let empty_map = vec![0u8; have_map_len(orch.part_count())];
        let header = PeerMessage::HaveMap {
            bytes: empty_map.len(),
        };
        out.write_all(header.to_line().as_bytes()).unwrap();
        out.write_all(&empty_map).unwrap();
        (reader, out)
    }

    fn message(&mut self) -> PeerMessage {
        let line = self.reader.read_line().unwrap().to_string();
        let orch = &self.orch;
        PeerMessage::parse(&line, orch.part_count(), |i| orch.part_len(i)).unwrap()
    }

    fn request(&mut self, index: u32) {
        self.out
            .write_all(PeerMessage::Request(index).to_line().as_bytes())
            .unwrap();
    }
}

#[test]
fn a_part_refused_while_spreading_is_offered_again_once_every_part_went_out() {
    let _one = ONE_AT_A_TIME.lock();
    let (mut session, _conductor) = SpreadingSeeder::start(4);
    let parts = session.orch.part_count();

    // Part 0 twice: the second copy waits while parts 1 to 3 have not gone out.
    session.request(0);
    session.request(0);
    let mut pieces = Vec::new();
    let mut rejected = Vec::new();
    let mut offered = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while offered.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no HAVE 0 within {LIMIT:?}: pieces {pieces:?}, rejected {rejected:?}"
        );
        match session.message() {
            PeerMessage::Piece { index, len } => {
                session.reader.read_payload(&mut vec![0; len]).unwrap();
                pieces.push(index);
                if pieces == [0] {
                    for index in 1..parts {
                        session.request(index);
                    }
                }
            }
            PeerMessage::Reject(index) => rejected.push(index),
            PeerMessage::Have(index) => offered.push(index),
            PeerMessage::Pex(_) | PeerMessage::Ping => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rejected, [0], "the second copy of part 0 was held back");
    assert_eq!(offered, [0], "and offered again");
    assert_eq!(pieces, [0, 1, 2, 3], "after every part went out once");
    session.seeder.quit(LIMIT);
}

/// A peer refused a second copy while the seeder spreads, which asks for it again, found no
/// other source: once the seeder's uplink has nothing else to send, it is served although
/// other parts never went out. Without this, a seeder whose remaining parts a second seeder
/// delivered, or whose only copy went to a member that has left, held the part back for ever,
/// and the asker never finished.
#[test]
fn a_part_asked_again_after_a_refusal_is_served_while_spreading() {
    let _one = ONE_AT_A_TIME.lock();
    let (mut session, _conductor) = SpreadingSeeder::start(3);
    session.request(0);
    session.request(0);
    let (mut pieces, mut rejects) = (0, 0);
    let deadline = Instant::now() + LIMIT;
    while pieces < 2 {
        assert!(
            Instant::now() < deadline,
            "{pieces} copies of part 0 and {rejects} refusals within {LIMIT:?}"
        );
        match session.message() {
            PeerMessage::Piece { index: 0, len } => {
                session.reader.read_payload(&mut vec![0; len]).unwrap();
                pieces += 1;
            }
            // Refused while the first copy is still on its way: ask again.
            PeerMessage::Reject(0) => {
                rejects += 1;
                session.request(0);
            }
            PeerMessage::Pex(_) | PeerMessage::Ping => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rejects >= 1, "the second copy was first held back");
    session.seeder.quit(LIMIT);
}

/// At the end of the seeder's first round, when every part is on its way to someone, a
/// connection with nothing to send gets a second copy at once: holding its asker back would
/// leave that share of the seeder's uplink idle until the last first copies are through (in
/// the testbed's scenario 2 the seeder's rate fell from 50 to 10-40 Mbit/s for two seconds).
#[test]
fn an_idle_connection_gets_a_second_copy_once_every_part_is_on_its_way() {
    let _one = ONE_AT_A_TIME.lock();
    let parts = 1000u32;
    let (mut session, _conductor) = SpreadingSeeder::start(parts);
    session.request(0);
    match session.message() {
        PeerMessage::Piece { index: 0, len } => {
            session.reader.read_payload(&mut vec![0; len]).unwrap()
        }
        other => panic!("expected part 0, got {other:?}"),
    }
    // Another member asks for every other part and reads nothing: 16 MiB, more than the
    // sockets hold, so the last of those first copies stay queued at the seeder.
    let (_stalled_reader, mut stalled) = SpreadingSeeder::connect(&session.seeder, &session.orch);
    let rest: String = (1..parts)
        .map(|index| PeerMessage::Request(index).to_line())
        .collect();
    stalled.write_all(rest.as_bytes()).unwrap();
    // Part 1, the first the other member asked for, has gone out to it: a copy for us is a
    // second one.
    let two_parts = (session.orch.part_len(0) + session.orch.part_len(1)) as u64;
    wait_until(LIMIT, "part 1 sent to the other member", || {
        session.seeder.status().bytes_up >= two_parts
    });
    let mut refused = 0;
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "part 1 refused {refused} times in {LIMIT:?}"
        );
        session.request(1);
        match session.message() {
            PeerMessage::Piece { index: 1, len } => {
                session.reader.read_payload(&mut vec![0; len]).unwrap();
                break;
            }
            // Asked before the seeder had taken all the other member's requests: ask again.
            PeerMessage::Reject(1) => refused += 1,
            PeerMessage::Pex(_) | PeerMessage::Ping => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    session.seeder.quit(LIMIT);
}

#[test]
fn a_peer_may_queue_as_many_bytes_of_small_parts_as_of_large_ones() {
    let _one = ONE_AT_A_TIME.lock();
    // 16 KiB parts: 16 MiB of requests is 1,024 of them; 600 at once, far past the 64 that
    // parts of 256 KiB and more allow, must all be served, none refused, no ban.
    let parts = 600u32;
    let (mut session, _conductor) = SpreadingSeeder::start(parts);
    let all: String = (0..parts)
        .map(|index| PeerMessage::Request(index).to_line())
        .collect();
    session.out.write_all(all.as_bytes()).unwrap();
    let mut served = BTreeSet::new();
    let deadline = Instant::now() + LIMIT;
    while served.len() < parts as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {parts} parts within {LIMIT:?}",
            served.len()
        );
        match session.message() {
            PeerMessage::Piece { index, len } => {
                let mut part = vec![0; len];
                session.reader.read_payload(&mut part).unwrap();
                assert_eq!(
                    Checksum::of(&part),
                    session.orch.part_checksums[index as usize],
                    "part {index}"
                );
                assert!(served.insert(index), "part {index} twice");
            }
            PeerMessage::Pex(_) | PeerMessage::Ping => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    session.seeder.quit(LIMIT);
}
