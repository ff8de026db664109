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

/// A builder for one flat event object whose first key is `"event"`, for the events that have
/// not become types yet. Values go through serde_json, so escaping is never done by hand.
#[derive(Debug, Clone)]
pub struct Event {
    fields: Vec<(String, serde_json::Value)>,
}

impl Event {
    pub fn new(name: &str) -> Event {
        Event {
            fields: vec![("event".into(), name.into())],
        }
    }

    fn with(mut self, key: &str, value: serde_json::Value) -> Event {
        self.fields.push((key.to_string(), value));
        self
    }

    pub fn str(self, key: &str, value: &str) -> Event {
        self.with(key, value.into())
    }

    pub fn uint(self, key: &str, value: u64) -> Event {
        self.with(key, value.into())
    }

    /// A number rounded to `decimals` digits after the point; `null` if it is not finite.
    pub fn num(self, key: &str, value: f64, decimals: usize) -> Event {
        let scale = 10f64.powi(decimals as i32);
        let rounded = (value * scale).round() / scale;
        self.with(
            key,
            serde_json::Number::from_f64(rounded).map_or(serde_json::Value::Null, Into::into),
        )
    }

    pub fn bool(self, key: &str, value: bool) -> Event {
        self.with(key, value.into())
    }

    pub fn null(self, key: &str) -> Event {
        self.with(key, serde_json::Value::Null)
    }

    pub fn value(self, key: &str, value: serde_json::Value) -> Event {
        self.with(key, value)
    }

    pub fn into_line(self) -> String {
        let mut line = String::from("{");
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&serde_json::Value::from(key.as_str()).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push('}');
        line
    }

    pub fn print(self) {
        let line = self.into_line();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
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
