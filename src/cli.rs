//! What the three binaries share about talking to people and scripts: one-line errors and the
//! exit codes, logging that never garbles a progress bar, a log file whose folder is created on
//! demand, reading single keys from a terminal and putting it back as it was, and the generated
//! shell completions and man pages.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything not covered below; for `member --check`, a file that is damaged or unfinished.
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// The .orch is missing, malformed, or inconsistent with the data.
    pub const BAD_ORCH: i32 = 3;
    /// Cannot listen, or cannot reach what must be reached.
    pub const NETWORK: i32 = 4;
    /// Cannot read or write the file or the download folder.
    pub const DISK: i32 = 5;
}

/// Parses the command line like `T::parse()`, but reports a bad command line the way every
/// other failure is reported: one line, `error: ...`, on stderr (plus an `error` event on
/// stdout when `--json` was given), and exit code 2. `--help` and `--version` print as usual.
pub fn parse_args<T: clap::Parser>() -> T {
    let error = match T::try_parse() {
        Ok(args) => return args,
        Err(error) => error,
    };
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let name = T::command().get_name().to_string();
    let message = format!("{}; see {name} --help", one_line(&error.to_string()));
    if std::env::args_os().skip(1).any(|a| a == "--json") {
        crate::json::Event::new("error")
            .str("message", &message)
            .uint("exit_code", exit::USAGE as u64)
            .print();
    }
    eprintln!("error: {message}");
    std::process::exit(exit::USAGE);
}

/// clap's multi-line error text as one line, without the `error:` prefix and the usage block.
fn one_line(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.to_string());
        }
    }
    let mut joined = parts.join(" ");
    if let Some(rest) = joined.strip_prefix("error: ") {
        joined = rest.to_string();
    }
    joined
}

/// What `--generate` writes on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
    /// A man page (roff), for `man -l` or a `man1` folder.
    Man,
}

/// Writes the completion script or man page for `command` to stdout.
pub fn generate(what: Generate, mut command: clap::Command) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let name = command.get_name().to_string();
    let mut out = std::io::stdout().lock();
    // A reader that stops early (`| head`) is not an error worth reporting.
    let quiet_pipe = |result: std::io::Result<()>| match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    };
    let shell = match what {
        Generate::Bash => Shell::Bash,
        Generate::Zsh => Shell::Zsh,
        Generate::Fish => Shell::Fish,
        Generate::Elvish => Shell::Elvish,
        Generate::Powershell => Shell::PowerShell,
        Generate::Man => {
            return quiet_pipe(
                clap_mangen::Man::new(command)
                    .render(&mut out)
                    .and_then(|()| out.flush()),
            )
            .context("cannot write the man page to stdout");
        }
    };
    clap_complete::generate(shell, &mut command, name, &mut out);
    out.flush()
        .context("cannot write the completions to stdout")
}

/// Where the progress bar is, when there is one, so that log lines are printed above it.
pub type BarSlot = Arc<Mutex<Option<ProgressBar>>>;

/// Sees every log record at or above its level, whatever RUST_LOG says (the conductor turns
/// some into `--json` events).
pub type Tap = (log::LevelFilter, Box<dyn Fn(&log::Record) + Send + Sync>);

struct BarAwareLogger {
    inner: env_logger::Logger,
    bar: BarSlot,
    tap: Option<Tap>,
}

impl log::Log for BarAwareLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
            || self
                .tap
                .as_ref()
                .is_some_and(|(level, _)| metadata.level() <= *level)
    }

    fn log(&self, record: &log::Record) {
        if let Some((level, tap)) = &self.tap {
            if record.level() <= *level {
                tap(record);
            }
        }
        if !self.inner.matches(record) {
            return;
        }
        let bar = self.bar.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| self.inner.log(record)),
            None => self.inner.log(record),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Sets up `log` from RUST_LOG (default `default_level`), to `log_file` if given (its folder is
/// created) or else to stderr, above the progress bar in `bar`; `tap`, if given, sees records
/// at its level whatever RUST_LOG says.
pub fn init_logging(
    default_level: &str,
    log_file: Option<&Path>,
    bar: BarSlot,
    tap: Option<Tap>,
) -> anyhow::Result<()> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if let Some(path) = log_file {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the log folder {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
        builder.write_style(env_logger::WriteStyle::Never);
    }
    let inner = builder.build();
    let level = inner
        .filter()
        .max(tap.as_ref().map_or(log::LevelFilter::Off, |(l, _)| *l));
    log::set_boxed_logger(Box::new(BarAwareLogger { inner, bar, tap }))
        .context("logging was already set up")?;
    log::set_max_level(level);
    Ok(())
}

/// True when a person is watching: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The terminal settings found before [`KeyReader::start`] changed them.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts the terminal in "cbreak" mode while alive: keys arrive one at a time and are not
/// echoed, but Ctrl-C still raises SIGINT and output still turns `\n` into a new line, so log
/// lines and the bar behave as usual. (Full raw mode would break both.)
pub struct KeyReader {
    _private: (),
}

impl KeyReader {
    /// Starts reading keys from stdin; `on_key` runs in a background thread for each byte.
    pub fn start(on_key: impl Fn(u8) + Send + 'static) -> Option<KeyReader> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a valid termios struct.
        let saved = unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return None;
            }
            let saved = term;
            term.c_lflag &= !(libc::ICANON | libc::ECHO);
            term.c_cc[libc::VMIN] = 1;
            term.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return None;
            }
            saved
        };
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let reader = KeyReader { _private: () };
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                use std::io::Read;
                let mut byte = [0u8; 1];
                while let Ok(1) = std::io::stdin().read(&mut byte) {
                    on_key(byte[0]);
                }
            })
            .ok()?;
        Some(reader)
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts back the terminal settings that [`KeyReader::start`] changed, if it did, and shows the
/// cursor. Safe to call more than once and from any thread (a second Ctrl-C uses it).
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(saved) = saved {
        // SAFETY: restores settings read by tcgetattr in `start`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &saved);
        }
        let _ = crossterm::execute!(std::io::stdout(), crossterm::cursor::Show);
    }
}

/// Human-readable bytes, binary units.
pub fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// A short duration for an ETA: `42s`, `3m05s`, `2h07m`.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64().ceil() as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Reports a failure the way every program does: one line `error: ...` on stderr (the anyhow
/// context chain on one line) and, with `--json`, an `error` event on stdout. Returns the exit
/// code to end with.
pub fn report_failure(json: bool, code: i32, error: &anyhow::Error) -> std::process::ExitCode {
    let message = format!("{error:#}").replace('\n', " ");
    if json {
        crate::json::Event::new("error")
            .str("message", &message)
            .uint("exit_code", code as u64)
            .print();
    }
    eprintln!("error: {message}");
    std::process::ExitCode::from(code as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fit_on_one_line() {
        let text = "error: the following required arguments were not provided:\n  <ORCH>\n\n\
                    Usage: member <ORCH>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "the following required arguments were not provided: <ORCH>"
        );
        let text = "error: unexpected argument '--x' found\n\n  tip: to pass '--x' as a value, \
                    use '-- --x'\n\nUsage: member [OPTIONS] <ORCH>\n";
        assert_eq!(
            one_line(text),
            "unexpected argument '--x' found tip: to pass '--x' as a value, use '-- --x'"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(Duration::from_millis(0)), "0s");
        assert_eq!(human_duration(Duration::from_millis(1200)), "2s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(7620)), "2h07m");
    }
}
