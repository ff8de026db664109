//! The `.orch` ("orchestra") metadata file: what a swarm shares, and how to check it.
//!
//! A `.orch` is plain text, one value a line:
//!
//! ```text
//! CONDUCTOR HOST:PORT[,HOST:PORT...]
//! FILENAME
//! FULL_FILE_CHECKSUM
//! FILE SIZE IN BYTES
//! PART SIZE IN BYTES
//! NUMBER OF PARTS
//! CHECKSUM OF PART 1
//! ...
//! CHECKSUM OF LAST PART
//! ```
//!
//! The file reaches members from anywhere, so the parser treats every byte as hostile: it bounds
//! the input size, checks every number before anything is allocated in proportion to it, and
//! refuses any file name that is not one plain path component (the path-traversal hole of
//! CVE-2009-1760 and CVE-2010-0012). Every error names the line and what was expected there.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Smallest part size accepted; smaller parts only add per-part overhead.
pub const MIN_PART_SIZE: u64 = 16 * 1024;
/// Largest part size accepted: a member buffers whole parts, so this bounds its memory per peer.
pub const MAX_PART_SIZE: u64 = 64 * 1024 * 1024;
/// Hard cap on the number of parts (millions, not billions).
pub const MAX_PARTS: u64 = 4 * 1024 * 1024;
/// The longest `.orch` text that can be valid: the header plus `MAX_PARTS` checksum lines.
pub const MAX_ORCH_BYTES: usize = 1024 + (MAX_PARTS as usize) * 66;
/// Longest file name, in bytes, as on common file systems.
pub const MAX_FILENAME_BYTES: usize = 255;
/// Longest host name (RFC 1035).
const MAX_HOST_BYTES: usize = 253;
/// Most conductors line 1 may list: members announce to each, so a few suffice to survive
/// failures, and the count bounds a member's announce threads.
pub const MAX_CONDUCTORS: usize = 16;
const HEADER_LINES: usize = 6;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Checksum {
        Checksum(Sha256::digest(data).into())
    }

    /// Parses exactly 64 lowercase or uppercase hex digits.
    pub fn from_hex(text: &str) -> Option<Checksum> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Checksum(out))
    }

    /// Lowercase hex, as written in a `.orch`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({})", self.to_hex())
    }
}

/// Identifies a swarm: the SHA-256 of the `.orch` from line 2 to the end, in canonical form.
///
/// Line 1 (the conductor) is left out so that pointing a `.orch` at another conductor keeps the
/// swarm; everything that defines the bytes (name, sizes, checksums) is in.
pub type SwarmId = Checksum;

/// Why a `.orch` was refused. `line` is 1-based; 0 means the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchError {
    pub line: usize,
    pub kind: OrchErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrchErrorKind {
    TooLarge { bytes: usize },
    NotUtf8,
    MissingLine { expected: &'static str },
    BadConductor(String),
    BadFilename(String),
    BadChecksum { what: &'static str },
    BadNumber { what: &'static str, found: String },
    PartSizeOutOfRange { part_size: u64 },
    TooManyParts { parts: u64 },
    PartCountMismatch { declared: u64, expected: u64 },
    ChecksumCountMismatch { declared: u64, found: u64 },
    TrailingText,
}

impl fmt::Display for OrchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OrchErrorKind::*;
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        match &self.kind {
            TooLarge { bytes } => write!(
                f,
                "file is {bytes} bytes, larger than any valid .orch ({MAX_ORCH_BYTES} bytes)"
            ),
            NotUtf8 => write!(f, "not UTF-8 text"),
            MissingLine { expected } => write!(f, "missing; expected {expected}"),
            BadConductor(why) => write!(f, "expected the conductor as HOST:PORT: {why}"),
            BadFilename(why) => write!(f, "expected a plain file name: {why}"),
            BadChecksum { what } => {
                write!(f, "expected the {what} as 64 hex digits (SHA-256)")
            }
            BadNumber { what, found } => {
                write!(
                    f,
                    "expected the {what} as a whole number of bytes, found {found:?}"
                )
            }
            PartSizeOutOfRange { part_size } => write!(
                f,
                "part size {part_size} is outside {MIN_PART_SIZE}..={MAX_PART_SIZE} bytes"
            ),
            TooManyParts { parts } => {
                write!(f, "{parts} parts is more than the limit of {MAX_PARTS}")
            }
            PartCountMismatch { declared, expected } => write!(
                f,
                "number of parts is {declared}, but file size and part size give {expected}"
            ),
            ChecksumCountMismatch { declared, found } => write!(
                f,
                "expected {declared} part checksums after line {HEADER_LINES}, found {found}"
            ),
            TrailingText => write!(f, "unexpected text after the last part checksum"),
        }
    }
}

impl std::error::Error for OrchError {}

fn err(line: usize, kind: OrchErrorKind) -> OrchError {
    OrchError { line, kind }
}

/// Where one part lies in the file: the one type for part offset and length arithmetic, made
/// only by [`Orchestra::part_span`], so that every offset comes from checked arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: usize,
}

/// The parsed, validated contents of a `.orch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orchestra {
    /// Where members announce themselves: line 1 as written, one `host:port`, `[v6]:port` or
    /// `a.b.c.d:port`, or several separated by commas; [`Orchestra::conductors`] lists them.
    pub conductor: String,
    /// One safe path component; see [`check_filename`].
    pub filename: String,
    pub file_checksum: Checksum,
    pub file_size: u64,
    pub part_size: u64,
    pub part_checksums: Vec<Checksum>,
}

impl Orchestra {
    /// Builds and validates an orchestra from its parts, as the composer does.
    pub fn new(
        conductor: &str,
        filename: &str,
        file_checksum: Checksum,
        file_size: u64,
        part_size: u64,
        part_checksums: Vec<Checksum>,
    ) -> Result<Orchestra, OrchError> {
        let orchestra = Orchestra {
            conductor: conductor.to_string(),
            filename: filename.to_string(),
            file_checksum,
            file_size,
            part_size,
            part_checksums,
        };
        // Writing then parsing runs every check exactly as a member will.
        Orchestra::parse(&orchestra.to_text())?;
        Ok(orchestra)
    }

    /// Reads and parses a `.orch` file, refusing oversized files before reading them whole.
    pub fn read(path: &Path) -> anyhow::Result<Orchestra> {
        use anyhow::Context;
        use std::io::Read;
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_ORCH_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Orchestra::parse_bytes(&bytes)
            .with_context(|| format!("{} is not a valid .orch", path.display()))
    }

    /// Parses raw bytes (which must be UTF-8).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Orchestra, OrchError> {
        if bytes.len() > MAX_ORCH_BYTES {
            return Err(err(0, OrchErrorKind::TooLarge { bytes: bytes.len() }));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| err(0, OrchErrorKind::NotUtf8))?;
        Orchestra::parse(text)
    }

    /// Parses `.orch` text, with LF or CRLF line ends.
    pub fn parse(text: &str) -> Result<Orchestra, OrchError> {
        if text.len() > MAX_ORCH_BYTES {
            return Err(err(0, OrchErrorKind::TooLarge { bytes: text.len() }));
        }
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut lines = body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let mut line_no = 0;
        let mut next = |expected: &'static str| {
            line_no += 1;
            lines
                .next()
                .ok_or(err(line_no, OrchErrorKind::MissingLine { expected }))
        };

        let conductor = next("the conductor HOST:PORT")?;
        check_conductors(conductor).map_err(|why| err(1, OrchErrorKind::BadConductor(why)))?;
        let filename = next("the file name")?;
        check_filename(filename).map_err(|why| err(2, OrchErrorKind::BadFilename(why)))?;
        let file_checksum = Checksum::from_hex(next("the full-file checksum")?).ok_or(err(
            3,
            OrchErrorKind::BadChecksum {
                what: "full-file checksum",
            },
        ))?;
        let file_size = parse_number(next("the file size")?, 4, "file size")?;
        let part_size = parse_number(next("the part size")?, 5, "part size")?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(err(5, OrchErrorKind::PartSizeOutOfRange { part_size }));
        }
        let declared = parse_number(next("the number of parts")?, 6, "number of parts")?;
        let expected = file_size.div_ceil(part_size);
        if expected > MAX_PARTS {
            return Err(err(4, OrchErrorKind::TooManyParts { parts: expected }));
        }
        if declared != expected {
            return Err(err(
                6,
                OrchErrorKind::PartCountMismatch { declared, expected },
            ));
        }

        // `declared` is now at most MAX_PARTS, so this allocation is bounded.
        let mut part_checksums = Vec::with_capacity(declared as usize);
        for line in lines.by_ref() {
            let this_line = HEADER_LINES + part_checksums.len() + 1;
            if part_checksums.len() as u64 == declared {
                return Err(err(this_line, OrchErrorKind::TrailingText));
            }
            let checksum = Checksum::from_hex(line).ok_or(err(
                this_line,
                OrchErrorKind::BadChecksum {
                    what: "part checksum",
                },
            ))?;
            part_checksums.push(checksum);
        }
        if part_checksums.len() as u64 != declared {
            return Err(err(
                HEADER_LINES + part_checksums.len() + 1,
                OrchErrorKind::ChecksumCountMismatch {
                    declared,
                    found: part_checksums.len() as u64,
                },
            ));
        }
        Ok(Orchestra {
            conductor: conductor.to_string(),
            filename: filename.to_string(),
            file_checksum,
            file_size,
            part_size,
            part_checksums,
        })
    }

    /// The conductors line 1 lists, in its order (validated at parse time: 1 to
    /// [`MAX_CONDUCTORS`], distinct).
    pub fn conductors(&self) -> Vec<String> {
        self.conductor.split(',').map(str::to_string).collect()
    }

    /// The canonical text: LF line ends and a final newline.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.conductor.len() + 1 + self.body_len());
        text.push_str(&self.conductor);
        text.push('\n');
        self.write_body(&mut text);
        text
    }

    fn body_len(&self) -> usize {
        self.filename.len() + 128 + self.part_checksums.len() * 65
    }

    /// Lines 2 to the end, canonical.
    fn write_body(&self, text: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            text,
            "{}\n{}\n{}\n{}\n{}\n",
            self.filename,
            self.file_checksum,
            self.file_size,
            self.part_size,
            self.part_checksums.len()
        );
        for checksum in &self.part_checksums {
            text.push_str(&checksum.to_hex());
            text.push('\n');
        }
    }

    /// The swarm id: SHA-256 of lines 2 to the end in canonical form.
    pub fn swarm_id(&self) -> SwarmId {
        let mut body = String::with_capacity(self.body_len());
        self.write_body(&mut body);
        Checksum::of(body.as_bytes())
    }

    pub fn part_count(&self) -> u32 {
        // Bounded by MAX_PARTS at parse time.
        self.part_checksums.len() as u32
    }

    /// Where part `index` lies in the file, or None when out of range.
    pub fn part_span(&self, index: u32) -> Option<Span> {
        if index >= self.part_count() {
            return None;
        }
        let offset = u64::from(index).checked_mul(self.part_size)?;
        let len = self.file_size.checked_sub(offset)?.min(self.part_size);
        Some(Span {
            offset,
            // At most the part size, which the parser bounds to 64 MiB.
            len: usize::try_from(len).ok()?,
        })
    }

    /// Length of part `index` (0 when out of range), for decoders that check a `PIECE` length.
    pub fn part_len(&self, index: u32) -> usize {
        self.part_span(index).map_or(0, |span| span.len)
    }

    /// Bytes in `parts_done` parts, given whether the last (short) part is among them.
    pub fn bytes_in(&self, parts_done: u32, has_last: bool) -> u64 {
        let last = self.part_count().checked_sub(1);
        let last_len = last
            .and_then(|i| self.part_span(i))
            .map_or(0, |s| s.len as u64);
        let full_parts = u64::from(parts_done.saturating_sub(u32::from(has_last)));
        let bytes = full_parts.saturating_mul(self.part_size);
        if has_last {
            bytes.saturating_add(last_len)
        } else {
            bytes
        }
        .min(self.file_size)
    }

    /// Length of the largest part (the buffer a member needs per part).
    pub fn max_part_len(&self) -> usize {
        self.part_size.min(self.file_size) as usize
    }

    /// The part size that `composer` picks when none is given: a power of two from 256 KiB to
    /// 16 MiB that gives about 1,000 to 2,000 parts.
    pub fn default_part_size(file_size: u64) -> u64 {
        let mut part = 256 * 1024u64;
        while part < 16 * 1024 * 1024 && file_size.div_ceil(part) > 2000 {
            part *= 2;
        }
        part
    }
}

fn parse_number(text: &str, line: usize, what: &'static str) -> Result<u64, OrchError> {
    let bad = || {
        err(
            line,
            OrchErrorKind::BadNumber {
                what,
                found: text.chars().take(40).collect(),
            },
        )
    };
    // Plain decimal digits only: no sign, no spaces, no leading zeros that hide a typo.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 20 {
        return Err(bad());
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(bad());
    }
    text.parse::<u64>().map_err(|_| bad())
}

const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Accepts only a name that is one plain path component on every common system, so that joining
/// it to a download folder can never leave that folder.
pub fn check_filename(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err(format!(
            "it is {} bytes, more than {MAX_FILENAME_BYTES}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} names a folder, not a file"));
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c == '\\') {
        return Err(format!("{name:?} contains the path separator {c:?}"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("{:?} contains a control character", name));
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(format!("{name:?} starts with a drive prefix"));
    }
    if name.contains(':') {
        return Err(format!(
            "{name:?} contains ':' (a drive or stream separator on Windows)"
        ));
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    if WINDOWS_RESERVED
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem))
    {
        return Err(format!("{name:?} is a reserved device name on Windows"));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(format!(
            "{name:?} ends with a dot or space, which Windows drops"
        ));
    }
    Ok(())
}

/// Accepts line 1 of a `.orch`: one conductor as [`check_conductor`] accepts it, or up to
/// [`MAX_CONDUCTORS`] distinct ones separated by commas (no spaces, no empty entries).
pub fn check_conductors(text: &str) -> Result<(), String> {
    // Counted before splitting into anything, so a line of commas costs nothing.
    let count = text.bytes().filter(|&b| b == b',').count() + 1;
    if count > MAX_CONDUCTORS {
        return Err(format!(
            "{count} conductors listed, more than the limit of {MAX_CONDUCTORS}"
        ));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(count);
    for (i, one) in text.split(',').enumerate() {
        if one.is_empty() && count > 1 {
            return Err(format!(
                "conductor {} of {count} is empty (two commas, or one at an end)",
                i + 1
            ));
        }
        check_conductor(one).map_err(|why| match count {
            1 => why,
            _ => format!("conductor {} of {count}: {why}", i + 1),
        })?;
        if seen.iter().any(|s| s.eq_ignore_ascii_case(one)) {
            return Err(format!("conductor {:?} is listed twice", truncate(one)));
        }
        seen.push(one);
    }
    Ok(())
}

/// Accepts `a.b.c.d:port`, `[v6]:port` and `hostname:port`, with port 1 to 65535.
pub fn check_conductor(text: &str) -> Result<(), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{:?} has no ':PORT'", truncate(text)))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => {
            return Err(format!(
                "port {:?} is not a number from 1 to 65535",
                truncate(port)
            ))
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("{:?} opens '[' without closing it", truncate(host)))?;
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{:?} is not an IPv6 address", truncate(inner)));
    }
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.len() > MAX_HOST_BYTES {
        return Err(format!("the host is longer than {MAX_HOST_BYTES} bytes"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!(
            "{:?} is not an IPv4 address, [IPv6] address or host name",
            truncate(host)
        ));
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Orchestra {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let parts = data.chunks(16384).map(Checksum::of).collect();
        Orchestra::new(
            "127.0.0.1:9999",
            "sample.bin",
            Checksum::of(&data),
            data.len() as u64,
            16384,
            parts,
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let o = sample();
        assert_eq!(Orchestra::parse(&o.to_text()).unwrap(), o);
        assert_eq!(o.part_count(), 3);
        assert_eq!(
            o.part_span(2),
            Some(Span {
                offset: 32768,
                len: 40_000 - 32768
            })
        );
        assert_eq!(o.bytes_in(2, false), 2 * 16384);
        assert_eq!(o.bytes_in(3, true), 40_000);
        assert_eq!(o.bytes_in(1, true), 40_000 - 32768);
        assert_eq!(o.part_span(3), None);
    }

    #[test]
    fn crlf_is_read_and_keeps_the_swarm_id() {
        let o = sample();
        let crlf = o.to_text().replace('\n', "\r\n");
        let parsed = Orchestra::parse(&crlf).unwrap();
        assert_eq!(parsed, o);
        assert_eq!(parsed.swarm_id(), o.swarm_id());
    }

    #[test]
    fn swarm_id_ignores_conductor_but_not_part_size() {
        let o = sample();
        let mut moved = o.clone();
        moved.conductor = "example.org:7000".into();
        assert_eq!(moved.swarm_id(), o.swarm_id());
        let mut other = o.clone();
        other.filename = "other.bin".into();
        assert_ne!(other.swarm_id(), o.swarm_id());
    }

    #[test]
    fn default_part_size_targets_1000_to_2000_parts() {
        assert_eq!(Orchestra::default_part_size(0), 256 * 1024);
        assert_eq!(Orchestra::default_part_size(1 << 30), 1 << 20);
        assert_eq!(Orchestra::default_part_size(4 << 30), 4 << 20);
        assert_eq!(Orchestra::default_part_size(1 << 40), 16 << 20);
        for shift in 29..35 {
            let parts = (1u64 << shift).div_ceil(Orchestra::default_part_size(1 << shift));
            assert!((1000..=2000).contains(&parts), "{shift}: {parts}");
        }
    }

    #[test]
    fn conductors() {
        for ok in [
            "127.0.0.1:9000",
            "[::1]:9000",
            "[fe80::1]:1",
            "tracker.example.org:65535",
            "host:1",
        ] {
            assert_eq!(check_conductor(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:65536",
            "[::1:80",
            "[zz]:80",
            "a b:80",
            "host:+80",
            "-a:1",
        ] {
            assert!(check_conductor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conductor_lists() {
        for ok in ["a:1", "a:1,b:2", "127.0.0.1:9000,[::1]:9000,host.example:7"] {
            assert_eq!(check_conductors(ok), Ok(()), "{ok}");
        }
        let sixteen: Vec<String> = (1..=MAX_CONDUCTORS).map(|p| format!("h:{p}")).collect();
        assert_eq!(check_conductors(&sixteen.join(",")), Ok(()));
        let seventeen = format!("{},h:99", sixteen.join(","));
        for bad in [
            "",
            ",",
            "a:1,",
            ",a:1",
            "a:1,,b:2",
            "a:1, b:2",
            "a:1,a:1",
            "a:1,A:1",
            "a:1,b",
            seventeen.as_str(),
        ] {
            assert!(check_conductors(bad).is_err(), "{bad}");
        }
        let mut o = sample();
        o.conductor = "a:1,b:2".into();
        let parsed = Orchestra::parse(&o.to_text()).unwrap();
        assert_eq!(parsed.conductors(), ["a:1", "b:2"]);
        assert_eq!(parsed.swarm_id(), sample().swarm_id());
        assert_eq!(sample().conductors(), ["127.0.0.1:9999"]);
    }
}
