//! Load and abuse tool for the conductor (issue 5, item 8).
//!
//! Starts a conductor (or targets a running one on this machine), makes `--members` honest
//! members announce from 127.0.0.1 at the conductor's interval, and measures the latency of
//! every announce, first alone ("baseline"), then while hostile clients from other 127.x
//! addresses attack it ("under abuse"):
//!
//! - idle connections that never send a byte (slowloris), spread over several addresses;
//! - half-open connections that send half a request line and stall;
//! - 10 MB lines;
//! - garbage (random bytes, random line ends);
//! - a flood of announces from one address (127.0.0.9), each with another port, into the
//!   honest members' swarm.
//!
//! It samples the conductor's /proc/PID/status (threads, RSS) throughout, checks at the end of
//! each phase that every honest member is still in the member list (each one must appear in
//! the peers handed to the others during the last two intervals), prints a table and exits 1
//! if a target is missed: p99 under abuse below `--target-p99`, and every member held.
//!
//! ```text
//! cargo run --release --example conductor_load -- --members 1000 --phase 20s
//! cargo run --release --example conductor_load -- --bin target/release/conductor
//! ```
//!
//! Every loop is bounded by the phase's end and by a count; all traffic stays on 127.0.0.0/8.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use torrentnchill::conductor::{self, Conductor, ConductorConfig};
use torrentnchill::orch::{Checksum, SwarmId};
use torrentnchill::wire::{ConductorReply, ConductorRequest, LineReader, PeerId};

/// Load and abuse test of the conductor; see the top of examples/conductor_load.rs.
#[derive(Parser, Clone)]
#[command(name = "conductor_load")]
struct Args {
    /// Honest members, all announcing from 127.0.0.1.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Announce interval the conductor is started with (and members keep).
    #[arg(long, default_value = "1s", value_parser = torrentnchill::cli::units::parse_duration)]
    interval: Duration,
    /// Length of each phase (baseline, then under abuse).
    #[arg(long, default_value = "20s", value_parser = torrentnchill::cli::units::parse_duration)]
    phase: Duration,
    /// Threads that carry the honest members' announces.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Idle (never sending) connections held open during the abuse phase.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Source addresses the idle connections are spread over (127.0.1.1, 127.0.1.2, ...).
    #[arg(long, default_value_t = 8)]
    idle_sources: u8,
    /// Half-open connections (half a request line, then nothing), from 127.0.2.1.
    #[arg(long, default_value_t = 500)]
    half_open: usize,
    /// How often the holders of idle and half-open connections reopen those the conductor
    /// closed (slowloris tools recreate dropped sockets every few seconds).
    #[arg(long, default_value = "1s", value_parser = torrentnchill::cli::units::parse_duration)]
    reopen_every: Duration,
    /// Threads sending 10 MB lines over and over, from 127.0.3.1.
    #[arg(long, default_value_t = 4)]
    long_lines: usize,
    /// Pause of each of those threads between two lines. Each line moves megabytes through
    /// loopback before the conductor's cut-off resets it, which costs this machine's CPU (shared
    /// with the conductor here) far more than the conductor's.
    #[arg(long, default_value = "100ms", value_parser = torrentnchill::cli::units::parse_duration)]
    long_line_pause: Duration,
    /// Threads sending garbage over and over, from 127.0.4.1.
    #[arg(long, default_value_t = 2)]
    garbage: usize,
    /// Announces, each with its own port, from 127.0.0.9 into the honest swarm.
    #[arg(long, default_value_t = 10_000)]
    flood: u32,
    /// Threads sending the flood.
    #[arg(long, default_value_t = 4)]
    flood_threads: usize,
    /// Skip the abuse phase.
    #[arg(long)]
    no_abuse: bool,
    /// Also print each phase's latencies second by second.
    #[arg(long)]
    per_second: bool,
    /// `--max-clients` of the conductor this tool starts.
    #[arg(long, default_value_t = conductor::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// Per-address connection cap of the conductor this tool starts (not with --bin).
    #[arg(long, default_value_t = conductor::DEFAULT_MAX_CLIENTS_PER_IP)]
    max_clients_per_ip: usize,
    /// Per-address member cap of the conductor this tool starts (not with --bin).
    #[arg(long, default_value_t = conductor::DEFAULT_MAX_MEMBERS_PER_IP)]
    max_members_per_ip: usize,
    /// Run this conductor binary (e.g. target/release/conductor) instead of the library's
    /// conductor in a child process of this tool.
    #[arg(long, value_name = "PATH", conflicts_with = "target")]
    bin: Option<PathBuf>,
    /// Extra argument for the --bin conductor (repeatable).
    #[arg(long, value_name = "ARG", requires = "bin", allow_hyphen_values = true)]
    conductor_arg: Vec<String>,
    /// Target a running conductor at 127.x.x.x:PORT instead (with --pid to sample it).
    #[arg(long, value_name = "ADDR:PORT")]
    target: Option<SocketAddr>,
    /// Process id of the --target conductor, for its thread count and memory.
    #[arg(long, requires = "target")]
    pid: Option<u32>,
    /// p99 announce latency under abuse that passes, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    target_p99: f64,
    /// Internal: serve as the conductor on this address (how the tool starts its own).
    #[arg(long, hide = true, value_name = "ADDR:PORT")]
    serve_conductor: Option<SocketAddr>,
}

/// How long one honest announce may take before it counts as failed.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);
/// First listen port of the honest members (the flood uses 1..=flood).
const HONEST_BASE_PORT: u16 = 20_000;
/// How often the conductor's /proc/PID/status is read.
const SAMPLE_PERIOD: Duration = Duration::from_millis(50);
/// Pause between two garbage connections of one thread.
const GARBAGE_PAUSE: Duration = Duration::from_millis(5);
const TEN_MB: usize = 10 * 1024 * 1024;

fn main() {
    let args = Args::parse();
    let result = match args.serve_conductor {
        Some(listen) => serve(&args, listen),
        None => run(args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The child process: the library conductor, configured like the binary plus the per-address
/// caps.
fn serve(args: &Args, listen: SocketAddr) -> anyhow::Result<bool> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut conductor = Conductor::start(ConductorConfig {
        listen,
        interval: args.interval,
        max_clients: args.max_clients,
        max_clients_per_ip: args.max_clients_per_ip,
        max_members_per_ip: args.max_members_per_ip,
        ..ConductorConfig::default()
    })?;
    println!("listening on {}", conductor.local_addr());
    // Serves until the tool kills this process: the events end only when the conductor stops,
    // which nothing here asks for.
    conductor.take_events().into_iter().flatten().for_each(drop);
    Ok(true)
}

/// A conductor child process, killed when the tool ends.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_conductor(args: &Args) -> anyhow::Result<(Started, SocketAddr, String)> {
    let interval = format!("{}ms", args.interval.as_millis());
    let max_clients = args.max_clients.to_string();
    let (mut command, what) = match &args.bin {
        Some(bin) => {
            let mut command = Command::new(bin);
            command
                .args(["--listen", "127.0.0.1:0", "--interval", &interval])
                .args(["--max-clients", &max_clients])
                .args(&args.conductor_arg)
                .env("RUST_LOG", "warn");
            (command, format!("binary {}", bin.display()))
        }
        None => {
            let mut command = Command::new(std::env::current_exe()?);
            command
                .args(["--serve-conductor", "127.0.0.1:0", "--interval", &interval])
                .args(["--max-clients", &max_clients])
                .args(["--max-clients-per-ip", &args.max_clients_per_ip.to_string()])
                .args(["--max-members-per-ip", &args.max_members_per_ip.to_string()]);
            (command, "library conductor in a child process".to_string())
        }
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the conductor")?;
    let stdout = child.stdout.take().unwrap();
    let started = Started(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("the conductor said {line:?}"))?
        .parse()?;
    Ok((started, addr, what))
}

fn run(args: Args) -> anyhow::Result<bool> {
    ensure!(
        args.members > 0 && args.workers > 0,
        "need members and workers"
    );
    ensure!(
        args.members <= usize::from(u16::MAX - HONEST_BASE_PORT),
        "at most {} members",
        u16::MAX - HONEST_BASE_PORT
    );
    ensure!(
        args.flood < u32::from(HONEST_BASE_PORT),
        "the flood's ports must stay below {HONEST_BASE_PORT}"
    );
    ensure!(
        args.members <= args.max_members_per_ip || args.bin.is_some() || args.target.is_some(),
        "{} members on 127.0.0.1 are more than the conductor takes from one address: \
         raise --max-members-per-ip",
        args.members
    );
    let (_child, addr, pid, what) = match args.target {
        Some(target) => {
            ensure!(
                matches!(target.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback()),
                "--target must be on 127.0.0.0/8"
            );
            (None, target, args.pid, format!("conductor at {target}"))
        }
        None => {
            let (child, addr, what) = start_conductor(&args)?;
            let pid = child.0.id();
            (Some(child), addr, Some(pid), what)
        }
    };
    println!(
        "conductor_load: {} members from 127.0.0.1, interval {:?}, phases of {:?}; {what}, {addr}{}",
        args.members,
        args.interval,
        args.phase,
        pid.map(|p| format!(", pid {p}")).unwrap_or_default()
    );

    let swarm = Checksum::of(b"conductor_load honest swarm");
    let sampler = Sampler::start(pid);
    let honest = Honest::new(&args, addr, swarm);
    // Every member joins once, spread over one interval, before anything is measured.
    honest.run_phase(&args, None, args.interval)?;

    let baseline = honest.run_phase(&args, Some("baseline"), args.phase)?;
    let baseline_proc = sampler.take();
    let (under_abuse, abuse_report, abuse_proc) = if args.no_abuse {
        (None, None, None)
    } else {
        let abuse = Abuse::start(&args, addr, swarm);
        let result = honest.run_phase(&args, Some("under abuse"), args.phase);
        let report = abuse.stop();
        let proc = sampler.take();
        (Some(result?), Some(report), Some(proc))
    };
    let stats = conductor::stats(&addr.to_string(), ANNOUNCE_TIMEOUT).ok();
    let peak_rss = pid.and_then(|p| proc_status(p, "VmHWM"));
    sampler.stop();

    println!();
    println!(
        "{:<12} {:>9} {:>6} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9}",
        "phase",
        "announces",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "late>10ms",
        "members",
        "threads",
        "RSS MiB"
    );
    let mut phases = vec![(&baseline, &baseline_proc)];
    if let (Some(result), Some(proc)) = (&under_abuse, &abuse_proc) {
        phases.push((result, proc));
    }
    for (result, proc) in &phases {
        println!(
            "{:<12} {:>9} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>10} {:>8} {:>8} {:>9.1}",
            result.name,
            result.latencies_us.len(),
            result.failed,
            result.percentile(0.50),
            result.percentile(0.99),
            result.percentile(1.0),
            result.late,
            format!("{}/{}", result.members_seen, args.members),
            proc.max_threads
                .map(|t| t.to_string())
                .unwrap_or("-".into()),
            proc.max_rss_kib
                .map(|r| r as f64 / 1024.0)
                .unwrap_or(f64::NAN),
        );
    }
    if args.per_second {
        for (result, _) in &phases {
            result.print_per_second();
        }
    }
    for (result, _) in &phases {
        for e in &result.first_errors {
            println!("  {} failure: {e}", result.name);
        }
    }
    if let Some(report) = &abuse_report {
        println!();
        report.print(&args);
    }
    println!();
    if let Some(stats) = stats {
        println!(
            "conductor STATS: {} swarms, {} members, {:.0} announces/s",
            stats.swarms, stats.members, stats.announces_per_sec
        );
    }
    if let Some(kib) = peak_rss {
        println!("conductor peak RSS (VmHWM): {:.1} MiB", kib as f64 / 1024.0);
    }

    let mut pass = true;
    let last = under_abuse.as_ref().unwrap_or(&baseline);
    let p99 = last.percentile(0.99);
    let held = phases
        .iter()
        .all(|(r, _)| r.members_seen == args.members && r.failed == 0);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!(
        "target: p99 {} {p99:.2} ms < {} ms: {}",
        last.name,
        args.target_p99,
        verdict(p99 < args.target_p99)
    );
    println!(
        "target: all {} members held and every announce answered in every phase: {}",
        args.members,
        verdict(held)
    );
    pass &= p99 < args.target_p99 && held;
    Ok(pass)
}

// ---------------------------------------------------------------------------------------------
// Honest members

struct Member {
    id: PeerId,
    port: u16,
    /// When in each interval it announces.
    offset: Duration,
}

struct Honest {
    addr: SocketAddr,
    swarm: SwarmId,
    /// Member indices per worker.
    shards: Vec<Vec<Member>>,
    members: usize,
}

struct PhaseResult {
    name: &'static str,
    latencies_us: Vec<u64>,
    /// (second of the phase, latency) of every answered announce.
    timeline: Vec<(u32, u64)>,
    failed: u64,
    /// Announces that started more than 10 ms after they were due (the tool fell behind).
    late: u64,
    first_errors: Vec<String>,
    /// Honest members seen in the answers of the last two intervals of the phase.
    members_seen: usize,
}

impl PhaseResult {
    fn print_per_second(&self) {
        println!(
            "{} second by second (announces, p50 ms, p99 ms, max ms):",
            self.name
        );
        let mut timeline = self.timeline.clone();
        timeline.sort_unstable();
        for chunk in timeline.chunk_by(|a, b| a.0 == b.0) {
            let mut lat: Vec<u64> = chunk.iter().map(|&(_, l)| l).collect();
            lat.sort_unstable();
            let q = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
            println!(
                "  {:>3} s {:>6} {:>8.2} {:>8.2} {:>8.2}",
                chunk[0].0,
                lat.len(),
                q(0.5),
                q(0.99),
                q(1.0)
            );
        }
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u64>,
    timeline: Vec<(u32, u64)>,
    failed: u64,
    late: u64,
    errors: Vec<String>,
    seen: HashSet<u16>,
}

impl Honest {
    fn new(args: &Args, addr: SocketAddr, swarm: SwarmId) -> Honest {
        let mut shards: Vec<Vec<Member>> = (0..args.workers).map(|_| Vec::new()).collect();
        for i in 0..args.members {
            shards[i % args.workers].push(Member {
                id: PeerId::random(),
                port: HONEST_BASE_PORT + i as u16,
                offset: args.interval.mul_f64(i as f64 / args.members as f64),
            });
        }
        Honest {
            addr,
            swarm,
            shards,
            members: args.members,
        }
    }

    /// Every member announces once per interval for `length`; `name` None is the warm-up.
    fn run_phase(
        &self,
        args: &Args,
        name: Option<&'static str>,
        length: Duration,
    ) -> anyhow::Result<PhaseResult> {
        let start = Instant::now();
        let end = start + length;
        let census_from = end.checked_sub(2 * args.interval).unwrap_or(start);
        let results: Vec<WorkerResult> = thread::scope(|scope| {
            let handles: Vec<_> = self
                .shards
                .iter()
                .map(|shard| {
                    scope.spawn(move || self.work(shard, args.interval, start, end, census_from))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut result = PhaseResult {
            name: name.unwrap_or("warm-up"),
            latencies_us: Vec::new(),
            timeline: Vec::new(),
            failed: 0,
            late: 0,
            first_errors: Vec::new(),
            members_seen: 0,
        };
        let mut seen = HashSet::new();
        for worker in results {
            result.latencies_us.extend(worker.latencies_us);
            result.timeline.extend(worker.timeline);
            result.failed += worker.failed;
            result.late += worker.late;
            seen.extend(worker.seen);
            for e in worker.errors {
                if result.first_errors.len() < 5 {
                    result.first_errors.push(e);
                }
            }
        }
        result.latencies_us.sort_unstable();
        result.members_seen = seen.len();
        if name.is_none() && result.failed > 0 {
            bail!(
                "{} of {} members could not join: {:?}",
                result.failed,
                self.members,
                result.first_errors
            );
        }
        Ok(result)
    }

    fn work(
        &self,
        shard: &[Member],
        interval: Duration,
        start: Instant,
        end: Instant,
        census_from: Instant,
    ) -> WorkerResult {
        let mut out = WorkerResult::default();
        let honest_ports = HONEST_BASE_PORT..HONEST_BASE_PORT + self.members as u16;
        // Bounded by the phase's end, and by count: one announce per member per interval.
        let rounds = (end - start).as_secs_f64() / interval.as_secs_f64();
        for round in 0..=rounds.ceil() as u32 {
            for member in shard {
                let due = start + member.offset + interval * round;
                if due >= end {
                    return out;
                }
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                } else if now - due > Duration::from_millis(10) {
                    out.late += 1;
                }
                let sent = Instant::now();
                match honest_announce(self.addr, self.swarm, member.id, member.port) {
                    Ok(peers) => {
                        let latency = sent.elapsed().as_micros() as u64;
                        out.latencies_us.push(latency);
                        out.timeline
                            .push(((sent - start).as_secs() as u32, latency));
                        if sent >= census_from {
                            out.seen.extend(
                                peers
                                    .iter()
                                    .filter(|p| p.ip() == Ipv4Addr::LOCALHOST)
                                    .map(|p| p.port())
                                    .filter(|p| honest_ports.contains(p)),
                            );
                        }
                    }
                    Err(e) => {
                        out.failed += 1;
                        if out.errors.len() < 5 {
                            out.errors.push(format!("{e:#}"));
                        }
                    }
                }
            }
        }
        out
    }
}

/// One announce, as `conductor::announce` does it (one connection, the request line, the reply
/// read with the library's decoder, within [`ANNOUNCE_TIMEOUT`]), except that the connection
/// is reset rather than closed at the end. A thousand members on one address announcing every
/// second would otherwise leave 60,000 connections in TIME_WAIT, more than the ephemeral port
/// range, and connecting would crawl: an artifact of running every member on one machine.
fn honest_announce(
    to: SocketAddr,
    swarm: SwarmId,
    peer_id: PeerId,
    port: u16,
) -> anyhow::Result<Vec<SocketAddr>> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_tcp_nodelay(true)?;
    socket.connect_timeout(&to.into(), ANNOUNCE_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(ANNOUNCE_TIMEOUT))?;
    stream.set_write_timeout(Some(ANNOUNCE_TIMEOUT))?;
    let request = ConductorRequest::Announce {
        swarm,
        peer_id,
        port,
    };
    (&stream).write_all(request.to_line().as_bytes())?;
    let mut reader = LineReader::new(BufReader::new(&stream));
    match ConductorReply::read_from(&mut reader)? {
        ConductorReply::Peers { peers, .. } => Ok(peers),
        ConductorReply::Error(why) => bail!("conductor {to} refused the announce: {why}"),
        other => bail!("conductor {to} answered an announce with {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The conductor's threads and memory

#[derive(Default, Clone, Copy)]
struct ProcPeak {
    max_threads: Option<u64>,
    max_rss_kib: Option<u64>,
}

struct Sampler {
    peak: Arc<Mutex<ProcPeak>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: Option<u32>) -> Sampler {
        let peak = Arc::new(Mutex::new(ProcPeak::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = pid.map(|pid| {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            thread::spawn(move || {
                // Bounded by the stop flag and by a day of samples.
                for _ in 0..(86_400_000 / SAMPLE_PERIOD.as_millis() as u64) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let threads = proc_status(pid, "Threads");
                    let rss = proc_status(pid, "VmRSS");
                    {
                        let mut peak = peak.lock().unwrap();
                        peak.max_threads = peak.max_threads.max(threads);
                        peak.max_rss_kib = peak.max_rss_kib.max(rss);
                    }
                    thread::sleep(SAMPLE_PERIOD);
                }
            })
        });
        Sampler { peak, stop, handle }
    }

    /// The peaks since the last call.
    fn take(&self) -> ProcPeak {
        std::mem::take(&mut *self.peak.lock().unwrap())
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A number from /proc/PID/status (`Threads`, `VmRSS`, `VmHWM` in KiB).
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The abusers

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

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8 is ours).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    bind_port_at_connect(&socket);
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

#[derive(Default)]
struct Counters {
    idle_opened: AtomicU64,
    idle_closed: AtomicU64,
    half_open_opened: AtomicU64,
    half_open_closed: AtomicU64,
    connect_failures: AtomicU64,
    long_lines: AtomicU64,
    long_line_max_accepted: AtomicU64,
    long_line_whole: AtomicU64,
    garbage_connections: AtomicU64,
    garbage_errors: AtomicU64,
    flood_accepted: AtomicU64,
    flood_refused: AtomicU64,
    flood_failed: AtomicU64,
    flood_took_ms: AtomicU64,
}

struct Abuse {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct AbuseReport {
    counters: Arc<Counters>,
}

impl Abuse {
    fn start(args: &Args, addr: SocketAddr, swarm: SwarmId) -> Abuse {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let deadline = Instant::now() + args.phase;
        let mut threads = Vec::new();
        let spawn =
            |threads: &mut Vec<_>, f: Box<dyn FnOnce() + Send>| threads.push(thread::spawn(f));

        // Idle connections, over several addresses, and half-open ones: held open, reopened
        // when the conductor closes them.
        let sources = args.idle_sources.max(1);
        let every = args.reopen_every.max(Duration::from_millis(10));
        for s in 0..sources {
            let count = args.idle / usize::from(sources)
                + usize::from((s as usize) < args.idle % usize::from(sources));
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            spawn(
                &mut threads,
                Box::new(move || {
                    hold(
                        Ipv4Addr::new(127, 0, 1, s + 1),
                        addr,
                        count,
                        b"",
                        &counters,
                        true,
                        &stop,
                        deadline,
                        every,
                    )
                }),
            );
        }
        {
            let (stop, counters, count) =
                (Arc::clone(&stop), Arc::clone(&counters), args.half_open);
            spawn(
                &mut threads,
                Box::new(move || {
                    hold(
                        Ipv4Addr::new(127, 0, 2, 1),
                        addr,
                        count,
                        b"ANNOUNCE tnc/1 ",
                        &counters,
                        false,
                        &stop,
                        deadline,
                        every,
                    )
                }),
            );
        }
        for _ in 0..args.long_lines {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            let pause = args.long_line_pause;
            spawn(
                &mut threads,
                Box::new(move || long_lines(addr, &counters, &stop, deadline, pause)),
            );
        }
        for seed in 0..args.garbage {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            spawn(
                &mut threads,
                Box::new(move || garbage(addr, seed as u64, &counters, &stop, deadline)),
            );
        }
        let next_port = Arc::new(AtomicU64::new(1));
        let flood_started = Instant::now();
        // Each flood thread counts itself out; the last one notes how long the flood took.
        let flood_left = Arc::new(AtomicU64::new(args.flood_threads as u64));
        for _ in 0..args.flood_threads {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            let (next_port, flood_left) = (Arc::clone(&next_port), Arc::clone(&flood_left));
            let total = u64::from(args.flood);
            spawn(
                &mut threads,
                Box::new(move || {
                    flood(addr, swarm, total, &next_port, &counters, &stop, deadline);
                    if flood_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        counters.flood_took_ms.store(
                            flood_started.elapsed().as_millis() as u64,
                            Ordering::Relaxed,
                        );
                    }
                }),
            );
        }
        Abuse {
            stop,
            counters,
            threads,
        }
    }

    fn stop(self) -> AbuseReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        AbuseReport {
            counters: self.counters,
        }
    }
}

impl AbuseReport {
    fn print(&self, args: &Args) {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "idle (slowloris): {} held from {} addresses, closed ones reopened every {:?}; {} opened in all, {} closed by the conductor",
            args.idle,
            args.idle_sources,
            args.reopen_every,
            get(&c.idle_opened),
            get(&c.idle_closed)
        );
        println!(
            "half-open (half a line, then nothing): {} held; {} opened in all, {} closed by the conductor",
            args.half_open,
            get(&c.half_open_opened),
            get(&c.half_open_closed)
        );
        println!(
            "10 MB lines: {} sent, at most {} KiB taken before the cut-off, {} read whole",
            get(&c.long_lines),
            get(&c.long_line_max_accepted) / 1024,
            get(&c.long_line_whole)
        );
        println!(
            "garbage: {} connections, {} answered ERROR (the rest were closed)",
            get(&c.garbage_connections),
            get(&c.garbage_errors)
        );
        println!(
            "flood from 127.0.0.9: {} announces in {:.1} s: {} accepted, {} refused, {} failed",
            get(&c.flood_accepted) + get(&c.flood_refused) + get(&c.flood_failed),
            get(&c.flood_took_ms) as f64 / 1000.0,
            get(&c.flood_accepted),
            get(&c.flood_refused),
            get(&c.flood_failed)
        );
        println!(
            "abuser connects that failed (busy backlog or refused): {}",
            get(&c.connect_failures)
        );
    }
}

/// Keeps `count` connections from `from` open, each having sent `prefix`, reopening those the
/// conductor closes, until the deadline.
#[allow(clippy::too_many_arguments)]
fn hold(
    from: Ipv4Addr,
    to: SocketAddr,
    count: usize,
    prefix: &[u8],
    counters: &Counters,
    idle: bool,
    stop: &AtomicBool,
    deadline: Instant,
    every: Duration,
) {
    let (opened, closed) = if idle {
        (&counters.idle_opened, &counters.idle_closed)
    } else {
        (&counters.half_open_opened, &counters.half_open_closed)
    };
    let open = || -> Option<TcpStream> {
        let mut stream = match connect_from(from, to) {
            Ok(s) => s,
            Err(_) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if !prefix.is_empty() && stream.write_all(prefix).is_err() {
            return None;
        }
        stream.set_nonblocking(true).ok()?;
        Some(stream)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let mut buf = [0u8; 512];
    // Bounded by the deadline, and by a count of polls.
    let polls = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        / every.as_millis()
        + 1;
    for _ in 0..polls {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        for slot in conns.iter_mut() {
            if let Some(stream) = slot {
                let gone = match stream.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                };
                if gone {
                    closed.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                }
            }
            if slot.is_none() && Instant::now() < deadline {
                *slot = open();
            }
        }
        // In small steps, so that the end of the phase stops it at once.
        let until = Instant::now() + every;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(10).min(every));
        }
    }
}

/// Sends 10 MB lines, one connection each, until the deadline.
fn long_lines(
    to: SocketAddr,
    counters: &Counters,
    stop: &AtomicBool,
    deadline: Instant,
    pause: Duration,
) {
    let chunk = vec![b'A'; 64 * 1024];
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        let Ok(mut stream) = connect_from(Ipv4Addr::new(127, 0, 3, 1), to) else {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            thread::sleep(pause);
            continue;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let mut written = 0;
        while written < TEN_MB {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        counters.long_lines.fetch_add(1, Ordering::Relaxed);
        if written >= TEN_MB {
            counters.long_line_whole.fetch_add(1, Ordering::Relaxed);
        } else {
            counters
                .long_line_max_accepted
                .fetch_max(written as u64, Ordering::Relaxed);
        }
        thread::sleep(pause);
    }
}

/// Sends random bytes with random line ends, one short connection at a time.
fn garbage(to: SocketAddr, seed: u64, counters: &Counters, stop: &AtomicBool, deadline: Instant) {
    let mut state = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        let Ok(mut stream) = connect_from(Ipv4Addr::new(127, 0, 4, 1), to) else {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            thread::sleep(GARBAGE_PAUSE);
            continue;
        };
        let len = 1 + next() as usize % 4096;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 40 == 0 {
                    b'\n'
                } else {
                    (r >> 8) as u8
                }
            })
            .collect();
        counters.garbage_connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(&bytes).is_ok() {
            let mut reply = [0u8; 6];
            if stream.read_exact(&mut reply).is_ok() && &reply == b"ERROR " {
                counters.garbage_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        thread::sleep(GARBAGE_PAUSE);
    }
}

/// Announces ports 1..=total from 127.0.0.9, one connection each, shared between threads.
fn flood(
    to: SocketAddr,
    swarm: SwarmId,
    total: u64,
    next_port: &AtomicU64,
    counters: &Counters,
    stop: &AtomicBool,
    deadline: Instant,
) {
    let from = Ipv4Addr::new(127, 0, 0, 9);
    for _ in 0..total {
        let port = next_port.fetch_add(1, Ordering::Relaxed);
        if port > total || stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        let result = (|| -> std::io::Result<String> {
            let mut stream = connect_from(from, to)?;
            // Reset rather than close: 10,000 connections in TIME_WAIT from one address would
            // slow every later connect on this machine (an artifact of a one-machine test).
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            stream.set_read_timeout(Some(ANNOUNCE_TIMEOUT))?;
            writeln!(stream, "ANNOUNCE tnc/1 {swarm} {} {port}", PeerId::random())?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            Ok(line)
        })();
        match result {
            Ok(line) if line.starts_with("PEERS ") => &counters.flood_accepted,
            Ok(line) if line.starts_with("ERROR ") => &counters.flood_refused,
            _ => &counters.flood_failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
