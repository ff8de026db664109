//! What the three binaries share about talking to people and scripts: logging that never
//! garbles a progress bar, a log file whose folder is created on demand, reading single keys
//! from a terminal, and the exit codes.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use indicatif::ProgressBar;

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything not covered below.
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

/// Where the progress bar is, when there is one, so that log lines are printed above it.
pub type BarSlot = Arc<Mutex<Option<ProgressBar>>>;

struct BarAwareLogger {
    inner: env_logger::Logger,
    bar: BarSlot,
}

impl log::Log for BarAwareLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
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
/// created) or else to stderr, above the progress bar in `bar`.
pub fn init_logging(
    default_level: &str,
    log_file: Option<&Path>,
    bar: BarSlot,
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
    let level = inner.filter();
    log::set_boxed_logger(Box::new(BarAwareLogger { inner, bar }))
        .context("logging was already set up")?;
    log::set_max_level(level);
    Ok(())
}

/// True when a person is watching: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Puts the terminal in "cbreak" mode while alive: keys arrive one at a time and are not
/// echoed, but Ctrl-C still raises SIGINT and output still turns `\n` into a new line, so log
/// lines and the bar behave as usual. (Full raw mode would break both.)
pub struct KeyReader {
    saved: libc::termios,
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
        Some(KeyReader { saved })
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `start`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
        let _ = crossterm::execute!(std::io::stderr(), crossterm::cursor::Show);
    }
}

/// Human-readable bytes, binary units.
pub fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
