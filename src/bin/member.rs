//! `member FILE.orch`: fetch the file a .orch describes from its swarm, and share it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use torrentnchill::cli::{self, exit, BarSlot};
use torrentnchill::json::escape as json_string;
use torrentnchill::member::peer::MAX_QUEUED_UPLOADS;
use torrentnchill::member::{Event, Member, MemberConfig, Phase, Status};
use torrentnchill::orch::Orchestra;

const EXAMPLES: &str = "\
Examples:
  member bigfile.iso.orch                  fetch into the current folder, then share until q
  member bigfile.iso.orch --dir /data      fetch into /data (a complete file there is seeded)
  member x.orch --exit-when-done --json    for scripts: JSON events, exit 0 once verified
  member x.orch --listen 0.0.0.0:7000      accept peers on a fixed port (default: any free port)";

#[derive(Parser)]
#[command(version, about = "Fetch the file a .orch describes from its swarm, and share it",
          after_help = EXAMPLES)]
struct Args {
    /// The .orch file describing what to fetch.
    orch: PathBuf,
    /// Folder for the data file (FILENAME from the .orch).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Address to accept peers on; port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Exit 0 as soon as the file is complete and verified, instead of sharing until q.
    #[arg(long)]
    exit_when_done: bool,
    /// Write newline-delimited JSON events to stdout instead of drawing a progress bar.
    #[arg(long)]
    json: bool,
    /// Most peer connections at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
    max_peers: u16,
    /// Drop a peer that sends nothing we asked for during this many seconds.
    #[arg(long, default_value_t = 20.0)]
    peer_timeout: f64,
    /// Requests in flight per peer, at most 64 (default: from the part size).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUED_UPLOADS as i64))]
    pipeline: Option<u16>,
    /// Write logs to this file (its folder is created) instead of the terminal.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bar: BarSlot = Arc::new(Mutex::new(None));
    if let Err(e) = cli::init_logging("warn", args.log_file.as_deref(), Arc::clone(&bar)) {
        eprintln!("error: {e:#}");
        return ExitCode::from(exit::DISK as u8);
    }
    let code = match run(&args, &bar) {
        Ok(code) => code,
        Err((code, e)) => {
            if let Some(bar) = bar.lock().unwrap().take() {
                bar.finish_and_clear();
            }
            if args.json {
                println!(
                    "{{\"event\":\"error\",\"message\":{}}}",
                    json_string(&format!("{e:#}"))
                );
            }
            eprintln!("error: {e:#}");
            code
        }
    };
    ExitCode::from(code as u8)
}

type Failure = (i32, anyhow::Error);

fn run(args: &Args, bar_slot: &BarSlot) -> Result<i32, Failure> {
    let orch = Orchestra::read(&args.orch).map_err(|e| (exit::BAD_ORCH, e))?;
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

    let started = Instant::now();
    let verify_bar = interactive.then(|| {
        let bar = ProgressBar::new(orch.file_size).with_style(
            ProgressStyle::with_template(
                "checking what is on disk [{bar:30}] {percent}% {binary_bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
        bar
    });
    let on_verify = |done: u64| {
        if let Some(bar) = &verify_bar {
            bar.set_position(done);
        }
    };
    let started_member = Member::start(orch.clone(), config, &on_verify);
    if let Some(bar) = verify_bar {
        bar.finish_and_clear();
    }
    let (member, events) = started_member.map_err(|e| (e.kind.exit_code(), e.error))?;

    if args.json {
        println!(
            "{{\"event\":\"start\",\"orch\":{},\"file\":{},\"swarm\":\"{}\",\"listen\":\"{}\",\"parts\":{},\"file_size\":{},\"parts_on_disk\":{}}}",
            json_string(&args.orch.display().to_string()),
            json_string(&args.dir.join(&orch.filename).display().to_string()),
            member.swarm(),
            member.local_addr(),
            orch.part_count(),
            orch.file_size,
            member.status().parts_done,
        );
    }

    let quit = Arc::new(AtomicBool::new(false));
    {
        let quit = Arc::clone(&quit);
        let _ = ctrlc::set_handler(move || quit.store(true, Ordering::SeqCst));
    }
    let keys = interactive
        .then(|| {
            let quit = Arc::clone(&quit);
            cli::KeyReader::start(move |key| {
                if key == b'q' || key == b'Q' {
                    quit.store(true, Ordering::SeqCst);
                }
            })
        })
        .flatten();
    if interactive {
        let bar = ProgressBar::new(orch.file_size.max(1)).with_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {msg} {percent:>3}% {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
        bar.enable_steady_tick(Duration::from_millis(200));
        *bar_slot.lock().unwrap() = Some(bar);
    }

    let tick = Duration::from_millis(if interactive { 100 } else { 50 });
    let json_every = Duration::from_millis(500);
    let mut last_json = Instant::now();
    let mut announced_sharing = false;
    let outcome: Result<i32, Failure> = loop {
        for event in events.try_iter() {
            report_event(args, bar_slot, &event);
        }
        let status = member.status();
        if let Some(bar) = bar_slot.lock().unwrap().as_ref() {
            bar.set_length(status.bytes_total.max(1));
            bar.set_position(status.bytes_done);
            bar.set_message(format!(
                "{}/{} parts · {} peers",
                status.parts_done, status.parts_total, status.peers
            ));
        }
        if args.json && last_json.elapsed() >= json_every {
            last_json = Instant::now();
            println!("{}", progress_json(&status, member.elapsed()));
        }
        match status.phase {
            Phase::Failed => {
                let error = member.fatal_error().unwrap_or_default();
                break Err((member.fatal_kind().exit_code(), anyhow::anyhow!(error)));
            }
            Phase::Sharing if !announced_sharing => {
                announced_sharing = true;
                if args.exit_when_done {
                    break Ok(exit::OK);
                }
                if let Some(bar) = bar_slot.lock().unwrap().as_ref() {
                    bar.set_position(status.bytes_total);
                    bar.println(format!(
                        "{} is complete and verified; sharing it. Press q to quit.",
                        args.dir.join(&orch.filename).display()
                    ));
                }
            }
            _ => {}
        }
        if quit.load(Ordering::SeqCst) {
            break Ok(exit::OK);
        }
        std::thread::sleep(tick);
    };

    member.quit(Duration::from_millis(700));
    if let Some(bar) = bar_slot.lock().unwrap().take() {
        bar.finish_and_clear();
    }
    drop(keys);
    for event in events.try_iter() {
        report_event(args, bar_slot, &event);
    }
    let status = member.status();
    let elapsed = started.elapsed();
    if args.json {
        println!("{}", summary_json(&status, elapsed));
    }
    if outcome.is_ok() {
        eprintln!("{}", summary_line(&status, elapsed));
    }
    outcome
}

fn report_event(args: &Args, bar_slot: &BarSlot, event: &Event) {
    if args.json {
        let line = match event {
            Event::PeerConnected { addr } => {
                format!("{{\"event\":\"peer_connected\",\"addr\":\"{addr}\"}}")
            }
            Event::PeerDropped { addr, reason } => format!(
                "{{\"event\":\"peer_dropped\",\"addr\":\"{addr}\",\"reason\":{}}}",
                json_string(reason)
            ),
            Event::PartRejected { index, addr } => {
                format!("{{\"event\":\"part_rejected\",\"part\":{index},\"addr\":\"{addr}\"}}")
            }
            Event::ConductorUnreachable { error, retry_in } => format!(
                "{{\"event\":\"conductor_unreachable\",\"error\":{},\"retry_in_secs\":{:.1}}}",
                json_string(error),
                retry_in.as_secs_f64()
            ),
            Event::ConductorOk { peers } => {
                format!("{{\"event\":\"conductor_ok\",\"peers\":{peers}}}")
            }
            Event::Complete => "{\"event\":\"complete\"}".to_string(),
            Event::Fatal { .. } => return, // reported once, as the error
        };
        println!("{line}");
        return;
    }
    let bar = bar_slot.lock().unwrap();
    let Some(bar) = bar.as_ref() else { return };
    match event {
        Event::ConductorUnreachable { error, retry_in } => bar.println(format!(
            "conductor unreachable ({error}); retrying in {:.0} s, working with known peers",
            retry_in.as_secs_f64()
        )),
        Event::PartRejected { index, addr } => bar.println(format!(
            "part {index} from {addr} failed its checksum; peer dropped"
        )),
        _ => {}
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-3)
}

fn progress_json(s: &Status, elapsed: Duration) -> String {
    format!(
        "{{\"event\":\"progress\",\"parts_done\":{},\"parts_total\":{},\"bytes_done\":{},\"bytes_total\":{},\"bytes_down\":{},\"bytes_up\":{},\"peers\":{},\"seconds\":{:.3}}}",
        s.parts_done, s.parts_total, s.bytes_done, s.bytes_total, s.bytes_down, s.bytes_up, s.peers,
        elapsed.as_secs_f64()
    )
}

fn summary_json(s: &Status, elapsed: Duration) -> String {
    format!(
        "{{\"event\":\"summary\",\"complete\":{},\"bytes_down\":{},\"bytes_up\":{},\"seconds\":{:.3},\"rate_down\":{:.0},\"peers_used\":{},\"parts_rejected\":{}}}",
        s.phase == Phase::Sharing,
        s.bytes_down,
        s.bytes_up,
        elapsed.as_secs_f64(),
        rate(s.bytes_down, elapsed),
        s.peers_used,
        s.parts_rejected
    )
}

fn summary_line(s: &Status, elapsed: Duration) -> String {
    format!(
        "{}: {} down, {} up in {:.1} s ({}/s), {} peers used, {} parts rejected",
        if s.phase == Phase::Sharing {
            "done"
        } else {
            "stopped"
        },
        cli::human_bytes(s.bytes_down),
        cli::human_bytes(s.bytes_up),
        elapsed.as_secs_f64(),
        cli::human_bytes(rate(s.bytes_down, elapsed) as u64),
        s.peers_used,
        s.parts_rejected
    )
}
