//! Runs the real `conductor` binary on 127.0.0.1 and talks to it as members and as hostile
//! clients would.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use torrentnchill::conductor::{announce, leave, stats};
use torrentnchill::orch::{Checksum, SwarmId};
use torrentnchill::wire::{PeerId, MAX_LINE};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A conductor process, killed when the test ends however it ends.
struct Running {
    child: Child,
    addr: String,
    log: PathBuf,
    // Kept open so the conductor never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(extra: &[&str]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        // A folder that does not exist yet: the conductor must create it.
        let log = dir.path().join("logs/conductor.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(["--listen", "127.0.0.1:0", "--log-file"])
            .arg(&log)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the conductor");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = match line.trim_end().strip_prefix("listening on ") {
            Some(addr) => addr.to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("expected `listening on IP:PORT`, got {line:?}");
            }
        };
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Running {
            child,
            addr,
            log,
            _stdout: stdout,
            _dir: dir,
        }
    }

    fn announce(&self, swarm: SwarmId, id: PeerId, port: u16) -> Vec<SocketAddr> {
        let (_, peers) = announce(&self.addr, swarm, id, port, TIMEOUT).unwrap();
        peers
    }

    fn raw(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes; true if it did within the socket's read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn read_reply_line(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn never_returns_the_asker_nor_other_swarms() {
    let conductor = Running::start(&[]);
    let (swarm, other) = (Checksum::of(b"one"), Checksum::of(b"two"));
    let ids = [PeerId::random(), PeerId::random(), PeerId::random()];
    let ports = [41001, 41002, 41003];
    // The other swarm has a member on a port of this swarm and one of its own.
    conductor.announce(other, PeerId::random(), 41001);
    conductor.announce(other, PeerId::random(), 41999);

    assert!(conductor.announce(swarm, ids[0], ports[0]).is_empty());
    for _round in 0..3 {
        for (i, (&id, &port)) in ids.iter().zip(&ports).enumerate() {
            let peers = conductor.announce(swarm, id, port);
            assert!(
                !peers.contains(&local(port)),
                "{peers:?} contains the asker"
            );
            assert!(
                !peers.contains(&local(41999)),
                "{peers:?} has another swarm's member"
            );
            // Members announced before this one in the first round are known.
            for &earlier in &ports[..i] {
                assert!(peers.contains(&local(earlier)), "{peers:?} lacks {earlier}");
            }
            assert!(peers.len() <= 2);
        }
    }
    for (&id, &port) in ids.iter().zip(&ports) {
        let mut peers = conductor.announce(swarm, id, port);
        peers.sort();
        let mut expected: Vec<SocketAddr> = ports
            .iter()
            .filter(|&&p| p != port)
            .map(|&p| local(p))
            .collect();
        expected.sort();
        assert_eq!(peers, expected);
    }
    let mut peers = conductor.announce(other, PeerId::random(), 41999);
    peers.sort();
    assert_eq!(peers, vec![local(41001)]);
    let (interval, _) = announce(&conductor.addr, swarm, ids[0], ports[0], TIMEOUT).unwrap();
    assert_eq!(interval, Duration::from_secs(30));
}

#[test]
fn silent_members_expire_and_active_ones_stay() {
    let conductor = Running::start(&["--interval", "300ms"]);
    let swarm = Checksum::of(b"expiry");
    let (a, b, watcher) = (PeerId::random(), PeerId::random(), PeerId::random());
    let (interval, _) = announce(&conductor.addr, swarm, a, 42001, TIMEOUT).unwrap();
    assert_eq!(interval, Duration::from_millis(300));
    let a_last_seen = Instant::now();
    assert_eq!(conductor.announce(swarm, b, 42002), vec![local(42001)]);

    let mut a_gone = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if conductor.announce(swarm, b, 42002).is_empty() {
            a_gone = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(a_gone, "A was never expired");
    // Missing one interval is not enough to be forgotten.
    assert!(a_last_seen.elapsed() >= Duration::from_millis(600));
    // B, which kept announcing, is still there for others.
    assert_eq!(
        conductor.announce(swarm, watcher, 42003),
        vec![local(42002)]
    );
    let short = &swarm.to_hex()[..12];
    assert!(
        wait_for(TIMEOUT, || conductor
            .log_text()
            .contains(&format!("expire {short} 127.0.0.1:42001"))),
        "no expiry in the log:\n{}",
        conductor.log_text()
    );
    assert!(conductor
        .log_text()
        .contains(&format!("join {short} 127.0.0.1:42002")));
}

#[test]
fn leave_removes_the_member_at_once() {
    let conductor = Running::start(&[]);
    let swarm = Checksum::of(b"leave");
    let (a, b) = (PeerId::random(), PeerId::random());
    conductor.announce(swarm, a, 43001);
    assert_eq!(conductor.announce(swarm, b, 43002), vec![local(43001)]);

    // A LEAVE under another peer id (an earlier run at the same address) changes nothing.
    leave(&conductor.addr, swarm, PeerId::random(), 43001, TIMEOUT).unwrap();
    assert_eq!(conductor.announce(swarm, b, 43002), vec![local(43001)]);

    leave(&conductor.addr, swarm, a, 43001, TIMEOUT).unwrap();
    assert!(conductor.announce(swarm, b, 43002).is_empty());
    let counters = stats(&conductor.addr, TIMEOUT).unwrap();
    assert_eq!((counters.swarms, counters.members), (1, 1));
    // Leaving twice, or a swarm never joined, is fine.
    leave(&conductor.addr, swarm, a, 43001, TIMEOUT).unwrap();
    leave(&conductor.addr, Checksum::of(b"none"), a, 43001, TIMEOUT).unwrap();
    let short = &swarm.to_hex()[..12];
    assert!(wait_for(TIMEOUT, || conductor
        .log_text()
        .contains(&format!("leave {short} 127.0.0.1:43001"))));
}

#[test]
fn several_requests_share_a_connection() {
    let conductor = Running::start(&[]);
    let swarm = Checksum::of(b"pipelined");
    let (a, b) = (PeerId::random(), PeerId::random());
    let stream = conductor.raw();
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    write!(
        writer,
        "ANNOUNCE tnc/1 {swarm} {a} 44001\r\nANNOUNCE tnc/1 {swarm} {b} 44002\nSTATS\n"
    )
    .unwrap();
    let mut text = String::new();
    for _ in 0..4 {
        reader.read_line(&mut text).unwrap();
    }
    // The rate depends on how long the conductor has been up.
    assert!(
        text.starts_with("PEERS 30000 0\nPEERS 30000 1\n127.0.0.1:44001\nSTATS 1 2 "),
        "{text:?}"
    );
}

#[test]
fn bad_clients_get_errors_and_do_not_disturb_others() {
    let conductor = Running::start(&[]);
    let swarm = Checksum::of(b"hostile");

    // A connection that sends half a line and then nothing, and one that trickles bytes.
    let mut idle = conductor.raw();
    idle.write_all(b"ANNOUNCE tnc/1 ").unwrap();
    let trickler = {
        let mut stream = conductor.raw();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if stream.write_all(b"A").is_err() || closed_by_server(&mut stream) {
                    return Some(started.elapsed());
                }
            }
            None
        })
    };

    // An honest member is answered meanwhile, and quickly.
    let started = Instant::now();
    let (_, peers) = announce(
        &conductor.addr,
        swarm,
        PeerId::random(),
        45001,
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(peers.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));

    for (bad, expected) in [
        ("HELLO tnc/1\n", "ERROR unknown command"),
        ("\n", "ERROR unknown command"),
        (
            "ANNOUNCE tnc/2 00 11 1\n",
            "ERROR malformed ANNOUNCE: protocol",
        ),
        (
            &format!("ANNOUNCE tnc/1 {swarm} {} 0\n", PeerId::random()),
            "ERROR malformed ANNOUNCE: port 0",
        ),
        ("STATS now\n", "ERROR malformed STATS"),
    ] {
        let mut stream = conductor.raw();
        stream.write_all(bad.as_bytes()).unwrap();
        let reply = read_reply_line(&stream);
        assert!(reply.starts_with(expected), "{bad:?} got {reply:?}");
        assert!(
            closed_by_server(&mut stream),
            "{bad:?} left the connection open"
        );
    }

    // Bytes that are not UTF-8, then a line over the limit followed by more data.
    let mut stream = conductor.raw();
    stream.write_all(b"STATS \xff\xfe\n").unwrap();
    assert!(read_reply_line(&stream).starts_with("ERROR control line is not UTF-8"));
    let mut stream_long = conductor.raw();
    let mut long = vec![b'A'; MAX_LINE + 100];
    long.extend_from_slice(b"\nSTATS\n");
    stream_long.write_all(&long).unwrap();
    let reply = read_reply_line(&stream_long);
    assert!(reply.starts_with("ERROR line longer than"), "{reply:?}");
    assert!(closed_by_server(&mut stream_long));
    assert!(closed_by_server(&mut stream));

    // Still serving, and the partial line never became a member.
    let peers = conductor.announce(swarm, PeerId::random(), 45002);
    assert_eq!(peers, vec![local(45001)]);
    let counters = stats(&conductor.addr, TIMEOUT).unwrap();
    assert_eq!((counters.swarms, counters.members), (1, 2));

    // Neither the idle client nor the trickling one holds its thread for long.
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(closed_by_server(&mut idle));
    let trickled = trickler
        .join()
        .unwrap()
        .expect("trickling client never cut off");
    assert!(trickled < Duration::from_secs(15), "{trickled:?}");
}

#[test]
fn clients_over_the_cap_are_turned_away() {
    let conductor = Running::start(&["--max-clients", "1"]);
    let holder = conductor.raw();
    let busy = conductor.raw();
    assert_eq!(read_reply_line(&busy), "ERROR busy\n");
    drop(holder);
    // Once the holder's thread notices the close, its place is free again.
    let swarm = Checksum::of(b"cap");
    assert!(wait_for(TIMEOUT, || announce(
        &conductor.addr,
        swarm,
        PeerId::random(),
        46001,
        TIMEOUT
    )
    .is_ok()));
}

#[test]
fn stats_flag_prints_the_counters() {
    let conductor = Running::start(&[]);
    let (one, two) = (Checksum::of(b"s1"), Checksum::of(b"s2"));
    conductor.announce(one, PeerId::random(), 47001);
    conductor.announce(one, PeerId::random(), 47002);
    conductor.announce(two, PeerId::random(), 47001);

    let output = Command::new(env!("CARGO_BIN_EXE_conductor"))
        .args(["--stats", &conductor.addr])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let rate = text
        .strip_prefix("swarms: 2  members: 3  announces/s: ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("unexpected --stats output {text:?}"));
    let rate: f64 = rate.parse().unwrap();
    assert!(rate > 0.0 && rate <= 3.0, "{rate}");

    // A conductor that is not there: a failure naming the address.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_conductor"))
        .args(["--stats", &closed.to_string()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains(&closed.to_string()), "{error}");
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--listen", "127.0.0.1:0", "--interval", "30"][..],
        &["--listen", "127.0.0.1:0", "--interval", "10ms"],
        &["--listen", "127.0.0.1:0", "--max-clients", "0"],
        &["--listen", "nowhere"],
        &["--listen", "127.0.0.1:0", "--stats", "127.0.0.1:1"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut status = None;
        wait_for(TIMEOUT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} was accepted");
        }
        assert!(!status.unwrap().success(), "{args:?} was accepted");
    }
}
