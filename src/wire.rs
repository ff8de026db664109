//! The line-based TCP protocol spoken between members and the conductor, and between members.
//!
//! Control messages are single text lines of at most [`MAX_LINE`] bytes, ended by `\n` (a `\r`
//! before it is tolerated). Bulk data (a part, a map of which parts a peer has) follows a header
//! line that announces its length and is sent as raw bytes, never text-encoded. Every length is
//! checked against the `.orch` *before* any byte of the payload is read, so a hostile peer can
//! make us allocate at most one part buffer. docs/PROTOCOL.md describes the exchanges.
//!
//! Decoding is split in two layers: `parse_*` functions turn one line into a message (pure, and
//! fuzzed by the tests), and [`LineReader`] reads bounded lines and payloads from a stream.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;

use crate::orch::{Checksum, SwarmId};

/// Longest control line, in bytes, without its line end.
pub const MAX_LINE: usize = 1024;
/// Protocol name and version, sent in every `HELLO` and `ANNOUNCE`.
pub const PROTOCOL: &str = "tnc/1";
/// Most peers a conductor returns in one `PEERS` answer.
pub const MAX_PEERS_PER_REPLY: usize = 50;
/// Most addresses in one member-to-member `PEX` line (it must fit in [`MAX_LINE`]).
pub const MAX_PEX: usize = 16;

/// A member's random identity for one run: lets peers spot a connection to themselves and
/// duplicate connections between the same pair.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    pub fn random() -> PeerId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        id[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        PeerId(id)
    }

    fn from_hex(text: &str) -> Option<PeerId> {
        let mut id = [0u8; 16];
        if text.len() != 32 {
            return None;
        }
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(PeerId(id))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// What went wrong on the wire. Every variant names what was received or expected.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    /// The other side closed the connection at a message boundary.
    Closed,
    LineTooLong,
    NotText,
    UnknownCommand(String),
    Malformed {
        command: &'static str,
        why: String,
    },
    /// A length in a header that does not match what the `.orch` says.
    BadLength {
        what: &'static str,
        got: u64,
        expected: u64,
    },
    IndexOutOfRange {
        index: u64,
        parts: u32,
    },
    /// The other side answered `ERROR ...`.
    Remote(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Closed => write!(f, "connection closed by the other side"),
            WireError::LineTooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            WireError::NotText => write!(f, "control line is not UTF-8 text"),
            WireError::UnknownCommand(c) => write!(f, "unknown command {c:?}"),
            WireError::Malformed { command, why } => write!(f, "malformed {command}: {why}"),
            WireError::BadLength {
                what,
                got,
                expected,
            } => {
                write!(f, "{what} announces {got} bytes, expected {expected}")
            }
            WireError::IndexOutOfRange { index, parts } => {
                write!(
                    f,
                    "part index {index} out of range (the file has {parts} parts)"
                )
            }
            WireError::Remote(why) => write!(f, "the other side says: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    }
}

impl WireError {
    /// True when the error is a read timeout rather than a protocol fault.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// The reason in an `ERROR <reason>` line.
fn error_reason(line: &str) -> String {
    line.trim_start()
        .strip_prefix("ERROR")
        .unwrap_or("")
        .trim()
        .to_string()
}

fn malformed(command: &'static str, why: impl Into<String>) -> WireError {
    WireError::Malformed {
        command,
        why: why.into(),
    }
}

/// Reads bounded lines and exact-length payloads from a buffered stream.
pub struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
    /// `line` holds the line returned last, to be cleared by the next read; otherwise it holds
    /// the start of a line whose read timed out, which the next read goes on with.
    returned: bool,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            inner,
            line: Vec::with_capacity(128),
            returned: false,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads one line of at most [`MAX_LINE`] bytes. A longer line is an error as soon as the
    /// limit is passed: the rest is never buffered. A read that fails (a timeout, say) keeps
    /// what it had of the line, and the next call goes on with it: a caller may wake on a
    /// timeout of its own in the middle of a peer's line.
    pub fn read_line(&mut self) -> Result<&str, WireError> {
        if std::mem::take(&mut self.returned) {
            self.line.clear();
        }
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if available.is_empty() {
                return Err(if self.line.is_empty() {
                    WireError::Closed
                } else {
                    WireError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a line",
                    ))
                });
            }
            let (take, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if self.line.len() + take > MAX_LINE + 2 {
                return Err(WireError::LineTooLong);
            }
            self.line.extend_from_slice(&available[..take]);
            self.inner.consume(take);
            if done {
                break;
            }
        }
        self.returned = true;
        self.line.pop();
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        if self.line.len() > MAX_LINE {
            return Err(WireError::LineTooLong);
        }
        std::str::from_utf8(&self.line).map_err(|_| WireError::NotText)
    }

    /// Reads exactly `buf.len()` payload bytes.
    pub fn read_payload(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a payload",
                ))
            } else {
                WireError::Io(e)
            }
        })
    }
}

fn parse_swarm(command: &'static str, text: Option<&str>) -> Result<SwarmId, WireError> {
    text.and_then(Checksum::from_hex)
        .ok_or_else(|| malformed(command, "expected a swarm id of 64 hex digits"))
}

fn parse_peer_id(command: &'static str, text: Option<&str>) -> Result<PeerId, WireError> {
    text.and_then(PeerId::from_hex)
        .ok_or_else(|| malformed(command, "expected a peer id of 32 hex digits"))
}

fn parse_u64(command: &'static str, what: &str, text: Option<&str>) -> Result<u64, WireError> {
    let text = text.ok_or_else(|| malformed(command, format!("missing {what}")))?;
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(
            command,
            format!("{what} {text:?} is not a number"),
        ));
    }
    text.parse()
        .map_err(|_| malformed(command, format!("{what} {text:?} is too large")))
}

fn parse_port(command: &'static str, text: Option<&str>) -> Result<u16, WireError> {
    match parse_u64(command, "port", text)? {
        p @ 1..=65535 => Ok(p as u16),
        p => Err(malformed(
            command,
            format!("port {p} is not from 1 to 65535"),
        )),
    }
}

fn parse_addr(command: &'static str, text: Option<&str>) -> Result<SocketAddr, WireError> {
    let text = text.ok_or_else(|| malformed(command, "missing address"))?;
    text.parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| malformed(command, format!("{text:?} is not IP:PORT")))
}

fn parse_index(command: &'static str, text: Option<&str>, parts: u32) -> Result<u32, WireError> {
    let index = parse_u64(command, "part index", text)?;
    if index >= u64::from(parts) {
        return Err(WireError::IndexOutOfRange { index, parts });
    }
    Ok(index as u32)
}

fn no_more(
    command: &'static str,
    mut words: std::str::SplitAsciiWhitespace,
) -> Result<(), WireError> {
    match words.next() {
        None => Ok(()),
        Some(extra) => Err(malformed(command, format!("unexpected {extra:?}"))),
    }
}

fn check_protocol(command: &'static str, text: Option<&str>) -> Result<(), WireError> {
    match text {
        Some(PROTOCOL) => Ok(()),
        Some(other) => Err(malformed(
            command,
            format!("protocol {other:?}, we speak {PROTOCOL}"),
        )),
        None => Err(malformed(command, "missing protocol version")),
    }
}

// ---------------------------------------------------------------------------------------------
// Member <-> conductor

/// A request to the conductor. One request per line; several may share a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConductorRequest {
    /// `ANNOUNCE tnc/1 <swarm> <peer id> <listen port>`: join or refresh, and ask for peers.
    Announce {
        swarm: SwarmId,
        peer_id: PeerId,
        port: u16,
    },
    /// `LEAVE tnc/1 <swarm> <peer id> <listen port>`: the member is quitting.
    Leave {
        swarm: SwarmId,
        peer_id: PeerId,
        port: u16,
    },
    /// `STATS`: counters for operators.
    Stats,
    /// `CHALLENGE`: asks for a fresh nonce to sign requests for a private swarm with.
    Challenge,
    /// `ANNOUNCE` or `LEAVE` with a sixth word, the Ed25519 signature (128 hex digits) over the
    /// request and the connection's challenge (see [`crate::secure::SignedFields`]): a request
    /// for a private swarm, whose id is the public key.
    Signed {
        request: Box<ConductorRequest>,
        signature: Signature,
    },
}

/// An Ed25519 signature as it travels: 128 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

impl ConductorRequest {
    pub fn parse(line: &str) -> Result<ConductorRequest, WireError> {
        let mut words = line.split_ascii_whitespace();
        let request = match words.next() {
            Some(word @ ("ANNOUNCE" | "LEAVE")) => {
                let announce = word == "ANNOUNCE";
                let command = if announce { "ANNOUNCE" } else { "LEAVE" };
                check_protocol(command, words.next())?;
                let swarm = parse_swarm(command, words.next())?;
                let peer_id = parse_peer_id(command, words.next())?;
                let port = parse_port(command, words.next())?;
                let signature = words
                    .next()
                    .map(|word| parse_signature(command, word))
                    .transpose()?;
                no_more(command, words)?;
                let request = if announce {
                    ConductorRequest::Announce {
                        swarm,
                        peer_id,
                        port,
                    }
                } else {
                    ConductorRequest::Leave {
                        swarm,
                        peer_id,
                        port,
                    }
                };
                match signature {
                    None => request,
                    Some(signature) => ConductorRequest::Signed {
                        request: Box::new(request),
                        signature,
                    },
                }
            }
            Some("CHALLENGE") => {
                no_more("CHALLENGE", words)?;
                ConductorRequest::Challenge
            }
            Some("STATS") => {
                no_more("STATS", words)?;
                ConductorRequest::Stats
            }
            Some(other) => return Err(WireError::UnknownCommand(other.chars().take(32).collect())),
            None => return Err(WireError::UnknownCommand(String::new())),
        };
        Ok(request)
    }

    pub fn to_line(&self) -> String {
        match self {
            ConductorRequest::Announce {
                swarm,
                peer_id,
                port,
            } => {
                format!("ANNOUNCE {PROTOCOL} {swarm} {peer_id} {port}\n")
            }
            ConductorRequest::Leave {
                swarm,
                peer_id,
                port,
            } => {
                format!("LEAVE {PROTOCOL} {swarm} {peer_id} {port}\n")
            }
            ConductorRequest::Stats => "STATS\n".to_string(),
            ConductorRequest::Challenge => "CHALLENGE\n".to_string(),
            ConductorRequest::Signed { request, signature } => {
                let line = request.to_line();
                format!("{} {}\n", line.trim_end(), hex::encode(signature.0))
            }
        }
    }
}

fn parse_signature(command: &'static str, word: &str) -> Result<Signature, WireError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(word, &mut bytes)
        .map_err(|_| malformed(command, "expected a signature of 128 hex digits"))?;
    Ok(Signature(bytes))
}

/// Counters the conductor reports for `STATS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConductorStats {
    pub swarms: u64,
    pub members: u64,
    pub announces_per_sec: f64,
}

/// The conductor's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum ConductorReply {
    /// `PEERS <interval ms> <count>` then `count` lines of `IP:PORT`.
    Peers {
        interval_ms: u64,
        peers: Vec<SocketAddr>,
    },
    /// `OK`, the answer to `LEAVE`.
    Ok,
    /// `STATS <swarms> <members> <announces per second>`.
    Stats(ConductorStats),
    /// `ERROR <reason>`.
    Error(String),
    /// `CHALLENGE <nonce>`: 64 hex digits to sign this connection's next request with.
    Challenge([u8; 32]),
}

impl ConductorReply {
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut text = String::new();
        match self {
            ConductorReply::Peers { interval_ms, peers } => {
                text.push_str(&format!("PEERS {interval_ms} {}\n", peers.len()));
                for peer in peers {
                    text.push_str(&format!("{peer}\n"));
                }
            }
            ConductorReply::Ok => text.push_str("OK\n"),
            ConductorReply::Stats(s) => text.push_str(&format!(
                "STATS {} {} {:.1}\n",
                s.swarms, s.members, s.announces_per_sec
            )),
            ConductorReply::Challenge(nonce) => {
                text.push_str(&format!("CHALLENGE {}\n", hex::encode(nonce)))
            }
            ConductorReply::Error(why) => {
                let why: String = why.chars().filter(|c| !c.is_control()).take(200).collect();
                text.push_str(&format!("ERROR {why}\n"));
            }
        }
        out.write_all(text.as_bytes())
    }

    /// Reads one reply, with every count bounded.
    pub fn read_from<R: BufRead>(reader: &mut LineReader<R>) -> Result<ConductorReply, WireError> {
        let line = reader.read_line()?;
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("PEERS") => {
                let interval_ms = parse_u64("PEERS", "interval", words.next())?;
                let count = parse_u64("PEERS", "count", words.next())?;
                no_more("PEERS", words)?;
                if count > MAX_PEERS_PER_REPLY as u64 {
                    return Err(malformed(
                        "PEERS",
                        format!("{count} peers, more than {MAX_PEERS_PER_REPLY}"),
                    ));
                }
                let mut peers = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let line = reader.read_line()?;
                    peers.push(parse_addr("PEERS", Some(line.trim()))?);
                }
                Ok(ConductorReply::Peers { interval_ms, peers })
            }
            Some("OK") => {
                no_more("OK", words)?;
                Ok(ConductorReply::Ok)
            }
            Some("STATS") => {
                let swarms = parse_u64("STATS", "swarms", words.next())?;
                let members = parse_u64("STATS", "members", words.next())?;
                let rate = words
                    .next()
                    .and_then(|w| w.parse::<f64>().ok())
                    .filter(|r| r.is_finite() && *r >= 0.0)
                    .ok_or_else(|| malformed("STATS", "expected announces per second"))?;
                no_more("STATS", words)?;
                Ok(ConductorReply::Stats(ConductorStats {
                    swarms,
                    members,
                    announces_per_sec: rate,
                }))
            }
            Some("ERROR") => Ok(ConductorReply::Error(error_reason(line))),
            Some("CHALLENGE") => {
                let mut nonce = [0u8; 32];
                let word = words.next().unwrap_or("");
                hex::decode_to_slice(word, &mut nonce)
                    .map_err(|_| malformed("CHALLENGE", "expected a nonce of 64 hex digits"))?;
                no_more("CHALLENGE", words)?;
                Ok(ConductorReply::Challenge(nonce))
            }
            Some(other) => Err(WireError::UnknownCommand(other.chars().take(32).collect())),
            None => Err(WireError::UnknownCommand(String::new())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Member <-> member

/// The first line each side sends: `HELLO tnc/1 <swarm> <peer id> <listen port or 0>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub swarm: SwarmId,
    pub peer_id: PeerId,
    /// The port this member accepts peers on; 0 when it accepts none.
    pub listen_port: u16,
}

impl Hello {
    pub fn parse(line: &str) -> Result<Hello, WireError> {
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("HELLO") => {}
            Some("ERROR") => return Err(WireError::Remote(error_reason(line))),
            Some(other) => return Err(WireError::UnknownCommand(other.chars().take(32).collect())),
            None => return Err(WireError::UnknownCommand(String::new())),
        }
        check_protocol("HELLO", words.next())?;
        let swarm = parse_swarm("HELLO", words.next())?;
        let peer_id = parse_peer_id("HELLO", words.next())?;
        let port = parse_u64("HELLO", "port", words.next())?;
        no_more("HELLO", words)?;
        let listen_port = u16::try_from(port)
            .map_err(|_| malformed("HELLO", format!("port {port} is above 65535")))?;
        Ok(Hello {
            swarm,
            peer_id,
            listen_port,
        })
    }

    pub fn to_line(&self) -> String {
        format!(
            "HELLO {PROTOCOL} {} {} {}\n",
            self.swarm, self.peer_id, self.listen_port
        )
    }
}

/// A member-to-member message after the `HELLO`s. For `HaveMap` and `Piece` the line is only
/// the header: the caller reads the announced payload next with [`LineReader::read_payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// `HAVEMAP <bytes>` + a bitmap of ceil(parts / 8) bytes, part 0 in the high bit of byte 0.
    HaveMap { bytes: usize },
    /// `HAVE <index>`: the sender has verified this part and serves it now.
    Have(u32),
    /// `REQUEST <index>`: please send this part.
    Request(u32),
    /// `CANCEL <index>`: no longer needed (sent in the endgame).
    Cancel(u32),
    /// `PIECE <index> <length>` + `length` bytes of the part.
    Piece { index: u32, len: usize },
    /// `REJECT <index>`: the sender will not send this part.
    Reject(u32),
    /// `PEX <IP:PORT> ...`: other members of the swarm the sender knows (peer exchange).
    Pex(Vec<SocketAddr>),
    /// `PING`: keeps an idle connection alive.
    Ping,
}

/// How many bytes a have-map of `parts` parts takes.
pub fn have_map_len(parts: u32) -> usize {
    (parts as usize).div_ceil(8)
}

impl PeerMessage {
    /// Parses one line against the swarm's `.orch` layout: `part_len(index)` gives each part's
    /// length, so a `PIECE` with a wrong length is refused before its payload is read.
    pub fn parse(
        line: &str,
        parts: u32,
        part_len: impl Fn(u32) -> usize,
    ) -> Result<PeerMessage, WireError> {
        let mut words = line.split_ascii_whitespace();
        let command = words.next().unwrap_or("");
        let message = match command {
            "HAVEMAP" => {
                let bytes = parse_u64("HAVEMAP", "length", words.next())?;
                let expected = have_map_len(parts) as u64;
                if bytes != expected {
                    return Err(WireError::BadLength {
                        what: "HAVEMAP",
                        got: bytes,
                        expected,
                    });
                }
                PeerMessage::HaveMap {
                    bytes: bytes as usize,
                }
            }
            "HAVE" => PeerMessage::Have(parse_index("HAVE", words.next(), parts)?),
            "REQUEST" => PeerMessage::Request(parse_index("REQUEST", words.next(), parts)?),
            "CANCEL" => PeerMessage::Cancel(parse_index("CANCEL", words.next(), parts)?),
            "REJECT" => PeerMessage::Reject(parse_index("REJECT", words.next(), parts)?),
            "PIECE" => {
                let index = parse_index("PIECE", words.next(), parts)?;
                let len = parse_u64("PIECE", "length", words.next())?;
                let expected = part_len(index) as u64;
                if len != expected {
                    return Err(WireError::BadLength {
                        what: "PIECE",
                        got: len,
                        expected,
                    });
                }
                PeerMessage::Piece {
                    index,
                    len: len as usize,
                }
            }
            "PEX" => {
                let mut peers = Vec::new();
                for word in words.by_ref() {
                    if peers.len() == MAX_PEX {
                        return Err(malformed("PEX", format!("more than {MAX_PEX} addresses")));
                    }
                    peers.push(parse_addr("PEX", Some(word))?);
                }
                return Ok(PeerMessage::Pex(peers));
            }
            "PING" => PeerMessage::Ping,
            "ERROR" => return Err(WireError::Remote(error_reason(line))),
            other => return Err(WireError::UnknownCommand(other.chars().take(32).collect())),
        };
        let command = match message {
            PeerMessage::HaveMap { .. } => "HAVEMAP",
            PeerMessage::Piece { .. } => "PIECE",
            _ => "message",
        };
        no_more(command, words)?;
        Ok(message)
    }

    /// The header line, with its `\n`.
    pub fn to_line(&self) -> String {
        match self {
            PeerMessage::HaveMap { bytes } => format!("HAVEMAP {bytes}\n"),
            PeerMessage::Have(i) => format!("HAVE {i}\n"),
            PeerMessage::Request(i) => format!("REQUEST {i}\n"),
            PeerMessage::Cancel(i) => format!("CANCEL {i}\n"),
            PeerMessage::Piece { index, len } => format!("PIECE {index} {len}\n"),
            PeerMessage::Reject(i) => format!("REJECT {i}\n"),
            PeerMessage::Pex(peers) => {
                let mut line = String::from("PEX");
                for peer in peers.iter().take(MAX_PEX) {
                    line.push(' ');
                    line.push_str(&peer.to_string());
                }
                line.push('\n');
                line
            }
            PeerMessage::Ping => "PING\n".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> LineReader<&[u8]> {
        LineReader::new(bytes)
    }

    #[test]
    fn lines_are_bounded() {
        let long = vec![b'A'; MAX_LINE + 5];
        let mut r = reader(&long);
        assert!(matches!(r.read_line(), Err(WireError::LineTooLong)));
        let long = [vec![b'A'; MAX_LINE + 1], b"\n".to_vec()].concat();
        let mut r = reader(&long);
        assert!(matches!(r.read_line(), Err(WireError::LineTooLong)));
        let mut ok = vec![b'A'; MAX_LINE];
        ok.extend_from_slice(b"\r\nB\n");
        let mut r = reader(&ok);
        assert_eq!(r.read_line().unwrap().len(), MAX_LINE);
        assert_eq!(r.read_line().unwrap(), "B");
        assert!(matches!(r.read_line(), Err(WireError::Closed)));
    }

    /// Yields its chunks one read at a time, failing with a timeout where a chunk is `None`.
    struct Stutter(std::collections::VecDeque<Option<&'static [u8]>>);

    impl io::Read for Stutter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
                Some(Some(chunk)) => {
                    buf[..chunk.len()].copy_from_slice(chunk);
                    Ok(chunk.len())
                }
            }
        }
    }

    #[test]
    fn a_line_cut_by_a_timeout_goes_on_at_the_next_read() {
        let chunks = [
            Some(&b"RE"[..]),
            None,
            Some(b"JECT 7\nPI"),
            None,
            Some(b"NG\n"),
        ];
        let stutter = Stutter(chunks.into_iter().collect());
        let mut r = LineReader::new(io::BufReader::with_capacity(16, stutter));
        assert!(r.read_line().unwrap_err().is_timeout());
        assert_eq!(r.read_line().unwrap(), "REJECT 7");
        assert!(r.read_line().unwrap_err().is_timeout());
        assert_eq!(r.read_line().unwrap(), "PING");
        assert!(matches!(r.read_line(), Err(WireError::Closed)));
    }

    #[test]
    fn conductor_round_trip() {
        let swarm = Checksum::of(b"x");
        let peer_id = PeerId::random();
        for request in [
            ConductorRequest::Announce {
                swarm,
                peer_id,
                port: 7,
            },
            ConductorRequest::Leave {
                swarm,
                peer_id,
                port: 65535,
            },
            ConductorRequest::Stats,
            ConductorRequest::Challenge,
            ConductorRequest::Signed {
                request: Box::new(ConductorRequest::Announce {
                    swarm,
                    peer_id,
                    port: 9,
                }),
                signature: Signature([0xab; 64]),
            },
        ] {
            let line = request.to_line();
            assert_eq!(ConductorRequest::parse(line.trim_end()).unwrap(), request);
        }
        let reply = ConductorReply::Peers {
            interval_ms: 1500,
            peers: vec!["127.0.0.1:5".parse().unwrap(), "[::1]:6".parse().unwrap()],
        };
        let mut bytes = Vec::new();
        reply.write_to(&mut bytes).unwrap();
        assert_eq!(
            ConductorReply::read_from(&mut reader(&bytes)).unwrap(),
            reply
        );
    }

    #[test]
    fn peer_messages_check_the_layout() {
        let len = |i: u32| if i == 9 { 100 } else { 16384 };
        assert_eq!(
            PeerMessage::parse("PIECE 9 100", 10, len).unwrap(),
            PeerMessage::Piece { index: 9, len: 100 }
        );
        assert!(matches!(
            PeerMessage::parse("PIECE 9 16384", 10, len),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            PeerMessage::parse("REQUEST 10", 10, len),
            Err(WireError::IndexOutOfRange {
                index: 10,
                parts: 10
            })
        ));
        assert!(matches!(
            PeerMessage::parse("HAVEMAP 3", 10, len),
            Err(WireError::BadLength { expected: 2, .. })
        ));
        assert!(PeerMessage::parse("HAVE 1 2", 10, len).is_err());
        assert!(PeerMessage::parse("HAVE -1", 10, len).is_err());
        assert!(PeerMessage::parse("HAVE 99999999999999999999999", 10, len).is_err());
    }
}
