//! What each fuzz target checks, one function per target, each taking the raw fuzz input.
//!
//! Every decoder of untrusted bytes must, for any input: not panic, not allocate in proportion
//! to a number it was sent, and give back a value that survives a round trip through its
//! encoder. These functions assert exactly that. The cargo-fuzz targets in `fuzz_targets/` call
//! them under libFuzzer (nightly); `tests/regressions.rs` compiles this same file on stable to
//! replay every crash ever found and the seed corpus in `fuzz/seeds/`.

use std::io::{BufReader, Cursor, Read, Write};
use std::sync::OnceLock;

use torrentnchill::member::bitfield::Bitfield;
use torrentnchill::orch::{
    check_conductor, Checksum, Orchestra, MAX_CONDUCTORS, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE,
};
use torrentnchill::secure::handshake::{self, Channel, SECURE_LINE};
use torrentnchill::secure::{SwarmKeys, SwarmSecret};
use torrentnchill::wire::{
    have_map_len, ConductorReply, ConductorRequest, Hello, LineReader, PeerMessage, WireError,
    MAX_LINE, MAX_PEERS_PER_REPLY, MAX_PEX,
};

/// A target's check: panics if the input shows a bug.
pub type Check = fn(&[u8]);

/// The names of the targets, as `cargo fuzz list` shows them, with their check.
pub const TARGETS: &[(&str, Check)] = &[
    ("orch_parse", orch_parse),
    ("conductor_request", conductor_request),
    ("line_reader", line_reader),
    ("hello", hello),
    ("peer_message", peer_message),
    ("conductor_reply", conductor_reply),
    ("bitfield", bitfield),
    ("secure_handshake", secure_handshake),
];

/// `.orch` files: a parsed file writes back to a canonical text that parses to the same thing.
pub fn orch_parse(data: &[u8]) {
    let Ok(orch) = Orchestra::parse_bytes(data) else {
        return;
    };
    assert_eq!(orch.part_count() as usize, orch.part_checksums.len());
    assert!(u64::from(orch.part_count()) <= MAX_PARTS);
    assert!((MIN_PART_SIZE..=MAX_PART_SIZE).contains(&orch.part_size));
    // Line 1: one to MAX_CONDUCTORS valid, distinct conductors.
    let conductors = orch.conductors();
    assert!((1..=MAX_CONDUCTORS).contains(&conductors.len()));
    for (i, one) in conductors.iter().enumerate() {
        assert!(check_conductor(one).is_ok(), "{one:?}");
        assert!(!conductors[..i].iter().any(|c| c.eq_ignore_ascii_case(one)));
    }
    let text = orch.to_text();
    let again = Orchestra::parse(&text).expect("the canonical text of a valid .orch must parse");
    assert_eq!(again, orch);
    assert_eq!(again.swarm_id(), orch.swarm_id());
    // The parts tile the file exactly.
    let mut end = 0u64;
    for index in 0..orch.part_count() {
        let span = orch.part_span(index).expect("every part has a span");
        let (offset, len) = (span.offset, span.len);
        assert_eq!(offset, end);
        assert!(len > 0 && len <= orch.max_part_len());
        end += len as u64;
    }
    assert_eq!(end, orch.file_size);
    assert!(orch.part_span(orch.part_count()).is_none());
}

/// What the conductor does with one request line.
pub fn conductor_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(request) = ConductorRequest::parse(line) else {
        return;
    };
    let out = request.to_line();
    assert!(out.len() <= MAX_LINE + 1, "{out:?}");
    assert_eq!(ConductorRequest::parse(out.trim_end()).unwrap(), request);
}

/// `LineReader`, checked against a plain model of the framing rules, with the input arriving
/// in chunks of every size (the first byte picks the buffer size) so lines straddle refills.
pub fn line_reader(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let capacity = 1 + usize::from(first) * 5;
    let mut reader = LineReader::new(BufReader::with_capacity(capacity, input));
    let mut rest = input;
    // Each round consumes at least one byte or ends.
    for _ in 0..=input.len() {
        let expected = model_line(rest);
        match (reader.read_line(), &expected) {
            (Ok(line), Model::Line(want, used)) => {
                assert_eq!(line.as_bytes(), &want[..]);
                assert!(line.len() <= MAX_LINE);
                rest = &rest[*used..];
                // A line `#N` is followed by an N-byte payload (N < 64), as HAVEMAP and PIECE
                // headers are.
                if let Some(n) = line.strip_prefix('#').and_then(|n| n.parse::<usize>().ok()) {
                    if n < 64 {
                        let mut payload = vec![0u8; n];
                        let read = reader.read_payload(&mut payload);
                        if rest.len() >= n {
                            read.expect("a complete payload reads");
                            assert_eq!(&payload[..], &rest[..n]);
                            rest = &rest[n..];
                        } else {
                            assert!(read.is_err(), "a short payload must fail");
                            return;
                        }
                    }
                }
            }
            (Err(WireError::Closed), Model::Closed) => return,
            (Err(WireError::LineTooLong), Model::TooLong) => return,
            (Err(WireError::NotText), Model::NotText) => return,
            (Err(WireError::Io(_)), Model::Truncated) => return,
            (got, want) => panic!("LineReader gave {got:?}, the model {want:?}"),
        }
    }
    panic!("LineReader did not reach the end of {} bytes", input.len());
}

#[derive(Debug)]
enum Model {
    /// The line without its end, and how many input bytes it used.
    Line(Vec<u8>, usize),
    Closed,
    TooLong,
    NotText,
    /// The input ends in the middle of a line.
    Truncated,
}

/// The framing rules of docs/PROTOCOL.md section 1, written as plainly as possible.
fn model_line(input: &[u8]) -> Model {
    let Some(end) = input.iter().position(|&b| b == b'\n') else {
        return if input.is_empty() {
            Model::Closed
        } else if input.len() > MAX_LINE + 2 {
            Model::TooLong
        } else {
            Model::Truncated
        };
    };
    // At most MAX_LINE bytes of text, plus `\r\n`, are ever buffered.
    if end + 1 > MAX_LINE + 2 {
        return Model::TooLong;
    }
    let mut line = &input[..end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    if line.len() > MAX_LINE {
        Model::TooLong
    } else if std::str::from_utf8(line).is_err() {
        Model::NotText
    } else {
        Model::Line(line.to_vec(), end + 1)
    }
}

/// A member's first line from a peer.
pub fn hello(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(hello) = Hello::parse(line) else {
        return;
    };
    let out = hello.to_line();
    assert!(out.len() <= MAX_LINE + 1);
    assert_eq!(Hello::parse(out.trim_end()).unwrap(), hello);
}

/// Member-to-member messages, against a layout taken from the first 8 bytes: every accepted
/// length and index agrees with the layout, and every message round-trips.
pub fn peer_message(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (layout, line) = data.split_at(8);
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let word = |i: usize| u32::from_le_bytes(layout[i..i + 4].try_into().unwrap());
    let parts = word(0) % (MAX_PARTS as u32 + 1);
    let part_size =
        MIN_PART_SIZE as usize + word(4) as usize % (MAX_PART_SIZE - MIN_PART_SIZE + 1) as usize;
    let last = 1 + word(4).rotate_left(16) as usize % part_size;
    let part_len = |i: u32| {
        assert!(i < parts, "part_len asked for part {i} of {parts}");
        if i + 1 == parts {
            last
        } else {
            part_size
        }
    };
    let Ok(message) = PeerMessage::parse(line, parts, part_len) else {
        return;
    };
    match &message {
        PeerMessage::HaveMap { bytes } => assert_eq!(*bytes, have_map_len(parts)),
        PeerMessage::Have(i)
        | PeerMessage::Request(i)
        | PeerMessage::Cancel(i)
        | PeerMessage::Reject(i) => assert!(*i < parts),
        PeerMessage::Piece { index, len } => {
            assert!(*index < parts);
            assert_eq!(*len, part_len(*index));
        }
        PeerMessage::Pex(peers) => {
            assert!(peers.len() <= MAX_PEX);
            assert!(peers.iter().all(|p| p.port() != 0));
        }
        PeerMessage::Ping => {}
    }
    let out = message.to_line();
    assert!(out.len() <= MAX_LINE + 1, "{out:?}");
    assert_eq!(
        PeerMessage::parse(out.trim_end(), parts, part_len).unwrap(),
        message
    );
}

/// What a member reads back from a conductor, several replies in a row.
pub fn conductor_reply(data: &[u8]) {
    let mut reader = LineReader::new(data);
    for _ in 0..8 {
        let Ok(reply) = ConductorReply::read_from(&mut reader) else {
            return;
        };
        let again = round_trip(&reply);
        match (&reply, &again) {
            (ConductorReply::Peers { peers, .. }, _) => {
                assert!(peers.len() <= MAX_PEERS_PER_REPLY);
                assert!(peers.iter().all(|p| p.port() != 0));
                assert_eq!(again, reply);
            }
            (ConductorReply::Stats(sent), ConductorReply::Stats(back)) => {
                assert!(sent.announces_per_sec.is_finite() && sent.announces_per_sec >= 0.0);
                assert_eq!((back.swarms, back.members), (sent.swarms, sent.members));
            }
            // A reason is cleaned (control characters, length) once, then kept as it is.
            (ConductorReply::Error(_), _) => assert_eq!(round_trip(&again), again),
            (ConductorReply::Ok, _) => assert_eq!(again, reply),
            (sent, back) => panic!("{sent:?} came back as {back:?}"),
        }
    }
}

fn round_trip(reply: &ConductorReply) -> ConductorReply {
    // Rates are written with one decimal: a huge one (which no conductor sends) makes a line
    // too long to read back, and that is fine.
    if let ConductorReply::Stats(stats) = reply {
        if stats.announces_per_sec > 1e12 {
            return reply.clone();
        }
    }
    let mut bytes = Vec::new();
    reply.write_to(&mut bytes).unwrap();
    ConductorReply::read_from(&mut LineReader::new(&bytes[..]))
        .unwrap_or_else(|e| panic!("{reply:?} written as {bytes:?} does not read back: {e}"))
}

/// Have-maps: accepted exactly when the size is right and no bit past the last part is set,
/// and an accepted map answers consistently.
pub fn bitfield(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let (head, bytes) = data.split_at(5);
    // Mostly lengths that fit the bytes, so that the valid case is reached often.
    let len = if head[0] & 1 == 0 {
        (bytes.len() * 8).saturating_sub(usize::from(head[4] % 8)) as u32
    } else {
        u32::from_le_bytes(head[1..5].try_into().unwrap())
    };
    let size_ok = bytes.len() == have_map_len(len);
    let spare_clear =
        size_ok && (len as usize..bytes.len() * 8).all(|i| bytes[i / 8] & (0x80 >> (i % 8)) == 0);
    match Bitfield::from_bytes(bytes.to_vec(), len) {
        Ok(mut map) => {
            assert!(size_ok && spare_clear, "accepted a bad map of {len} parts");
            assert_eq!(map.len(), len);
            assert_eq!(map.as_bytes(), bytes);
            let ones: Vec<u32> = map.ones().collect();
            assert_eq!(ones.len() as u32, map.count());
            assert!(ones.iter().all(|&i| i < len && map.get(i)));
            assert!(!map.get(len));
            assert_eq!(map.is_full(), map.count() == len);
            if let Some(&first) = ones.first() {
                map.clear(first);
                assert!(!map.get(first));
                assert!(map.set(first));
                assert!(!map.set(first));
            }
            assert!(!map.set(len));
            assert_eq!(map.as_bytes(), bytes);
        }
        Err(_) => assert!(
            !(size_ok && spare_clear),
            "refused a good map of {len} parts"
        ),
    }
}

/// The keys of the fuzzed private swarm.
pub fn fuzz_keys() -> SwarmKeys {
    SwarmKeys::derive(&SwarmSecret::from_bytes([7; 32]), Checksum::of(b"fuzz"))
}

/// Both ends of one private link, made once by a real handshake over a socket pair.
pub fn channel_pair() -> &'static (Channel, Channel) {
    static PAIR: OnceLock<(Channel, Channel)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let acceptor = std::thread::spawn(move || {
            let mut line = [0u8; SECURE_LINE.len() + 1];
            (&b).read_exact(&mut line).unwrap();
            handshake::respond(&mut &b, &mut &b, &fuzz_keys()).unwrap()
        });
        let dialer = handshake::initiate(&mut &a, &mut &a, &fuzz_keys()).unwrap();
        (dialer, acceptor.join().unwrap())
    })
}

/// A private link's decoders. The first byte picks what the rest is: the bytes a dialer sends
/// after the `SECURE` line (a handshake message, then frames) that no input can get past without
/// the key; frames for an established link, which never decode to more than they hold; or
/// plaintext that must come back whole through a sealer and an opener, and not at all with one
/// byte changed.
pub fn secure_handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (dialer, acceptor) = channel_pair();
    match mode % 3 {
        0 => {
            let mut answer = Vec::new();
            let result = handshake::respond(&mut Cursor::new(rest), &mut answer, &fuzz_keys());
            assert!(result.is_err(), "a handshake without the key was accepted");
            assert!(answer.is_empty(), "answered a handshake without the key");
        }
        1 => {
            let mut out = Vec::new();
            let read = acceptor
                .opener(Cursor::new(rest))
                .take(1 << 20)
                .read_to_end(&mut out);
            // Without the key no frame authenticates: nothing comes out.
            assert!(read.is_err() || rest.is_empty(), "forged frames were read");
            assert!(out.is_empty());
        }
        _ => {
            let mut wire = Vec::new();
            {
                let mut sealer = dialer.sealer(&mut wire);
                // Written in pieces of every size the input suggests, with flushes between.
                let mut at = 0;
                while at < rest.len() {
                    let step = 1 + usize::from(rest[at]) * 97;
                    let end = (at + step).min(rest.len());
                    sealer.write_all(&rest[at..end]).unwrap();
                    if rest[at] % 2 == 0 {
                        sealer.flush().unwrap();
                    }
                    at = end;
                }
                sealer.flush().unwrap();
            }
            let mut back = Vec::new();
            acceptor
                .opener(Cursor::new(&wire))
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, rest);
            if !wire.is_empty() {
                let at = usize::from(mode) * 31 % wire.len();
                wire[at] ^= 0x01;
                let mut changed = Vec::new();
                let read = acceptor
                    .opener(Cursor::new(&wire))
                    .read_to_end(&mut changed);
                assert!(read.is_err(), "a changed frame was read");
            }
        }
    }
}
