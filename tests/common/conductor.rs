//! A conductor for a test: the real binary on 127.0.0.1 with an ephemeral port, and the client
//! calls a member makes, for a test that plays a member (or a scripted peer) itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use torrentnchill::orch::SwarmId;
use torrentnchill::wire::PeerId;

use super::process::Proc;

/// A conductor address where nothing listens: members pointed at it keep retrying, harmlessly.
pub const NO_CONDUCTOR: &str = "127.0.0.1:1";

/// How long [`restart_conductor`] waits between attempts.
const RESTART_RETRY: Duration = Duration::from_millis(100);
/// How long a test's own conductor calls may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A conductor process, killed when the test ends.
pub struct Conductor {
    pub proc: Proc,
    pub addr: String,
    // Kept open so that the conductor never writes into a closed pipe.
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
    // The first line comes once it listens, or stdout closes when it fails to start.
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

/// Starts a conductor again on the port of one that was stopped. The port is free, but for a
/// moment it may serve as the local port of an outgoing connection (the kernel hands out free
/// ports): try again until it binds, within a deadline.
pub fn restart_conductor(addr: &str, extra: &[&str]) -> Conductor {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_start_conductor_on(addr, extra) {
            Ok(conductor) => return conductor,
            Err(e) => {
                eprintln!("restarting the conductor on {addr}: {e}");
                assert!(Instant::now() < deadline, "cannot restart the conductor");
                // Each attempt starts a process: not as often as a plain poll.
                std::thread::sleep(RESTART_RETRY);
            }
        }
    }
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
        torrentnchill::conductor::announce(conductor, swarm, peer_id, port, CALL_TIMEOUT)
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
    let (_, peers) = torrentnchill::conductor::announce(conductor, swarm, me, 1, CALL_TIMEOUT)?;
    let _ = torrentnchill::conductor::leave(conductor, swarm, me, 1, CALL_TIMEOUT);
    Ok(peers)
}
