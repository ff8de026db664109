//! Exit codes and the one failure type the three binaries share, so that every program maps a
//! kind of trouble to the same code and reports it the same way (see the README's table).

use std::process::ExitCode;

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
/// A second Ctrl-C: the user did not want to wait for a clean quit (128 + SIGINT, as shells do).
pub const INTERRUPTED: i32 = 130;

/// Why a program stopped: the exit code and the error to report with it.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }

    /// Reports the failure the way every program does: one line `error: ...` on stderr (the
    /// anyhow context chain on one line) and, with `--json`, an `error` event on stdout.
    /// Returns the exit code to end with.
    pub fn report(&self, json: bool) -> ExitCode {
        let message = format!("{:#}", self.error).replace('\n', " ");
        if json {
            crate::json::print(&crate::json::ErrorEvent {
                message: &message,
                exit_code: self.code,
            });
        }
        eprintln!("error: {message}");
        ExitCode::from(u8::try_from(self.code).unwrap_or(1))
    }
}

/// Attaches an exit code to any error: `result.or_exit(exit::DISK)?`.
pub trait OrExit<T> {
    fn or_exit(self, code: i32) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: i32) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(code, e))
    }
}
