//! Runs the real `conductor` binary on 127.0.0.1 and talks to it as members and as hostile
//! clients would; the tests that need to watch the conductor's state run the library's
//! [`Conductor`] in this process instead, through its handle.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::poll_until;
use socket2::{Domain, Protocol, Socket, Type};
use torrentnchill::conductor::{
    announce, leave, stats, Conductor, ConductorConfig, ConductorEvent,
};
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
        poll_until(TIMEOUT, || conductor
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
    assert!(poll_until(TIMEOUT, || conductor
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

/// A conductor of this process on 127.0.0.1, any free port.
fn in_process(config: ConductorConfig) -> Conductor {
    Conductor::start(ConductorConfig {
        listen: local(0),
        ..config
    })
    .unwrap()
}

#[test]
fn at_the_cap_idle_connections_give_way_to_members() {
    let conductor = in_process(ConductorConfig {
        max_clients: 2,
        ..ConductorConfig::default()
    });
    let addr = conductor.local_addr().to_string();
    // Two connections from another machine that send half a request, then stall, fill the
    // places; the second only once the first has its place, so that it is the younger.
    let mut oldest = stalled_from(2, &addr);
    assert!(
        poll_until(TIMEOUT, || conductor.clients() == 1),
        "the first connection was never admitted"
    );
    let mut younger = stalled_from(2, &addr);
    assert!(
        poll_until(TIMEOUT, || conductor.clients() == 2),
        "the second connection was never admitted"
    );
    // A member arriving at the cap is served: the connection that has waited longest, from the
    // address holding the most connections, is closed to make room.
    let swarm = Checksum::of(b"cap");
    let (_, peers) = announce(&addr, swarm, PeerId::random(), 46001, TIMEOUT).unwrap();
    assert!(peers.is_empty());
    assert!(
        closed_by_server(&mut oldest),
        "the oldest idle connection stayed"
    );
    // The other one keeps its place (until its first-line deadline).
    younger
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(!closed_by_server(&mut younger));
    assert_eq!(conductor.stats().members, 1);
}

/// Entries of /proc/self/task: the threads of this process.
fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Set in the child process [`alone`] starts.
const ALONE: &str = "TNC_CONDUCTOR_TEST_ALONE";

/// False in the test process as started: then it has run the test `name` alone in a child
/// process of this test binary and checked that it passed. True in that child, which runs the
/// test's body: there no other test's threads come and go, so threads can be counted.
fn alone(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("test {name} ... ok")),
        "{name} failed alone:\n{stdout}\n{stderr}"
    );
    false
}

#[cfg(target_os = "linux")]
#[test]
fn the_handle_tells_changes_and_shutdown_joins_every_thread() {
    if !alone("the_handle_tells_changes_and_shutdown_joins_every_thread") {
        return;
    }
    let before = threads_of_this_process();
    let mut conductor = in_process(ConductorConfig::default());
    let addr = conductor.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let events = conductor.take_events().unwrap();
    assert!(conductor.take_events().is_none(), "one consumer only");
    // The accept loop, the reaper and the closer.
    assert!(threads_of_this_process() >= before + 3);

    let swarm = Checksum::of(b"handle");
    let id = PeerId::random();
    let conductor_addr = addr.to_string();
    let (interval, peers) = announce(&conductor_addr, swarm, id, 9, TIMEOUT).unwrap();
    assert_eq!((interval, peers.len()), (Duration::from_secs(30), 0));
    let counters = conductor.stats();
    assert_eq!((counters.swarms, counters.members), (1, 1));
    leave(&conductor_addr, swarm, id, 9, TIMEOUT).unwrap();
    assert_eq!(conductor.stats().members, 0);
    let next = || events.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(
        next(),
        ConductorEvent::Listening {
            addr,
            interval_secs: 30.0
        }
    );
    let member = local(9);
    assert_eq!(
        next(),
        ConductorEvent::Join {
            swarm,
            addr: member,
            rejoin: false
        }
    );
    assert_eq!(
        next(),
        ConductorEvent::Leave {
            swarm,
            addr: member
        }
    );

    // A client thread blocked reading a line that never comes does not hold the shutdown up.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"ANNOUNCE tnc/1 ").unwrap();
    assert!(poll_until(TIMEOUT, || conductor.clients() == 1
        && threads_of_this_process() >= before + 4));

    let started = Instant::now();
    let last = conductor.shutdown();
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    assert_eq!((last.swarms, last.members), (0, 0));
    match next() {
        ConductorEvent::Summary {
            swarms: 0,
            members: 0,
            last: true,
            ..
        } => {}
        other => panic!("expected the last summary, got {other:?}"),
    }
    assert_eq!(
        events.recv_timeout(TIMEOUT),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        "the events go on after the last summary"
    );
    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(closed_by_server(&mut idle));
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    // A thread is gone from /proc a moment after it has been joined.
    assert!(
        poll_until(TIMEOUT, || threads_of_this_process() == before),
        "{} threads before start, {} after shutdown",
        before,
        threads_of_this_process()
    );
}

/// Lets the kernel pick the local port at connect time, knowing the destination (Linux's
/// IP_BIND_ADDRESS_NO_PORT). Otherwise binding to port 0 must find a port free for every
/// destination, and after tens of thousands of connections from one address (the flood) the
/// search crawls and holds kernel locks the conductor needs too.
fn bind_port_at_connect(socket: &Socket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads an int we own, on a socket we own.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// A TCP connection to `to` from the local address 127.0.0.`host`, so that the conductor sees
/// another client machine.
fn connect_from(host: u8, to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    bind_port_at_connect(&socket);
    socket.bind(&SocketAddr::from(([127, 0, 0, host], 0)).into())?;
    socket.connect_timeout(&to.into(), TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// A connection from 127.0.0.`host` that sends half a request line and then nothing.
fn stalled_from(host: u8, to: &str) -> TcpStream {
    let mut stream = connect_from(host, to).unwrap();
    stream.write_all(b"ANNOUNCE tnc/1 ").unwrap();
    stream
}

/// A field of /proc/PID/status (e.g. `Threads`, `VmHWM`) as a number.
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Announces `count` members from 127.0.0.`host`, ports `first_port` onwards, several requests
/// per connection; returns how many were accepted and how many refused, and the reasons.
fn flood(conductor: &str, host: u8, swarm: SwarmId, first_port: u16, count: u16) -> (u32, u32) {
    const PER_CONNECTION: u16 = 50;
    let (mut accepted, mut refused) = (0, 0);
    for chunk in (0..count).step_by(PER_CONNECTION as usize) {
        let stream = connect_from(host, conductor).unwrap();
        let lines: String = (chunk..(chunk + PER_CONNECTION).min(count))
            .map(|i| {
                format!(
                    "ANNOUNCE tnc/1 {swarm} {} {}\n",
                    PeerId::random(),
                    first_port + i
                )
            })
            .collect();
        (&stream).write_all(lines.as_bytes()).unwrap();
        let mut reader = BufReader::new(&stream);
        for _ in 0..lines.lines().count() {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(count) = line.strip_prefix("PEERS ") {
                accepted += 1;
                let count: usize = count.split_whitespace().nth(1).unwrap().parse().unwrap();
                for _ in 0..count {
                    reader.read_line(&mut String::new()).unwrap();
                }
            } else {
                assert_eq!(line, "ERROR too many members from this address\n");
                refused += 1;
            }
        }
    }
    (accepted, refused)
}

/// Issue 5, item 8 at CI size: idle and half-open connections, garbage, a 10 MB line and a
/// flood of announces from one address, all at once, while honest members keep announcing.
#[test]
fn abuse_does_not_stop_honest_members() {
    let conductor = Running::start(&[]);
    let pid = conductor.child.id();
    let addr = conductor.addr.clone();
    let swarm = Checksum::of(b"abused");
    let honest: Vec<(PeerId, u16)> = (0..20).map(|i| (PeerId::random(), 48000 + i)).collect();
    for &(id, port) in &honest {
        conductor.announce(swarm, id, port);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut abusers = Vec::new();

    // 300 connections that send half a request and stall (slowloris), more than one address
    // may hold (256).
    let idle = {
        let addr = addr.clone();
        thread::spawn(move || (0..300).map(|_| stalled_from(2, &addr)).collect::<Vec<_>>())
    };
    // 300 that never send a byte.
    let silent = {
        let addr = addr.clone();
        thread::spawn(move || {
            (0..300)
                .map(|_| connect_from(3, &addr).unwrap())
                .collect::<Vec<_>>()
        })
    };
    // Garbage, until told to stop: every connection gets an ERROR or is closed.
    abusers.push({
        let (addr, stop) = (addr.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) && sent < 2000 {
                let Ok(mut s) = connect_from(4, &addr) else {
                    continue;
                };
                let garbage: Vec<u8> = (0..200)
                    .map(|i| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        if i % 50 == 49 {
                            b'\n'
                        } else {
                            seed as u8
                        }
                    })
                    .collect();
                let _ = s.write_all(&garbage);
                let reply = read_reply_line(&s);
                assert!(reply.is_empty() || reply.starts_with("ERROR "), "{reply:?}");
                sent += 1;
            }
            sent
        })
    });
    // One 10 MB line: cut off long before its end.
    let long_line = {
        let addr = addr.clone();
        thread::spawn(move || {
            let mut s = connect_from(5, &addr).unwrap();
            let chunk = vec![b'A'; 64 * 1024];
            let mut written = 0usize;
            while written < 10 * 1024 * 1024 {
                match s.write(&chunk) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
            written
        })
    };
    // 1,500 announces from one address, more than it may hold (1,024 members).
    let flooder = {
        let addr = addr.clone();
        thread::spawn(move || flood(&addr, 9, swarm, 1, 1500))
    };

    // Meanwhile every honest member is answered at every round, and the conductor stays within
    // its thread bound (1,024 clients + 128 being evicted + the main, signal, accept, reaper and
    // closer threads).
    let mut max_threads = 0;
    for _round in 0..5 {
        for &(id, port) in &honest {
            let (_, peers) = announce(&addr, swarm, id, port, TIMEOUT)
                .unwrap_or_else(|e| panic!("honest announce failed under abuse: {e:#}"));
            assert!(!peers.contains(&local(port)));
        }
        max_threads = max_threads.max(proc_status(pid, "Threads").unwrap());
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);

    let (accepted, refused) = flooder.join().unwrap();
    assert_eq!((accepted, refused), (1024, 476));
    let written = long_line.join().unwrap();
    assert!(written < 10 * 1024 * 1024, "the 10 MB line was read whole");
    for garbage in abusers {
        assert!(garbage.join().unwrap() > 0);
    }
    let mut idle = idle.join().unwrap();
    let mut silent = silent.join().unwrap();
    // One address holds at most 256 connections: the others were turned away.
    for s in &idle {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    }
    let closed = idle.iter_mut().map(closed_by_server).filter(|&c| c).count();
    assert!(closed >= 300 - 256, "{closed} stalled connections closed");
    assert!(max_threads <= 1024 + 128 + 5, "{max_threads} threads");

    // Every honest member is still there, next to the flood's 1,024.
    let counters = stats(&addr, TIMEOUT).unwrap();
    assert_eq!(counters.members, 20 + 1024);
    // Each answer holds 50 of the 1,044: after 1,000 answers, missing one would take luck
    // of the order of e^-48.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let (id, port) = honest[0];
        seen.extend(conductor.announce(swarm, id, port));
    }
    let honest_seen = honest[1..]
        .iter()
        .filter(|&&(_, p)| seen.contains(&local(p)));
    assert_eq!(honest_seen.count(), honest.len() - 1);

    // The stalled and silent connections are cut off at their first-line deadline (5 s; the
    // silent ones wait in the kernel meanwhile, and go once it hands them over).
    for stream in [&mut idle[299], &mut silent[0]] {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        assert!(closed_by_server(stream));
    }
    let rss_kib = proc_status(pid, "VmHWM").unwrap();
    assert!(rss_kib < 256 * 1024, "peak RSS {rss_kib} KiB");
}

/// Connections that never send cost no thread: the kernel holds them until the first-line
/// timeout, then the conductor closes them as soon as it gets them.
#[cfg(target_os = "linux")]
#[test]
fn silent_connections_cost_no_thread() {
    let conductor = Running::start(&["--max-clients", "64"]);
    let pid = conductor.child.id();
    let mut silent: Vec<TcpStream> = (0..500)
        .map(|i| connect_from(20 + (i % 5) as u8, &conductor.addr).unwrap())
        .collect();
    let swarm = Checksum::of(b"silent");
    for port in 49101..49121 {
        conductor.announce(swarm, PeerId::random(), port);
    }
    let threads = proc_status(pid, "Threads").unwrap();
    assert!(threads <= 8, "{threads} threads for 500 silent connections");
    silent[0]
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert!(closed_by_server(&mut silent[0]));
}

/// Stalled connections spread over many addresses fill the overall cap; newcomers still get in
/// because the longest-waiting connection gives way, and the thread count stays bounded.
#[test]
fn stalled_connections_from_many_addresses_give_way() {
    let conductor = Running::start(&["--max-clients", "64"]);
    let pid = conductor.child.id();
    let mut idle = Vec::new();
    for i in 0..200 {
        idle.push(stalled_from(10 + (i % 10) as u8, &conductor.addr));
    }
    let swarm = Checksum::of(b"many");
    for port in 49001..49021 {
        let (_, _) = announce(&conductor.addr, swarm, PeerId::random(), port, TIMEOUT)
            .unwrap_or_else(|e| panic!("announce at the cap failed: {e:#}"));
    }
    // 64 places and at most 16 evictions under way, plus the main, signal, accept, reaper and
    // closer threads.
    let threads = proc_status(pid, "Threads").unwrap();
    assert!(threads <= 64 + 16 + 5, "{threads} threads");
    for s in &idle {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    }
    let closed = idle.iter_mut().map(closed_by_server).filter(|&c| c).count();
    assert!(
        closed >= 200 - 64,
        "only {closed} of 200 stalled connections were closed"
    );
    assert!(conductor.log_text().contains("at most 64 clients"));
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
        poll_until(TIMEOUT, || {
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
