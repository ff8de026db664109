//! The swarm testbed's floor (`scripts/testbed.sh --floor`, issue 14): the fluid-optimal
//! distribution schedule, run with plain TCP over the same emulated network as the swarm.
//!
//! Kumar and Ross's minimum time to give a file of F bytes to N members is
//! `max(F / u_s, F / d_min, N F / (u_s + Σ u_i))`, reached by this schedule (after Mutualcast):
//! the seeder sends member i a piece of its own, of a size proportional to the member's uplink,
//! which the member relays to every other member as it arrives; when the members' uplinks
//! together are more than the seeder can keep busy, the seeder also sends the rest of the file
//! straight to every member. No protocol, no hashing, no disk: what this program takes is what
//! the network, TCP and the emulator allow, and the swarm's time against it says how much the
//! swarm itself loses. The testbed computes the plan (`--piece` sizes and `--direct`); every
//! connection starts with one tag byte saying what it carries.
//!
//! ```text
//! ideal_schedule seed   --members IP,... --port P --piece BYTES,... [--direct BYTES] --seconds S
//! ideal_schedule member --me K --members IP,... --port P --piece BYTES,... [--direct BYTES] --seconds S
//! ```
//!
//! Every stream is paced (`SO_MAX_PACING_RATE`) at its share of the plan: its bytes over
//! `--seconds`, the plan's time, which the testbed sets to T_min with the links' header overhead
//! (1514 bytes on the wire per 1448 of payload). Unpaced, the seeder's streams share its uplink
//! as TCP happens to share it, one piece arrives late and holds everyone back: that measured
//! TCP's unfairness (1.27-1.52 × T_min in scenario 1), not the floor.
//!
//! A member prints `{"event":"complete","seconds":S}` once it holds all of F bytes (S since it
//! started) and exits after its relays are sent; the seeder exits when it has sent everything.
//! Only for the testbed's namespaces: it connects to the addresses it is given and no others.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The connection carries the receiver's own piece, which it relays.
const TAG_OWN: u8 = b'O';
/// The connection carries bytes the receiver only keeps: a relayed piece or the direct part.
const TAG_KEEP: u8 = b'K';
const BLOCK: usize = 256 << 10;
/// How long a connection is retried while its listener comes up, and the whole run's limit.
const CONNECT_FOR: Duration = Duration::from_secs(20);
const RUN_LIMIT: Duration = Duration::from_secs(600);

struct Plan {
    members: Vec<IpAddr>,
    port: u16,
    pieces: Vec<u64>,
    direct: u64,
    /// The plan's time: each stream is paced at its bytes over this.
    seconds: f64,
}

impl Plan {
    fn file_size(&self) -> u64 {
        self.pieces.iter().sum::<u64>() + self.direct
    }

    /// Bytes per second for a stream of `bytes`.
    fn pace(&self, bytes: u64) -> u64 {
        (bytes as f64 / self.seconds).ceil() as u64
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ideal_schedule: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().ok_or("say seed or member")?.clone();
    let value = |name: &str| -> Option<&str> {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).map(String::as_str)
    };
    let list = |name: &str| -> Result<Vec<String>, String> {
        Ok(value(name)
            .ok_or(format!("{name} is missing"))?
            .split(',')
            .map(str::to_string)
            .collect())
    };
    let plan = Plan {
        members: list("--members")?
            .iter()
            .map(|ip| ip.parse().map_err(|e| format!("--members {ip}: {e}")))
            .collect::<Result<_, _>>()?,
        port: value("--port")
            .ok_or("--port is missing")?
            .parse()
            .map_err(|e| format!("--port: {e}"))?,
        pieces: list("--piece")?
            .iter()
            .map(|n| n.parse().map_err(|e| format!("--piece {n}: {e}")))
            .collect::<Result<_, _>>()?,
        direct: value("--direct")
            .unwrap_or("0")
            .parse()
            .map_err(|e| format!("--direct: {e}"))?,
        seconds: value("--seconds")
            .ok_or("--seconds is missing")?
            .parse()
            .map_err(|e| format!("--seconds: {e}"))?,
    };
    if !(plan.seconds > 0.0 && plan.seconds < 1e6) {
        return Err("--seconds must be positive".into());
    }
    if plan.pieces.len() != plan.members.len() {
        return Err("one --piece size per member".into());
    }
    match role.as_str() {
        "seed" => seed(&plan),
        "member" => {
            let me: usize = value("--me")
                .ok_or("--me is missing")?
                .parse()
                .map_err(|e| format!("--me: {e}"))?;
            if me >= plan.members.len() {
                return Err("--me is not one of --members".into());
            }
            member(&plan, me)
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

fn dial(ip: IpAddr, port: u16, tag: u8, rate: u64) -> io::Result<TcpStream> {
    let addr = SocketAddr::new(ip, port);
    let started = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                torrentnchill::net::pace(&stream, rate)?;
                stream.write_all(&[tag])?;
                return Ok(stream);
            }
            Err(e) if started.elapsed() > CONNECT_FOR => return Err(e),
            // The listener is not up yet: the testbed starts everyone at once.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn send_zeros(stream: &mut TcpStream, mut len: u64) -> io::Result<()> {
    let block = vec![0u8; BLOCK];
    while len > 0 {
        let n = len.min(BLOCK as u64) as usize;
        stream.write_all(&block[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// One thread per stream; the seeder ends when every byte is sent.
fn seed(plan: &Plan) -> Result<(), String> {
    let mut threads = Vec::new();
    for (k, &ip) in plan.members.iter().enumerate() {
        let (port, piece, direct) = (plan.port, plan.pieces[k], plan.direct);
        let (piece_rate, direct_rate) = (plan.pace(piece), plan.pace(direct));
        threads.push(thread::spawn(move || -> io::Result<()> {
            let mut own = dial(ip, port, TAG_OWN, piece_rate)?;
            let direct_thread = (direct > 0).then(|| {
                thread::spawn(move || -> io::Result<()> {
                    send_zeros(&mut dial(ip, port, TAG_KEEP, direct_rate)?, direct)
                })
            });
            send_zeros(&mut own, piece)?;
            if let Some(t) = direct_thread {
                t.join()
                    .map_err(|_| io::Error::other("direct sender panicked"))??;
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a sender panicked".to_string())?
            .map_err(|e| format!("sending: {e}"))?;
    }
    Ok(())
}

/// How much of our own piece has arrived, for the relay threads.
struct Arrived {
    bytes: Mutex<u64>,
    grew: Condvar,
}

fn member(plan: &Plan, me: usize) -> Result<(), String> {
    let started = Instant::now();
    let listener = TcpListener::bind(SocketAddr::new(plan.members[me], plan.port))
        .map_err(|e| format!("listen: {e}"))?;
    let file_size = plan.file_size();
    let own_piece = plan.pieces[me];
    let received = Arc::new(Mutex::new(0u64));
    let arrived = Arc::new(Arrived {
        bytes: Mutex::new(0),
        grew: Condvar::new(),
    });
    let done = Arc::new(Condvar::new());
    // Relays: one thread per other member, sending our piece as it arrives.
    let mut relays = Vec::new();
    for (k, &ip) in plan.members.iter().enumerate() {
        if k == me || own_piece == 0 {
            continue;
        }
        let (arrived, port, rate) = (Arc::clone(&arrived), plan.port, plan.pace(own_piece));
        relays.push(thread::spawn(move || -> io::Result<()> {
            let mut out = dial(ip, port, TAG_KEEP, rate)?;
            let mut sent = 0u64;
            while sent < own_piece {
                let mut have = arrived
                    .bytes
                    .lock()
                    .map_err(|_| io::Error::other("poisoned"))?;
                while *have <= sent {
                    have = arrived
                        .grew
                        .wait(have)
                        .map_err(|_| io::Error::other("poisoned"))?;
                }
                let upto = *have;
                drop(have);
                send_zeros(&mut out, upto - sent)?;
                sent = upto;
            }
            Ok(())
        }));
    }
    // Receivers: one thread per incoming connection.
    // The seeder's stream of our own piece (even when empty), its direct part, and one
    // relay from every other member with a piece.
    let senders_to_us = plan
        .pieces
        .iter()
        .enumerate()
        .filter(|&(k, &p)| k != me && p > 0)
        .count()
        + 1
        + usize::from(plan.direct > 0);
    for _ in 0..senders_to_us {
        let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let (received, arrived, done) = (
            Arc::clone(&received),
            Arc::clone(&arrived),
            Arc::clone(&done),
        );
        thread::spawn(move || -> io::Result<()> {
            let mut tag = [0u8; 1];
            stream.read_exact(&mut tag)?;
            let mut buf = vec![0u8; BLOCK];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                if tag[0] == TAG_OWN {
                    *arrived
                        .bytes
                        .lock()
                        .map_err(|_| io::Error::other("poisoned"))? += n as u64;
                    arrived.grew.notify_all();
                }
                let mut total = received.lock().map_err(|_| io::Error::other("poisoned"))?;
                *total += n as u64;
                if *total >= file_size {
                    done.notify_all();
                }
            }
        });
    }
    let mut total = received.lock().map_err(|_| "poisoned".to_string())?;
    while *total < file_size {
        let (next, timeout) = done
            .wait_timeout(total, RUN_LIMIT.saturating_sub(started.elapsed()))
            .map_err(|_| "poisoned".to_string())?;
        total = next;
        if timeout.timed_out() {
            return Err(format!(
                "only {} of {file_size} bytes in {RUN_LIMIT:?}",
                *total
            ));
        }
    }
    drop(total);
    println!(
        "{{\"event\":\"complete\",\"seconds\":{:.3}}}",
        started.elapsed().as_secs_f64()
    );
    for relay in relays {
        relay
            .join()
            .map_err(|_| "a relay panicked".to_string())?
            .map_err(|e| format!("relaying: {e}"))?;
    }
    Ok(())
}
