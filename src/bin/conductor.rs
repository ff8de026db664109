//! `conductor`: the tracker members announce themselves to. See [`torrentnchill::conductor`].

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use torrentnchill::cli::{self, exit, BarSlot};
use torrentnchill::conductor::{self, Conductor, ConductorConfig};
use torrentnchill::json;
use torrentnchill::sync::Mutex;

/// How long `--stats` waits for the conductor.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the conductor waits for its own counters when it reports them.
const SELF_STATS_TIMEOUT: Duration = Duration::from_secs(1);
/// `--json` summaries come as often as the summary log line: every interval, at most once a
/// minute.
const MIN_SUMMARY_PERIOD: Duration = Duration::from_secs(60);

const EXAMPLES: &str = "\
Examples:
  conductor                                    listen on 0.0.0.0:9999, members re-announce every 30 s
  conductor --listen 0.0.0.0:7000 --interval 10s
  conductor --log-file /var/log/tnc/conductor.log   log there (the folder is created)
  conductor --json                             JSON events on stdout: listening, join, leave, ...
  conductor --stats tracker.lan:9999           print a running conductor's counters
  RUST_LOG=debug conductor                     also log every refresh and refused client
  conductor --generate bash                    print bash completions (also zsh, fish, man)

It prints `listening on IP:PORT` once it accepts connections, logs joins, leaves, expiries and
(every interval, at most once a minute) a one-line summary. Ctrl-C or SIGTERM stops it after a
last summary.

Exit status: 0 stopped by Ctrl-C or SIGTERM, or --stats answered; 1 other error; 2 bad command
line; 4 network (cannot listen, or --stats cannot reach the conductor); 5 cannot open the log
file.";

/// Introduces the members of each swarm to each other.
///
/// Prints `listening on IP:PORT` on stdout once it accepts connections (or, with --json, JSON
/// events); everything else goes to the log (stderr, or --log-file). RUST_LOG sets the log level
/// (default: info).
#[derive(Parser)]
#[command(name = "conductor", version, after_help = EXAMPLES)]
struct Args {
    /// Address and port to accept members on (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = conductor::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// How often members re-announce, e.g. 500ms, 30s, 2m. Members silent for about two
    /// intervals are forgotten.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = cli::units::parse_duration)]
    interval: Duration,

    /// Most client connections served at once; more are answered `ERROR busy`.
    #[arg(long, value_name = "N", default_value_t = conductor::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,

    /// Most swarms tracked at once.
    #[arg(long, value_name = "N", default_value_t = conductor::DEFAULT_MAX_SWARMS)]
    max_swarms: usize,

    /// Most members in one swarm.
    #[arg(long, value_name = "N", default_value_t = conductor::DEFAULT_MAX_SWARM_MEMBERS)]
    max_swarm_members: usize,

    /// Most members over all swarms.
    #[arg(long, value_name = "N", default_value_t = conductor::DEFAULT_MAX_MEMBERS)]
    max_members: usize,

    /// Most connections from one address (IPv4, or IPv6 /64) at once.
    #[arg(long, value_name = "N", default_value_t = conductor::DEFAULT_MAX_CLIENTS_PER_IP)]
    max_clients_per_ip: usize,

    /// Most members one address holds over all swarms (raise it for many members behind one NAT).
    #[arg(long, value_name = "N", default_value_t = conductor::DEFAULT_MAX_MEMBERS_PER_IP)]
    max_members_per_ip: usize,

    /// Append the log to this file (folders are created) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Write newline-delimited JSON events to stdout (docs/JSON.md): listening, join, leave,
    /// expire, summary; with --stats, one stats event.
    #[arg(long)]
    json: bool,

    /// Print the counters of the conductor at HOST:PORT and exit.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["listen", "interval", "max_clients", "max_swarms", "max_swarm_members", "max_members", "max_clients_per_ip", "max_members_per_ip"])]
    stats: Option<String>,

    /// Print shell completions or a man page and exit.
    #[arg(long, value_name = "WHAT", hide = true, exclusive = true)]
    generate: Option<cli::Generate>,
}

/// An exit code and the error to report with it.
type Failure = (i32, anyhow::Error);

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    let result = match args.generate {
        Some(what) => cli::generate(what, Args::command()).map_err(|e| (exit::FAILURE, e)),
        None => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => cli::report_failure(args.json, code, &error),
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let no_bar: BarSlot = Arc::new(Mutex::new(None));
    let tap: Option<cli::Tap> = args
        .json
        .then(|| (log::LevelFilter::Info, Box::new(json_from_log) as _));
    cli::init_logging("info", args.log_file.as_deref(), no_bar, tap)
        .map_err(|e| (exit::DISK, e))?;

    if let Some(target) = &args.stats {
        let stats = conductor::stats(target, STATS_TIMEOUT).map_err(|e| (exit::NETWORK, e))?;
        if args.json {
            json::Event::new("stats")
                .str("conductor", target)
                .uint("swarms", stats.swarms)
                .uint("members", stats.members)
                .num("announces_per_sec", stats.announces_per_sec, 1)
                .print();
        } else {
            println!(
                "swarms: {}  members: {}  announces/s: {:.1}",
                stats.swarms, stats.members, stats.announces_per_sec
            );
        }
        return Ok(());
    }

    let conductor = Conductor::bind(ConductorConfig {
        listen: args.listen,
        interval: args.interval,
        max_clients: args.max_clients,
        max_swarms: args.max_swarms,
        max_swarm_members: args.max_swarm_members,
        max_members: args.max_members,
        max_clients_per_ip: args.max_clients_per_ip,
        max_members_per_ip: args.max_members_per_ip,
        ..ConductorConfig::default()
    })
    .map_err(|e| {
        // The socket refused (address in use, not ours, no permission) or a limit is wrong.
        let network = e.root_cause().downcast_ref::<std::io::Error>().is_some();
        (if network { exit::NETWORK } else { exit::USAGE }, e)
    })?;
    let addr = conductor.local_addr().map_err(|e| (exit::NETWORK, e))?;

    // Before the line below, so that whoever reads it can already stop the conductor cleanly.
    let json = args.json;
    let _ = ctrlc::set_handler(move || {
        report_summary(addr, started, json, true);
        std::process::exit(exit::OK);
    });

    // Scripts and tests read the port from this line, so it must leave the process now.
    if args.json {
        json::Event::new("listening")
            .str("addr", &addr.to_string())
            .num("interval_secs", args.interval.as_secs_f64(), 3)
            .print();
    } else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")
            .map_err(|e| (exit::FAILURE, e))?;
    }

    if json {
        let period = args.interval.max(MIN_SUMMARY_PERIOD);
        std::thread::Builder::new()
            .name("json-summary".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                report_summary(addr, started, true, false);
            })
            .context("cannot start the summary thread")
            .map_err(|e| (exit::FAILURE, e))?;
    }
    conductor.run().map_err(|e| (exit::FAILURE, e))
}

/// Where this process can reach its own listener.
fn self_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Asks the running conductor (this process) for its counters and reports them: a `summary`
/// event with `--json`, and a log line when it stops.
fn report_summary(addr: SocketAddr, started: Instant, json: bool, last: bool) {
    let stats = conductor::stats(&self_address(addr).to_string(), SELF_STATS_TIMEOUT);
    let seconds = started.elapsed().as_secs_f64();
    if last {
        match &stats {
            Ok(s) => log::info!(
                "stopping after {seconds:.0} s: swarms: {}  members: {}  announces/s: {:.1}",
                s.swarms,
                s.members,
                s.announces_per_sec
            ),
            Err(e) => log::info!("stopping after {seconds:.0} s (no last count: {e:#})"),
        }
    }
    if !json {
        return;
    }
    match stats {
        Ok(s) => json::Event::new("summary")
            .uint("swarms", s.swarms)
            .uint("members", s.members)
            .num("announces_per_sec", s.announces_per_sec, 1)
            .num("seconds", seconds, 3)
            .bool("last", last)
            .print(),
        Err(e) => log::warn!("cannot count for the summary: {e:#}"),
    }
}

/// With `--json`, the conductor's log lines about members (`join SWARM ADDR`, `rejoin SWARM
/// ADDR (new peer id)`, `leave SWARM ADDR`, `expire SWARM ADDR`, `expired N more members`)
/// become events on stdout.
fn json_from_log(record: &log::Record) {
    if record.level() != log::Level::Info
        || !record.target().starts_with("torrentnchill::conductor")
    {
        return;
    }
    if let Some(event) = event_for(&record.args().to_string()) {
        event.print();
    }
}

fn event_for(message: &str) -> Option<json::Event> {
    let words: Vec<&str> = message.split(' ').collect();
    let member = |event: &str, swarm: &str, addr: &str| {
        let addr: SocketAddr = addr.parse().ok()?;
        Some(
            json::Event::new(event)
                .str("swarm", swarm)
                .str("addr", &addr.to_string()),
        )
    };
    match words.as_slice() {
        ["join", swarm, addr] => Some(member("join", swarm, addr)?.bool("rejoin", false)),
        ["rejoin", swarm, addr, "(new", "peer", "id)"] => {
            Some(member("join", swarm, addr)?.bool("rejoin", true))
        }
        ["leave", swarm, addr] => member("leave", swarm, addr),
        ["expire", swarm, addr] => member("expire", swarm, addr),
        ["expired", count, "more", "members"] => {
            Some(json::Event::new("expire_more").uint("count", count.parse().ok()?))
        }
        _ => None,
    }
}
