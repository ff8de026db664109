//! `composer FILE [CONDUCTOR] [PART_SIZE]`: checksum a file and write the `.orch` that lets a
//! swarm share it. The work is in [`torrentnchill::hashing`] and [`torrentnchill::orch`].

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Instant;
use torrentnchill::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser};
use indicatif::{BinaryBytes, ProgressBar, ProgressStyle};

use torrentnchill::cli::{self, exit, BarSlot};
use torrentnchill::hashing::hash_file;
use torrentnchill::json;
use torrentnchill::orch::{self, Orchestra, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};

const DEFAULT_CONDUCTOR: &str = "127.0.0.1:9999";
/// Files smaller than this are hashed too fast for a progress bar to help.
const PROGRESS_BAR_MIN_BYTES: u64 = 64 * 1024 * 1024;

const EXAMPLES: &str = "\
Examples:
  composer bigfile.iso                         write bigfile.iso.orch here, conductor 127.0.0.1:9999
  composer bigfile.iso tracker.lan:9999        members will announce to tracker.lan:9999
  composer bigfile.iso tracker.lan:9999 4M     parts of 4 MiB instead of the default
  composer bigfile.iso -o /srv/orch/           write /srv/orch/bigfile.iso.orch
  composer bigfile.iso --json                  one JSON line on stdout, for scripts
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

    /// The conductor members will announce to, as HOST:PORT.
    #[arg(default_value = DEFAULT_CONDUCTOR)]
    conductor: String,

    /// Part size, e.g. 262144, 256K, 4M, 1MiB [default: from the file size].
    part_size: Option<String>,

    /// Where to write the .orch (a folder: <FILE name>.orch in it) [default: <FILE name>.orch
    /// in the current folder].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,

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

/// An exit code and the error to report with it.
struct Failure(i32, anyhow::Error);

/// `Err(Failure(code, why))` from any error.
trait OrExit<T> {
    fn or_exit(self, code: i32) -> Result<T, Failure>;
}

impl<T> OrExit<T> for Result<T> {
    fn or_exit(self, code: i32) -> Result<T, Failure> {
        self.map_err(|e| Failure(code, e))
    }
}

fn fail<T>(code: i32, error: anyhow::Error) -> Result<T, Failure> {
    Err(Failure(code, error))
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    let bar: BarSlot = Arc::new(Mutex::new(None));
    let result = if let Some(what) = args.generate {
        cli::generate(what, Args::command()).or_exit(exit::FAILURE)
    } else {
        cli::init_logging("warn", args.log_file.as_deref(), Arc::clone(&bar), None)
            .or_exit(exit::DISK)
            .and_then(|()| check_args(&args))
            .and_then(|part_size| run(&args, part_size, &bar))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => cli::report_failure(args.json, code, &e),
    }
}

/// Checks what clap cannot: the conductor and the part size. Returns the part size, if given.
fn check_args(args: &Args) -> Result<Option<u64>, Failure> {
    if let Err(why) = orch::check_conductor(&args.conductor) {
        return fail(
            exit::USAGE,
            anyhow!("invalid CONDUCTOR {:?}: {why}", args.conductor),
        );
    }
    args.part_size
        .as_deref()
        .map(|text| {
            parse_part_size(text)
                .map_err(|why| Failure(exit::USAGE, anyhow!("invalid PART_SIZE {text:?}: {why}")))
        })
        .transpose()
}

/// Parses `262144`, `256K`, `256k`, `256KiB`, `4M`, `1MiB`, `1G` (multiples of 1024) and checks
/// the result against the limits of a `.orch`.
fn parse_part_size(text: &str) -> Result<u64, String> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err("expected a number of bytes, optionally followed by K, M or G".into());
    }
    let multiple: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}; use K, M or G (or KiB, MiB, GiB), multiples of 1024"
            ))
        }
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiple))
        .ok_or_else(|| "the number is far too large".to_string())?;
    if bytes < MIN_PART_SIZE {
        return Err(format!(
            "{bytes} bytes is less than the smallest part size, {} ({MIN_PART_SIZE} bytes)",
            BinaryBytes(MIN_PART_SIZE)
        ));
    }
    if bytes > MAX_PART_SIZE {
        return Err(format!(
            "{bytes} bytes ({}) is more than the largest part size, {} ({MAX_PART_SIZE} bytes)",
            BinaryBytes(bytes),
            BinaryBytes(MAX_PART_SIZE)
        ));
    }
    Ok(bytes)
}

fn run(args: &Args, part_size: Option<u64>, bar_slot: &BarSlot) -> Result<(), Failure> {
    let started = Instant::now();
    let file = args.file.as_deref().expect("clap requires FILE");
    let meta = fs::metadata(file)
        .with_context(|| format!("cannot open {}", file.display()))
        .or_exit(exit::DISK)?;
    if !meta.is_file() {
        return fail(
            exit::DISK,
            anyhow!("{} is not a regular file", file.display()),
        );
    }
    let file_size = meta.len();
    let filename = file_name(file).or_exit(exit::FAILURE)?;
    let part_size = part_size.unwrap_or_else(|| Orchestra::default_part_size(file_size));
    let parts = file_size.div_ceil(part_size);
    if parts > MAX_PARTS {
        return fail(
            exit::USAGE,
            anyhow!(
                "{}: {} in parts of {} is {parts} parts, more than the limit of {MAX_PARTS}; \
                 choose a larger PART_SIZE",
                file.display(),
                BinaryBytes(file_size),
                BinaryBytes(part_size)
            ),
        );
    }
    let output = output_path(args.output.as_deref(), &filename);
    check_output(&output, file)?;

    let bar = (!args.quiet
        && !args.json
        && file_size >= PROGRESS_BAR_MIN_BYTES
        && std::io::stderr().is_terminal())
    .then(|| progress_bar(file_size));
    *bar_slot.lock() = bar.clone();
    let progress = |done: u64| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    let hashes = hash_file(file, file_size, part_size, true, &progress);
    if let Some(bar) = bar_slot.lock().take() {
        bar.finish_and_clear();
    }
    let hashes = hashes.or_exit(exit::DISK)?;
    let file_checksum = hashes
        .file
        .ok_or_else(|| anyhow!("hashing {} gave no full-file checksum", file.display()))
        .or_exit(exit::FAILURE)?;

    let orchestra = Orchestra::new(
        &args.conductor,
        &filename,
        file_checksum,
        file_size,
        part_size,
        hashes.parts,
    )
    .with_context(|| format!("cannot describe {} in a .orch", file.display()))
    .or_exit(exit::FAILURE)?;
    write_atomically(&output, orchestra.to_text().as_bytes()).or_exit(exit::DISK)?;
    let seconds = started.elapsed().as_secs_f64();

    let swarm = orchestra.swarm_id().to_hex();
    if args.json {
        json::Event::new("composed")
            .str("orch", &output.to_string_lossy())
            .str("swarm", &swarm)
            .str("file", &file.to_string_lossy())
            .uint("file_size", file_size)
            .uint("part_size", part_size)
            .uint("parts", parts)
            .num("seconds", seconds, 6)
            .print();
    } else if !args.quiet {
        let rate = if seconds > 0.0 {
            file_size as f64 / seconds / 1e6
        } else {
            0.0
        };
        println!("wrote {}", output.display());
        println!(
            "  file:  {filename}, {file_size} bytes ({})",
            BinaryBytes(file_size)
        );
        println!(
            "  parts: {parts} of {part_size} bytes ({})",
            BinaryBytes(part_size)
        );
        println!("  swarm: {swarm}");
        println!("  took:  {seconds:.2} s ({rate:.0} MB/s)");
    }
    Ok(())
}

/// The FILENAME line: the file's own name, which must be safe for every member to create.
fn file_name(file: &Path) -> Result<String> {
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("{} does not end in a file name", file.display()))?;
    let name = name.to_str().ok_or_else(|| {
        anyhow!(
            "{}: the file name is not valid UTF-8, which a .orch requires; rename the file",
            file.display()
        )
    })?;
    orch::check_filename(name).map_err(|why| {
        anyhow!(
            "{}: the file name cannot go in a .orch: {why}; rename the file",
            file.display()
        )
    })?;
    Ok(name.to_string())
}

/// `-o PATH` as given, `PATH/<name>.orch` when it is a folder, or `<name>.orch` here.
fn output_path(output: Option<&Path>, filename: &str) -> PathBuf {
    let default_name = format!("{filename}.orch");
    match output {
        None => PathBuf::from(default_name),
        Some(path) if path.is_dir() => path.join(default_name),
        Some(path) => path.to_path_buf(),
    }
}

/// Fails early (before a long hash) if the .orch cannot go where it should, or would replace
/// the very file it describes.
fn check_output(output: &Path, file: &Path) -> Result<(), Failure> {
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return fail(
            exit::DISK,
            anyhow!(
                "cannot write {}: {} is not a folder",
                output.display(),
                folder.display()
            ),
        );
    }
    if let (Ok(a), Ok(b)) = (fs::canonicalize(output), fs::canonicalize(file)) {
        if a == b {
            return fail(
                exit::FAILURE,
                anyhow!(
                    "cannot write {}: it is the file being described",
                    output.display()
                ),
            );
        }
    }
    Ok(())
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`, so that a
/// reader sees the old file or the whole new one, never part of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        out.write_all(bytes)
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        fs::rename(&temp, path)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
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

#[cfg(test)]
mod tests {
    use super::parse_part_size;

    #[test]
    fn part_sizes() {
        for (text, bytes) in [
            ("262144", 262144),
            ("256K", 262144),
            ("256k", 262144),
            ("256KiB", 262144),
            ("256kib", 262144),
            ("16K", 16384),
            ("4M", 4 << 20),
            ("1MiB", 1 << 20),
            ("64M", 64 << 20),
        ] {
            assert_eq!(parse_part_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "K",
            "4MB",
            "1.5M",
            "-4M",
            " 4M",
            "16383",
            "15K",
            "65M",
            "1G",
            "99999999999999999999G",
        ] {
            assert!(parse_part_size(bad).is_err(), "{bad}");
        }
    }
}
