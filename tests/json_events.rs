//! Every `--json` line of the three programs, in a small swarm that goes through every event,
//! checked against the schema in docs/JSON.md: each line parses, its `event` is documented for
//! that program, it has exactly the documented keys, and each value has the documented type.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::*;
use torrentnchill::orch::Orchestra;
use torrentnchill::wire::PeerId;

const LIMIT: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(5);

fn schema() -> Vec<EventSchema> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/JSON.md"))
        .expect("docs/JSON.md");
    let schema = parse_schema(&doc);
    assert!(schema.len() >= 20, "docs/JSON.md lists too few events");
    schema
}

fn type_ok(value: &Value, documented: &str) -> bool {
    documented.split(" or ").any(|t| match t.trim() {
        "string" => value.is_string(),
        "integer" => value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        other => panic!("docs/JSON.md: unknown type {other:?}"),
    })
}

/// Checks one line of `program`'s stdout against the schema and returns it parsed.
fn check_line(schema: &[EventSchema], program: &str, line: &str) -> Value {
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{program}: not JSON ({e}): {line:?}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{program}: not an object: {line}"));
    let name = object["event"]
        .as_str()
        .unwrap_or_else(|| panic!("{program}: no event name: {line}"));
    let documented = schema
        .iter()
        .find(|s| s.program == program && s.event == name)
        .unwrap_or_else(|| panic!("{program}: event {name:?} is not in docs/JSON.md: {line}"));
    let keys: BTreeSet<&str> = object.keys().map(|k| k.as_str()).collect();
    let want: BTreeSet<&str> = documented.fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys, want,
        "{program} {name}: keys differ from docs/JSON.md: {line}"
    );
    assert!(
        line.starts_with("{\"event\":"),
        "{program}: event is not the first key: {line}"
    );
    for (key, ty) in &documented.fields {
        assert!(
            type_ok(&object[key], ty),
            "{program} {name}: {key} should be {ty}: {line}"
        );
    }
    value
}

/// Every line of a program's stdout, checked.
fn check_all(schema: &[EventSchema], program: &str, text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{program}: unterminated line"
    );
    text.lines()
        .map(|line| check_line(schema, program, line))
        .collect()
}

fn events_named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// A conductor with `--json`, its stdout in a file.
struct JsonConductor {
    proc: Proc,
    addr: String,
    out: PathBuf,
}

fn start_json_conductor(dir: &Path) -> JsonConductor {
    start_json_conductor_as(dir, "conductor", &[])
}

/// [`start_json_conductor`] with more flags, its output in `dir/NAME.jsonl`.
fn start_json_conductor_as(dir: &Path, name: &str, extra: &[&str]) -> JsonConductor {
    let out = dir.join(format!("{name}.jsonl"));
    let proc = Proc::spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(["--listen", "127.0.0.1:0", "--interval", "1s", "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null()),
    );
    let mut addr = None;
    wait_until(LIMIT, "the conductor's listening event", || {
        let text = std::fs::read_to_string(&out).unwrap();
        addr = text.lines().next().and_then(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            Some(v["addr"].as_str()?.to_string())
        });
        addr.is_some()
    });
    JsonConductor {
        proc,
        addr: addr.unwrap(),
        out,
    }
}

/// Runs a program to its end and returns its exit code and stdout.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().unwrap();
    // A failure says so in one line, last on stderr (`--check` finding bad parts is no failure
    // of the program, and says nothing there).
    if let Some(last) = stderr.lines().last() {
        assert!(last.starts_with("error: "), "{program}: stderr {stderr:?}");
        assert_ne!(code, 0, "{program}: {stderr}");
    }
    (code, String::from_utf8(output.stdout).unwrap())
}

#[test]
fn every_json_line_matches_docs_json_md() {
    let schema = schema();
    let tmp = tempfile::tempdir().unwrap();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut note = |program: &str, events: &[Value]| {
        for e in events {
            seen.insert((
                program.to_string(),
                e["event"].as_str().unwrap().to_string(),
            ));
        }
    };
    let os = |s: &str| std::ffi::OsString::from(s);

    // --- conductor: listening, join, leave, expire, summary, stats, error.
    let mut conductor = start_json_conductor(tmp.path());

    // --- composer: composed, error.
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    let data = sample_data(3 * 1024 * 1024 + 777, 0x15);
    let file = seed.join("f.bin");
    std::fs::write(&file, &data).unwrap();
    let orch_path = tmp.path().join("f.orch");
    let (code, out) = run(
        env!("CARGO_BIN_EXE_composer"),
        &[
            file.as_os_str(),
            &os(&conductor.addr),
            &os("64K"),
            &os("-o"),
            orch_path.as_os_str(),
            &os("--json"),
        ],
    );
    assert_eq!(code, 0);
    let composed = check_all(&schema, "composer", &out);
    assert_eq!(composed.len(), 1);
    assert_eq!(composed[0]["event"], "composed");
    assert_eq!(composed[0]["parts"], 49);
    assert_eq!(composed[0]["file_size"], data.len() as u64);
    note("composer", &composed);
    let orch = Orchestra::read(&orch_path).unwrap();
    assert_eq!(composed[0]["swarm"], orch.swarm_id().to_hex());
    let (code, out) = run(
        env!("CARGO_BIN_EXE_composer"),
        &[tmp.path().join("none.bin").as_os_str(), &os("--json")],
    );
    assert_eq!(code, 5);
    let failed = check_all(&schema, "composer", &out);
    assert_eq!(failed[0]["event"], "error");
    assert_eq!(failed[0]["exit_code"], 5);
    note("composer", &failed);

    // --- member: a seeder, and a member that fetches from it.
    let (mut seeder, seeder_out) = spawn_member("seeder", &orch_path, &seed, &[]);
    let fetch_dir = tmp.path().join("fetch");
    let (mut fetcher, fetcher_out) =
        spawn_member("fetcher", &orch_path, &fetch_dir, &["--exit-when-done"]);
    assert!(fetcher.wait_exit(LIMIT).success());
    let fetched = check_all(
        &schema,
        "member",
        &std::fs::read_to_string(&fetcher_out).unwrap(),
    );
    let names: Vec<&str> = fetched
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"start"), "{names:?}");
    assert_eq!(names.last(), Some(&"summary"), "{names:?}");
    for name in ["conductor_ok", "peer_connected", "complete"] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    let summary = fetched.last().unwrap();
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["bytes_down"], data.len() as u64);
    assert_eq!(summary["parts_done"], 49);
    assert!(summary["peers_used"].as_u64().unwrap() >= 1);
    assert!(summary["download_seconds"].as_f64().unwrap() > 0.0);
    assert!(summary["rate_down"].as_f64().unwrap() > 0.0);
    assert!(summary["download_seconds"].as_f64() <= summary["seconds"].as_f64());
    let first_part = summary["first_part_seconds"].as_f64().unwrap();
    assert!(first_part > 0.0 && first_part <= summary["download_seconds"].as_f64().unwrap());
    note("member", &fetched);

    // The seeder reports progress about twice a second while it shares.
    wait_until(LIMIT, "four progress events from the seeder", || {
        read_events(&seeder_out)
            .iter()
            .filter(|e| e["event"] == "progress")
            .count()
            >= 4
    });
    let shared = read_events(&seeder_out);
    let times: Vec<f64> = events_named(&shared, "progress")
        .iter()
        .map(|e| e["seconds"].as_f64().unwrap())
        .collect();
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            (0.45..=1.5).contains(&gap),
            "progress every {gap} s: {times:?}"
        );
    }
    let complete = events_named(&shared, "complete");
    assert_eq!(complete[0]["download_seconds"], 0.0, "nothing to fetch");

    // --- member: a lying peer is caught (part_rejected, peer_dropped), a lying origin dropped.
    let other = start_conductor(&["--interval", "1s"]);
    let liar_orch = orch_for_conductor(&orch_path, &other.addr, &tmp.path().join("liar.orch"));
    // A peer that claims every part and corrupts each one it is asked for.
    let every_part = (0..orch.part_count()).collect();
    let liar = FakePeer::start(
        &orch,
        Arc::new(data.clone()),
        Behaviour::Corrupt(every_part),
    );
    torrentnchill::conductor::announce(
        &other.addr,
        orch.swarm_id(),
        PeerId::random(),
        liar.addr().port(),
        TIMEOUT,
    )
    .unwrap();
    // And an HTTP origin that corrupts every part too (origin_dropped).
    let bad_origin = BadHttp::start(data.clone(), Misbehaviour::Corrupt);
    let (mut victim, victim_out) = spawn_member(
        "victim",
        &liar_orch,
        &tmp.path().join("v"),
        &["--origin", &bad_origin.url],
    );
    wait_until(LIMIT, "a rejected part and a dropped origin", || {
        last_event(&victim_out, "part_rejected").is_some()
            && last_event(&victim_out, "peer_dropped").is_some()
            && last_event(&victim_out, "origin_dropped").is_some()
    });
    victim.signal(libc::SIGTERM);
    assert!(victim.wait_exit(LIMIT).success(), "SIGTERM is a clean quit");
    let lied_to = check_all(
        &schema,
        "member",
        &std::fs::read_to_string(&victim_out).unwrap(),
    );
    let summary = lied_to.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["complete"], false);
    assert!(summary["parts_rejected"].as_u64().unwrap() >= 1);
    let dropped = events_named(&lied_to, "peer_dropped");
    assert!(
        dropped
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("checksum")),
        "{dropped:?}"
    );
    note("member", &lied_to);

    // --- member: a conductor that is not there (conductor_unreachable).
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lonely_orch = orch_for_conductor(
        &orch_path,
        &closed.to_string(),
        &tmp.path().join("lone.orch"),
    );
    let (mut lonely, lonely_out) =
        spawn_member("lonely", &lonely_orch, &tmp.path().join("lone"), &[]);
    wait_until(LIMIT, "conductor_unreachable", || {
        last_event(&lonely_out, "conductor_unreachable").is_some()
    });
    lonely.signal(libc::SIGINT);
    assert!(lonely.wait_exit(LIMIT).success());
    let alone = check_all(
        &schema,
        "member",
        &std::fs::read_to_string(&lonely_out).unwrap(),
    );
    let unreachable = events_named(&alone, "conductor_unreachable");
    assert!(unreachable[0]["error"]
        .as_str()
        .unwrap()
        .contains(&closed.to_string()));
    note("member", &alone);

    // --- member: errors, before starting (bad .orch: 3) and while checking (no file: 5).
    let (code, out) = run(
        env!("CARGO_BIN_EXE_member"),
        &[tmp.path().join("nothing.orch").as_os_str(), &os("--json")],
    );
    assert_eq!(code, 3);
    let errors = check_all(&schema, "member", &out);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["exit_code"], 3);
    note("member", &errors);
    let (code, out) = run(
        env!("CARGO_BIN_EXE_member"),
        &[&os("--json"), &os("--no-such-flag")],
    );
    assert_eq!(code, 2);
    assert_eq!(check_all(&schema, "member", &out)[0]["exit_code"], 2);

    // --- member --check: a good copy, a damaged one and an unfinished one.
    let check = |dir: &Path| {
        run(
            env!("CARGO_BIN_EXE_member"),
            &[
                orch_path.as_os_str(),
                &os("--check"),
                &os("--dir"),
                dir.as_os_str(),
                &os("--json"),
            ],
        )
    };
    let (code, out) = check(&fetch_dir);
    assert_eq!(code, 0);
    let good = check_all(&schema, "member", &out);
    assert_eq!(good[0]["complete"], true);
    assert_eq!(good[0]["bad"], serde_json::json!([]));
    assert_eq!(good[0]["parts_valid"], 49);
    assert_eq!(good[0]["file_checksum_ok"], true);
    note("member", &good);
    let mut damaged = data.clone();
    damaged[5 * 65536 + 3] ^= 1;
    damaged[6 * 65536 + 3] ^= 1;
    damaged[48 * 65536] ^= 1;
    std::fs::write(fetch_dir.join("f.bin"), &damaged).unwrap();
    let (code, out) = check(&fetch_dir);
    assert_eq!(code, 1);
    let bad = check_all(&schema, "member", &out);
    assert_eq!(bad[0]["bad"], serde_json::json!([[5, 6], [48, 48]]));
    assert_eq!(bad[0]["complete"], false);
    assert_eq!(bad[0]["file_checksum_ok"], false);
    let (code, out) = check(&tmp.path().join("v"));
    assert_eq!(code, 1);
    let unfinished = check_all(&schema, "member", &out);
    assert_eq!(unfinished[0]["partial"], true);
    assert_eq!(unfinished[0]["file_checksum_ok"], Value::Null);
    let (code, out) = check(&tmp.path().join("nowhere"));
    assert_eq!(code, 5);
    assert_eq!(check_all(&schema, "member", &out)[0]["event"], "error");

    // --- conductor: a restart at the same address (rejoin), a member that goes silent
    // (expire), stats, a port in use (error), and the last summary on SIGTERM.
    let swarm = orch.swarm_id();
    let (a, b) = (PeerId::random(), PeerId::random());
    torrentnchill::conductor::announce(&conductor.addr, swarm, a, 9, TIMEOUT).unwrap();
    torrentnchill::conductor::announce(&conductor.addr, swarm, b, 9, TIMEOUT).unwrap();
    let conductor_out = conductor.out.clone();
    let conductor_events = || {
        check_all(
            &schema,
            "conductor",
            &std::fs::read_to_string(&conductor_out).unwrap(),
        )
    };
    wait_until(LIMIT, "the silent member to expire", || {
        conductor_events()
            .iter()
            .any(|e| e["event"] == "expire" && e["addr"] == "127.0.0.1:9")
    });
    let (code, out) = run(
        env!("CARGO_BIN_EXE_conductor"),
        &[&os("--stats"), &os(&conductor.addr), &os("--json")],
    );
    assert_eq!(code, 0);
    let stats = check_all(&schema, "conductor", &out);
    assert_eq!(stats[0]["event"], "stats");
    note("conductor", &stats);
    let (code, out) = run(
        env!("CARGO_BIN_EXE_conductor"),
        &[&os("--listen"), &os(&conductor.addr), &os("--json")],
    );
    assert_eq!(code, 4, "a port in use is a network failure");
    let in_use = check_all(&schema, "conductor", &out);
    assert!(in_use[0]["message"]
        .as_str()
        .unwrap()
        .contains(&conductor.addr));
    note("conductor", &in_use);

    seeder.signal(libc::SIGTERM);
    assert!(seeder.wait_exit(LIMIT).success());
    let seeded = check_all(
        &schema,
        "member",
        &std::fs::read_to_string(&seeder_out).unwrap(),
    );
    let summary = seeded.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert!(
        summary["first_part_seconds"].is_null(),
        "a seeder fetched no part: {summary}"
    );
    note("member", &seeded);
    wait_until(LIMIT, "the seeder's leave", || {
        conductor_events().iter().any(|e| e["event"] == "leave")
    });
    conductor.proc.signal(libc::SIGTERM);
    assert!(conductor.proc.wait_exit(LIMIT).success());
    let told = conductor_events();
    let joins = events_named(&told, "join");
    assert!(joins.iter().any(|e| e["rejoin"] == false));
    assert!(joins
        .iter()
        .any(|e| e["rejoin"] == true && e["addr"] == "127.0.0.1:9"));
    let last = told.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["last"], true);
    assert_eq!(told[0]["event"], "listening");
    note("conductor", &told);

    // --- conductor --state: state_loaded, state_ignored, state_not_saved.
    let state = tmp.path().join("state.json");
    let state_flag = ["--state", state.to_str().unwrap()];
    let stopped = |mut conductor: JsonConductor| {
        conductor.proc.signal(libc::SIGTERM);
        assert!(conductor.proc.wait_exit(LIMIT).success());
        check_all(
            &schema,
            "conductor",
            &std::fs::read_to_string(&conductor.out).unwrap(),
        )
    };
    let first = start_json_conductor_as(tmp.path(), "state-first", &state_flag);
    torrentnchill::conductor::announce(&first.addr, swarm, a, 9, TIMEOUT).unwrap();
    let told = stopped(first);
    assert!(
        events_named(&told, "state_loaded").is_empty(),
        "no file yet"
    );
    note("conductor", &told);
    let again = stopped(start_json_conductor_as(
        tmp.path(),
        "state-again",
        &state_flag,
    ));
    assert_eq!(again[1]["event"], "state_loaded", "{again:?}");
    assert_eq!(again[1]["members"], 1);
    note("conductor", &again);
    std::fs::write(&state, "{\"format\":").unwrap();
    let damaged = stopped(start_json_conductor_as(
        tmp.path(),
        "state-damaged",
        &state_flag,
    ));
    assert_eq!(damaged[1]["event"], "state_ignored", "{damaged:?}");
    note("conductor", &damaged);
    let nowhere = tmp.path().join("no such folder").join("state.json");
    let unsaved = stopped(start_json_conductor_as(
        tmp.path(),
        "state-unsaved",
        &["--state", nowhere.to_str().unwrap()],
    ));
    assert!(
        !events_named(&unsaved, "state_not_saved").is_empty(),
        "{unsaved:?}"
    );
    note("conductor", &unsaved);

    // Every documented event was seen, but one that needs over 100 expiries in one sweep; the
    // unit tests of src/conductor/events.rs check it against the same tables.
    let untested: BTreeSet<(String, String)> = [("conductor", "expire_more")]
        .iter()
        .map(|(p, e)| (p.to_string(), e.to_string()))
        .collect();
    for s in &schema {
        let key = (s.program.clone(), s.event.clone());
        assert!(
            seen.contains(&key) || untested.contains(&key),
            "{} never printed {:?}; is docs/JSON.md out of date?",
            s.program,
            s.event
        );
    }
}

#[test]
fn json_lines_reach_a_pipe_as_they_happen() {
    // A script reading a member's stdout through a pipe gets each line as it is written, not
    // when the member exits.
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&[]);
    let file = tmp.path().join("x.bin");
    std::fs::write(&file, sample_data(100_000, 3)).unwrap();
    let (orch_path, _) = compose(&file, &conductor.addr, "16K");
    let mut member = Proc::spawn(
        "member",
        member_command(&orch_path, tmp.path())
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut lines = BufReader::new(member.child.stdout.take().unwrap()).lines();
    let schema = schema();
    let first = check_line(&schema, "member", &lines.next().unwrap().unwrap());
    assert_eq!(first["event"], "start");
    assert_eq!(first["parts_on_disk"], 7);
    assert!(
        member.child.try_wait().unwrap().is_none(),
        "it is still running"
    );
    member.signal(libc::SIGTERM);
    let rest: Vec<Value> = lines
        .map(|l| check_line(&schema, "member", &l.unwrap()))
        .collect();
    assert_eq!(rest.last().unwrap()["event"], "summary");
    assert!(member.wait_exit(LIMIT).success());
}

/// The documented shape of one event, read from `docs/JSON.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    /// `member`, `composer` or `conductor`.
    pub program: String,
    pub event: String,
    /// Every key, in the documented order, with its type: `string`, `integer` (whole, ≥ 0),
    /// `number`, `boolean` or `array`, or `T or null`.
    pub fields: Vec<(String, String)>,
}

/// Reads the event tables of `docs/JSON.md`: a `## \`program\`` heading, then for each event a
/// `### \`event\`` heading followed by a table whose rows are `` | `key` | type | meaning | ``.
pub fn parse_schema(doc: &str) -> Vec<EventSchema> {
    fn quoted(text: &str) -> Option<String> {
        let text = text.trim();
        let inner = text.strip_prefix('`')?.strip_suffix('`')?;
        (!inner.is_empty() && !inner.contains('`')).then(|| inner.to_string())
    }
    let mut schemas: Vec<EventSchema> = Vec::new();
    let mut program: Option<String> = None;
    // The event whose table the next rows belong to.
    let mut current: Option<EventSchema> = None;
    for line in doc.lines() {
        if line.starts_with('#') {
            schemas.extend(current.take());
        }
        if let Some(heading) = line.strip_prefix("## ") {
            program = quoted(heading);
        } else if let Some(heading) = line.strip_prefix("### ") {
            if let (Some(program), Some(event)) = (&program, quoted(heading)) {
                current = Some(EventSchema {
                    program: program.clone(),
                    event,
                    fields: Vec::new(),
                });
            }
        } else if let (Some(row), Some(schema)) = (line.strip_prefix('|'), current.as_mut()) {
            let cells: Vec<&str> = row.split('|').collect();
            if let (Some(key), true) = (quoted(cells[0]), cells.len() >= 3) {
                schema.fields.push((key, cells[1].trim().to_string()));
            }
        }
    }
    schemas.extend(current);
    schemas
}

#[test]
fn schema_tables() {
    let doc = "# t\n## `member`\ntext\n### `start`\n| field | type | meaning |\n|---|---|---|\n\
               | `event` | string | `\"start\"` |\n| `n` | integer or null | a count |\n\n\
               ### not an event\n| `x` | string | ignored |\n## `composer`\n### `composed`\n\
               | `event` | string | x |\n";
    let schemas = parse_schema(doc);
    assert_eq!(schemas.len(), 2);
    assert_eq!(
        (schemas[0].program.as_str(), schemas[0].event.as_str()),
        ("member", "start")
    );
    assert_eq!(
        schemas[0].fields,
        [
            ("event".to_string(), "string".to_string()),
            ("n".to_string(), "integer or null".to_string())
        ]
    );
    assert_eq!(schemas[1].program, "composer");
    assert_eq!(schemas[1].fields.len(), 1);
}
