//! What an origin's answer to a Range request must say before a byte of its body is read:
//! pure functions over header values, so that every rule is tested without a server.
//!
//! A part is accepted only from `206 Partial Content` whose `Content-Range` is exactly the
//! bytes asked for, out of a file of exactly the `.orch`'s size, with a `Content-Length` (when
//! given) of the part's length. Anything else (a `200` with the whole file, a range that is
//! shifted, shorter or longer, a file of another size) ends the request before its body is
//! read, so nothing but the part's own bytes can reach the checksum, let alone the disk.

use crate::orch::Span;

/// The `Range` header value for `span`: `bytes=FIRST-LAST`, both inclusive. `None` for an
/// empty span or one that ends past 2^64 - 1.
pub fn range_header(span: Span) -> Option<String> {
    let last = span.offset.checked_add(span.len as u64)?.checked_sub(1)?;
    (span.len > 0).then(|| format!("bytes={}-{last}", span.offset))
}

/// A `Content-Range: bytes FIRST-LAST/TOTAL` value; `total` is `None` for `/*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub total: Option<u64>,
}

/// Reads a `Content-Range` of a 206 (RFC 9110 section 14.4). Unsatisfied forms (`bytes */N`)
/// and any other unit are refused.
pub fn parse_content_range(value: &str) -> Result<ContentRange, String> {
    let bad = || format!("unreadable Content-Range {value:?}");
    let rest = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.trim_start().split_once('/').ok_or_else(bad)?;
    let (first, last) = range.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| -> Result<u64, String> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (first, last) = (number(first)?, number(last)?);
    let total = if total == "*" {
        None
    } else {
        Some(number(total)?)
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return Err(format!("impossible Content-Range {value:?}"));
    }
    Ok(ContentRange { first, last, total })
}

/// Checks a 206's headers against the part asked for and the `.orch`'s file size; the error
/// says what the server got wrong.
pub fn check_partial(
    content_range: Option<&str>,
    content_length: Option<&str>,
    span: Span,
    file_size: u64,
) -> Result<(), String> {
    let value = content_range.ok_or("206 without a Content-Range")?;
    let got = parse_content_range(value)?;
    let last = span
        .offset
        .checked_add(span.len as u64)
        .and_then(|end| end.checked_sub(1))
        .ok_or("an empty part cannot be asked for")?;
    if got.total != Some(file_size) {
        let total = got.total.map_or("unknown".to_string(), |t| t.to_string());
        return Err(format!(
            "the file there is {total} bytes, the .orch says {file_size}"
        ));
    }
    if (got.first, got.last) != (span.offset, last) {
        return Err(format!(
            "asked for bytes {}-{last}, got Content-Range {value:?}",
            span.offset
        ));
    }
    if let Some(length) = content_length {
        if length.trim().parse::<u64>().ok() != Some(span.len as u64) {
            return Err(format!(
                "Content-Length {length:?} for a part of {} bytes",
                span.len
            ));
        }
    }
    Ok(())
}

/// What identifies the version of the file an origin serves, as first seen: sent back as
/// `If-Range`, so that a file changed on the server is answered `200` (refused) instead of a
/// range of other bytes, and compared with every later answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validator {
    /// A strong entity tag, quotes included: `"5f1e-1a2b"`.
    ETag(String),
    /// `Last-Modified`, as the server wrote it (an HTTP date).
    LastModified(String),
}

impl Validator {
    /// From an answer's headers: its ETag if strong (a weak one, `W/"..."`, may not be used
    /// with `If-Range`), else its Last-Modified; `None` when it has neither.
    pub fn of(etag: Option<&str>, last_modified: Option<&str>) -> Option<Validator> {
        let etag = etag.map(str::trim).filter(|e| {
            e.len() >= 2 && e.starts_with('"') && e.ends_with('"') && !e.contains(['\r', '\n'])
        });
        if let Some(etag) = etag {
            return Some(Validator::ETag(etag.to_string()));
        }
        let date = last_modified
            .map(str::trim)
            .filter(|d| !d.is_empty() && d.is_ascii() && !d.contains(['\r', '\n']))?;
        Some(Validator::LastModified(date.to_string()))
    }

    /// The `If-Range` header value.
    pub fn if_range(&self) -> &str {
        match self {
            Validator::ETag(tag) | Validator::LastModified(tag) => tag,
        }
    }

    /// Whether an answer with these headers is still the version first seen. An answer that
    /// drops the header says nothing either way and passes.
    pub fn matches(&self, etag: Option<&str>, last_modified: Option<&str>) -> bool {
        match self {
            Validator::ETag(tag) => etag.is_none_or(|e| e.trim() == tag),
            Validator::LastModified(date) => last_modified.is_none_or(|d| d.trim() == date),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(offset: u64, len: usize) -> Span {
        Span { offset, len }
    }

    #[test]
    fn range_headers() {
        assert_eq!(range_header(span(0, 10)).as_deref(), Some("bytes=0-9"));
        assert_eq!(
            range_header(span(262144, 7232)).as_deref(),
            Some("bytes=262144-269375")
        );
        assert_eq!(range_header(span(5, 0)), None);
        assert_eq!(range_header(span(u64::MAX, 2)), None);
    }

    #[test]
    fn content_ranges() {
        let ok = parse_content_range("bytes 0-9/100").unwrap();
        assert_eq!(
            ok,
            ContentRange {
                first: 0,
                last: 9,
                total: Some(100)
            }
        );
        assert_eq!(parse_content_range("bytes 5-5/*").unwrap().total, None);
        for bad in [
            "",
            "bytes",
            "bytes */100",
            "items 0-9/100",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "bytes -1-9/100",
            "bytes 0-9/1e3",
            "bytes 0-99999999999999999999999/100",
            "bytes 0-9",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn partial_answers() {
        let part = span(100, 50);
        assert_eq!(
            check_partial(Some("bytes 100-149/1000"), Some("50"), part, 1000),
            Ok(())
        );
        assert_eq!(
            check_partial(Some("bytes 100-149/1000"), None, part, 1000),
            Ok(())
        );
        let refused = [
            (None, Some("50"), "without a Content-Range"),
            (
                Some("bytes 100-148/1000"),
                Some("49"),
                "asked for bytes 100-149",
            ),
            (
                Some("bytes 101-150/1000"),
                Some("50"),
                "asked for bytes 100-149",
            ),
            (
                Some("bytes 100-149/999"),
                Some("50"),
                "the file there is 999 bytes",
            ),
            (Some("bytes 100-149/*"), Some("50"), "is unknown bytes"),
            (Some("bytes 100-149/1000"), Some("51"), "Content-Length"),
        ];
        for (range, length, why) in refused {
            let error = check_partial(range, length, part, 1000).unwrap_err();
            assert!(error.contains(why), "{range:?} {length:?}: {error}");
        }
    }

    #[test]
    fn validators() {
        let etag = Validator::of(Some("\"abc-12\""), Some("Tue, 01 Dec 2026 10:00:00 GMT"));
        assert_eq!(etag, Some(Validator::ETag("\"abc-12\"".into())));
        let etag = etag.unwrap();
        assert_eq!(etag.if_range(), "\"abc-12\"");
        assert!(etag.matches(Some("\"abc-12\""), None));
        assert!(etag.matches(None, None));
        assert!(!etag.matches(Some("\"abc-13\""), None));
        // A weak tag cannot go in If-Range: the date is used instead.
        let date = Validator::of(Some("W/\"abc\""), Some("Tue, 01 Dec 2026 10:00:00 GMT"));
        assert_eq!(
            date,
            Some(Validator::LastModified(
                "Tue, 01 Dec 2026 10:00:00 GMT".into()
            ))
        );
        assert!(!date
            .unwrap()
            .matches(None, Some("Wed, 02 Dec 2026 10:00:00 GMT")));
        assert_eq!(Validator::of(Some("W/\"x\""), None), None);
        assert_eq!(Validator::of(Some("unquoted"), Some("")), None);
    }

    proptest! {
        /// The header we send and the answer a correct server gives agree, for any part of any
        /// file; and any other range or size is refused.
        #[test]
        fn exact_ranges_only(
            offset in 0u64..1 << 50,
            len in 1usize..1 << 26,
            extra in 0u64..1 << 30,
            shift in 1u64..1000,
        ) {
            let part = span(offset, len);
            let size = offset + len as u64 + extra;
            let asked = range_header(part).unwrap();
            let (first, last) = asked.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
            let answer = format!("bytes {first}-{last}/{size}");
            let length = len.to_string();
            prop_assert_eq!(check_partial(Some(&answer), Some(&length), part, size), Ok(()));
            let last: u64 = last.parse().unwrap();
            let shifted = format!("bytes {}-{}/{size}", offset + shift, last + shift);
            prop_assert!(check_partial(Some(&shifted), None, part, size + shift).is_err());
            let short = format!("bytes {first}-{}/{size}", last.saturating_sub(shift).max(offset));
            if last.saturating_sub(shift).max(offset) != last {
                prop_assert!(check_partial(Some(&short), None, part, size).is_err());
            }
            prop_assert!(check_partial(Some(&answer), None, part, size + shift).is_err());
        }

        /// Whatever a server writes, parsing never panics, and what it accepts is consistent.
        #[test]
        fn parsing_never_panics(value in ".{0,60}") {
            if let Ok(range) = parse_content_range(&value) {
                prop_assert!(range.first <= range.last);
                prop_assert!(range.total.is_none_or(|t| range.last < t));
            }
        }
    }
}
