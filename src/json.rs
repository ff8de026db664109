//! Just enough JSON output for the binaries' `--json` lines, without a serializer dependency.

use std::fmt::Write;

/// `s` as a quoted JSON string: quotes, backslashes and control characters are escaped, and
/// everything else (including non-ASCII) is kept as UTF-8, which JSON allows.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
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
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

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
}
