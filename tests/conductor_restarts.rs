//! Conductors that restart or fail, end to end with the real binaries on 127.0.0.1: a conductor
//! down when a member starts and back later, with and without `--state`; a damaged state file;
//! two conductors in a `.orch`, one killed mid-run; and `member --conductor` pointing members
//! elsewhere than line 1 of the `.orch`. Functional only: how fast a member notices is measured
//! by scripts/reliability.py, not asserted here.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const KIB: usize = 1024;
/// Far beyond any test: a member is listed again only because it noticed the restart, or
/// because the state file kept it, never by its regular announce.
const LONG_INTERVAL: &str = "1h";

/// The members a state file holds, as `(addr, swarm)`; empty while it is missing or being
/// replaced.
fn members_in_state(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    state["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    let field = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                    (field("addr"), field("swarm"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_member_that_starts_while_the_conductor_is_down_completes_once_it_is_back() {
    let interval = ["--interval", LONG_INTERVAL];
    let conductor = start_conductor(&interval);
    let s = sample("down.bin", 2048 * KIB + 7, "64K", &conductor.addr, 21);
    let swarm = s.orch.swarm_id();
    let (_seeder, seeder_events, seed_addr) =
        start_member("seeder", &s.orch_path, &s.seed_dir, &[]);
    wait_until(LIMIT, "the seeder to be listed", || {
        listed(&conductor.addr, swarm).is_ok_and(|peers| peers.contains(&seed_addr))
    });

    let mut conductor = conductor;
    conductor.proc.kill();
    // A restart quicker than the seeder's probe would go unnoticed (--state covers that).
    wait_for_event(&seeder_events, "conductor_unreachable", LIMIT, |_| true);
    let (mut late, events) = spawn_member(
        "starts while down",
        &s.orch_path,
        &s.dir("late"),
        &["--exit-when-done"],
    );
    wait_for_event(&events, "conductor_unreachable", LIMIT, |_| true);

    // Back with no memory: the seeder notices and announces again long before its interval.
    let conductor = restart_conductor(&conductor.addr, &interval);
    wait_until(LIMIT, "the seeder to be listed again", || {
        listed(&conductor.addr, swarm).is_ok_and(|peers| peers.contains(&seed_addr))
    });
    assert!(late.wait_exit(LIMIT).success());
    s.assert_copy(&s.dir("late"), "the member that started while it was down");
    assert!(last_event(&events, "conductor_ok").is_some());
}

#[test]
fn with_state_a_restarted_conductor_knows_its_members_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let state_flag = state.to_str().unwrap();
    let flags = ["--interval", LONG_INTERVAL, "--state", state_flag];
    let conductor = start_conductor(&flags);
    let s = sample("state.bin", 2048 * KIB + 7, "64K", &conductor.addr, 22);
    let swarm = s.orch.swarm_id();
    // The seeder's own .orch names no conductor: only the test announces it, once, so only the
    // state file can bring it back after the restart.
    let (_seeder, _, seed_addr) = start_member("seeder", &s.hidden_orch(), &s.seed_dir, &[]);
    let _once = keep_announced(
        &conductor.addr,
        swarm,
        seed_addr.port(),
        Duration::from_secs(3600),
    );
    let seed_entry = (seed_addr.to_string(), swarm.to_hex());
    wait_until(LIMIT, "the seeder in the state file", || {
        members_in_state(&state).contains(&seed_entry)
    });

    // Killed, not stopped: what is on disk is what the debounced saves wrote.
    let mut conductor = conductor;
    conductor.proc.kill();
    let (mut late, events) = spawn_member(
        "starts while down",
        &s.orch_path,
        &s.dir("late"),
        &["--exit-when-done"],
    );
    wait_for_event(&events, "conductor_unreachable", LIMIT, |_| true);
    let conductor = restart_conductor(&conductor.addr, &flags);
    let peers = listed(&conductor.addr, swarm).unwrap();
    assert!(peers.contains(&seed_addr), "not restored: {peers:?}");
    assert!(late.wait_exit(LIMIT).success());
    s.assert_copy(&s.dir("late"), "the member that started while it was down");
}

/// A conductor whose stderr goes to `log`, started with `extra`; returns it with its address.
fn conductor_logging_to(log: &Path, extra: &[&str]) -> (Proc, String) {
    let mut proc = Proc::spawn(
        "conductor",
        Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    let mut line = String::new();
    let mut stdout = BufReader::new(proc.child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("conductor said {line:?}"))
        .to_string();
    // Nothing more comes on stdout without --json; dropping it is harmless.
    (proc, addr)
}

#[test]
fn a_damaged_state_file_is_reported_and_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let log = tmp.path().join("conductor.log");
    let swarm = torrentnchill::orch::Checksum::of(b"some swarm");
    let peer = torrentnchill::wire::PeerId::random();
    let timeout = Duration::from_secs(5);
    for (case, damage) in [
        ("garbage", b"\x00\xffnot json at all".to_vec()),
        (
            "truncated",
            b"{\"format\":\"torrentnchill conductor state\",\"vers".to_vec(),
        ),
    ] {
        std::fs::write(&state, &damage).unwrap();
        let (mut conductor, addr) =
            conductor_logging_to(&log, &["--state", state.to_str().unwrap()]);
        // It serves as if there were no file, and says why it ignored it.
        let (_, peers) = torrentnchill::conductor::announce(&addr, swarm, peer, 9, timeout)
            .unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(peers.is_empty(), "{case}");
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(
            said.contains("ignoring the state file") && said.contains(state.to_str().unwrap()),
            "{case}: {said}"
        );
        // On the way out it replaces the damaged file with a good one.
        conductor.signal(libc::SIGTERM);
        assert!(conductor.wait_exit(LIMIT).success(), "{case}");
        let members = members_in_state(&state);
        assert_eq!(
            members,
            [("127.0.0.1:9".to_string(), swarm.to_hex())],
            "{case}"
        );
    }
}

#[test]
fn two_conductors_and_one_is_killed_mid_run() {
    let first = start_conductor(&[]);
    let second = start_conductor(&[]);
    let both = format!("{},{}", first.addr, second.addr);
    let s = sample("two.bin", 2048 * KIB + 7, "64K", &both, 23);
    assert_eq!(
        s.orch.conductors(),
        [first.addr.clone(), second.addr.clone()]
    );
    let swarm = s.orch.swarm_id();
    let (_seeder, _, seed_addr) = start_member("seeder", &s.orch_path, &s.seed_dir, &[]);
    for conductor in [&first, &second] {
        wait_until(LIMIT, "the seeder on both conductors", || {
            listed(&conductor.addr, swarm).is_ok_and(|peers| peers.contains(&seed_addr))
        });
    }
    let once = ["--exit-when-done"];
    let (mut a, _) = spawn_member("a", &s.orch_path, &s.dir("a"), &once);
    assert!(a.wait_exit(LIMIT).success());
    s.assert_copy(&s.dir("a"), "a, with both conductors up");

    let mut first = first;
    first.proc.kill();
    let (mut b, events) = spawn_member("b", &s.orch_path, &s.dir("b"), &once);
    assert!(b.wait_exit(LIMIT).success());
    s.assert_copy(&s.dir("b"), "b, with the first conductor gone");
    let ok: Vec<String> = events_of(&events, "conductor_ok")
        .iter()
        .map(|e| e["conductor"].as_str().unwrap().to_string())
        .collect();
    assert!(ok.iter().all(|c| *c == second.addr), "{ok:?}");
    assert!(!ok.is_empty());
}

#[test]
fn member_conductor_overrides_line_1() {
    let conductor = start_conductor(&[]);
    // The .orch names nobody listening; both members are told where to go instead.
    let s = sample("override.bin", 1024 * KIB + 3, "64K", NO_CONDUCTOR, 24);
    let flag = ["--conductor", conductor.addr.as_str()];
    let (_seeder, _, _) = start_member("seeder", &s.orch_path, &s.seed_dir, &flag);
    let (mut member, events) = spawn_member(
        "member",
        &s.orch_path,
        &s.dir("m"),
        &["--exit-when-done", flag[0], flag[1]],
    );
    assert!(member.wait_exit(LIMIT).success());
    s.assert_copy(&s.dir("m"), "the member told another conductor");
    let ok = last_event(&events, "conductor_ok").unwrap();
    assert_eq!(ok["conductor"], conductor.addr.as_str());
    assert!(events_of(&events, "conductor_unreachable").is_empty());

    // Bad lists are refused before anything starts, with the same rules as line 1.
    for (bad, why) in [
        (vec!["--conductor", "nohost"], "no ':PORT'"),
        (
            vec!["--conductor", "127.0.0.1:5", "--conductor", "127.0.0.1:5"],
            "listed twice",
        ),
    ] {
        let out = member_command(&s.orch_path, &s.dir("bad"))
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--conductor") && stderr.contains(why),
            "{stderr}"
        );
    }
}
