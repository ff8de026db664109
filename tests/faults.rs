//! Faults, end to end with the real binaries on 127.0.0.1: a member killed or stopped in the
//! middle of a download, a seeder that dies, a conductor that goes away, a seed file changed on
//! disk, a full disk, and files that are not ours. In every case nothing verified is lost, no bad
//! byte reaches the final file, and nobody stalls for longer than its timeouts.
//!
//! Transfers on 127.0.0.1 finish in a blink, so seeders that must be interrupted mid-transfer
//! are reached through a rate-limited relay (`common::Proxy`): their own `.orch` names no
//! conductor, and the test announces the relay's address instead (same swarm: line 1 of a
//! `.orch` is not part of the swarm id).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// `--peer-timeout` for members under test, in seconds.
const PEER_TIMEOUT: f64 = 2.0;

fn peer_timeout_flag() -> String {
    PEER_TIMEOUT.to_string()
}

/// What a member started with `spawn_member(.., dir, ..)` wrote on stderr.
fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.with_extension("stderr.log")).unwrap_or_default()
}

/// The `seconds` of the latest progress event a member wrote so far (0 if none).
fn latest_progress_seconds(events: &Path) -> f64 {
    events_of(events, "progress")
        .last()
        .map_or(0.0, |e| e["seconds"].as_f64().unwrap())
}

fn progress_at(e: &serde_json::Value) -> (u64, f64) {
    (
        e["bytes_done"].as_u64().unwrap(),
        e["seconds"].as_f64().unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Crash and resume

/// Downloads through a slow relay, stops the downloader with `signal` halfway, starts it again
/// and checks that it resumes from every part it had verified and fetches only the rest.
fn stopped_halfway_resumes(signal: i32) {
    let conductor = start_conductor(&[]);
    let s = sample("resume.bin", 4 * MIB + 1000, "16K", &conductor.addr, 11);
    let part = s.orch.part_size;
    let total = s.orch.file_size;
    let (_seeder, _, seed_addr) = start_member("seeder", &s.hidden_orch(), &s.seed_dir, &[]);
    // 1 MiB/s: the 4 MiB download takes about 4 s, so halfway is easy to catch.
    let proxy = Proxy::start(seed_addr, MIB as u64);
    let _listed = keep_announced(
        &conductor.addr,
        s.orch.swarm_id(),
        proxy.addr.port(),
        Duration::from_secs(20),
    );
    let pipeline = 1u64;
    let timeout = peer_timeout_flag();
    let flags = [
        "--exit-when-done",
        "--pipeline",
        "1",
        "--max-peers",
        "1",
        "--peer-timeout",
        &timeout,
    ];
    let dir = s.dir("dl");

    let (mut first, events1, first_addr) = start_member("first run", &s.orch_path, &dir, &flags);
    let halfway = wait_for_event(&events1, "progress", LIMIT, |e| {
        e["bytes_done"].as_u64().unwrap() >= total / 2
    });
    assert!(
        halfway["bytes_done"].as_u64().unwrap() < total,
        "the download was not slowed down: {halfway}"
    );
    first.signal(signal);
    let status = first.wait_exit(Duration::from_secs(10));
    let last = events_of(&events1, "progress").pop().unwrap();
    let (seen_done, _) = progress_at(&last);
    let mut fetched_first = last["bytes_down"].as_u64().unwrap();
    if signal == libc::SIGKILL {
        assert_eq!(status.code(), None, "kill -9 should kill");
    } else {
        // A clean stop: exit 0, a summary, and a LEAVE to the conductor.
        assert!(status.success(), "stopped with signal {signal}: {status}");
        let summary = last_event(&events1, "summary").expect("a summary after a clean stop");
        assert_eq!(summary["complete"], false);
        fetched_first = summary["bytes_down"].as_u64().unwrap();
        let still_listed = listed(&conductor.addr, s.orch.swarm_id()).unwrap();
        assert!(
            !still_listed.contains(&first_addr),
            "the conductor still lists a member that quit: {still_listed:?}"
        );
    }
    assert!(!dir.join("resume.bin").exists());
    assert!(dir.join("resume.bin.part").exists());

    // The second run, on a fast link.
    proxy.set_rate(0);
    let wire_before = proxy.bytes_down();
    let (mut second, events2, _) = start_member("second run", &s.orch_path, &dir, &flags);
    let start = last_event(&events2, "start").unwrap();
    let on_disk = start["parts_on_disk"].as_u64().unwrap();
    assert!(
        on_disk * part >= seen_done,
        "resumed with {on_disk} parts, but {seen_done} bytes were reported done before the stop"
    );
    assert!(second.wait_exit(LIMIT).success());
    s.assert_copy(&dir, "the resumed download");
    let summary = last_event(&events2, "summary").unwrap();
    assert_eq!(summary["complete"], true);
    let fetched_again = summary["bytes_down"].as_u64().unwrap();
    let wire = proxy.bytes_down() - wire_before;
    let remainder = total - seen_done;
    let in_flight = pipeline * part;
    eprintln!(
        "signal {signal}: stopped at {seen_done} of {total} bytes ({on_disk} parts kept); \
         second run fetched {fetched_again} bytes ({wire} on the wire), remainder {remainder}, \
         bound {}",
        remainder + in_flight
    );
    assert!(
        fetched_again <= remainder + in_flight,
        "fetched {fetched_again} bytes after the restart; {remainder} were missing"
    );
    // What really crossed the wire: the parts, their PIECE lines, the HELLO and the have-map.
    let overhead = 64 * KIB as u64;
    assert!(
        wire <= remainder + in_flight + overhead,
        "{wire} bytes crossed the wire after the restart; {remainder} were missing"
    );
    if signal != libc::SIGKILL {
        // A clean stop keeps exactly what it fetched: every byte was fetched exactly once.
        assert_eq!(fetched_first + fetched_again, total);
    }
}

#[test]
fn kill_9_halfway_then_resume() {
    stopped_halfway_resumes(libc::SIGKILL);
}

#[test]
fn sigterm_halfway_then_resume() {
    stopped_halfway_resumes(libc::SIGTERM);
}

#[test]
fn sigint_halfway_then_resume() {
    stopped_halfway_resumes(libc::SIGINT);
}

// ---------------------------------------------------------------------------------------------
// 2. A source dies

/// Two seeders behind slow relays and two downloaders that also trade with each other; one
/// seeder gets `signal` (killed, or stopped like a hung machine) a quarter of the way through.
/// Both downloaders finish from the peers that remain, never standing still for longer than
/// the peer timeout (plus a margin for a loaded machine).
fn a_seeder_dies_midway(signal: i32) {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let s = sample("source.bin", 4 * MIB + 777, "16K", &conductor.addr, 22);
    let hidden = s.hidden_orch();
    let second_seed = s.dir("seed2");
    std::fs::create_dir_all(&second_seed).unwrap();
    std::fs::copy(
        s.seed_dir.join("source.bin"),
        second_seed.join("source.bin"),
    )
    .unwrap();
    let (mut doomed, _, doomed_addr) = start_member("doomed seeder", &hidden, &s.seed_dir, &[]);
    let (_survivor, _, survivor_addr) = start_member("survivor", &hidden, &second_seed, &[]);
    let doomed_proxy = Proxy::start(doomed_addr, 700 * KIB as u64);
    let survivor_proxy = Proxy::start(survivor_addr, 700 * KIB as u64);
    let _listed: Vec<_> = [&doomed_proxy, &survivor_proxy]
        .iter()
        .map(|p| {
            keep_announced(
                &conductor.addr,
                s.orch.swarm_id(),
                p.addr.port(),
                Duration::from_millis(400),
            )
        })
        .collect();

    let timeout = peer_timeout_flag();
    let members: Vec<_> = (0..2)
        .map(|i| {
            let dir = s.dir(&format!("m{i}"));
            let (proc, events) = spawn_member(
                &format!("member {i}"),
                &s.orch_path,
                &dir,
                &["--exit-when-done", "--peer-timeout", &timeout],
            );
            (proc, events, dir)
        })
        .collect();
    wait_for_event(&members[0].1, "progress", LIMIT, |e| {
        e["bytes_done"].as_u64().unwrap() >= s.orch.file_size / 4
    });
    // Both seeders must have been serving when one goes.
    wait_until(LIMIT, "both seeders to serve", || {
        doomed_proxy.bytes_down() > 0 && survivor_proxy.bytes_down() > 0
    });
    // Each member's clock (the `seconds` of its events) when the seeder went.
    let before: Vec<f64> = members
        .iter()
        .map(|(_, events, _)| latest_progress_seconds(events))
        .collect();
    let died = Instant::now();
    doomed.signal(signal);
    if signal == libc::SIGKILL {
        doomed.wait_exit(Duration::from_secs(10));
    }
    for ((mut proc, events, dir), from) in members.into_iter().zip(before) {
        let status = proc.wait_exit(LIMIT);
        assert!(status.success(), "{} exited with {status}", proc.name);
        s.assert_copy(&dir, &proc.name);
        let all = read_events(&events);
        let stall = longest_stall(&all, from);
        // When the member dropped the dead seeder, to within one progress tick: the first
        // progress event written after the drop.
        let doomed_addr = doomed_proxy.addr.to_string();
        let drop_at = all
            .iter()
            .position(|e| e["event"] == "peer_dropped" && e["addr"] == doomed_addr.as_str())
            .unwrap_or_else(|| panic!("{} never dropped the dead seeder", proc.name));
        let noticed = all[drop_at..]
            .iter()
            .find(|e| e["event"] == "progress")
            .map_or(f64::MAX, |e| e["seconds"].as_f64().unwrap() - from);
        eprintln!(
            "signal {signal}: {} dropped the seeder within {noticed:.1} s ({}), finished {:.1} s \
             after it went; longest stall after it {stall:.1} s",
            proc.name,
            all[drop_at]["reason"],
            died.elapsed().as_secs_f64(),
        );
        assert!(
            stall < PEER_TIMEOUT + 2.5,
            "{} stood still for {stall:.1} s (peer timeout {PEER_TIMEOUT} s)",
            proc.name
        );
        assert!(
            noticed < PEER_TIMEOUT + 2.5,
            "{} took {noticed:.1} s to drop the dead seeder",
            proc.name
        );
    }
}

#[test]
fn a_seeder_killed_midway() {
    a_seeder_dies_midway(libc::SIGKILL);
}

#[test]
fn a_seeder_hung_midway() {
    // SIGSTOP: its connections stay open and say nothing, like a machine that froze.
    a_seeder_dies_midway(libc::SIGSTOP);
}

// ---------------------------------------------------------------------------------------------
// 3. The conductor goes away

#[test]
fn the_conductor_goes_away_and_comes_back_on_the_same_port() {
    let interval = ["--interval", "500ms"];
    let mut conductor = start_conductor(&interval);
    let s = sample("away.bin", 4 * MIB + 99, "16K", &conductor.addr, 33);
    let swarm = s.orch.swarm_id();
    let (_seeder, _, seed_addr) = start_member("seeder", &s.hidden_orch(), &s.seed_dir, &[]);
    let proxy = Proxy::start(seed_addr, 600 * KIB as u64);
    let _listed = keep_announced(
        &conductor.addr,
        swarm,
        proxy.addr.port(),
        Duration::from_millis(400),
    );
    let timeout = peer_timeout_flag();
    let slow = ["--peer-timeout", &timeout];
    let (_a, events_a, addr_a) = start_member("member a", &s.orch_path, &s.dir("a"), &slow);
    let (_b, events_b, addr_b) = start_member("member b", &s.orch_path, &s.dir("b"), &slow);
    wait_for_event(&events_a, "progress", LIMIT, |e| {
        e["bytes_done"].as_u64().unwrap() >= s.orch.file_size / 5
    });

    // The conductor dies in the middle of the transfer.
    conductor.proc.kill();
    let (done_at_kill, _) = progress_at(&events_of(&events_a, "progress").pop().unwrap());
    assert!(
        done_at_kill < s.orch.file_size,
        "member a finished too early"
    );
    let went = Instant::now();

    // A member that starts now retries with backoff, says so, and does not give up.
    let once = ["--exit-when-done", "--peer-timeout", &timeout];
    let (mut late, events_late) =
        spawn_member("starts while down", &s.orch_path, &s.dir("d"), &once);
    wait_until(LIMIT, "two failed announces", || {
        events_of(&events_late, "conductor_unreachable").len() >= 2
    });
    let retries: Vec<f64> = events_of(&events_late, "conductor_unreachable")
        .iter()
        .map(|e| e["retry_in_secs"].as_f64().unwrap())
        .collect();
    assert!(retries[1] > retries[0], "no backoff: {retries:?}");
    assert!(late.child.try_wait().unwrap().is_none(), "it gave up");

    // Members that know each other keep going without the conductor.
    wait_for_event(&events_a, "progress", LIMIT, |e| {
        e["bytes_done"].as_u64().unwrap() > done_at_kill
    });
    wait_for_event(&events_a, "conductor_unreachable", LIMIT, |_| true);

    // Back, on the same port, with no memory of anyone.
    let conductor = restart_conductor(&conductor.addr, &interval);
    let back = Instant::now();
    eprintln!(
        "conductor down for {:.1} s",
        back.duration_since(went).as_secs_f64()
    );
    wait_until(LIMIT, "members a and b to be listed again", || {
        listed(&conductor.addr, swarm)
            .is_ok_and(|peers| peers.contains(&addr_a) && peers.contains(&addr_b))
    });
    eprintln!(
        "members listed again {:.1} s after the conductor came back",
        back.elapsed().as_secs_f64()
    );
    assert!(late.wait_exit(LIMIT).success());
    s.assert_copy(
        &s.dir("d"),
        "the member that started while the conductor was down",
    );
    assert!(last_event(&events_late, "conductor_ok").is_some());
    eprintln!(
        "the member that started during the outage finished {:.1} s after the conductor came back",
        back.elapsed().as_secs_f64()
    );

    // A newcomer finds the swarm through the new conductor.
    let (mut newcomer, _) = spawn_member("newcomer", &s.orch_path, &s.dir("e"), &once);
    assert!(newcomer.wait_exit(LIMIT).success());
    s.assert_copy(&s.dir("e"), "the newcomer");
    for (events, dir) in [(&events_a, "a"), (&events_b, "b")] {
        wait_for_event(events, "complete", LIMIT, |_| true);
        s.assert_copy(&s.dir(dir), dir);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A seed changed on disk after it started

#[test]
fn a_seed_changed_on_disk_is_caught_and_fetched_elsewhere() {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let s = sample("changed.bin", 2 * MIB + 5, "16K", &conductor.addr, 55);
    let part = s.orch.part_size;
    let (mut changed, changed_events, changed_addr) =
        start_member("changed seeder", &s.orch_path, &s.seed_dir, &[]);
    // The seeder verified its file at start; now someone overwrites bytes of three parts.
    let bad_parts = [3u64, 60, 127];
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(s.seed_dir.join("changed.bin"))
            .unwrap();
        for index in bad_parts {
            file.write_all_at(&[0x5a; 100], index * part + 1000)
                .unwrap();
        }
    }
    let timeout = peer_timeout_flag();
    let dir = s.dir("dl");
    let (mut member, events) = spawn_member(
        "member",
        &s.orch_path,
        &dir,
        &["--exit-when-done", "--peer-timeout", &timeout],
    );
    let rejected = wait_for_event(&events, "part_rejected", LIMIT, |_| true);
    assert_eq!(rejected["addr"], changed_addr.to_string().as_str());
    assert!(bad_parts.contains(&rejected["part"].as_u64().unwrap()));
    let dropped = wait_for_event(&events, "peer_dropped", LIMIT, |e| {
        e["addr"] == changed_addr.to_string().as_str()
    });
    assert!(
        dropped["reason"].as_str().unwrap().contains("checksum"),
        "{dropped}"
    );

    // An honest seeder joins: the member fetches the rest, the bad parts included, from it.
    let honest_dir = s.dir("honest");
    std::fs::create_dir_all(&honest_dir).unwrap();
    std::fs::write(honest_dir.join("changed.bin"), &s.data).unwrap();
    let (_honest, _, honest_addr) = start_member("honest seeder", &s.orch_path, &honest_dir, &[]);
    assert!(member.wait_exit(LIMIT).success());
    s.assert_copy(&dir, "the member");
    let rejections = events_of(&events, "part_rejected");
    assert!(
        rejections
            .iter()
            .all(|e| e["addr"] == changed_addr.to_string().as_str()),
        "{rejections:?}"
    );
    // Banned: the changed seeder was never asked again.
    let connects = events_of(&events, "peer_connected")
        .iter()
        .filter(|e| e["addr"] == changed_addr.to_string().as_str())
        .count();
    assert_eq!(connects, 1, "reconnected to a banned peer");
    assert!(events_of(&events, "peer_connected")
        .iter()
        .any(|e| e["addr"] == honest_addr.to_string().as_str()));

    // The seeder itself never notices: it serves with sendfile and does not re-check what it
    // reads from its file.
    assert!(changed.child.try_wait().unwrap().is_none());
    let sent = events_of(&changed_events, "progress")
        .last()
        .map_or(0, |e| e["bytes_up"].as_u64().unwrap());
    eprintln!(
        "the changed seeder sent {sent} bytes, {} parts were rejected, and it is still seeding",
        rejections.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A full disk

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts `size_kib` KiB at `dir`; `None` (after saying why) where mounting is not
    /// permitted.
    fn mount(dir: &Path, size_kib: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir)
            .output();
        match output {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs ({}); the disk-full test needs root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn resize(&self, size_kib: usize) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size_kib}k")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still has a file open there: detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Runs a member to the end with --exit-when-done; returns its exit code, stderr and events.
fn run_member(s: &Sample, dir: &Path, name: &str) -> (Option<i32>, String, PathBuf) {
    let timeout = peer_timeout_flag();
    let (mut proc, events) = spawn_member(
        name,
        &s.orch_path,
        dir,
        &["--exit-when-done", "--peer-timeout", &timeout],
    );
    let status = proc.wait_exit(LIMIT);
    (status.code(), stderr_of(dir), events)
}

/// Checks the failed first run: exit 5, an `error:` line naming the file, a warning about free
/// space before it, and nothing left behind that could pass for progress or for the file.
fn assert_disk_full_failure(code: Option<i32>, stderr: &str, dir: &Path, s: &Sample) {
    assert_eq!(code, Some(5), "{stderr}");
    let partial = dir.join("full.bin.part");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains(&partial.display().to_string()),
        "the error does not name the file: {error}"
    );
    assert!(
        stderr.contains("WARN") && stderr.contains("bytes free"),
        "no warning about free space: {stderr}"
    );
    assert!(!dir.join("full.bin").exists());
    if partial.exists() {
        let marker = std::fs::read_to_string(dir.join("full.bin.part.swarm")).unwrap();
        assert!(marker.contains(&s.orch.swarm_id().to_hex()));
    }
    eprintln!("disk full: {error}");
}

#[test]
fn a_full_disk_fails_clearly_and_resumes_once_there_is_room() {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let s = sample("full.bin", MIB + 1234, "16K", &conductor.addr, 66);
    let Some(disk) = Tmpfs::mount(&s.dir("small"), 512) else {
        return;
    };
    let (_seeder, _, _) = start_member("seeder", &s.orch_path, &s.seed_dir, &[]);
    let (code, stderr, _) = run_member(&s, &disk.dir, "on a small disk");
    assert_disk_full_failure(code, &stderr, &disk.dir, &s);

    disk.resize(4096);
    let (code, stderr, events) = run_member(&s, &disk.dir, "on a bigger disk");
    assert_eq!(code, Some(0), "{stderr}");
    s.assert_copy(&disk.dir, "after the disk grew");
    let start = last_event(&events, "start").unwrap();
    assert_eq!(start["parts_on_disk"], 0);
    let summary = last_event(&events, "summary").unwrap();
    assert_eq!(summary["bytes_down"], s.orch.file_size);
}

#[test]
fn a_disk_filled_by_someone_else_fails_clearly_and_resumes_once_freed() {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let s = sample("full.bin", MIB + 1234, "16K", &conductor.addr, 67);
    let Some(disk) = Tmpfs::mount(&s.dir("shared"), 1536) else {
        return;
    };
    let filler = disk.dir.join("someone-elses.iso");
    std::fs::write(&filler, vec![7u8; MIB]).unwrap();
    let (_seeder, _, _) = start_member("seeder", &s.orch_path, &s.seed_dir, &[]);
    let (code, stderr, _) = run_member(&s, &disk.dir, "on a full disk");
    assert_disk_full_failure(code, &stderr, &disk.dir, &s);
    assert!(std::fs::read(&filler).unwrap() == vec![7u8; MIB]);

    std::fs::remove_file(&filler).unwrap();
    let (code, stderr, events) = run_member(&s, &disk.dir, "once freed");
    assert_eq!(code, Some(0), "{stderr}");
    s.assert_copy(&disk.dir, "after the disk was freed");
    let summary = last_event(&events, "summary").unwrap();
    assert_eq!(summary["bytes_down"], s.orch.file_size);
}

// ---------------------------------------------------------------------------------------------
// 7. Files that are not ours

/// Runs a member against `dir` as it is and expects a refusal that touches nothing.
fn assert_refused(s: &Sample, dir: &Path, expect: &str) {
    let before = snapshot(dir);
    let output = member_command(&s.orch_path, dir)
        .args(["--exit-when-done", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in {stderr}");
    assert_eq!(snapshot(dir), before, "the folder changed: {stderr}");
}

/// Every entry of a folder with its contents (or link target), to compare before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes()
            } else if meta.is_dir() {
                b"<dir>".to_vec()
            } else {
                std::fs::read(&path).unwrap()
            };
            (name, content)
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn a_partial_download_without_a_marker_is_not_touched() {
    let s = sample("other.bin", 100_000, "16K", NO_CONDUCTOR, 71);
    let dir = s.dir("dl");
    std::fs::create_dir_all(&dir).unwrap();
    // Someone's own "other.bin.part", right size, nothing to say it is a download of ours.
    std::fs::write(dir.join("other.bin.part"), sample_data(100_000, 99)).unwrap();
    assert_refused(&s, &dir, "is not a download of this .orch");
}

#[test]
fn a_garbage_marker_is_not_trusted() {
    let s = sample("other.bin", 100_000, "16K", NO_CONDUCTOR, 72);
    let dir = s.dir("dl");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("other.bin.part"), &s.data[..50_000]).unwrap();
    for marker in [
        sample_data(300, 5),
        b"torrentnchill partial download\n".to_vec(),
        b"torrentnchill partial download\nswarm nothex\n".to_vec(),
        format!("not ours\nswarm {}\n", s.orch.swarm_id()).into_bytes(),
        vec![b'x'; 1 << 20],
    ] {
        std::fs::write(dir.join("other.bin.part.swarm"), &marker).unwrap();
        assert_refused(&s, &dir, "is not a download of this .orch");
    }
}

#[test]
fn something_in_the_way_that_is_not_a_plain_file_is_not_touched() {
    let s = sample("other.bin", 100_000, "16K", NO_CONDUCTOR, 73);
    // A symbolic link, even to a copy of the right file: not followed, not replaced.
    let dir = s.dir("link");
    std::fs::create_dir_all(&dir).unwrap();
    let target = s.dir("elsewhere.bin");
    std::fs::write(&target, &s.data).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("other.bin")).unwrap();
    assert_refused(&s, &dir, "not a regular file");
    assert!(std::fs::read(&target).unwrap() == s.data);
    // A folder of that name.
    let dir = s.dir("folder");
    std::fs::create_dir_all(dir.join("other.bin")).unwrap();
    std::fs::write(dir.join("other.bin/inside"), b"keep").unwrap();
    assert_refused(&s, &dir, "not a regular file");
    assert_eq!(
        std::fs::read(dir.join("other.bin/inside")).unwrap(),
        b"keep"
    );
    // A shorter file, and a longer one.
    for len in [99_999, 100_001] {
        let dir = s.dir(&format!("len{len}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("other.bin"), sample_data(len, 3)).unwrap();
        assert_refused(&s, &dir, "not touching it");
    }
}

#[test]
fn a_file_that_appears_during_the_download_is_not_replaced() {
    let conductor = start_conductor(&[]);
    let s = sample("late.bin", 2 * MIB, "16K", &conductor.addr, 74);
    let (_seeder, _, seed_addr) = start_member("seeder", &s.hidden_orch(), &s.seed_dir, &[]);
    let proxy = Proxy::start(seed_addr, MIB as u64);
    let _listed = keep_announced(
        &conductor.addr,
        s.orch.swarm_id(),
        proxy.addr.port(),
        Duration::from_secs(20),
    );
    let dir = s.dir("dl");
    let (mut member, events) = spawn_member("member", &s.orch_path, &dir, &["--exit-when-done"]);
    wait_for_event(&events, "progress", LIMIT, |e| {
        e["bytes_done"].as_u64().unwrap() > 0
    });
    let theirs = b"written by someone else meanwhile".to_vec();
    std::fs::write(dir.join("late.bin"), &theirs).unwrap();
    proxy.set_rate(0);
    let status = member.wait_exit(LIMIT);
    let stderr = stderr_of(&dir);
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("appeared during the download"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("late.bin")).unwrap(), theirs);
    // The verified download is kept under its partial name.
    assert!(std::fs::read(dir.join("late.bin.part")).unwrap() == s.data);
}

#[test]
fn a_complete_copy_is_seeded_without_being_modified() {
    let conductor = start_conductor(&["--interval", "500ms"]);
    let s = sample("same.bin", MIB, "16K", &conductor.addr, 75);
    let file = s.seed_dir.join("same.bin");
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let (_seeder, seeder_events, _) = start_member("seeder", &s.orch_path, &s.seed_dir, &[]);
    let (code, stderr, _) = run_member(&s, &s.dir("dl"), "downloader");
    assert_eq!(code, Some(0), "{stderr}");
    s.assert_copy(&s.dir("dl"), "the downloader");
    wait_for_event(&seeder_events, "progress", LIMIT, |e| {
        e["bytes_up"].as_u64().unwrap() > 0
    });
    assert!(std::fs::read(&file).unwrap() == s.data);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        modified
    );
}

#[test]
fn a_symbolic_link_at_the_partial_name_is_not_followed() {
    let s = sample("other.bin", 100_000, "16K", NO_CONDUCTOR, 76);
    let dir = s.dir("dl");
    std::fs::create_dir_all(&dir).unwrap();
    // A marker naming our swarm (the swarm id is public: anyone with the .orch can write one)
    // next to a link to somebody's file.
    std::fs::write(
        dir.join("other.bin.part.swarm"),
        format!(
            "torrentnchill partial download\nswarm {}\n",
            s.orch.swarm_id()
        ),
    )
    .unwrap();
    let victim = s.dir("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("other.bin.part")).unwrap();
    let output = member_command(&s.orch_path, &dir)
        .args(["--exit-when-done", "--json"])
        .output()
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{output:?}");
    assert_eq!(output.status.code(), Some(5));
}
