//! `conductor`: flags become a [`ConductorConfig`], [`torrentnchill::conductor`] runs it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use torrentnchill::cli::exit::{self, Failure, OrExit};
use torrentnchill::conductor::{self, Conductor, ConductorConfig, StatsEvent};
use torrentnchill::sync::Mutex;
use torrentnchill::{cli, json};

/// How long `--stats` waits for the conductor.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

const EXAMPLES: &str = "\
Examples:
  conductor                                    listen on 0.0.0.0:9999, members re-announce every 30 s
  conductor --listen 0.0.0.0:7000 --interval 10s
  conductor --log-file /var/log/tnc/conductor.log   log there (the folder is created)
  conductor --json                             JSON events on stdout: listening, join, leave, ...
  conductor --state /var/lib/tnc/state.json    keep the member lists across a restart
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
    #[arg(long, value_name = "ADDR:PORT", default_value_t = conductor::DEFAULT_LISTEN)]
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
    /// Keep the member lists in this file across restarts: read at start (a damaged file is
    /// reported and ignored), replaced atomically as members join and leave, and as it stops.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Append the log to this file (folders are created) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Write newline-delimited JSON events to stdout (docs/JSON.md): listening, join, leave,
    /// expire, summary, state_loaded, state_ignored, state_not_saved; with --stats, one stats
    /// event.
    #[arg(long)]
    json: bool,
    /// Print the counters of the conductor at HOST:PORT and exit.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["listen", "interval", "max_clients", "max_swarms", "max_swarm_members", "max_members", "max_clients_per_ip", "max_members_per_ip", "state"])]
    stats: Option<String>,
    /// Print shell completions or a man page and exit.
    #[arg(long, value_name = "WHAT", hide = true, exclusive = true)]
    generate: Option<cli::Generate>,
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    let result = match args.generate {
        Some(what) => cli::generate(what, Args::command()).or_exit(exit::FAILURE),
        None => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(args.json),
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let no_bar = Arc::new(Mutex::new(None));
    cli::init_logging("info", args.log_file.as_deref(), no_bar).or_exit(exit::DISK)?;
    if let Some(target) = &args.stats {
        let stats = conductor::stats(target, STATS_TIMEOUT).or_exit(exit::NETWORK)?;
        match args.json {
            true => json::print(&StatsEvent::new(target, &stats)),
            false => println!("{stats}"),
        }
        return Ok(());
    }

    // Set first, so that whoever reads the first line can already stop the conductor cleanly.
    let (stop, stop_asked) = mpsc::channel();
    ctrlc::set_handler(move || stop.send(()).unwrap_or(())).or_exit(exit::FAILURE)?;
    let mut conductor = Conductor::start(ConductorConfig {
        listen: args.listen,
        interval: args.interval,
        max_clients: args.max_clients,
        max_swarms: args.max_swarms,
        max_swarm_members: args.max_swarm_members,
        max_members: args.max_members,
        max_clients_per_ip: args.max_clients_per_ip,
        max_members_per_ip: args.max_members_per_ip,
        state: args.state.clone(),
        ..ConductorConfig::default()
    })?;
    // Scripts and tests read the port from the first line, so it must leave the process now.
    // Without --json nobody reads the events: dropping their receiver stops their making.
    let printer = conductor.take_events().filter(|_| args.json).map(|events| {
        std::thread::Builder::new().spawn(move || events.iter().for_each(|e| json::print(&e)))
    });
    let printer = printer
        .transpose()
        .context("cannot start the event printer")
        .or_exit(exit::FAILURE)?;
    if !args.json {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", conductor.local_addr())
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")
            .or_exit(exit::FAILURE)?;
    }
    let _ = stop_asked.recv(); // Ctrl-C or SIGTERM
    let (last, seconds) = (conductor.shutdown(), started.elapsed().as_secs_f64());
    log::info!("stopping after {seconds:.0} s: {last}");
    // The events end with the last summary, now that the conductor has stopped.
    let _ = printer.map(std::thread::JoinHandle::join);
    Ok(())
}
