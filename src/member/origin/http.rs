//! The HTTP client of an origin: one Range request for one part, through `ureq` (blocking, so
//! an origin request is a thread like every peer connection; rustls for https, so there is no
//! system TLS library to link).
//!
//! Every answer is judged before its body is read ([`super::range`]), the body is read into a
//! buffer of exactly the part's length and never past it, each read is bounded by a deadline
//! for the whole part and an idle limit, and the rate cap, when there is one, is asked before
//! each chunk. What comes back is the part's bytes, still to be verified by the caller.

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use super::range::{check_partial, range_header, Validator};
use crate::member::throttle::{TokenBucket, CHUNK};
use crate::orch::Span;

/// Redirects followed before an answer counts as a redirect loop.
const MAX_REDIRECTS: u32 = 5;
/// Longest wait in one socket read: the answer's headers must start within it, and a request
/// notices a quit (or its own deadline) at least this often while a server is silent.
const READ_STEP: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request gave no part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server or the network did not give what was asked: retry later.
    Retry(String),
    /// The file on the server is not the one first seen: counts against the origin.
    Changed(String),
    /// The member is quitting.
    Stopped,
}

/// One request's limits.
pub struct Limits<'a> {
    /// The whole part must be in by then.
    pub deadline: Instant,
    /// Longest silence in the middle of the body.
    pub idle: Duration,
    /// `--origin-max-rate`, shared by every origin request of the member.
    pub cap: Option<&'a TokenBucket>,
    pub stopping: &'a dyn Fn() -> bool,
}

pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .redirects(MAX_REDIRECTS)
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(READ_STEP)
                .timeout_write(CONNECT_TIMEOUT)
                .user_agent(concat!("torrentnchill/", env!("CARGO_PKG_VERSION")))
                .build(),
        }
    }
}

impl Client {
    /// Fetches `span` of the file at `url` into `buffer` (resized to the part's length).
    /// `validator` is the version first seen, sent as `If-Range`; returns the version this
    /// answer names (to remember, the first time).
    pub fn fetch(
        &self,
        url: &str,
        span: Span,
        file_size: u64,
        validator: Option<&Validator>,
        limits: &Limits,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<Validator>, Failure> {
        let retry = |why: String| Failure::Retry(why);
        let range = range_header(span).ok_or_else(|| retry("an empty part".into()))?;
        let mut request = self.agent.get(url).set("Range", &range);
        if let Some(v) = validator {
            request = request.set("If-Range", v.if_range());
        }
        let allowed = limits.deadline.saturating_duration_since(Instant::now());
        let response = match request.timeout(allowed).call() {
            Ok(response) => response,
            Err(ureq::Error::Status(416, _)) => {
                return Err(retry(format!(
                    "416 Range Not Satisfiable: the file there is shorter than the .orch's \
                     {file_size} bytes"
                )))
            }
            Err(ureq::Error::Status(code, response)) => {
                return Err(retry(format!("HTTP {code} {}", response.status_text())))
            }
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::TooManyRedirects => {
                return Err(retry(format!(
                    "redirect loop (more than {MAX_REDIRECTS} redirects)"
                )))
            }
            Err(ureq::Error::Transport(t)) => return Err(retry(format!("{t}"))),
        };
        let etag = response.header("ETag");
        let last_modified = response.header("Last-Modified");
        if let Some(first) = validator {
            if !first.matches(etag, last_modified) {
                let now = etag.or(last_modified).unwrap_or("");
                return Err(Failure::Changed(format!(
                    "the file there changed: it is now {now}, it was {}",
                    first.if_range()
                )));
            }
        }
        let seen = Validator::of(etag, last_modified);
        match response.status() {
            206 => {}
            200 => {
                return Err(retry(
                    "200 with the whole file instead of the range asked for \
                     (the server ignores Range)"
                        .into(),
                ))
            }
            code => {
                return Err(retry(format!(
                    "HTTP {code} {} instead of 206 Partial Content",
                    response.status_text()
                )))
            }
        }
        check_partial(
            response.header("Content-Range"),
            response.header("Content-Length"),
            span,
            file_size,
        )
        .map_err(retry)?;
        read_body(response.into_reader(), span.len, limits, buffer)?;
        Ok(seen)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// Reads exactly `len` bytes, and fails if the body is longer or shorter.
fn read_body(
    body: impl Read,
    len: usize,
    limits: &Limits,
    buffer: &mut Vec<u8>,
) -> Result<(), Failure> {
    let retry = |why: String| Failure::Retry(why);
    // One byte past the part is enough to know the body is too long.
    let mut body = body.take(len as u64 + 1);
    buffer.resize(len, 0);
    let mut filled = 0;
    let mut last_byte = Instant::now();
    while filled < len {
        if (limits.stopping)() {
            return Err(Failure::Stopped);
        }
        if Instant::now() >= limits.deadline {
            return Err(retry(format!(
                "part not complete in time ({filled} of {len} bytes)"
            )));
        }
        let end = len.min(filled + CHUNK);
        if let Some(cap) = limits.cap {
            cap.take(end - filled);
        }
        match body.read(&mut buffer[filled..end]) {
            Ok(0) => {
                return Err(retry(format!(
                    "the server closed after {filled} of {len} bytes"
                )))
            }
            Ok(n) => {
                filled += n;
                last_byte = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if last_byte.elapsed() >= limits.idle {
                    return Err(retry(format!(
                        "the server stalled: nothing for {:?} after {filled} of {len} bytes",
                        limits.idle
                    )));
                }
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(retry(format!(
                    "the server closed after {filled} of {len} bytes"
                )))
            }
            Err(e) => return Err(retry(format!("after {filled} of {len} bytes: {e}"))),
        }
    }
    let mut extra = [0u8; 1];
    loop {
        match body.read(&mut extra) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(retry(format!(
                    "the body is longer than the part's {len} bytes"
                )))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Silence after exactly the right bytes: the part is whole.
            Err(e) if is_timeout(&e) => return Ok(()),
            Err(e) => return Err(retry(format!("after the part's {len} bytes: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(stopping: &dyn Fn() -> bool) -> Limits<'_> {
        Limits {
            deadline: Instant::now() + Duration::from_secs(10),
            idle: Duration::from_secs(1),
            cap: None,
            stopping,
        }
    }

    #[test]
    fn a_body_must_be_exactly_the_part() {
        let never = || false;
        let mut buffer = Vec::new();
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let exact = read_body(&body[..], body.len(), &limits(&never), &mut buffer);
        assert_eq!(exact, Ok(()));
        assert_eq!(buffer, body);
        let short = read_body(&body[..1000], 1001, &limits(&never), &mut buffer);
        assert_eq!(
            short,
            Err(Failure::Retry(
                "the server closed after 1000 of 1001 bytes".into()
            ))
        );
        let long = read_body(&body[..1001], 1000, &limits(&never), &mut buffer);
        assert_eq!(
            long,
            Err(Failure::Retry(
                "the body is longer than the part's 1000 bytes".into()
            ))
        );
        assert_eq!(buffer.len(), 1000, "never read past the part");
        let quitting = || true;
        let stopped = read_body(&body[..], body.len(), &limits(&quitting), &mut buffer);
        assert_eq!(stopped, Err(Failure::Stopped));
    }
}
