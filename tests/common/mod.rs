//! Helpers for tests that run the real binaries on 127.0.0.1, the way a user would.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use torrentnchill::orch::Orchestra;

/// A child process that is killed when the test ends, however it ends.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// Waits for the process to exit by itself, up to `limit`; kills it and fails otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (SIGTERM, SIGINT...) without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A conductor on 127.0.0.1 with an ephemeral port.
pub struct Conductor {
    pub proc: Proc,
    pub addr: String,
    _stdout: BufReader<ChildStdout>,
}

pub fn start_conductor(extra: &[&str]) -> Conductor {
    start_conductor_on("127.0.0.1:0", extra)
}

pub fn start_conductor_on(listen: &str, extra: &[&str]) -> Conductor {
    try_start_conductor_on(listen, extra).unwrap_or_else(|why| panic!("{why}"))
}

/// Like [`start_conductor_on`], but returns what the conductor said on stderr when it does not
/// start (a port taken meanwhile, say) instead of failing the test.
pub fn try_start_conductor_on(listen: &str, extra: &[&str]) -> Result<Conductor, String> {
    // stderr goes to a file, not a pipe: nobody reads it once the conductor runs.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut proc = Proc::spawn(
        "conductor",
        Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(["--listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap()),
    );
    let mut stdout = BufReader::new(proc.child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    match line.trim_end().strip_prefix("listening on ") {
        Some(addr) => Ok(Conductor {
            addr: addr.to_string(),
            proc,
            _stdout: stdout,
        }),
        None => {
            proc.kill();
            let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
            Err(format!("conductor said {line:?}, then {stderr:?}"))
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures can be reproduced.
pub fn sample_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs composer on `file` and returns the .orch path and its parsed contents.
pub fn compose(file: &Path, conductor: &str, part_size: &str) -> (PathBuf, Orchestra) {
    let orch_path = file.with_extension("orch");
    let output = Command::new(env!("CARGO_BIN_EXE_composer"))
        .arg(file)
        .arg(conductor)
        .arg(part_size)
        .arg("-o")
        .arg(&orch_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success("composer", &output);
    let orch = Orchestra::read(&orch_path).unwrap();
    (orch_path, orch)
}

pub fn assert_success(name: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{name} failed ({}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `member` command for `orch` downloading into `dir`, listening on an ephemeral port.
pub fn member_command(orch: &Path, dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_member"));
    command
        .arg(orch)
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null());
    command
}

/// Starts a member that writes JSON events to a file (so nothing blocks on a pipe).
pub fn spawn_member(name: &str, orch: &Path, dir: &Path, extra: &[&str]) -> (Proc, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let events = dir.with_extension("events.jsonl");
    let stdout = std::fs::File::create(&events).unwrap();
    let stderr = std::fs::File::create(dir.with_extension("stderr.log")).unwrap();
    let proc = Proc::spawn(
        name,
        member_command(orch, dir)
            .arg("--json")
            .args(extra)
            .stdout(stdout)
            .stderr(stderr),
    );
    (proc, events)
}

/// The JSON events a member wrote so far.
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    let mut text = String::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

pub fn last_event(path: &Path, kind: &str) -> Option<serde_json::Value> {
    read_events(path)
        .into_iter()
        .rev()
        .find(|e| e["event"] == kind)
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the fault and hostile-peer tests (tests/faults.rs, tests/lying_peer.rs).

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use torrentnchill::orch::SwarmId;
use torrentnchill::wire::PeerId;

/// A conductor address where nothing listens: members pointed at it keep retrying, harmlessly.
pub const NO_CONDUCTOR: &str = "127.0.0.1:1";

/// Writes `out`, a copy of the .orch at `orch_path` naming another conductor on line 1. The
/// swarm id leaves line 1 out, so both .orch describe the same swarm.
pub fn orch_for_conductor(orch_path: &Path, conductor: &str, out: &Path) -> PathBuf {
    let text = std::fs::read_to_string(orch_path).unwrap();
    let (_, rest) = text.split_once('\n').unwrap();
    std::fs::write(out, format!("{conductor}\n{rest}")).unwrap();
    out.to_path_buf()
}

/// Every event of one kind a member wrote so far.
pub fn events_of(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    read_events(path)
        .into_iter()
        .filter(|e| e["event"] == kind)
        .collect()
}

/// Polls a member's events until one of `kind` satisfies `accept`, and returns it.
pub fn wait_for_event(
    path: &Path,
    kind: &str,
    limit: Duration,
    mut accept: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = read_events(path)
            .into_iter()
            .find(|e| e["event"] == kind && accept(e))
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no matching {kind} event within {limit:?} in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The longest time, in seconds, that `bytes_done` stayed still between `progress` events
/// whose `seconds` is at least `from`, up to the first event with the whole file done.
pub fn longest_stall(events: &[serde_json::Value], from: f64) -> f64 {
    let mut longest = 0.0f64;
    let mut still_since: Option<(u64, f64)> = None;
    for e in events.iter().filter(|e| e["event"] == "progress") {
        let seconds = e["seconds"].as_f64().unwrap();
        let done = e["bytes_done"].as_u64().unwrap();
        if seconds < from {
            still_since = Some((done, seconds));
            continue;
        }
        match still_since {
            Some((d, since)) if d == done => longest = longest.max(seconds - since),
            _ => still_since = Some((done, seconds)),
        }
        if done == e["bytes_total"].as_u64().unwrap() {
            break;
        }
    }
    longest
}

/// The resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Announces `port` on 127.0.0.1 to a conductor again and again (every `every`) until dropped,
/// so that members are sent to an address the test controls (a proxy, a scripted peer).
/// Failures are ignored: the conductor may be down on purpose.
pub struct KeepAnnounced {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub fn keep_announced(
    conductor: &str,
    swarm: SwarmId,
    port: u16,
    every: Duration,
) -> KeepAnnounced {
    let (stop, stopped) = mpsc::channel::<()>();
    let conductor = conductor.to_string();
    let peer_id = PeerId::random();
    let announce = move |conductor: &str| {
        torrentnchill::conductor::announce(conductor, swarm, peer_id, port, Duration::from_secs(2))
    };
    // Listed before this returns (when the conductor is up), so that members started next
    // find the address in their first answer.
    let _ = announce(&conductor);
    let thread = std::thread::spawn(move || loop {
        match stopped.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = announce(&conductor);
            }
            _ => return,
        }
    });
    KeepAnnounced {
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for KeepAnnounced {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The addresses a conductor lists for `swarm` right now (asked as a throwaway member that
/// leaves at once), or an error if it cannot be reached.
pub fn listed(conductor: &str, swarm: SwarmId) -> anyhow::Result<Vec<SocketAddr>> {
    let me = PeerId::random();
    // Port 1: if a member dials the throwaway entry before it leaves, it is refused at once.
    let (_, peers) =
        torrentnchill::conductor::announce(conductor, swarm, me, 1, Duration::from_secs(2))?;
    let _ = torrentnchill::conductor::leave(conductor, swarm, me, 1, Duration::from_secs(2));
    Ok(peers)
}

/// A TCP relay on 127.0.0.1 in front of a member's listening port. It limits the bytes that go
/// from the member behind it to whoever connected (a slow link, so that a transfer of a few MiB
/// lasts long enough to interrupt) and counts them (what a downloader really received).
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    accept_thread: Option<JoinHandle<()>>,
}

struct ProxyState {
    upstream: SocketAddr,
    /// Bytes per second towards the client; 0 means no limit.
    rate: AtomicU64,
    /// When the next byte may be sent, as nanoseconds after `epoch`.
    next_send: Mutex<Duration>,
    epoch: Instant,
    bytes_down: AtomicU64,
    connections: AtomicUsize,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, rate: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            rate: AtomicU64::new(rate),
            next_send: Mutex::new(Duration::ZERO),
            epoch: Instant::now(),
            bytes_down: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let for_thread = Arc::clone(&state);
        let accept_thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if for_thread.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                for_thread.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&for_thread);
                std::thread::spawn(move || relay(&state, client));
            }
        });
        Proxy {
            addr,
            state,
            accept_thread: Some(accept_thread),
        }
    }

    /// Bytes relayed from the member behind the proxy to its clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.state.bytes_down.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Changes the limit (bytes per second, 0 for none) for what is relayed from now on.
    pub fn set_rate(&self, rate: u64) {
        self.state.rate.store(rate, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for stream in self.state.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn relay(state: &Arc<ProxyState>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect_timeout(&state.upstream, Duration::from_secs(2)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
        if let Ok(clone) = s.try_clone() {
            state.streams.lock().unwrap().push(clone);
        }
    }
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up_state = Arc::clone(state);
    let up = std::thread::spawn(move || pump(&up_state, c2, u2, false));
    pump(state, upstream, client, true);
    let _ = up.join();
}

/// Copies `from` to `to` until either side ends; `limited` applies the rate limit and counts.
fn pump(state: &ProxyState, mut from: TcpStream, mut to: TcpStream, limited: bool) {
    use std::io::Write;
    let mut buf = vec![0u8; 8192];
    while !state.stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if limited {
            pace(state, n);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if limited {
            state.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Waits for this chunk's turn on the simulated link (a token bucket shared by every
/// connection through the proxy). The sleep is the link's speed, not a wait for a condition.
fn pace(state: &ProxyState, n: usize) {
    let rate = state.rate.load(Ordering::SeqCst);
    if rate == 0 {
        return;
    }
    let cost = Duration::from_secs_f64(n as f64 / rate as f64);
    let start = {
        let mut next = state.next_send.lock().unwrap();
        let now = state.epoch.elapsed();
        let start = (*next).max(now);
        *next = start + cost;
        start
    };
    let now = state.epoch.elapsed();
    if start > now {
        std::thread::sleep(start - now);
    }
}
