//! Just enough JSON for the binaries' `--json` lines, without a serializer dependency: string
//! escaping, a builder for one flat event object, and a reader for the event tables of
//! `docs/JSON.md`, which is where the schema lives (the tests check every line against it).

use std::fmt::Write as _;
use std::io::Write as _;

/// `s` as a quoted JSON string: quotes, backslashes and control characters are escaped, and
/// everything else (including non-ASCII) is kept as UTF-8, which JSON allows.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_escaped(&mut out, s);
    out
}

fn push_escaped(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Other control characters, plus the two line separators that break JavaScript.
            c if c < ' ' || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One event: a flat JSON object whose first key is `"event"`.
///
/// ```
/// use torrentnchill::json::Event;
/// let line = Event::new("done").uint("parts", 3).num("seconds", 1.5, 3).into_line();
/// assert_eq!(line, r#"{"event":"done","parts":3,"seconds":1.500}"#);
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    buf: String,
}

impl Event {
    pub fn new(name: &str) -> Event {
        let mut buf = String::from("{\"event\":");
        push_escaped(&mut buf, name);
        Event { buf }
    }

    fn key(mut self, key: &str) -> Event {
        self.buf.push(',');
        push_escaped(&mut self.buf, key);
        self.buf.push(':');
        self
    }

    pub fn str(self, key: &str, value: &str) -> Event {
        let mut this = self.key(key);
        push_escaped(&mut this.buf, value);
        this
    }

    pub fn uint(self, key: &str, value: u64) -> Event {
        let mut this = self.key(key);
        let _ = write!(this.buf, "{value}");
        this
    }

    /// A number with `decimals` digits after the point; `null` if it is not finite.
    pub fn num(self, key: &str, value: f64, decimals: usize) -> Event {
        let mut this = self.key(key);
        if value.is_finite() {
            let _ = write!(this.buf, "{value:.decimals$}");
        } else {
            this.buf.push_str("null");
        }
        this
    }

    pub fn bool(self, key: &str, value: bool) -> Event {
        let mut this = self.key(key);
        this.buf.push_str(if value { "true" } else { "false" });
        this
    }

    pub fn null(self, key: &str) -> Event {
        let mut this = self.key(key);
        this.buf.push_str("null");
        this
    }

    /// `value`, which must already be valid JSON (an array built by the caller, say).
    pub fn raw(self, key: &str, value: &str) -> Event {
        let mut this = self.key(key);
        this.buf.push_str(value);
        this
    }

    pub fn into_line(mut self) -> String {
        self.buf.push('}');
        self.buf
    }

    /// Writes the event as one line on stdout and flushes it, so that a script reading a pipe
    /// sees it at once. A closed stdout is ignored: the program goes on with its work.
    pub fn print(self) {
        print_line(&self.into_line());
    }
}

/// Writes `line` and a newline to stdout, flushed; errors (a closed pipe) are ignored.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The documented shape of one event, read from `docs/JSON.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    /// `member`, `composer` or `conductor`.
    pub program: String,
    pub event: String,
    /// Every key, in the documented order, with its type: `string`, `integer` (whole, ≥ 0),
    /// `number`, `boolean` or `array`, or `T or null`.
    pub fields: Vec<(String, String)>,
}

/// Reads the event tables of `docs/JSON.md`: a `## \`program\`` heading, then for each event a
/// `### \`event\`` heading followed by a table whose rows are `` | `key` | type | meaning | ``.
pub fn parse_schema(doc: &str) -> Vec<EventSchema> {
    fn quoted(text: &str) -> Option<String> {
        let text = text.trim();
        let inner = text.strip_prefix('`')?.strip_suffix('`')?;
        (!inner.is_empty() && !inner.contains('`')).then(|| inner.to_string())
    }
    let mut schemas: Vec<EventSchema> = Vec::new();
    let mut program: Option<String> = None;
    // The event whose table the next rows belong to.
    let mut current: Option<EventSchema> = None;
    for line in doc.lines() {
        if line.starts_with('#') {
            schemas.extend(current.take());
        }
        if let Some(heading) = line.strip_prefix("## ") {
            program = quoted(heading);
        } else if let Some(heading) = line.strip_prefix("### ") {
            if let (Some(program), Some(event)) = (&program, quoted(heading)) {
                current = Some(EventSchema {
                    program: program.clone(),
                    event,
                    fields: Vec::new(),
                });
            }
        } else if let (Some(row), Some(schema)) = (line.strip_prefix('|'), current.as_mut()) {
            let cells: Vec<&str> = row.split('|').collect();
            if let (Some(key), true) = (quoted(cells[0]), cells.len() >= 3) {
                schema.fields.push((key, cells[1].trim().to_string()));
            }
        }
    }
    schemas.extend(current);
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_json_requires() {
        assert_eq!(escape(""), r#""""#);
        assert_eq!(escape("plain.bin"), r#""plain.bin""#);
        assert_eq!(escape(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escape("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(escape("\u{1}\u{1f}\u{7f}"), r#""\u0001\u001f\u007f""#);
        assert_eq!(escape("café ☕"), "\"café ☕\"");
    }

    #[test]
    fn round_trips_through_a_json_parser() {
        let nasty = "q\"b\\s/ \u{0}\u{8}\u{c}\n\r\t\u{1b}[0m é \u{2028} 🎻";
        let parsed: serde_json::Value = serde_json::from_str(&escape(nasty)).unwrap();
        assert_eq!(parsed, serde_json::Value::String(nasty.to_string()));
    }

    #[test]
    fn events_are_valid_json() {
        let line = Event::new("x\"")
            .str("s", "a\nb")
            .uint("u", u64::MAX)
            .num("n", 0.25, 2)
            .num("inf", f64::INFINITY, 1)
            .bool("b", true)
            .null("z")
            .raw("r", "[[1,2]]")
            .into_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "x\"");
        assert_eq!(v["s"], "a\nb");
        assert_eq!(v["u"], u64::MAX);
        assert_eq!(v["n"], 0.25);
        assert!(v["inf"].is_null() && v["z"].is_null());
        assert_eq!(v["b"], true);
        assert_eq!(v["r"][0][1], 2);
    }

    #[test]
    fn schema_tables() {
        let doc =
            "# t\n## `member`\ntext\n### `start`\n| field | type | meaning |\n|---|---|---|\n\
                   | `event` | string | `\"start\"` |\n| `n` | integer or null | a count |\n\n\
                   ### not an event\n| `x` | string | ignored |\n## `composer`\n### `composed`\n\
                   | `event` | string | x |\n";
        let schemas = parse_schema(doc);
        assert_eq!(schemas.len(), 2);
        assert_eq!(
            (schemas[0].program.as_str(), schemas[0].event.as_str()),
            ("member", "start")
        );
        assert_eq!(
            schemas[0].fields,
            [
                ("event".to_string(), "string".to_string()),
                ("n".to_string(), "integer or null".to_string())
            ]
        );
        assert_eq!(schemas[1].program, "composer");
        assert_eq!(schemas[1].fields.len(), 1);
    }
}
