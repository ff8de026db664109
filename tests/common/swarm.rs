//! Temporary swarms: deterministic sample data, a file and its `.orch` in a temporary folder,
//! and the commands that start members on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use torrentnchill::orch::Orchestra;

use super::conductor::NO_CONDUCTOR;
use super::process::Proc;

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

/// Writes `len` bytes of sample data (always the same ones) to `dir/name`; returns the path and
/// the bytes.
pub fn write_sample(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let data = sample_data(len, 0x5eed);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// Runs composer on `file` for `conductor` with parts of `part_size`, writing `file` with the
/// extension `.orch`; returns that path and the parsed `.orch`. The real binary, so that the
/// end-to-end tests run every program the way a user does.
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

/// A sample file next to its .orch, in a temporary folder that goes when the test ends.
pub struct Sample {
    pub tmp: tempfile::TempDir,
    pub data: Vec<u8>,
    /// The folder holding the original (a seeder's --dir).
    pub seed_dir: PathBuf,
    /// The .orch, outside the seed folder, where members are pointed.
    pub orch_path: PathBuf,
    pub orch: Orchestra,
}

/// `len` bytes of sample data from `seed`, as `name` in a seed folder, composed for `conductor`
/// with parts of `part_size`.
pub fn sample(name: &str, len: usize, part_size: &str, conductor: &str, seed: u64) -> Sample {
    let tmp = tempfile::tempdir().unwrap();
    let seed_dir = tmp.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let data = sample_data(len, seed);
    let file = seed_dir.join(name);
    std::fs::write(&file, &data).unwrap();
    let (orch_path, orch) = compose(&file, conductor, part_size);
    let moved = tmp.path().join(orch_path.file_name().unwrap());
    std::fs::rename(&orch_path, &moved).unwrap();
    Sample {
        tmp,
        data,
        seed_dir,
        orch_path: moved,
        orch,
    }
}

impl Sample {
    /// A path in the temporary folder, for a member's --dir.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A copy of the .orch that names no reachable conductor: a seeder started with it is
    /// found only through the address the test announces for it.
    pub fn hidden_orch(&self) -> PathBuf {
        orch_for_conductor(
            &self.orch_path,
            NO_CONDUCTOR,
            &self.tmp.path().join("hidden.orch"),
        )
    }

    /// Fails unless `dir` holds the finished file, identical to the original.
    pub fn assert_copy(&self, dir: &Path, who: &str) {
        let copy = std::fs::read(dir.join(&self.orch.filename))
            .unwrap_or_else(|e| panic!("{who}: no final file: {e}"));
        assert!(
            copy == self.data,
            "{who}: the final file differs from the original"
        );
        assert!(!dir.join(format!("{}.part", self.orch.filename)).exists());
    }
}

/// Writes `out`, a copy of the .orch at `orch_path` naming another conductor on line 1. The
/// swarm id leaves line 1 out, so both .orch describe the same swarm.
pub fn orch_for_conductor(orch_path: &Path, conductor: &str, out: &Path) -> PathBuf {
    let text = std::fs::read_to_string(orch_path).unwrap();
    let (_, rest) = text.split_once('\n').unwrap();
    std::fs::write(out, format!("{conductor}\n{rest}")).unwrap();
    out.to_path_buf()
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

/// Starts a member that writes JSON events to `dir` with the extension `.events.jsonl`, and
/// its stderr to `dir` with `.stderr.log` (files, so that nothing blocks on a pipe).
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

/// [`spawn_member`], then waits (up to a minute) for its `start` event; returns it with the
/// address it listens on.
pub fn start_member(
    name: &str,
    orch: &Path,
    dir: &Path,
    extra: &[&str],
) -> (Proc, PathBuf, std::net::SocketAddr) {
    let (proc, events) = spawn_member(name, orch, dir, extra);
    let limit = std::time::Duration::from_secs(60);
    let start = super::events::wait_for_event(&events, "start", limit, |_| true);
    let addr = start["listen"].as_str().unwrap().parse().unwrap();
    (proc, events, addr)
}
