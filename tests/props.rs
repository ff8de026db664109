//! Property tests for the `.orch` format and the wire protocol: round trips for everything we
//! write, and no panic (plus bounded output) for anything we read.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::io::{BufReader, Cursor, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::collection::vec;
use proptest::prelude::*;

use torrentnchill::orch::{Checksum, Orchestra, MAX_PART_SIZE, MIN_PART_SIZE};
use torrentnchill::wire::{
    have_map_len, ConductorReply, ConductorRequest, ConductorStats, Hello, LineReader, PeerId,
    PeerMessage, Signature, WireError, MAX_LINE, MAX_PEERS_PER_REPLY, MAX_PEX,
};

const MAX_TEST_PARTS: u64 = 64;

// ---------------------------------------------------------------------------------------------
// Generators

fn checksum() -> impl Strategy<Value = Checksum> {
    any::<[u8; 32]>().prop_map(Checksum)
}

fn peer_id() -> impl Strategy<Value = PeerId> {
    any::<[u8; 16]>().prop_map(PeerId)
}

fn port() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        // IPv4-mapped IPv6, which displays in dotted form.
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
    ]
}

/// An address as the wire carries it: any IP, port 1 to 65535.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), port()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A name that is one plain path component: it starts with `f` (so it is never a Windows
/// device name) and ends with a letter or digit (never a dot or space).
fn filename() -> impl Strategy<Value = String> {
    "f([a-zA-Z0-9 ._éü日本-]{0,40}[a-zA-Z0-9é日])?"
}

fn hostname() -> impl Strategy<Value = String> {
    vec("[a-z0-9]([a-z0-9_-]{0,8}[a-z0-9])?", 1..4).prop_map(|labels| labels.join("."))
}

fn one_conductor() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u32>(), port()).prop_map(|(a, p)| format!("{}:{p}", Ipv4Addr::from(a))),
        (any::<u128>(), port()).prop_map(|(a, p)| format!("[{}]:{p}", Ipv6Addr::from(a))),
        (hostname(), port()).prop_map(|(h, p)| format!("{h}:{p}")),
    ]
}

/// Line 1: one conductor, or a few distinct ones separated by commas.
fn conductor() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => one_conductor(),
        1 => vec(one_conductor(), 2..5).prop_map(|list| {
            let mut distinct: Vec<String> = Vec::new();
            for one in list {
                if !distinct.iter().any(|d| d.eq_ignore_ascii_case(&one)) {
                    distinct.push(one);
                }
            }
            distinct.join(",")
        }),
    ]
}

/// File size and part size with at most [`MAX_TEST_PARTS`] parts, edges included.
fn sizes() -> impl Strategy<Value = (u64, u64)> {
    let part_size = prop_oneof![
        Just(MIN_PART_SIZE),
        Just(MAX_PART_SIZE),
        MIN_PART_SIZE..=MAX_PART_SIZE,
    ];
    (part_size, 0..=MAX_TEST_PARTS, any::<u64>()).prop_map(|(part_size, parts, extra)| {
        if parts == 0 {
            return (0, part_size);
        }
        // The last part holds 1 to part_size bytes; favour the edges.
        let last = match extra % 4 {
            0 => 1,
            1 => part_size,
            _ => 1 + extra % part_size,
        };
        ((parts - 1) * part_size + last, part_size)
    })
}

fn orchestra() -> impl Strategy<Value = Orchestra> {
    (conductor(), filename(), checksum(), sizes()).prop_flat_map(
        |(conductor, filename, file_checksum, (file_size, part_size))| {
            let parts = file_size.div_ceil(part_size) as usize;
            vec(checksum(), parts).prop_map(move |part_checksums| {
                Orchestra::new(
                    &conductor,
                    &filename,
                    file_checksum,
                    file_size,
                    part_size,
                    part_checksums,
                )
                .unwrap_or_else(|e| panic!("generated an invalid orchestra: {e}"))
            })
        },
    )
}

/// An edit to a valid `.orch` text.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte { at: usize, xor: u8 },
    SetByte { at: usize, value: u8 },
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::FlipByte { at, xor }),
        (
            any::<usize>(),
            prop::sample::select(b"\n\r0:/.\\ \x00\xff9aZ".to_vec())
        )
            .prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let split_lines = |bytes: &[u8]| -> Vec<Vec<u8>> {
        bytes
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    };
    match mutation {
        Mutation::FlipByte { at, xor } if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] ^= xor;
        }
        Mutation::SetByte { at, value } if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] = *value;
        }
        Mutation::DeleteLine(i) | Mutation::DuplicateLine(i) => {
            let mut lines = split_lines(bytes);
            if lines.is_empty() {
                return;
            }
            let i = i % lines.len();
            if matches!(mutation, Mutation::DeleteLine(_)) {
                lines.remove(i);
            } else {
                let copy = lines[i].clone();
                lines.insert(i, copy);
            }
            *bytes = lines.concat();
        }
        Mutation::SwapLines(a, b) => {
            let mut lines = split_lines(bytes);
            if lines.is_empty() {
                return;
            }
            let n = lines.len();
            lines.swap(a % n, b % n);
            *bytes = lines.concat();
        }
        Mutation::Truncate(at) => {
            let at = at % (bytes.len() + 1);
            bytes.truncate(at);
        }
        Mutation::Insert { at, bytes: new } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        _ => {}
    }
}

/// Lines made of protocol words, so that parsers get past their first checks often.
fn protocol_words() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        prop::sample::select(vec![
            "ANNOUNCE",
            "LEAVE",
            "STATS",
            "HELLO",
            "ERROR",
            "PEERS",
            "OK",
            "HAVEMAP",
            "HAVE",
            "REQUEST",
            "CANCEL",
            "PIECE",
            "REJECT",
            "PEX",
            "PING",
            "tnc/1",
            "tnc/2",
            "0",
            "1",
            "65535",
            "65536",
            "-1",
            "+1",
            "007",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "1.5",
            "NaN",
            "inf",
            "",
        ])
        .prop_map(str::to_string),
        "[0-9a-f]{64}",
        "[0-9a-f]{32}",
        "[0-9a-fA-FxX]{30,66}",
        "[0-9]{1,25}",
        socket_addr().prop_map(|a| a.to_string()),
        "[0-9.:\\[\\]a-f%]{1,30}",
        any::<String>(),
    ];
    (
        vec(word, 0..20),
        prop::sample::select(vec![" ", "  ", "\t", "\r", "\x0c", "\u{a0}"]),
    )
        .prop_map(|(words, sep)| words.join(sep))
}

/// A valid line of any kind with one word replaced, removed or repeated (or left alone), so
/// that parsers get to their later checks.
fn near_valid_line() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        (checksum(), peer_id(), port()).prop_map(|(swarm, peer_id, port)| {
            ConductorRequest::Announce {
                swarm,
                peer_id,
                port,
            }
            .to_line()
        }),
        (checksum(), peer_id(), port()).prop_map(|(swarm, peer_id, port)| {
            ConductorRequest::Leave {
                swarm,
                peer_id,
                port,
            }
            .to_line()
        }),
        (checksum(), peer_id(), any::<u16>()).prop_map(|(swarm, peer_id, listen_port)| {
            Hello {
                swarm,
                peer_id,
                listen_port,
            }
            .to_line()
        }),
        peer_message(100, |i| if i == 99 { 1000 } else { 16384 }).prop_map(|m| m.to_line()),
    ];
    let word = prop_oneof![
        protocol_words(),
        "[0-9]{1,21}",
        "[0-9a-fA-F]{31,33}",
        "[0-9a-fA-F]{63,65}",
    ];
    (valid, any::<usize>(), 0..4u8, word).prop_map(|(line, at, edit, word)| {
        let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let at = at % words.len();
        match edit {
            0 => words[at] = word,
            1 => {
                words.remove(at);
            }
            2 => words.insert(at, word),
            _ => {}
        }
        words.join(" ")
    })
}

fn any_line() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), protocol_words(), near_valid_line()]
}

/// Bytes with many line ends and some lines near [`MAX_LINE`].
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        vec(any::<u8>(), 0..40),
        (MAX_LINE - 3..MAX_LINE + 4, any::<u8>()).prop_map(|(n, b)| {
            let fill = if b == b'\n' { b'x' } else { b };
            vec![fill; n]
        }),
        protocol_words().prop_map(String::into_bytes),
        Just(b"\r".to_vec()),
    ];
    let end = prop::sample::select(vec![&b"\n"[..], b"\r\n", b"", b"\r\r\n", b"\n\n"]);
    vec((segment, end), 0..12).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(mut segment, end)| {
                segment.extend_from_slice(end);
                segment
            })
            .collect()
    })
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..3000), stream_bytes()]
}

// ---------------------------------------------------------------------------------------------
// A model of LineReader::read_line, to check it against

#[derive(Debug, PartialEq)]
enum Read {
    Line(Vec<u8>),
    TooLong,
    NotText,
    Closed,
    Truncated,
}

/// What one read_line should give for `input` and how many bytes it consumes (None: stop).
fn model_read_line(input: &[u8]) -> (Read, Option<usize>) {
    let Some(newline) = input.iter().position(|&b| b == b'\n') else {
        return if input.is_empty() {
            (Read::Closed, None)
        } else if input.len() > MAX_LINE + 2 {
            (Read::TooLong, None)
        } else {
            (Read::Truncated, None)
        };
    };
    let mut line = &input[..newline];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    if line.len() > MAX_LINE {
        (Read::TooLong, None)
    } else if std::str::from_utf8(line).is_err() {
        (Read::NotText, Some(newline + 1))
    } else {
        (Read::Line(line.to_vec()), Some(newline + 1))
    }
}

fn classify(result: Result<&str, WireError>) -> Read {
    match result {
        Ok(line) => Read::Line(line.as_bytes().to_vec()),
        Err(WireError::LineTooLong) => Read::TooLong,
        Err(WireError::NotText) => Read::NotText,
        Err(WireError::Closed) => Read::Closed,
        Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Read::Truncated,
        Err(e) => panic!("unexpected error from an in-memory stream: {e:?}"),
    }
}

/// Checks what a parsed peer message claims against the layout it was parsed with.
fn check_peer_message(message: &PeerMessage, parts: u32, part_len: impl Fn(u32) -> usize) {
    match message {
        PeerMessage::HaveMap { bytes } => assert_eq!(*bytes, have_map_len(parts)),
        PeerMessage::Have(i)
        | PeerMessage::Request(i)
        | PeerMessage::Cancel(i)
        | PeerMessage::Reject(i) => assert!(*i < parts),
        PeerMessage::Piece { index, len } => {
            assert!(*index < parts);
            assert_eq!(*len, part_len(*index));
        }
        PeerMessage::Pex(addrs) => {
            assert!(addrs.len() <= MAX_PEX);
            assert!(addrs.iter().all(|a| a.port() != 0));
        }
        PeerMessage::Ping => {}
    }
}

fn peer_message(parts: u32, part_len: impl Fn(u32) -> usize) -> BoxedStrategy<PeerMessage> {
    let index = 0..parts;
    let lens: Vec<PeerMessage> = (0..parts.min(4))
        .chain(parts.saturating_sub(2)..parts)
        .map(|i| PeerMessage::Piece {
            index: i,
            len: part_len(i),
        })
        .collect();
    prop_oneof![
        Just(PeerMessage::HaveMap {
            bytes: have_map_len(parts)
        }),
        index.clone().prop_map(PeerMessage::Have),
        index.clone().prop_map(PeerMessage::Request),
        index.clone().prop_map(PeerMessage::Cancel),
        index.prop_map(PeerMessage::Reject),
        prop::sample::select(lens),
        vec(socket_addr(), 0..=MAX_PEX).prop_map(PeerMessage::Pex),
        Just(PeerMessage::Ping),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// .orch

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn orch_round_trips(o in orchestra()) {
        let text = o.to_text();
        prop_assert_eq!(&Orchestra::parse(&text).unwrap(), &o);
        prop_assert_eq!(&Orchestra::parse_bytes(text.as_bytes()).unwrap(), &o);
        // The other accepted spellings read the same.
        let crlf = text.replace('\n', "\r\n");
        prop_assert_eq!(&Orchestra::parse(&crlf).unwrap(), &o);
        prop_assert_eq!(&Orchestra::parse(text.strip_suffix('\n').unwrap()).unwrap(), &o);
        prop_assert_eq!(text.lines().count(), 6 + o.part_checksums.len());
        prop_assert_eq!(o.part_count() as usize, o.part_checksums.len());
        // The parts tile the file exactly.
        let mut next = 0u64;
        for i in 0..o.part_count() {
            let span = o.part_span(i).unwrap();
            let (offset, len) = (span.offset, span.len);
            prop_assert_eq!(offset, next);
            prop_assert!(len >= 1 && len as u64 <= o.part_size);
            prop_assert!(len <= o.max_part_len());
            next += len as u64;
        }
        prop_assert_eq!(next, o.file_size);
        prop_assert_eq!(o.part_span(o.part_count()), None);
    }

    #[test]
    fn swarm_id_ignores_line_1_only(
        o in orchestra(),
        other_conductor in conductor(),
        delta in any::<u64>(),
    ) {
        let id = o.swarm_id();
        // Another conductor on line 1, edited in the text.
        let text = o.to_text();
        let (_, rest) = text.split_once('\n').unwrap();
        let moved = Orchestra::parse(&format!("{other_conductor}\n{rest}")).unwrap();
        prop_assert_eq!(&moved.conductor, &other_conductor);
        prop_assert_eq!(moved.swarm_id(), id);
        // CRLF line ends do not change it either.
        prop_assert_eq!(Orchestra::parse(&text.replace('\n', "\r\n")).unwrap().swarm_id(), id);

        // Another part size (kept valid, with a part count to match) is another swarm. It is
        // kept to at most 1024 parts, so that the test stays fast.
        let lowest = MIN_PART_SIZE.max(o.file_size.div_ceil(1024));
        let span = MAX_PART_SIZE - lowest + 1;
        let delta = 1 + delta % (span - 1);
        let part_size = lowest + (o.part_size - lowest + delta) % span;
        prop_assert_ne!(part_size, o.part_size);
        let parts = o.file_size.div_ceil(part_size) as usize;
        let mut checksums = o.part_checksums.clone();
        checksums.resize(parts, Checksum::of(b"filler"));
        let resized = Orchestra::new(
            &o.conductor,
            &o.filename,
            o.file_checksum,
            o.file_size,
            part_size,
            checksums,
        )
        .unwrap();
        prop_assert_ne!(resized.swarm_id(), id);

        // So is any other file name.
        let mut renamed = o.clone();
        renamed.filename.push('x');
        prop_assert_ne!(renamed.swarm_id(), id);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_orch_parser(bytes in any_bytes()) {
        check_parse_result(&bytes)?;
    }

    #[test]
    fn mutated_orch_texts_never_panic_the_parser(
        o in orchestra(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = o.to_text().into_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_parse_result(&bytes)?;
    }
}

/// Whatever the parser says must be consistent: an accepted text writes back to an equivalent
/// one, and an error names a line that exists (or the one just after the end).
fn check_parse_result(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Orchestra::parse_bytes(bytes) {
        Ok(o) => {
            let again = Orchestra::parse(&o.to_text()).unwrap();
            prop_assert_eq!(&again, &o);
        }
        Err(e) => {
            let lines = bytes.split(|&b| b == b'\n').count();
            prop_assert!(e.line <= lines + 1, "{:?} past {} lines", e, lines);
            let shown = e.to_string();
            if e.line > 0 {
                let prefix = format!("line {}: ", e.line);
                prop_assert!(shown.starts_with(&prefix), "{}", shown);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Wire: no panic on anything

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn conductor_request_parse_never_panics(line in any_line()) {
        if let Ok(request) = ConductorRequest::parse(&line) {
            // Anything accepted writes back to a line that reads the same.
            prop_assert_eq!(ConductorRequest::parse(&request.to_line()).unwrap(), request);
        }
    }

    #[test]
    fn hello_parse_never_panics(line in any_line()) {
        if let Ok(hello) = Hello::parse(&line) {
            prop_assert_eq!(Hello::parse(&hello.to_line()).unwrap(), hello);
        }
    }

    #[test]
    fn peer_message_parse_never_panics(
        line in any_line(),
        parts in prop_oneof![Just(0u32), Just(1), 0..100u32, any::<u32>()],
        part_size in prop_oneof![Just(0usize), 1..=MAX_PART_SIZE as usize],
        last in any::<usize>(),
    ) {
        let last = if part_size == 0 { 0 } else { 1 + last % part_size };
        let part_len = |i: u32| if i + 1 == parts { last } else { part_size };
        if let Ok(message) = PeerMessage::parse(&line, parts, part_len) {
            check_peer_message(&message, parts, part_len);
            prop_assert!(message.to_line().len() <= MAX_LINE + 1);
            prop_assert_eq!(PeerMessage::parse(&message.to_line(), parts, part_len).unwrap(), message);
        }
    }

    #[test]
    fn peer_message_parse_with_real_indices_never_panics(
        parts in 1..100u32,
        words in vec(prop_oneof![
            prop::sample::select(vec!["HAVEMAP", "HAVE", "REQUEST", "CANCEL", "PIECE", "REJECT"])
                .prop_map(str::to_string),
            (0..120u32).prop_map(|n| n.to_string()),
            (0..20_000u32).prop_map(|n| n.to_string()),
        ], 1..4),
    ) {
        let line = words.join(" ");
        let part_len = |i: u32| if i + 1 == parts { 1000 } else { 16384 };
        if let Ok(message) = PeerMessage::parse(&line, parts, part_len) {
            check_peer_message(&message, parts, part_len);
        }
    }

    #[test]
    fn line_reader_matches_its_model(bytes in any_bytes(), capacity in 1..64usize) {
        // A small buffer makes lines arrive in several reads, as from a socket.
        let mut reader = LineReader::new(BufReader::with_capacity(capacity, bytes.as_slice()));
        let mut rest = bytes.as_slice();
        for _ in 0..=bytes.len() {
            let (expected, consumed) = model_read_line(rest);
            let got = classify(reader.read_line());
            if let Read::Line(line) = &got {
                prop_assert!(line.len() <= MAX_LINE);
            }
            prop_assert_eq!(&got, &expected, "at byte {}", bytes.len() - rest.len());
            match consumed {
                Some(n) => rest = &rest[n..],
                None => break,
            }
        }
    }

    #[test]
    fn line_reader_never_returns_a_long_line(bytes in any_bytes()) {
        let mut reader = LineReader::new(bytes.as_slice());
        // Every successful read consumes at least one byte; stop at the first error (a reader
        // is abandoned after one: a too-long line is never consumed).
        for _ in 0..=bytes.len() {
            match reader.read_line() {
                Ok(line) => prop_assert!(line.len() <= MAX_LINE),
                Err(_) => break,
            }
        }
    }

    #[test]
    fn conductor_reply_read_never_panics(bytes in any_bytes(), capacity in 1..4096usize) {
        let mut reader = LineReader::new(BufReader::with_capacity(capacity, bytes.as_slice()));
        for _ in 0..=bytes.len() {
            match ConductorReply::read_from(&mut reader) {
                Ok(ConductorReply::Peers { peers, .. }) => {
                    prop_assert!(peers.len() <= MAX_PEERS_PER_REPLY);
                    prop_assert!(peers.iter().all(|p| p.port() != 0));
                }
                Ok(ConductorReply::Stats(stats)) => {
                    prop_assert!(stats.announces_per_sec.is_finite());
                    prop_assert!(stats.announces_per_sec >= 0.0);
                }
                Ok(ConductorReply::Error(why)) => prop_assert!(why.len() <= MAX_LINE),
                Ok(ConductorReply::Ok) | Ok(ConductorReply::Challenge(_)) => {}
                Err(_) => break,
            }
        }
    }

    #[test]
    fn conductor_reply_peers_with_hostile_addresses(
        count in 0..60usize,
        lines in vec(any_line(), 0..60),
    ) {
        let mut bytes = format!("PEERS 1000 {count}\n").into_bytes();
        for line in &lines {
            bytes.extend_from_slice(line.replace('\n', " ").as_bytes());
            bytes.push(b'\n');
        }
        let mut reader = LineReader::new(bytes.as_slice());
        if let Ok(ConductorReply::Peers { peers, .. }) = ConductorReply::read_from(&mut reader) {
            prop_assert_eq!(peers.len(), count);
            prop_assert!(count <= MAX_PEERS_PER_REPLY);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire: round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn conductor_request_round_trips(
        swarm in checksum(),
        peer_id in peer_id(),
        port in port(),
        kind in 0..6u8,
        signature in any::<[u8; 32]>(),
    ) {
        let signature = Signature([signature, signature].concat().try_into().unwrap());
        let request = match kind {
            0 => ConductorRequest::Announce { swarm, peer_id, port },
            1 => ConductorRequest::Leave { swarm, peer_id, port },
            2 => ConductorRequest::Challenge,
            3 | 4 => ConductorRequest::Signed {
                request: Box::new(if kind == 3 {
                    ConductorRequest::Announce { swarm, peer_id, port }
                } else {
                    ConductorRequest::Leave { swarm, peer_id, port }
                }),
                signature,
            },
            _ => ConductorRequest::Stats,
        };
        let line = request.to_line();
        prop_assert!(line.ends_with('\n') && line.len() <= MAX_LINE + 1);
        prop_assert_eq!(&ConductorRequest::parse(&line).unwrap(), &request);
        prop_assert_eq!(&ConductorRequest::parse(line.trim_end()).unwrap(), &request);
        // Through a LineReader, with a CRLF end.
        let crlf = line.replace('\n', "\r\n");
        let mut reader = LineReader::new(crlf.as_bytes());
        prop_assert_eq!(ConductorRequest::parse(reader.read_line().unwrap()).unwrap(), request);
    }

    #[test]
    fn hello_round_trips(swarm in checksum(), peer_id in peer_id(), listen_port in any::<u16>()) {
        let hello = Hello { swarm, peer_id, listen_port };
        let line = hello.to_line();
        prop_assert!(line.len() <= MAX_LINE + 1);
        prop_assert_eq!(Hello::parse(&line).unwrap(), hello);
        let mut reader = LineReader::new(line.as_bytes());
        prop_assert_eq!(Hello::parse(reader.read_line().unwrap()).unwrap(), hello);
    }

    #[test]
    fn peer_message_round_trips(
        (parts, part_size, last, message) in (1..=u32::MAX, 1..=MAX_PART_SIZE as usize, any::<usize>())
            .prop_flat_map(|(parts, part_size, last)| {
                let last = 1 + last % part_size;
                let part_len = move |i: u32| if i + 1 == parts { last } else { part_size };
                (Just(parts), Just(part_size), Just(last), peer_message(parts, part_len))
            })
    ) {
        let part_len = |i: u32| if i + 1 == parts { last } else { part_size };
        let line = message.to_line();
        prop_assert!(line.ends_with('\n'));
        prop_assert!(line.len() <= MAX_LINE + 1, "{} bytes", line.len());
        let mut reader = LineReader::new(line.as_bytes());
        let read = reader.read_line().unwrap();
        let parsed = PeerMessage::parse(read, parts, part_len).unwrap();
        check_peer_message(&parsed, parts, part_len);
        prop_assert_eq!(parsed, message);
    }

    #[test]
    fn conductor_reply_round_trips(
        interval_ms in any::<u64>(),
        peers in vec(socket_addr(), 0..=MAX_PEERS_PER_REPLY),
        swarms in any::<u64>(),
        members in any::<u64>(),
        tenths in 0..10_000_000_000u64,
        why in "[a-zA-Z0-9]([a-zA-Z0-9 ,.:'()-]{0,150}[a-zA-Z0-9.])?",
    ) {
        let replies = [
            ConductorReply::Peers { interval_ms, peers },
            ConductorReply::Ok,
            ConductorReply::Stats(ConductorStats {
                swarms,
                members,
                announces_per_sec: tenths as f64 / 10.0,
            }),
            ConductorReply::Error(why),
            ConductorReply::Challenge([7; 32]),
        ];
        let mut bytes = Vec::new();
        for reply in &replies {
            reply.write_to(&mut bytes).unwrap();
        }
        let mut reader = LineReader::new(bytes.as_slice());
        for reply in &replies {
            prop_assert_eq!(&ConductorReply::read_from(&mut reader).unwrap(), reply);
        }
        prop_assert!(matches!(ConductorReply::read_from(&mut reader), Err(WireError::Closed)));
    }
}

// ---------------------------------------------------------------------------------------------
// Private links: the sealed frames

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sealed_frames_round_trip(chunks in vec(vec(any::<u8>(), 0..70_000), 0..6), flush in any::<u8>()) {
        let (dialer, acceptor) = checks::channel_pair();
        let mut wire = Vec::new();
        {
            let mut sealer = dialer.sealer(&mut wire);
            for (i, chunk) in chunks.iter().enumerate() {
                sealer.write_all(chunk).unwrap();
                if flush & (1 << (i % 8)) != 0 {
                    sealer.flush().unwrap();
                }
            }
            sealer.flush().unwrap();
        }
        let sent: Vec<u8> = chunks.concat();
        // Tags and length prefixes only: 20 bytes of overhead per frame.
        prop_assert!(wire.len() >= sent.len());
        let mut back = Vec::new();
        acceptor.opener(Cursor::new(&wire)).read_to_end(&mut back).unwrap();
        prop_assert_eq!(&back, &sent);
        // The other direction's keys cannot read it.
        if !wire.is_empty() {
            let mut wrong = Vec::new();
            prop_assert!(dialer.opener(Cursor::new(&wire)).read_to_end(&mut wrong).is_err());
        }
    }

    #[test]
    fn sealed_frames_refuse_any_change(data in vec(any::<u8>(), 1..100_000), at in any::<usize>(), bit in 0..8u8) {
        let (dialer, acceptor) = checks::channel_pair();
        let mut wire = Vec::new();
        {
            let mut sealer = dialer.sealer(&mut wire);
            sealer.write_all(&data).unwrap();
            sealer.flush().unwrap();
        }
        let at = at % wire.len();
        wire[at] ^= 1 << bit;
        let mut back = Vec::new();
        let read = acceptor.opener(Cursor::new(&wire)).read_to_end(&mut back);
        prop_assert!(read.is_err());
        // Truncated anywhere but at the end of a frame: refused too.
        let mut cut = Vec::new();
        let mut sealer = dialer.sealer(&mut cut);
        sealer.write_all(&data).unwrap();
        sealer.flush().unwrap();
        drop(sealer);
        let keep = 1 + at % (cut.len() - 1);
        let first_frame = 4 + u32::from_be_bytes([cut[0], cut[1], cut[2], cut[3]]) as usize;
        prop_assume!(keep != first_frame);
        let mut back = Vec::new();
        prop_assert!(acceptor.opener(Cursor::new(&cut[..keep])).read_to_end(&mut back).is_err());
    }

    #[test]
    fn the_frame_decoder_never_panics(bytes in vec(any::<u8>(), 0..4096)) {
        let (_, acceptor) = checks::channel_pair();
        let mut out = Vec::new();
        let read = acceptor.opener(Cursor::new(&bytes)).read_to_end(&mut out);
        prop_assert!(out.is_empty());
        prop_assert!(read.is_err() || bytes.is_empty());
        checks::secure_handshake(&bytes);
    }
}
