//! `member FILE.orch`: fetch the file a .orch describes from its swarm, and share it.
//! `member FILE.orch --check`: compare the file on disk with the .orch, offline.
//! The work is the library's ([`torrentnchill::member`]); this parses flags and reports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use torrentnchill::cli::exit::{self, Failure, OrExit};
use torrentnchill::cli::{self, units, BarSlot};
use torrentnchill::member::peer::BASE_QUEUED_UPLOADS as MAX_PIPELINE;
use torrentnchill::member::report::{JsonReport, TerminalReport};
use torrentnchill::member::session::{self, QuitSignal, Report, SessionOptions};
use torrentnchill::member::{check, origin, Member, MemberConfig};
use torrentnchill::orch::{self, Orchestra};
use torrentnchill::secure::{self, SwarmSecret};
use torrentnchill::{json, sync::Mutex};

const EXAMPLES: &str = "\
Examples:
  member bigfile.iso.orch                  fetch into the current folder, then share until q
  member bigfile.iso.orch --dir /data      fetch into /data (a complete file there is seeded)
  member x.orch --exit-when-done --json    for scripts: JSON events, exit 0 once verified
  member x.orch --listen 0.0.0.0:7000      accept peers on a fixed port (default: any free port)
  member x.orch --max-upload-rate 20MB/s   send at most 20 MB/s to all peers together
  member x.orch --conductor t2.lan:9999    announce there instead of line 1 of the .orch
  member x.orch --origin https://mirror.example/x.iso
                                           also take parts the swarm lacks from a web server
  member x.orch --key /secure/x.orch.key  a private swarm's key kept elsewhere (default: x.orch.key)
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
    /// Drop a peer that sends nothing we asked for during this long: 20s, 500ms (a bare
    /// number is seconds); at least 100ms.
    #[arg(long, default_value = "20s", value_parser = units::parse_seconds_or_duration)]
    peer_timeout: Duration,
    /// Requests in flight per peer, at most 64 (default: follows each peer's rate and round trip).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_PIPELINE as i64))]
    pipeline: Option<u16>,
    /// Most bytes per second sent to all peers together: 50MB/s, 400Mbit/s, 20MiB/s.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate)]
    max_upload_rate: Option<u64>,
    /// Most bytes per second received from all peers together.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate)]
    max_download_rate: Option<u64>,
    /// Announce to this conductor instead of those on line 1 of the .orch (repeatable: all of
    /// them, at most 16).
    #[arg(long, value_name = "HOST:PORT")]
    conductor: Vec<String>,
    /// Also take parts from this HTTP(S) URL of the file (Range requests), when the swarm
    /// does not have them or delivers less; every part is verified. Repeatable.
    #[arg(long, value_name = "URL", value_parser = origin::check_url)]
    origin: Vec<String>,
    /// Most bytes per second taken from all origins together: 50MB/s, 400Mbit/s, 20MiB/s.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate, requires = "origin")]
    origin_max_rate: Option<u64>,
    /// The key file of a private swarm (default: FILE.orch.key beside the .orch, if there).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Write logs to this file (its folder is created) instead of the terminal.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Check DIR/FILENAME (or DIR/FILENAME.part if only that exists) against the .orch without
    /// the network, list the bad parts and exit: 0 if complete and valid, 1 if not.
    #[arg(long, conflicts_with_all = ["listen", "conductor", "exit_when_done", "max_peers", "peer_timeout", "pipeline", "max_upload_rate", "max_download_rate", "origin", "origin_max_rate"])]
    check: bool,
    /// Print shell completions or a man page and exit.
    #[arg(long, value_name = "WHAT", hide = true, exclusive = true)]
    generate: Option<cli::Generate>,
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    let bar: BarSlot = Arc::new(Mutex::new(None));
    let result = match args.generate {
        Some(what) => cli::generate(what, Args::command())
            .map(|()| exit::OK)
            .or_exit(exit::FAILURE),
        None => cli::init_logging("warn", args.log_file.as_deref(), Arc::clone(&bar))
            .or_exit(exit::DISK)
            .and_then(|()| {
                if args.check {
                    check(&args, &bar)
                } else {
                    run(&args, &bar)
                }
            }),
    };
    if let Some(bar) = bar.lock().take() {
        bar.finish_and_clear();
    }
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(failure) => failure.report(args.json),
    }
}

fn read_orch(args: &Args) -> Result<(&std::path::Path, Orchestra), Failure> {
    let path = args.orch.as_deref().unwrap_or(std::path::Path::new(""));
    Ok((path, Orchestra::read(path).or_exit(exit::BAD_ORCH)?))
}

/// The private swarm's secret: `--key`, else `FILE.orch.key` beside the .orch when it exists;
/// none for a public swarm.
fn read_key(args: &Args, orch_path: &std::path::Path) -> Result<Option<SwarmSecret>, Failure> {
    let path = match &args.key {
        Some(path) => path.clone(),
        None => {
            let beside = secure::key_path(orch_path);
            if !beside.exists() {
                return Ok(None);
            }
            beside
        }
    };
    Ok(Some(SwarmSecret::load(&path).or_exit(exit::BAD_ORCH)?))
}

fn run(args: &Args, bar: &BarSlot) -> Result<i32, Failure> {
    let (orch_path, orch) = read_orch(args)?;
    if args.peer_timeout < Duration::from_millis(100) {
        let error = anyhow::anyhow!("--peer-timeout must be at least 100ms");
        return Err(Failure::new(exit::USAGE, error));
    }
    if !args.conductor.is_empty() {
        // The same rules as line 1 of a .orch: valid, distinct, and not too many.
        orch::check_conductors(&args.conductor.join(",")).map_err(|why| {
            Failure::new(exit::USAGE, anyhow::anyhow!("invalid --conductor: {why}"))
        })?;
    }
    let interactive = !args.json && cli::is_interactive();
    let mut config = MemberConfig::new(args.dir.clone());
    config.listen = args.listen;
    config.max_peers = usize::from(args.max_peers);
    config.peer_timeout = args.peer_timeout;
    config.pipeline = args.pipeline.map(usize::from);
    config.max_upload_rate = args.max_upload_rate;
    config.max_download_rate = args.max_download_rate;
    config.conductors = args.conductor.clone();
    config.origins = args.origin.clone();
    config.origin_max_rate = args.origin_max_rate;
    config.secret = read_key(args, orch_path)?;

    // Set up first, so that a signal that comes while the file is checked still ends cleanly.
    let quit = Arc::new(QuitSignal::default());
    quit.on_signals();

    let verify_bar =
        interactive.then(|| cli::reading_bar("checking what is on disk", orch.file_size, bar));
    let on_verify = |done: u64| verify_bar.iter().for_each(|b| b.set_position(done));
    let started = Member::start(orch.clone(), config, &on_verify);
    if let Some(bar) = bar.lock().take() {
        bar.finish_and_clear();
    }
    let (member, events) = started.map_err(Failure::from)?;

    let _keys = interactive.then(|| quit.on_keys()).flatten();
    let file = args.dir.join(&orch.filename).display().to_string();
    let mut report: Box<dyn Report> = if args.json {
        Box::new(JsonReport::new(orch_path.display().to_string(), file))
    } else {
        Box::new(TerminalReport::new(Arc::clone(bar), file, interactive))
    };
    let options = SessionOptions {
        exit_when_done: args.exit_when_done,
    };
    let (summary, outcome) = session::run(member, &events, &quit, report.as_mut(), options);
    eprintln!("{}", summary.line());
    outcome.map(|()| exit::OK)
}

/// `member FILE.orch --check`: hashes the local file and reports the parts that do not match.
fn check(args: &Args, bar: &BarSlot) -> Result<i32, Failure> {
    let (orch_path, orch) = read_orch(args)?;
    let started = Instant::now();
    let reading = (!args.json && cli::is_interactive())
        .then(|| cli::reading_bar("checking", orch.file_size, bar));
    let progress = |done: u64| reading.iter().for_each(|b| b.set_position(done));
    let report = check::check(&args.dir, &orch, &progress);
    if let Some(bar) = bar.lock().take() {
        bar.finish_and_clear();
    }
    let report = report.or_exit(exit::DISK)?;
    if args.json {
        let seconds = json::seconds(started.elapsed());
        json::print(&report.event(&orch, orch_path, seconds));
    } else {
        println!("{}", report.describe(&orch));
    }
    Ok(report.exit_code(&orch))
}
