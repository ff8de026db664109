//! `composer FILE [CONDUCTOR[,CONDUCTOR...]] [PART_SIZE]`: checksum a file and write the
//! `.orch` that lets a swarm share it. Flags in, [`torrentnchill::compose`] does the work, a
//! report out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::anyhow;
use clap::{CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressStyle};

use torrentnchill::cli::exit::{self, Failure, OrExit};
use torrentnchill::cli::{self, BarSlot};
use torrentnchill::compose::{self, ComposeError, ComposeErrorKind, ComposeOptions, Progress};
use torrentnchill::json;

/// Files smaller than this are hashed too fast for a progress bar to help.
const PROGRESS_BAR_MIN_BYTES: u64 = 64 * 1024 * 1024;

const EXAMPLES: &str = "\
Examples:
  composer bigfile.iso                         write bigfile.iso.orch here, conductor 127.0.0.1:9999
  composer bigfile.iso tracker.lan:9999        members will announce to tracker.lan:9999
  composer bigfile.iso tracker.lan:9999 4M     parts of 4 MiB instead of the default
  composer bigfile.iso a.lan:9999,b.lan:9999   members announce to both conductors
  composer bigfile.iso -o /srv/orch/           write /srv/orch/bigfile.iso.orch
  composer bigfile.iso --json                  one JSON line on stdout, for scripts
  composer bigfile.iso --private               a private swarm: the key goes to bigfile.iso.orch.key
  composer --generate bash                     print bash completions (also zsh, fish, man)

PART_SIZE is a number of bytes, optionally followed by K, M or G (or KiB, MiB, GiB), all
multiples of 1024: 262144, 256K, 4M, 1MiB. It must be from 16K to 64M. The default is a power of
two from 256K to 16M that gives about 1,000 to 2,000 parts.

A progress bar is drawn on a terminal for files of 64 MiB and more. Logs: RUST_LOG (default
warn), or --log-file PATH.

Exit status: 0 when the .orch is written; 1 other error (such as a file name a .orch cannot
hold); 2 bad command line; 5 disk (cannot read FILE, or cannot write the .orch).";

/// Checksum a file and write the .orch that lets a swarm share it.
#[derive(Parser)]
#[command(name = "composer", version, after_help = EXAMPLES)]
struct Args {
    /// The file to share.
    #[arg(required = true)]
    file: Option<PathBuf>,

    /// The conductor members will announce to, as HOST:PORT; several (at most 16) separated by
    /// commas, and members announce to each.
    #[arg(default_value = compose::DEFAULT_CONDUCTOR)]
    conductor: String,

    /// Part size, e.g. 262144, 256K, 4M, 1MiB [default: from the file size].
    part_size: Option<String>,

    /// Where to write the .orch (a folder: <FILE name>.orch in it) [default: <FILE name>.orch
    /// in the current folder].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// A private swarm: write a random secret to <.orch>.key beside the .orch. Only members
    /// with that key file can fetch, see the member list, or read the traffic.
    #[arg(long)]
    private: bool,

    /// Print one JSON line instead of the summary, and no progress bar.
    #[arg(long)]
    json: bool,

    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,

    /// Write logs to this file (its folder is created) instead of the terminal.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Print shell completions or a man page and exit.
    #[arg(long, value_name = "WHAT", hide = true, exclusive = true)]
    generate: Option<cli::Generate>,
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(args.json),
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    if let Some(what) = args.generate {
        return cli::generate(what, Args::command()).or_exit(exit::FAILURE);
    }
    let bar: BarSlot = Arc::default();
    cli::init_logging("warn", args.log_file.as_deref(), Arc::clone(&bar)).or_exit(exit::DISK)?;
    let file = args
        .file
        .clone()
        .ok_or_else(|| Failure::new(exit::USAGE, anyhow!("the FILE to share is required")))?;
    let options = ComposeOptions {
        output: args.output.clone(),
        private: args.private,
        ..ComposeOptions::from_text(file, &args.conductor, args.part_size.as_deref())
            .map_err(failure)?
    };
    let draw_bar = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let progress = |p: Progress| {
        if draw_bar && p.total >= PROGRESS_BAR_MIN_BYTES {
            let mut slot = bar.lock();
            slot.get_or_insert_with(|| progress_bar(p.total))
                .set_position(p.done);
        }
    };
    let composed = compose::compose(&options, &progress);
    if let Some(bar) = bar.lock().take() {
        bar.finish_and_clear();
    }
    let composed = composed.map_err(failure)?;
    if args.json {
        json::print(&composed.event());
    } else if !args.quiet {
        print!("{}", composed.summary());
    }
    Ok(())
}

/// Each kind of compose failure with its exit code (the README's table).
fn failure(error: ComposeError) -> Failure {
    let code = match error.kind() {
        ComposeErrorKind::Usage => exit::USAGE,
        ComposeErrorKind::Disk => exit::DISK,
        ComposeErrorKind::Other => exit::FAILURE,
    };
    Failure::new(code, error)
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "hashing [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid progress template")
        .progress_chars("=> "),
    );
    bar
}
