//! `conductor`: the tracker members announce themselves to. See [`torrentnchill::conductor`].

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use torrentnchill::conductor::{self, Conductor, ConductorConfig};

/// How long `--stats` waits for the conductor.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors needed besides one per client: stdio, the listener, the log file.
const FD_MARGIN: usize = 32;

/// Introduces the members of each swarm to each other.
///
/// Prints `listening on IP:PORT` on stdout once it accepts connections; everything else goes
/// to the log (stderr, or --log-file). RUST_LOG sets the log level (default: info).
#[derive(Parser)]
#[command(name = "conductor", version)]
struct Args {
    /// Address and port to accept members on (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = conductor::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// How often members re-announce, e.g. 500ms, 30s, 2m. Members silent for about two
    /// intervals are forgotten.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = conductor::parse_duration)]
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

    /// Append the log to this file (folders are created) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Print the counters of the conductor at HOST:PORT and exit.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["listen", "interval", "max_clients", "max_swarms", "max_swarm_members", "max_members"])]
    stats: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conductor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    init_log(args.log_file.as_deref())?;
    if let Some(target) = args.stats {
        let stats = conductor::stats(&target, STATS_TIMEOUT)?;
        println!(
            "swarms: {}  members: {}  announces/s: {:.1}",
            stats.swarms, stats.members, stats.announces_per_sec
        );
        return Ok(());
    }
    let conductor = Conductor::bind(ConductorConfig {
        listen: args.listen,
        interval: args.interval,
        max_clients: args.max_clients,
        max_swarms: args.max_swarms,
        max_swarm_members: args.max_swarm_members,
        max_members: args.max_members,
        ..ConductorConfig::default()
    })?;
    #[cfg(unix)]
    raise_fd_limit(args.max_clients.saturating_add(FD_MARGIN) as libc::rlim_t);
    // Scripts and tests read the port from this line, so it must leave the process now.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", conductor.local_addr()?)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    drop(stdout);
    conductor.run()
}

fn init_log(log_file: Option<&Path>) -> anyhow::Result<()> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(path) = log_file {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create folder {}", parent.display()))?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder.init();
    Ok(())
}

/// Each client holds a socket, and the usual soft limit of 1024 descriptors would run out before
/// the default client cap is reached (accept would then fail instead of answering `busy`), so
/// raise it as far as the hard limit allows.
#[cfg(unix)]
fn raise_fd_limit(wanted: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let current = limit.rlim_cur;
    if current >= wanted {
        return;
    }
    let target = wanted.min(limit.rlim_max);
    limit.rlim_cur = target;
    // SAFETY: setrlimit only reads the struct we pass.
    let raised = target > current && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    let have = if raised { target } else { current };
    if have < wanted {
        log::warn!(
            "only {have} file descriptors allowed: accepting may fail before {} clients",
            wanted.saturating_sub(FD_MARGIN as libc::rlim_t)
        );
    }
}
