//! What the three binaries share about talking to people and scripts: parsing the command line
//! with one-line errors, the exit codes and failure type ([`exit`]), logging above a progress
//! bar ([`logging`]), single keys from a terminal ([`keys`]), quantities as people type them
//! ([`units`]), and the generated shell completions and man pages.

pub mod exit;
pub mod keys;
pub mod logging;
pub mod units;

use std::io::{IsTerminal, Write};

use anyhow::Context;

pub use keys::{restore_terminal, Key, KeyReader};
pub use logging::{init_logging, BarSlot};
pub use units::{human_bytes, human_duration};

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
        crate::json::print(&crate::json::ErrorEvent {
            message: &message,
            exit_code: exit::USAGE,
        });
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

/// True when a person is watching: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// A bar for reading a whole file (`label [====>  ] 42% 1.2 GiB/s ETA 3s`), put in `slot` so
/// that log lines print above it.
pub fn reading_bar(label: &str, len: u64, slot: &BarSlot) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{label} [{{bar:30}}] {{percent}}% {{binary_bytes_per_sec}} ETA {{eta}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(len).with_style(style);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
    *slot.lock() = Some(bar.clone());
    bar
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
}
