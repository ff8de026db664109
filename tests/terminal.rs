//! The programs in a real (pseudo-)terminal, as a person sees them: the member's progress bar
//! (parts, percentage, rate, ETA, peers) and how `q` and Ctrl-C leave the terminal and the
//! swarm, and composer's bar on a large file.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, CommandBuilder, MasterPty, PtySize, SlavePty};

use common::*;
use torrentnchill::orch::Orchestra;

const LIMIT: Duration = Duration::from_secs(60);

/// A program running in a pseudo-terminal of 120 × 40, and everything it wrote there.
struct Terminal {
    name: String,
    master: Box<dyn MasterPty + Send>,
    /// Kept open so that the terminal's settings can still be read after the program exits.
    _slave: Box<dyn SlavePty + Send>,
    keyboard: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn spawn(name: &str, program: &str, args: &[&OsStr]) -> Terminal {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 40,
                cols: 120,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("cannot open a pseudo-terminal");
        let mut command = CommandBuilder::new(program);
        command.args(args);
        // The defaults a person gets: no RUST_LOG set, an ordinary terminal type.
        command.env_remove("RUST_LOG");
        command.env("TERM", "xterm-256color");
        let child = pair
            .slave
            .spawn_command(command)
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut reader = pair.master.try_clone_reader().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let keyboard = pair.master.take_writer().unwrap();
        Terminal {
            name: name.to_string(),
            master: pair.master,
            _slave: pair.slave,
            keyboard,
            child,
            output,
        }
    }

    /// Everything written so far, as bytes.
    fn raw(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    /// Everything written so far without escape sequences, cut into the lines and redraws
    /// (`\r`) a person saw one after the other.
    fn frames(&self) -> Vec<String> {
        strip_escapes(&String::from_utf8_lossy(&self.raw()))
            .split(['\r', '\n'])
            .map(|f| f.trim_end().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    }

    /// Waits until some frame satisfies `accept`, and returns it.
    fn wait_for_frame(&self, what: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(frame) = self.frames().into_iter().find(|f| accept(f)) {
                return frame;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {LIMIT:?}; the terminal shows:\n{}",
                self.name,
                self.frames().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keyboard.write_all(keys).unwrap();
        self.keyboard.flush().unwrap();
    }

    /// Polls until the program exits; returns its exit code and how long that took.
    fn wait_exit(&mut self) -> (u32, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.exit_code(), start.elapsed());
            }
            assert!(
                start.elapsed() < LIMIT,
                "{} did not exit; the terminal shows:\n{}",
                self.name,
                self.frames().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The terminal's line settings now (on Linux the master side reports the slave's).
    fn termios(&self) -> libc::termios {
        let fd = self.master.as_raw_fd().expect("a unix pty");
        // SAFETY: tcgetattr on an open descriptor with a valid out-pointer.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(fd, &mut term), 0, "tcgetattr failed");
            term
        }
    }

    /// What a shell needs back after the program: line editing and echo on, cursor visible.
    fn assert_restored(&self) {
        let term = self.termios();
        assert_ne!(term.c_lflag & libc::ICANON, 0, "left in cbreak mode");
        assert_ne!(term.c_lflag & libc::ECHO, 0, "left without echo");
        assert_ne!(term.c_lflag & libc::ISIG, 0, "left without Ctrl-C");
        let text = String::from_utf8_lossy(&self.raw()).into_owned();
        let shown = text.rfind("\x1b[?25h");
        let hidden = text.rfind("\x1b[?25l");
        assert!(
            hidden.is_none() || shown > hidden,
            "the cursor was left hidden"
        );
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL`) and two-byte escape sequences.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                for c in chars.by_ref() {
                    if c == '\x07' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `done/total` from a bar frame such as `⠁ [=====>    ] 384/768 parts 50% 21.40 MiB/s ETA 3s 1 peer`.
fn parts_shown(frame: &str) -> Option<(u32, u32)> {
    let before = frame.split(" parts ").next()?;
    let (done, total) = before.rsplit(' ').next()?.split_once('/')?;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// A swarm with nobody in it but a member in a terminal, which waits for peers.
struct Waiting {
    _tmp: tempfile::TempDir,
    conductor: Conductor,
    orch_path: std::path::PathBuf,
    orch: Orchestra,
    data_dir: std::path::PathBuf,
    term: Terminal,
    /// The member's address, as the conductor lists it.
    addr: SocketAddr,
}

fn member_waiting_for_peers(size: usize) -> Waiting {
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&["--interval", "1s"]);
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let file = data_dir.join("big.bin");
    std::fs::write(&file, sample_data(size, 0x7e57)).unwrap();
    let (orch_path, orch) = compose(&file, &conductor.addr, "64K");
    let dir = tmp.path().join("dl");
    let term = Terminal::spawn(
        "member",
        env!("CARGO_BIN_EXE_member"),
        &[
            orch_path.as_os_str(),
            OsStr::new("--dir"),
            dir.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ],
    );
    let parts = orch.part_count();
    // Before any peer: nothing done, no peers, and the bar says so.
    let empty = term.wait_for_frame("empty bar", |f| {
        f.contains(&format!(" 0/{parts} parts 0% ")) && f.ends_with(" 0 peers")
    });
    assert!(empty.contains("ETA --"), "{empty}");
    let mut addr = None;
    wait_until(LIMIT, "the member to announce itself", || {
        addr = listed(&conductor.addr, orch.swarm_id())
            .unwrap()
            .first()
            .copied();
        addr.is_some()
    });
    Waiting {
        _tmp: tmp,
        conductor,
        orch_path,
        orch,
        data_dir,
        term,
        addr: addr.unwrap(),
    }
}

/// After quitting: exit 0 within a second, the terminal as it was, a summary line, and gone
/// from the conductor's list.
fn assert_quit_cleanly(w: &mut Waiting, summary_starts: &str) {
    let (code, took) = w.term.wait_exit();
    assert_eq!(code, 0, "{}", w.term.frames().join("\n"));
    assert!(took < Duration::from_secs(1), "took {took:?} to quit");
    w.term.assert_restored();
    let summary = w
        .term
        .wait_for_frame("summary line", |f| f.starts_with(summary_starts));
    let frames = w.term.frames();
    // `SHOW_TERMINAL=1 cargo test --test terminal -- --nocapture` shows what a person saw.
    if std::env::var_os("SHOW_TERMINAL").is_some() {
        eprintln!("{}", frames.join("\n"));
    }
    for needle in [
        " down in ",
        " s (",
        "/s), ",
        " up, ",
        " used, ",
        " rejected",
    ] {
        assert!(summary.contains(needle), "{needle:?} not in {summary:?}");
    }
    // The default log level keeps the terminal clean.
    for frame in &frames {
        assert!(
            !frame.contains(" WARN ") && !frame.contains(" ERROR ") && !frame.contains(" INFO "),
            "a log line reached the terminal: {frame}"
        );
    }
    let peers = listed(&w.conductor.addr, w.orch.swarm_id()).unwrap();
    assert!(
        !peers.contains(&w.addr),
        "the conductor still lists {} after it quit: {peers:?}",
        w.addr
    );
}

/// Writes `FILENAME.part` holding only the first `parts` parts of the file in `from`, as an
/// interrupted run leaves it, so that a member there serves exactly those parts.
fn partial_copy(from: &Path, to: &Path, orch: &Orchestra, parts: u64) {
    std::fs::create_dir_all(to).unwrap();
    let data = std::fs::read(from.join(&orch.filename)).unwrap();
    let keep = (parts * orch.part_size) as usize;
    std::fs::write(to.join(format!("{}.part", orch.filename)), &data[..keep]).unwrap();
    std::fs::write(
        to.join(format!("{}.part.swarm", orch.filename)),
        format!(
            "torrentnchill partial download\nswarm {}\n",
            orch.swarm_id()
        ),
    )
    .unwrap();
}

#[test]
fn the_member_bar_moves_to_completion_and_q_quits_cleanly() {
    // 48 MiB in 768 parts of 64 KiB.
    let mut w = member_waiting_for_peers(48 << 20);
    let parts = w.orch.part_count();
    assert_eq!(parts, 768);

    // A first peer that has only the first half: the bar must stop at exactly half, having
    // shown the rate, the ETA and the peer on the way.
    let half_dir = w.data_dir.with_file_name("half");
    partial_copy(&w.data_dir, &half_dir, &w.orch, u64::from(parts / 2));
    let (_half, _) = spawn_member("half seeder", &w.orch_path, &half_dir, &[]);
    let half = w
        .term
        .wait_for_frame("a bar at half with a rate and an ETA", |f| {
            f.contains(&format!(" {}/{parts} parts 50% ", parts / 2))
                && !f.contains(" 0 B/s ")
                && f.contains(" ETA ")
                && !f.contains("ETA --")
                && f.ends_with(" 1 peer")
        });
    assert!(half.contains("/s ETA "), "{half}");
    assert!(half.contains('['), "no bar drawn: {half}");

    // The whole file from a full seeder: the bar goes to the end and says so.
    let (_seeder, _) = spawn_member("seeder", &w.orch_path, &w.data_dir, &[]);
    w.term.wait_for_frame("a full bar", |f| {
        f.contains(&format!(" {parts}/{parts} parts 100% "))
    });
    w.term.wait_for_frame("the completion message", |f| {
        f.contains("is complete and verified; sharing it. Press q to quit.")
    });
    let shown: Vec<(u32, u32)> = w
        .term
        .frames()
        .iter()
        .filter_map(|f| parts_shown(f))
        .collect();
    assert!(
        shown.windows(2).all(|p| p[0].0 <= p[1].0),
        "the bar went backwards"
    );
    assert!(shown.iter().all(|&(_, total)| total == parts));

    w.term.type_keys(b"q");
    assert_quit_cleanly(&mut w, "done: 48.00 MiB down in ");
}

#[test]
fn ctrl_c_quits_as_cleanly_as_q() {
    let mut w = member_waiting_for_peers(1 << 20);
    w.term.type_keys(b"\x03");
    assert_quit_cleanly(&mut w, "stopped at 0/16 parts");
}

#[test]
fn composer_shows_a_bar_on_a_large_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("large.bin");
    // Sparse: 128 MiB of zeros costs no disk and hashes like any other data.
    std::fs::File::create(&file)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let orch = tmp.path().join("large.orch");
    let mut term = Terminal::spawn(
        "composer",
        env!("CARGO_BIN_EXE_composer"),
        &[file.as_os_str(), OsStr::new("-o"), orch.as_os_str()],
    );
    let (code, _) = term.wait_exit();
    assert_eq!(code, 0, "{}", term.frames().join("\n"));
    let bar = term.wait_for_frame("the hashing bar", |f| {
        f.starts_with("hashing [") && f.contains("/128.00 MiB ") && f.contains(" ETA ")
    });
    assert!(bar.contains("/s"), "no rate in {bar:?}");
    term.wait_for_frame("where the .orch went", |f| f.starts_with("wrote "));
    term.assert_restored();
    assert!(orch.exists());
}

// ---------------------------------------------------------------------------------------------
// What the programs say when asked, and when things go wrong.

const PROGRAMS: [(&str, &str); 3] = [
    ("member", env!("CARGO_BIN_EXE_member")),
    ("composer", env!("CARGO_BIN_EXE_composer")),
    ("conductor", env!("CARGO_BIN_EXE_conductor")),
];

fn output(program: &str, args: &[&OsStr]) -> std::process::Output {
    std::process::Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Asserts exit `code` and exactly one line on stderr, `error: ...`, containing every needle.
fn assert_one_line_error(out: &std::process::Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    }
}

#[test]
fn help_has_examples_and_version_works() {
    for (name, program) in PROGRAMS {
        let out = output(program, &[OsStr::new("--help")]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for needle in [
            "Examples:",
            "Exit status:",
            "--json",
            "--log-file",
            "--version",
        ] {
            assert!(
                help.contains(needle),
                "{name} --help lacks {needle}:\n{help}"
            );
        }
        assert!(
            help.contains(&format!("  {name} ")),
            "no example runs {name}"
        );
        let out = output(program, &[OsStr::new("--version")]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{name} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    for (name, program) in PROGRAMS {
        for (what, needle) in [
            ("bash", format!("complete -F _{name}")),
            ("zsh", format!("#compdef {name}")),
            ("fish", format!("complete -c {name}")),
            ("man", format!(".TH {name} 1")),
        ] {
            let out = output(program, &[OsStr::new("--generate"), OsStr::new(what)]);
            assert!(out.status.success(), "{name} --generate {what}: {out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.contains(&needle), "{name} --generate {what}:\n{text}");
            if what != "man" {
                assert!(text.contains("json"), "{name} {what} completes no --json");
            }
        }
        // --generate goes alone.
        let out = output(
            program,
            &[
                OsStr::new("--generate"),
                OsStr::new("man"),
                OsStr::new("--json"),
            ],
        );
        assert_eq!(out.status.code(), Some(2));
    }
}

#[test]
fn failures_are_one_line_with_the_documented_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.orch");
    let member = env!("CARGO_BIN_EXE_member");
    let composer = env!("CARGO_BIN_EXE_composer");
    let conductor = env!("CARGO_BIN_EXE_conductor");

    // Bad command lines: 2, in one line.
    for (program, args) in [
        (member, &["--no-such-flag"][..]),
        (member, &[]),
        (composer, &[]),
        (conductor, &["--interval", "30"]),
        (conductor, &["--interval", "10ms"]),
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        assert_one_line_error(&output(program, &args), 2, &[]);
    }
    assert_one_line_error(
        &output(member, &[OsStr::new("--bogus")]),
        2,
        &["--bogus", "member --help"],
    );
    // A .orch that is not there: 3, naming it.
    assert_one_line_error(
        &output(member, &[missing.as_os_str()]),
        3,
        &["missing.orch", "No such file"],
    );
    // A file composer cannot read: 5, naming it.
    assert_one_line_error(
        &output(composer, &[tmp.path().join("nope.bin").as_os_str()]),
        5,
        &["nope.bin", "No such file"],
    );
    // A port in use: 4, naming the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(
        &output(conductor, &[OsStr::new("--listen"), OsStr::new(&addr)]),
        4,
        &[&addr, "cannot listen"],
    );
    let file = tmp.path().join("x.bin");
    std::fs::write(&file, sample_data(100_000, 9)).unwrap();
    let orch = tmp.path().join("x.orch");
    let out = output(
        composer,
        &[
            file.as_os_str(),
            OsStr::new("-o"),
            orch.as_os_str(),
            OsStr::new("-q"),
        ],
    );
    assert!(out.status.success());
    let out = output(
        member,
        &[
            orch.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new(&addr),
            OsStr::new("--dir"),
            tmp.path().as_os_str(),
        ],
    );
    assert_one_line_error(&out, 4, &[&addr]);
    // --stats with nobody there: 4, naming the address.
    drop(taken);
    assert_one_line_error(
        &output(conductor, &[OsStr::new("--stats"), OsStr::new(&addr)]),
        4,
        &[&addr],
    );
}

#[test]
fn log_files_get_their_folder_and_rust_log_sets_the_level() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("x.bin");
    std::fs::write(&file, sample_data(100_000, 5)).unwrap();
    let log = tmp.path().join("logs/deep/composer.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_composer"))
        .arg(&file)
        .arg("-o")
        .arg(tmp.path().join("x.orch"))
        .arg("--log-file")
        .arg(&log)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(log.exists(), "composer did not create {}", log.display());

    // A member that seeds, quits on SIGTERM, and logs at info to a file in a new folder.
    let conductor = start_conductor(&[]);
    let (orch, _) = compose(&file, &conductor.addr, "16K");
    let log = tmp.path().join("more/logs/member.log");
    let mut member = Proc::spawn(
        "member",
        member_command(&orch, tmp.path())
            .arg("--log-file")
            .arg(&log)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    wait_until(LIMIT, "the member's log", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains(" INFO "))
    });
    member.signal(libc::SIGTERM);
    assert!(member.wait_exit(LIMIT).success());
    let mut stderr = String::new();
    member
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // Only the summary reaches the terminal; the log went to the file.
    assert!(stderr.starts_with("seeded: nothing to fetch, "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn check_reports_bad_parts_as_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_data(20 * 16384 + 5, 11);
    let file = tmp.path().join("c.bin");
    std::fs::write(&file, &data).unwrap();
    let (orch, _) = compose(&file, "127.0.0.1:1", "16K");
    let check = |dir: &Path| {
        output(
            env!("CARGO_BIN_EXE_member"),
            &[
                orch.as_os_str(),
                OsStr::new("--check"),
                OsStr::new("--dir"),
                dir.as_os_str(),
            ],
        )
    };
    let out = check(tmp.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("c.bin: complete and valid: all 21 parts"),
        "{said}"
    );

    let mut damaged = data.clone();
    for part in [0, 1, 2, 7, 20] {
        damaged[part * 16384] ^= 0x80;
    }
    std::fs::write(&file, &damaged).unwrap();
    let out = check(tmp.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("16 of 21 parts valid; 5 bad or missing: 0-2, 7, 20"),
        "{said}"
    );
    assert!(out.stderr.is_empty());

    // Only an unfinished download: the .part is checked.
    let partial = tmp.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("c.bin.part"), &data[..10 * 16384]).unwrap();
    let out = check(&partial);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("c.bin.part: 10 of 21 parts valid; 11 bad or missing: 10-20"),
        "{said}"
    );
    assert!(said.contains("unfinished download"), "{said}");

    // Nothing there at all: a disk error, naming both names.
    let out = check(&tmp.path().join("empty"));
    assert_one_line_error(&out, 5, &["c.bin", "c.bin.part", "No such file"]);
}
