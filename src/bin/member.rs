//! `member FILE.orch`: fetch the file a .orch describes from its swarm, and share it.
//! `member FILE.orch --check`: compare the file on disk with the .orch, offline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use std::time::{Duration, Instant};
use torrentnchill::sync::Mutex;

use clap::{CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressStyle};

use torrentnchill::cli::{self, exit, BarSlot};
use torrentnchill::json;
use torrentnchill::member::check::{self as file_check, CheckReport};
use torrentnchill::member::peer::MAX_QUEUED_UPLOADS;
use torrentnchill::member::{Event, Member, MemberConfig, Phase, Status};
use torrentnchill::orch::Orchestra;

const EXAMPLES: &str = "\
Examples:
  member bigfile.iso.orch                  fetch into the current folder, then share until q
  member bigfile.iso.orch --dir /data      fetch into /data (a complete file there is seeded)
  member x.orch --exit-when-done --json    for scripts: JSON events, exit 0 once verified
  member x.orch --listen 0.0.0.0:7000      accept peers on a fixed port (default: any free port)
  member x.orch --check --dir /data        check /data/FILE (or FILE.part) offline, list bad parts
  member --generate bash                   print bash completions (also zsh, fish, man)

Keys: q (or Ctrl-C) quits: the conductor is told, verified parts are kept, and the next run
resumes. A second Ctrl-C exits at once.

Logs: RUST_LOG=info (default warn) above the bar, or --log-file PATH.

Exit status: 0 done, or quit with q, Ctrl-C or SIGTERM; 1 other error (with --check: the file
is damaged or unfinished); 2 bad command line; 3 bad or inconsistent .orch; 4 network (cannot
listen); 5 disk (cannot read or write the file or folder, or a file not ours is in the way).";

#[derive(Parser)]
#[command(name = "member", version, about = "Fetch the file a .orch describes from its swarm, and share it",
          after_help = EXAMPLES)]
struct Args {
    /// The .orch file describing what to fetch.
    #[arg(required = true, value_name = "FILE.orch")]
    orch: Option<PathBuf>,
    /// Folder for the data file (FILENAME from the .orch).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Address to accept peers on; port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Exit 0 as soon as the file is complete and verified, instead of sharing until q.
    #[arg(long)]
    exit_when_done: bool,
    /// Write newline-delimited JSON events to stdout instead of drawing a progress bar
    /// (docs/JSON.md).
    #[arg(long)]
    json: bool,
    /// Most peer connections we open, and most that peers open to us.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
    max_peers: u16,
    /// Drop a peer that sends nothing we asked for during this many seconds.
    #[arg(long, default_value_t = 20.0)]
    peer_timeout: f64,
    /// Requests in flight per peer, at most 64 (default: from the part size).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUED_UPLOADS as i64))]
    pipeline: Option<u16>,
    /// Write logs to this file (its folder is created) instead of the terminal.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Check DIR/FILENAME (or DIR/FILENAME.part if only that exists) against the .orch without
    /// the network, list the bad parts and exit: 0 if complete and valid, 1 if not.
    #[arg(long, conflicts_with_all = ["listen", "exit_when_done", "max_peers", "peer_timeout", "pipeline"])]
    check: bool,
    /// Print shell completions or a man page and exit.
    #[arg(long, value_name = "WHAT", hide = true, exclusive = true)]
    generate: Option<cli::Generate>,
}

/// An exit code and the error to report with it.
type Failure = (i32, anyhow::Error);

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    if let Some(what) = args.generate {
        return match cli::generate(what, Args::command()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report_failure(false, (exit::FAILURE, e)),
        };
    }
    let bar: BarSlot = Arc::new(Mutex::new(None));
    if let Err(e) = cli::init_logging("warn", args.log_file.as_deref(), Arc::clone(&bar), None) {
        return report_failure(args.json, (exit::DISK, e));
    }
    let result = if args.check {
        check(&args, &bar)
    } else {
        run(&args, &bar)
    };
    if let Some(bar) = bar.lock().take() {
        bar.finish_and_clear();
    }
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(failure) => report_failure(args.json, failure),
    }
}

fn report_failure(json: bool, (code, error): Failure) -> ExitCode {
    cli::report_failure(json, code, &error)
}

fn orch_path(args: &Args) -> &Path {
    args.orch.as_deref().expect("clap requires FILE.orch")
}

/// A bar for reading a whole file, put where log lines know to print above it.
fn reading_bar(label: &str, len: u64, slot: &BarSlot) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{label} [{{bar:30}}] {{percent}}% {{binary_bytes_per_sec}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
    *slot.lock() = Some(bar.clone());
    bar
}

fn run(args: &Args, bar_slot: &BarSlot) -> Result<i32, Failure> {
    let orch_path = orch_path(args);
    let orch = Orchestra::read(orch_path).map_err(|e| (exit::BAD_ORCH, e))?;
    let interactive = !args.json && cli::is_interactive();
    let mut config = MemberConfig::new(args.dir.clone());
    config.listen = args.listen;
    config.max_peers = usize::from(args.max_peers);
    config.peer_timeout = Duration::try_from_secs_f64(args.peer_timeout)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .ok_or_else(|| {
            (
                exit::USAGE,
                anyhow::anyhow!("--peer-timeout must be at least 0.1 s"),
            )
        })?;
    config.pipeline = args.pipeline.map(usize::from);

    // q, Ctrl-C and SIGTERM all ask for a clean quit; a second Ctrl-C does not wait for it.
    // Set up first, so that a signal that comes while the file is checked, or right after
    // `start`, still ends in a summary.
    let quit = Arc::new(AtomicBool::new(false));
    let (wake, woken) = mpsc::channel::<()>();
    {
        let quit = Arc::clone(&quit);
        let wake = wake.clone();
        let _ = ctrlc::set_handler(move || {
            if quit.swap(true, Ordering::SeqCst) {
                cli::restore_terminal();
                std::process::exit(exit::INTERRUPTED);
            }
            let _ = wake.send(());
        });
    }

    let verify_bar =
        interactive.then(|| reading_bar("checking what is on disk", orch.file_size, bar_slot));
    let on_verify = |done: u64| {
        if let Some(bar) = &verify_bar {
            bar.set_position(done);
        }
    };
    let started_member = Member::start(orch.clone(), config, &on_verify);
    if let Some(bar) = bar_slot.lock().take() {
        bar.finish_and_clear();
    }
    let (member, events) = started_member.map_err(|e| (e.kind.exit_code(), e.error))?;
    let file = args.dir.join(&orch.filename);
    let at_start = member.status();
    let mut clock = Clock {
        start: Instant::now(),
        fetching: at_start.phase != Phase::Sharing,
        done: None,
    };

    if args.json {
        json::Event::new("start")
            .str("orch", &orch_path.display().to_string())
            .str("file", &file.display().to_string())
            .str("swarm", &member.swarm().to_hex())
            .str("listen", &member.local_addr().to_string())
            .uint("parts", u64::from(orch.part_count()))
            .uint("file_size", orch.file_size)
            .uint("parts_on_disk", u64::from(at_start.parts_done))
            .print();
    }

    let keys = interactive
        .then(|| {
            let quit = Arc::clone(&quit);
            cli::KeyReader::start(move |key| {
                // Ctrl-C in raw mode is a key, not a signal: the same as SIGINT.
                if quit.swap(true, Ordering::SeqCst) && key == cli::Key::Interrupt {
                    cli::restore_terminal();
                    std::process::exit(exit::INTERRUPTED);
                }
                let _ = wake.send(());
            })
        })
        .flatten();
    if interactive {
        let bar = ProgressBar::new(orch.file_size.max(1)).with_style(
            ProgressStyle::with_template("{spinner} [{bar:20}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
        bar.set_message(bar_message(&at_start, &Meter::default()));
        bar.set_position(at_start.bytes_done);
        if clock.fetching {
            bar.println(format!(
                "fetching {} ({}, {} parts of {}) from swarm {}; press q to quit",
                file.display(),
                cli::human_bytes(orch.file_size),
                orch.part_count(),
                cli::human_bytes(orch.part_size),
                &member.swarm().to_hex()[..12],
            ));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        *bar_slot.lock() = Some(bar);
    }

    let mut view = View {
        json: args.json,
        conductor_down: false,
    };
    let mut meter = Meter::default();
    let json_every = Duration::from_millis(500);
    let mut last_json = Instant::now();
    let mut announced_sharing = false;
    let outcome: Result<i32, Failure> = loop {
        for event in events.try_iter() {
            view.report(bar_slot, &event, &member, &mut clock);
        }
        let status = member.status();
        let now = Instant::now();
        meter.sample(now, &status);
        if status.phase == Phase::Sharing {
            clock.finished(now);
        }
        if let Some(bar) = bar_slot.lock().as_ref() {
            bar.set_length(status.bytes_total.max(1));
            bar.set_position(status.bytes_done);
            bar.set_message(bar_message(&status, &meter));
        }
        if args.json && last_json.elapsed() >= json_every {
            last_json = Instant::now();
            progress_event(&status, &meter, member.elapsed()).print();
        }
        match status.phase {
            Phase::Failed => {
                let error = member.fatal_error().unwrap_or_default();
                break Err((member.fatal_kind().exit_code(), anyhow::anyhow!(error)));
            }
            Phase::Sharing if !announced_sharing => {
                announced_sharing = true;
                if args.exit_when_done {
                    // Peers may be in the middle of receiving a part from us: let those finish.
                    member.finish_uploads(Duration::from_secs(2));
                    break Ok(exit::OK);
                }
                if let Some(bar) = bar_slot.lock().as_ref() {
                    bar.println(format!(
                        "{} is complete and verified; sharing it. Press q to quit.",
                        file.display()
                    ));
                }
            }
            _ => {}
        }
        if quit.load(Ordering::SeqCst) {
            break Ok(exit::OK);
        }
        let _ = woken.recv_timeout(Duration::from_millis(100));
    };

    member.quit(Duration::from_millis(700));
    if let Some(bar) = bar_slot.lock().take() {
        bar.finish_and_clear();
    }
    drop(keys);
    for event in events.try_iter() {
        view.report(bar_slot, &event, &member, &mut clock);
    }
    let status = member.status();
    let summary = Summary::new(&status, &clock, member.elapsed());
    if args.json {
        summary.event().print();
    }
    eprintln!("{}", summary.line());
    outcome
}

/// When the download ran: from the start of the swarm session to the verified file.
struct Clock {
    start: Instant,
    /// There was something to fetch when the member started.
    fetching: bool,
    done: Option<Instant>,
}

impl Clock {
    fn finished(&mut self, at: Instant) {
        if self.fetching && self.done.is_none() {
            self.done = Some(at);
        }
    }

    /// How long the download took, or has taken so far; zero when there was none.
    fn download_time(&self) -> Duration {
        if !self.fetching {
            return Duration::ZERO;
        }
        self.done.unwrap_or_else(Instant::now) - self.start
    }
}

/// Recent rates, from the last few seconds of samples.
#[derive(Default)]
struct Meter {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Meter {
    const WINDOW: Duration = Duration::from_secs(5);

    fn sample(&mut self, now: Instant, status: &Status) {
        self.samples
            .push_back((now, status.bytes_done, status.bytes_up));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > Self::WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bytes per second of (verified file data, upload) over the window, once it spans enough
    /// time to mean something.
    fn rates(&self) -> Option<(f64, f64)> {
        let (&(t0, done0, up0), &(t1, done1, up1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.duration_since(t0).as_secs_f64();
        (span >= 0.3).then(|| {
            (
                done1.saturating_sub(done0) as f64 / span,
                up1.saturating_sub(up0) as f64 / span,
            )
        })
    }

    fn eta(&self, status: &Status) -> Option<Duration> {
        let (rate, _) = self.rates()?;
        let left = status.bytes_total.saturating_sub(status.bytes_done);
        (rate >= 1.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }
}

fn percent(status: &Status) -> u64 {
    if status.bytes_total == 0 {
        return 100;
    }
    (status.bytes_done as u128 * 100 / status.bytes_total as u128) as u64
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `123/768 parts 16% 21.40 MiB/s ETA 3s 2 peers`, or what the member does once it has it all.
fn bar_message(status: &Status, meter: &Meter) -> String {
    let (rate_done, rate_up) = meter.rates().unwrap_or((0.0, 0.0));
    let peers = plural(status.peers, "peer", "peers");
    let head = format!(
        "{}/{} parts {}%",
        status.parts_done,
        status.parts_total,
        percent(status)
    );
    match status.phase {
        Phase::Fetching => format!(
            "{head} {}/s ETA {} {peers}",
            cli::human_bytes(rate_done as u64),
            meter
                .eta(status)
                .map_or_else(|| "--".to_string(), cli::human_duration),
        ),
        Phase::Finishing => format!("{head} checking the whole file {peers}"),
        Phase::Sharing => format!(
            "{head} sharing {}/s up {peers}",
            cli::human_bytes(rate_up as u64)
        ),
        Phase::Failed => format!("{head} stopped"),
    }
}

fn progress_event(status: &Status, meter: &Meter, elapsed: Duration) -> json::Event {
    let rate = meter.rates().map_or(0.0, |(done, _)| done);
    let event = json::Event::new("progress")
        .uint("parts_done", u64::from(status.parts_done))
        .uint("parts_total", u64::from(status.parts_total))
        .uint("bytes_done", status.bytes_done)
        .uint("bytes_total", status.bytes_total)
        .uint("bytes_down", status.bytes_down)
        .uint("bytes_up", status.bytes_up)
        .uint("peers", status.peers as u64)
        .num("rate", rate, 0);
    let event = match meter.eta(status) {
        Some(eta) if status.phase == Phase::Fetching => {
            event.num("eta_seconds", eta.as_secs_f64(), 1)
        }
        _ => event.null("eta_seconds"),
    };
    event.num("seconds", elapsed.as_secs_f64(), 3)
}

/// How events reach the screen or the script.
struct View {
    json: bool,
    /// The last word from the conductor was a failure (said once, until it answers again).
    conductor_down: bool,
}

impl View {
    fn report(&mut self, bar_slot: &BarSlot, event: &Event, member: &Member, clock: &mut Clock) {
        if let Event::Complete = event {
            clock.finished(Instant::now());
        }
        if self.json {
            let line = match event {
                Event::PeerConnected { addr } => {
                    json::Event::new("peer_connected").str("addr", &addr.to_string())
                }
                Event::PeerDropped { addr, reason } => json::Event::new("peer_dropped")
                    .str("addr", &addr.to_string())
                    .str("reason", reason),
                Event::PartRejected { index, addr } => json::Event::new("part_rejected")
                    .uint("part", u64::from(*index))
                    .str("addr", &addr.to_string()),
                Event::ConductorUnreachable { error, retry_in } => {
                    json::Event::new("conductor_unreachable")
                        .str("error", error)
                        .num("retry_in_secs", retry_in.as_secs_f64(), 1)
                }
                Event::ConductorOk { peers } => {
                    json::Event::new("conductor_ok").uint("peers", *peers as u64)
                }
                Event::Complete => json::Event::new("complete")
                    .num("download_seconds", clock.download_time().as_secs_f64(), 3)
                    .num("seconds", member.elapsed().as_secs_f64(), 3),
                Event::Fatal { .. } => return, // reported once, as the error
            };
            line.print();
            return;
        }
        let bar = bar_slot.lock();
        let Some(bar) = bar.as_ref() else { return };
        match event {
            Event::ConductorUnreachable { error, retry_in } if !self.conductor_down => {
                self.conductor_down = true;
                bar.println(format!(
                    "conductor unreachable ({error}); retrying in {:.0} s, working with known peers",
                    retry_in.as_secs_f64()
                ))
            }
            Event::ConductorOk { .. } if self.conductor_down => {
                self.conductor_down = false;
                bar.println("conductor reachable again");
            }
            Event::PartRejected { index, addr } => bar.println(format!(
                "part {index} from {addr} failed its checksum; peer dropped"
            )),
            _ => {}
        }
    }
}

/// What a run did, for the last line.
struct Summary {
    complete: bool,
    fetched: bool,
    parts_done: u32,
    parts_total: u32,
    bytes_down: u64,
    bytes_up: u64,
    failed: bool,
    /// The whole session, from joining the swarm to leaving it.
    session: Duration,
    /// The download alone (zero when the file was complete at start).
    download: Duration,
    peers_used: usize,
    parts_rejected: u64,
}

impl Summary {
    fn new(status: &Status, clock: &Clock, session: Duration) -> Summary {
        Summary {
            complete: status.phase == Phase::Sharing,
            fetched: clock.fetching,
            parts_done: status.parts_done,
            parts_total: status.parts_total,
            bytes_down: status.bytes_down,
            bytes_up: status.bytes_up,
            failed: status.phase == Phase::Failed,
            session,
            download: clock.download_time(),
            peers_used: status.peers_used,
            parts_rejected: status.parts_rejected,
        }
    }

    /// Average download rate in bytes per second, over the download time.
    fn rate_down(&self) -> f64 {
        if self.download.is_zero() {
            0.0
        } else {
            self.bytes_down as f64 / self.download.as_secs_f64().max(1e-3)
        }
    }

    fn event(&self) -> json::Event {
        json::Event::new("summary")
            .bool("complete", self.complete)
            .uint("parts_done", u64::from(self.parts_done))
            .uint("parts_total", u64::from(self.parts_total))
            .uint("bytes_down", self.bytes_down)
            .uint("bytes_up", self.bytes_up)
            .num("seconds", self.session.as_secs_f64(), 3)
            .num("download_seconds", self.download.as_secs_f64(), 3)
            .num("rate_down", self.rate_down(), 0)
            .uint("peers_used", self.peers_used as u64)
            .uint("parts_rejected", self.parts_rejected)
    }

    /// `done: 48.0 MiB down in 2.3 s (20.9 MiB/s), 12.0 MiB up, 3 peers used, 0 parts rejected`
    fn line(&self) -> String {
        let tail = format!(
            "{}, {}",
            plural(self.peers_used, "peer used", "peers used"),
            plural(
                self.parts_rejected as usize,
                "part rejected",
                "parts rejected"
            )
        );
        if !self.fetched {
            return format!(
                "seeded: nothing to fetch, {} up in {:.1} s, {tail}",
                cli::human_bytes(self.bytes_up),
                self.session.as_secs_f64()
            );
        }
        let verdict = if self.complete {
            "done".to_string()
        } else {
            format!(
                "{} at {}/{} parts (verified parts are kept)",
                if self.failed { "failed" } else { "stopped" },
                self.parts_done,
                self.parts_total
            )
        };
        format!(
            "{verdict}: {} down in {:.1} s ({}/s), {} up, {tail}",
            cli::human_bytes(self.bytes_down),
            self.download.as_secs_f64(),
            cli::human_bytes(self.rate_down() as u64),
            cli::human_bytes(self.bytes_up),
        )
    }
}

/// `member FILE.orch --check`: hashes the local file and reports the parts that do not match.
fn check(args: &Args, bar_slot: &BarSlot) -> Result<i32, Failure> {
    let orch_path = orch_path(args);
    let orch = Orchestra::read(orch_path).map_err(|e| (exit::BAD_ORCH, e))?;
    let started = Instant::now();
    let bar = (!args.json && cli::is_interactive())
        .then(|| reading_bar("checking", orch.file_size, bar_slot));
    let progress = |done: u64| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    let report = file_check::check(&args.dir, &orch, &progress);
    if let Some(bar) = bar_slot.lock().take() {
        bar.finish_and_clear();
    }
    let report = report.map_err(|e| (exit::DISK, e))?;
    let code = if report.is_complete(&orch) {
        exit::OK
    } else if report.orch_is_inconsistent() {
        exit::BAD_ORCH
    } else {
        exit::FAILURE
    };
    if args.json {
        let event = json::Event::new("check")
            .str("orch", &orch_path.display().to_string())
            .str("file", &report.path.display().to_string())
            .bool("partial", report.partial)
            .uint("size", report.size)
            .uint("parts_total", u64::from(report.parts_total))
            .uint("parts_valid", u64::from(report.parts_valid()))
            .value("bad", serde_json::json!(report.bad));
        let event = match report.file_checksum_ok {
            Some(ok) => event.bool("file_checksum_ok", ok),
            None => event.null("file_checksum_ok"),
        };
        event
            .bool("complete", code == exit::OK)
            .num("seconds", started.elapsed().as_secs_f64(), 3)
            .print();
    } else {
        println!("{}", check_line(&report, &orch));
    }
    Ok(code)
}

/// What `--check` says about the file, in one line.
fn check_line(report: &CheckReport, orch: &Orchestra) -> String {
    let path = report.path.display();
    let total = report.parts_total;
    if report.is_complete(orch) {
        return format!(
            "{path}: complete and valid: all {total} parts and the whole file's SHA-256 match"
        );
    }
    if report.orch_is_inconsistent() {
        return format!(
            "{path}: every part matches but the whole file's SHA-256 does not: the .orch is \
             inconsistent"
        );
    }
    let mut line = format!("{path}: {} of {total} parts valid", report.parts_valid());
    if !report.bad.is_empty() {
        line.push_str(&format!(
            "; {} bad or missing: {}",
            report.parts_bad(),
            file_check::describe_ranges(&report.bad, 20)
        ));
    }
    if report.size != orch.file_size && !report.partial {
        line.push_str(&format!(
            "; it is {} bytes, the .orch says {}",
            report.size, orch.file_size
        ));
    }
    line.push_str(if report.partial {
        " (an unfinished download: run member to fetch the rest)"
    } else {
        " (damaged: move it away and run member to fetch a good copy)"
    });
    line
}
