//! The fake peer fixture (`tests/common/fake_peer.rs`) checked against docs/PROTOCOL.md by a raw
//! client written here: the handshake, the have-map, parts served or corrupted or never sent,
//! another swarm refused, and every thread gone once it is dropped.

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use torrentnchill::orch::{Checksum, Orchestra};
use torrentnchill::wire::{have_map_len, Hello, LineReader, PeerId, PeerMessage, WireError};

const LIMIT: Duration = Duration::from_secs(10);

/// A swarm of 5 parts of 16 KiB, the last one short, described without any program.
fn swarm() -> (Orchestra, Arc<Vec<u8>>) {
    let data = sample_data(4 * 16384 + 1000, 0xfa6e);
    let parts = data.chunks(16384).map(Checksum::of).collect();
    let orch = Orchestra::new(
        "127.0.0.1:9999",
        "fake.bin",
        Checksum::of(&data),
        data.len() as u64,
        16384,
        parts,
    )
    .unwrap();
    (orch, Arc::new(data))
}

/// A member's side of one connection, reduced to what the tests need.
struct Client {
    orch: Orchestra,
    out: TcpStream,
    reader: LineReader<BufReader<TcpStream>>,
}

impl Client {
    /// Dials `peer` and says HELLO for `swarm`.
    fn dial(peer: &FakePeer, orch: &Orchestra, swarm: torrentnchill::orch::SwarmId) -> Client {
        let stream = TcpStream::connect_timeout(&peer.addr(), LIMIT).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let mut client = Client {
            orch: orch.clone(),
            out: stream.try_clone().unwrap(),
            reader: LineReader::new(BufReader::new(stream)),
        };
        let hello = Hello {
            swarm,
            peer_id: PeerId::random(),
            listen_port: 0,
        };
        client.send(&hello.to_line());
        client
    }

    /// Dials `peer` and completes the handshake; returns the peer's have-map.
    fn handshake(peer: &FakePeer, orch: &Orchestra) -> (Client, Vec<u8>) {
        let mut client = Client::dial(peer, orch, orch.swarm_id());
        let theirs = Hello::parse(client.reader.read_line().unwrap()).unwrap();
        assert_eq!(theirs.swarm, orch.swarm_id());
        assert_eq!(theirs.peer_id, peer.peer_id());
        assert_eq!(theirs.listen_port, peer.addr().port());
        let Some(PeerMessage::HaveMap { bytes }) = client.next_message() else {
            panic!("the first message is not HAVEMAP");
        };
        let mut map = vec![0u8; bytes];
        client.reader.read_payload(&mut map).unwrap();
        let nothing = vec![0u8; have_map_len(orch.part_count())];
        client.send(
            &PeerMessage::HaveMap {
                bytes: nothing.len(),
            }
            .to_line(),
        );
        client.out.write_all(&nothing).unwrap();
        (client, map)
    }

    fn send(&mut self, line: &str) {
        self.out.write_all(line.as_bytes()).unwrap();
    }

    /// The next message that is not a `PING`; `None` when the peer closed the connection.
    fn next_message(&mut self) -> Option<PeerMessage> {
        let parts = self.orch.part_count();
        let orch = &self.orch;
        loop {
            let line = match self.reader.read_line() {
                Ok(line) => line.to_string(),
                Err(WireError::Closed) => return None,
                Err(e) => panic!("reading from the fake peer: {e}"),
            };
            let part_len = |i: u32| orch.part_len(i);
            match PeerMessage::parse(&line, parts, part_len).unwrap() {
                PeerMessage::Ping => continue,
                message => return Some(message),
            }
        }
    }

    /// Requests part `index` and returns the bytes of the `PIECE` that answers.
    fn fetch(&mut self, index: u32) -> Vec<u8> {
        self.send(&PeerMessage::Request(index).to_line());
        match self.next_message() {
            Some(PeerMessage::Piece { index: got, len }) => {
                assert_eq!(got, index);
                let mut part = vec![0u8; len];
                self.reader.read_payload(&mut part).unwrap();
                part
            }
            other => panic!("asked for part {index}, got {other:?}"),
        }
    }
}

/// The fake peer's threads that are still alive (they are named `fp<port>-...`).
fn threads_of(peer_port: u16) -> usize {
    let prefix = format!("fp{peer_port}-");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(&prefix))
        .count()
}

#[test]
fn an_honest_peer_has_every_part_and_serves_it() {
    let (orch, data) = swarm();
    let peer = FakePeer::start(&orch, Arc::clone(&data), Behaviour::Honest);
    let (mut client, map) = Client::handshake(&peer, &orch);
    assert_eq!(map, have_map_of_all(5));
    // Five parts: the high five bits of one byte.
    assert_eq!(map, [0xf8]);
    let mut sent = 0;
    for index in [4, 0, 2] {
        let part = client.fetch(index);
        assert_eq!(
            Checksum::of(&part),
            orch.part_checksums[index as usize],
            "part {index}"
        );
        assert_eq!(part, part_of(&orch, &data, index).unwrap());
        sent += part.len() as u64;
    }
    assert_eq!(sent, 2 * 16384 + 1000);
    // The fake peer counts a part once its write returns, which may be just after we read it.
    wait_until(LIMIT, "the fake peer counting what it sent", || {
        peer.bytes_sent() == sent
    });
    assert_eq!(peer.connections(), 1);
    assert_eq!(peer.requests(), 3);
}

#[test]
fn a_corrupt_peer_spoils_only_the_parts_it_was_told() {
    let (orch, data) = swarm();
    let peer = FakePeer::start(&orch, data, Behaviour::Corrupt(BTreeSet::from([1, 4])));
    let (mut client, _) = Client::handshake(&peer, &orch);
    for index in 0..5u32 {
        let part = client.fetch(index);
        let intact = Checksum::of(&part) == orch.part_checksums[index as usize];
        assert_eq!(intact, index != 1 && index != 4, "part {index}");
        assert_eq!(part.len(), orch.part_len(index));
    }
}

#[test]
fn a_stalled_peer_reads_requests_and_never_answers() {
    let (orch, data) = swarm();
    let peer = FakePeer::start(&orch, data, Behaviour::Stall);
    let (mut client, map) = Client::handshake(&peer, &orch);
    assert_eq!(map, have_map_of_all(5));
    client.send(&PeerMessage::Request(0).to_line());
    wait_until(LIMIT, "the request to reach the fake peer", || {
        peer.requests() == 1
    });
    // Not even a PING: the next read times out with nothing.
    let quiet = Duration::from_millis(600);
    client.out.set_read_timeout(Some(quiet)).unwrap();
    match client.reader.read_line() {
        Err(e) if e.is_timeout() => {}
        other => panic!("a stalled peer said {other:?}"),
    }
    assert_eq!(peer.bytes_sent(), 0);
}

#[test]
fn a_refusing_peer_rejects_the_first_ask_of_each_part_on_a_connection() {
    let (orch, data) = swarm();
    let peer = FakePeer::start(&orch, data, Behaviour::RefuseFirstAsk);
    for _connection in 0..2 {
        let (mut client, _) = Client::handshake(&peer, &orch);
        client.send(&PeerMessage::Request(2).to_line());
        assert_eq!(client.next_message(), Some(PeerMessage::Reject(2)));
        let part = client.fetch(2);
        assert_eq!(Checksum::of(&part), orch.part_checksums[2]);
        // And nothing unasked, not even a PING.
        client
            .out
            .set_read_timeout(Some(Duration::from_millis(600)))
            .unwrap();
        match client.reader.read_line() {
            Err(e) if e.is_timeout() => {}
            other => panic!("a refusing peer said {other:?} unasked"),
        }
    }
    assert_eq!(peer.requests(), 4);
}

#[test]
fn another_swarm_is_told_so_and_closed() {
    let (orch, data) = swarm();
    let peer = FakePeer::start(&orch, data, Behaviour::Honest);
    let mut client = Client::dial(&peer, &orch, Checksum::of(b"another swarm"));
    assert_eq!(
        client.reader.read_line().unwrap(),
        "ERROR not in this swarm"
    );
    assert!(client.next_message().is_none(), "still open");
}

#[test]
fn dropping_the_peer_ends_its_connections_and_threads() {
    let (orch, data) = swarm();
    let peer = FakePeer::start(&orch, data, Behaviour::Honest);
    let port = peer.addr().port();
    let (mut client, _) = Client::handshake(&peer, &orch);
    client.fetch(0);
    // The accept loop, the conversation and its keep-alive.
    assert_eq!(threads_of(port), 3);
    drop(peer);
    assert!(
        client.next_message().is_none(),
        "the connection is still open"
    );
    wait_until(LIMIT, "the fake peer's threads to be gone", || {
        threads_of(port) == 0
    });
}

/// A real member (`--exit-when-done` and `extra`) fetches a 300,000-byte file of 16 KiB parts
/// from one fake peer that behaves as told, found through a conductor, and must exit with
/// success and a verified copy. Returns the peer, the file and the member's events.
fn a_member_fetches_from(
    behaviour: Behaviour,
    seed: u64,
    extra: &[&str],
) -> (FakePeer, Sample, PathBuf) {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let s = sample("fetched.bin", 300_000, "16K", &conductor.addr, seed);
    let peer = FakePeer::start(&s.orch, Arc::new(s.data.clone()), behaviour);
    let _listed = keep_announced(
        &conductor.addr,
        s.orch.swarm_id(),
        peer.addr().port(),
        Duration::from_millis(400),
    );
    let dir = s.dir("member");
    let args = [&["--exit-when-done"][..], extra].concat();
    let (mut member, events) = spawn_member("member", &s.orch_path, &dir, &args);
    let status = member.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "member: {status}");
    s.assert_copy(&dir, "the member");
    (peer, s, events)
}

#[test]
fn a_real_member_fetches_the_whole_file_from_an_honest_fake_peer() {
    let (peer, _file, events) = a_member_fetches_from(Behaviour::Honest, 0x600d, &[]);
    let summary = last_event(&events, "summary").expect("a summary");
    assert_eq!(summary["bytes_down"], 300_000);
    assert_eq!(summary["parts_rejected"], 0);
    // Every part came from the fake peer, once.
    wait_until(LIMIT, "the fake peer counting what it sent", || {
        peer.bytes_sent() == 300_000
    });
}

/// A seeder spreading its parts rejects a part it has already sent elsewhere until asked again,
/// and may have nothing to say meanwhile. The member must ask again on the same connection when
/// the rejection has aged, not wait for a line that comes only after its own peer timeout has
/// dropped the peer: a new connection would be refused again, and the member would never finish
/// (what made `faults::a_seeder_hung_midway` hang about one run in three).
#[test]
fn a_member_asks_a_silent_peer_again_for_the_parts_it_rejected() {
    // Longer than the two seconds a rejected part waits, shorter than the test's patience.
    let (peer, file, _) =
        a_member_fetches_from(Behaviour::RefuseFirstAsk, 0x2ef5, &["--peer-timeout", "3"]);
    assert_eq!(
        peer.connections(),
        1,
        "the member dropped the peer and dialed again"
    );
    let parts = file.orch.part_count() as usize;
    assert_eq!(peer.requests(), 2 * parts, "each part asked twice");
}
