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
    let mut proc = Proc::spawn(
        "conductor",
        Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(["--listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdout = BufReader::new(proc.child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("conductor said {line:?}"))
        .to_string();
    Conductor {
        proc,
        addr,
        _stdout: stdout,
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
