//! The programs' `--json` lines: newline-delimited JSON events on stdout, one object a line,
//! flushed as it happens. Each program's events are types that derive `Serialize`, tagged with
//! their name in an `"event"` field; docs/JSON.md documents every one (a test checks every
//! line the programs print against its tables).

use std::io::Write as _;

use serde::Serialize;

/// Writes `event` as one line on stdout and flushes it, so that a script reading a pipe sees it
/// at once. A closed stdout is ignored: the program goes on with its work.
pub fn print(event: &impl Serialize) {
    let Ok(line) = serde_json::to_string(event) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// `{"event":"error",...}`: the program stops; the same text goes to stderr.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename = "error")]
pub struct ErrorEvent<'a> {
    pub message: &'a str,
    pub exit_code: i32,
}

/// Seconds as a JSON number, rounded to milliseconds: `1.5` for 1,500 ms.
pub fn seconds(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_name_first() {
        let line = serde_json::to_string(&ErrorEvent {
            message: "a \"b\"\n",
            exit_code: 4,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"error","message":"a \"b\"\n","exit_code":4}"#
        );
        assert_eq!(seconds(std::time::Duration::from_micros(1_234_567)), 1.235);
    }
}
