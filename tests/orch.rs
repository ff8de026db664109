//! Malformed `.orch` files, each refused with its specific error: the line it names and the
//! kind of fault. The valid base is built with `Orchestra::new` from the real checksums of a
//! small buffer (3 parts of 16384, 16384 and 7232 bytes), then edited one line at a time.

use std::time::{Duration, Instant};

use torrentnchill::orch::{
    check_conductor, check_conductors, check_filename, Checksum, OrchError, OrchErrorKind,
    Orchestra, MAX_CONDUCTORS, MAX_FILENAME_BYTES, MAX_ORCH_BYTES, MAX_PARTS, MAX_PART_SIZE,
    MIN_PART_SIZE,
};

use OrchErrorKind::*;

const PART: u64 = 16384;

fn data() -> Vec<u8> {
    (0..40_000u32).map(|i| (i % 251) as u8).collect()
}

fn base() -> Orchestra {
    let data = data();
    let parts = data.chunks(PART as usize).map(Checksum::of).collect();
    Orchestra::new(
        "127.0.0.1:9999",
        "sample.bin",
        Checksum::of(&data),
        data.len() as u64,
        PART,
        parts,
    )
    .expect("the base orchestra is valid")
}

fn base_text() -> String {
    base().to_text()
}

fn lines() -> Vec<String> {
    base_text().lines().map(str::to_string).collect()
}

fn join(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The base text with line `n` (1-based) replaced.
fn with_line(n: usize, replacement: &str) -> String {
    let mut lines = lines();
    lines[n - 1] = replacement.to_string();
    join(&lines)
}

/// The base text with several lines replaced.
fn with_lines(replacements: &[(usize, &str)]) -> String {
    let mut lines = lines();
    for (n, replacement) in replacements {
        lines[n - 1] = replacement.to_string();
    }
    join(&lines)
}

/// What a case must be refused with.
enum Want {
    Kind(OrchErrorKind),
    BadFilename,
    BadConductor,
}

fn check_error(case: &str, err: &OrchError, line: usize, want: &Want) {
    assert_eq!(err.line, line, "{case}: wrong line in {err:?}");
    match want {
        Want::Kind(kind) => assert_eq!(&err.kind, kind, "{case}"),
        Want::BadFilename => assert!(matches!(err.kind, BadFilename(_)), "{case}: {err:?}"),
        Want::BadConductor => assert!(matches!(err.kind, BadConductor(_)), "{case}: {err:?}"),
    }
    check_display(case, err);
}

/// Every error with a line names it as "line N: ..."; whole-file errors (line 0) name none.
fn check_display(case: &str, err: &OrchError) {
    let shown = err.to_string();
    if err.line > 0 {
        assert!(
            shown.starts_with(&format!("line {}: ", err.line)),
            "{case}: {shown:?} does not start with the line"
        );
        assert!(shown.len() > format!("line {}: ", err.line).len(), "{case}");
    } else {
        assert!(!shown.contains("line 0"), "{case}: {shown:?}");
    }
}

fn refused(case: &str, text: &str, line: usize, want: Want) {
    match Orchestra::parse(text) {
        Ok(o) => panic!("{case}: accepted as {o:?}"),
        Err(err) => check_error(case, &err, line, &want),
    }
    // The byte entry point agrees on valid UTF-8.
    let err = Orchestra::parse_bytes(text.as_bytes()).unwrap_err();
    check_error(case, &err, line, &want);
}

#[test]
fn the_base_is_what_it_seems() {
    let o = base();
    assert_eq!(o.part_count(), 3);
    assert_eq!(
        o.part_span(2).map(|s| (s.offset, s.len)),
        Some((2 * PART, 40_000 - 2 * PART as usize))
    );
    assert_eq!(lines().len(), 9);
    assert_eq!(lines()[5], "3");
    assert_eq!(Orchestra::parse(&base_text()).unwrap(), o);
}

#[test]
fn traversal_and_unsafe_file_names() {
    let long = "x".repeat(MAX_FILENAME_BYTES + 1);
    let cases: &[(&str, &str)] = &[
        ("parent traversal", "../x"),
        ("absolute path", "/etc/passwd"),
        ("subfolder", "a/b"),
        ("parent folder", ".."),
        ("current folder", "."),
        ("drive prefix", "C:x"),
        ("drive root", "c:\\x"),
        ("alternate data stream", "a:b"),
        ("device name", "CON"),
        ("device name with extension", "con.txt"),
        ("device name, other case", "Nul"),
        ("numbered device", "LPT1.log"),
        ("device name before a space", "AUX .txt"),
        ("backslash", "a\\b"),
        ("windows traversal", "..\\x"),
        ("NUL byte", "a\0b"),
        ("bell", "a\x07b"),
        ("escape", "\x1b[31mred"),
        ("delete", "a\x7fb"),
        ("tab", "a\tb"),
        ("C1 control", "a\u{85}b"),
        ("trailing dot", "name."),
        ("trailing space", "name "),
        ("three dots", "..."),
        ("256 bytes", &long),
        ("empty", ""),
    ];
    for (case, name) in cases {
        assert!(check_filename(name).is_err(), "{case}: {name:?}");
        refused(case, &with_line(2, name), 2, Want::BadFilename);
    }
    // A carriage return inside the name is a control character; the one right before the line
    // end is taken as a CRLF line end, so it is not part of the name.
    refused(
        "carriage return",
        &with_line(2, "a\rb"),
        2,
        Want::BadFilename,
    );
    assert_eq!(
        Orchestra::parse(&with_line(2, "sample.bin\r")).unwrap(),
        base()
    );
}

#[test]
fn plain_file_names_are_accepted() {
    let longest = "y".repeat(MAX_FILENAME_BYTES);
    let multibyte = "é".repeat(MAX_FILENAME_BYTES / 2); // 254 bytes
    for name in [
        "file.bin",
        ".hidden",
        "..x",
        "a b.txt",
        "日本語.iso",
        "con1.txt",
        "console.log",
        "COM10",
        "x",
        &longest,
        &multibyte,
    ] {
        assert_eq!(check_filename(name), Ok(()), "{name:?}");
        let o = Orchestra::parse(&with_line(2, name)).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(o.filename, name);
    }
    // 255 bytes is the limit in bytes, not characters.
    let too_long = "é".repeat(128); // 256 bytes
    refused(
        "256 bytes of 2-byte characters",
        &with_line(2, &too_long),
        2,
        Want::BadFilename,
    );
}

#[test]
fn part_count_must_match_the_sizes() {
    for declared in [0u64, 2, 4, 30, u64::MAX] {
        refused(
            &format!("{declared} parts declared"),
            &with_line(6, &declared.to_string()),
            6,
            Want::Kind(PartCountMismatch {
                declared,
                expected: 3,
            }),
        );
    }
    // The count follows the sizes: one byte more than two full parts is three parts.
    let text = with_lines(&[(4, "32769"), (6, "2")]);
    refused(
        "size just over two parts",
        &text,
        6,
        Want::Kind(PartCountMismatch {
            declared: 2,
            expected: 3,
        }),
    );
    // Orchestra::new runs the same checks: a checksum list of the wrong length is refused.
    let o = base();
    let err = Orchestra::new(
        &o.conductor,
        &o.filename,
        o.file_checksum,
        o.file_size,
        o.part_size,
        o.part_checksums[..2].to_vec(),
    )
    .unwrap_err();
    check_error(
        "Orchestra::new with 2 checksums",
        &err,
        6,
        &Want::Kind(PartCountMismatch {
            declared: 2,
            expected: 3,
        }),
    );
}

#[test]
fn huge_declared_sizes_are_refused_before_any_allocation() {
    let started = Instant::now();
    // 2^60 bytes in parts of 2^14 is 2^46 parts.
    let huge = (1u64 << 60).to_string();
    let parts = (1u64 << 46).to_string();
    refused(
        "2^60 bytes",
        &with_lines(&[(4, &huge), (6, &parts)]),
        4,
        Want::Kind(TooManyParts { parts: 1 << 46 }),
    );
    // Whatever the declared count says.
    refused(
        "2^60 bytes, 3 parts declared",
        &with_line(4, &huge),
        4,
        Want::Kind(TooManyParts { parts: 1 << 46 }),
    );
    // The largest file size, in the smallest and the largest parts.
    let max = u64::MAX.to_string();
    refused(
        "u64::MAX bytes",
        &with_line(4, &max),
        4,
        Want::Kind(TooManyParts {
            parts: u64::MAX.div_ceil(PART),
        }),
    );
    refused(
        "u64::MAX bytes in the largest parts",
        &with_lines(&[(4, &max), (5, &MAX_PART_SIZE.to_string())]),
        4,
        Want::Kind(TooManyParts {
            parts: u64::MAX.div_ceil(MAX_PART_SIZE),
        }),
    );
    // One part over the limit.
    let over = ((MAX_PARTS + 1) * PART).to_string();
    refused(
        "MAX_PARTS + 1 parts",
        &with_lines(&[(4, &over), (6, &(MAX_PARTS + 1).to_string())]),
        4,
        Want::Kind(TooManyParts {
            parts: MAX_PARTS + 1,
        }),
    );
    // Exactly the limit passes the count checks and fails only for the missing checksums.
    let at = (MAX_PARTS * PART).to_string();
    let text = format!(
        "{}\n{}\n{}\n{at}\n{PART}\n{MAX_PARTS}\n",
        lines()[0],
        lines()[1],
        lines()[2]
    );
    refused(
        "MAX_PARTS parts, no checksums",
        &text,
        7,
        Want::Kind(ChecksumCountMismatch {
            declared: MAX_PARTS,
            found: 0,
        }),
    );
    // All of the above is arithmetic on a few short lines; a parser that allocated or looped
    // per declared part would take far longer than this.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn checksum_lines_must_match_the_count() {
    let lines = lines();
    let extra = Checksum::of(b"extra").to_hex();

    let mut more = lines.clone();
    more.push(extra.clone());
    refused(
        "one checksum too many",
        &join(&more),
        10,
        Want::Kind(TrailingText),
    );

    let mut more = lines.clone();
    more.push(extra.clone());
    more.push(extra.clone());
    refused(
        "two checksums too many",
        &join(&more),
        10,
        Want::Kind(TrailingText),
    );

    let blank_line = format!("{}\n", base_text());
    refused(
        "a blank line at the end",
        &blank_line,
        10,
        Want::Kind(TrailingText),
    );

    let mut more = lines.clone();
    more.push("some comment".into());
    refused(
        "text at the end",
        &join(&more),
        10,
        Want::Kind(TrailingText),
    );

    refused(
        "one checksum missing",
        &join(&lines[..8]),
        9,
        Want::Kind(ChecksumCountMismatch {
            declared: 3,
            found: 2,
        }),
    );
    refused(
        "all checksums missing",
        &join(&lines[..6]),
        7,
        Want::Kind(ChecksumCountMismatch {
            declared: 3,
            found: 0,
        }),
    );
    // A checksum missing in the middle: the blank line is where a checksum was expected.
    let mut gap = lines.clone();
    gap[7] = String::new();
    refused(
        "blank line among the checksums",
        &join(&gap),
        8,
        Want::Kind(BadChecksum {
            what: "part checksum",
        }),
    );
}

#[test]
fn checksums_must_be_64_hex_digits() {
    let good = lines()[2].clone();
    let non_hex = format!("{}g", &good[..63]);
    let short = good[..63].to_string();
    let long = format!("{good}0");
    let spaced = format!("{} ", &good[..63]);
    let inner_space = format!("{} {}", &good[..31], &good[32..]);
    let prefixed = format!("0x{}", &good[2..]);
    let multibyte = format!("{}é", &good[..62]); // 64 bytes, not 64 digits
    let bad: [(&str, &str); 8] = [
        ("non-hex digit", &non_hex),
        ("63 digits", &short),
        ("65 digits", &long),
        ("trailing space", &spaced),
        ("inner space", &inner_space),
        ("0x prefix", &prefixed),
        ("multibyte character", &multibyte),
        ("empty", ""),
    ];
    for (case, text) in bad {
        refused(
            &format!("full-file checksum: {case}"),
            &with_line(3, text),
            3,
            Want::Kind(BadChecksum {
                what: "full-file checksum",
            }),
        );
        for line in [7, 8, 9] {
            refused(
                &format!("part checksum on line {line}: {case}"),
                &with_line(line, text),
                line,
                Want::Kind(BadChecksum {
                    what: "part checksum",
                }),
            );
        }
    }
    // Upper case is the same digest.
    let upper = Orchestra::parse(&with_lines(&[
        (3, &good.to_uppercase()),
        (8, &lines()[7].to_uppercase()),
    ]))
    .unwrap();
    assert_eq!(upper, base());
    assert_eq!(upper.to_text(), base_text(), "written back in lower case");
}

#[test]
fn part_size_bounds() {
    for part_size in [0, 1, MIN_PART_SIZE - 1, MAX_PART_SIZE + 1, u64::MAX] {
        refused(
            &format!("part size {part_size}"),
            &with_line(5, &part_size.to_string()),
            5,
            Want::Kind(PartSizeOutOfRange { part_size }),
        );
    }
    // Both bounds themselves are accepted.
    let data = data();
    for part_size in [MIN_PART_SIZE, MAX_PART_SIZE] {
        let parts = data.chunks(part_size as usize).map(Checksum::of).collect();
        let o = Orchestra::new(
            "127.0.0.1:9999",
            "sample.bin",
            Checksum::of(&data),
            data.len() as u64,
            part_size,
            parts,
        )
        .unwrap_or_else(|e| panic!("part size {part_size}: {e}"));
        assert_eq!(Orchestra::parse(&o.to_text()).unwrap(), o);
    }
}

#[test]
fn numbers_are_plain_decimal() {
    let bad = [
        "+40000",
        "-40000",
        "-0",
        " 40000",
        "40000 ",
        "40 000",
        "40_000",
        "040000",
        "00",
        "4e4",
        "0x9c40",
        "40000.0",
        "",
        "\u{ff14}\u{ff10}\u{ff10}\u{ff10}\u{ff10}", // full-width digits
        "18446744073709551616",                     // u64::MAX + 1
        "99999999999999999999",                     // 20 digits, over u64::MAX
        "123456789012345678901234567890",
    ];
    for (line, what) in [(4, "file size"), (5, "part size"), (6, "number of parts")] {
        for text in bad {
            refused(
                &format!("{what} {text:?}"),
                &with_line(line, text),
                line,
                Want::Kind(BadNumber {
                    what,
                    found: text.to_string(),
                }),
            );
        }
    }
    // What is quoted back is cut to 40 characters.
    let long = "9".repeat(100);
    refused(
        "100 digits",
        &with_line(4, &long),
        4,
        Want::Kind(BadNumber {
            what: "file size",
            found: "9".repeat(40),
        }),
    );
    // The largest u64 is a number (and then far too many parts).
    refused(
        "u64::MAX",
        &with_line(4, "18446744073709551615"),
        4,
        Want::Kind(TooManyParts {
            parts: u64::MAX.div_ceil(PART),
        }),
    );
}

#[test]
fn zero_byte_file_has_zero_parts() {
    let o = Orchestra::new(
        "127.0.0.1:9999",
        "empty.bin",
        Checksum::of(b""),
        0,
        PART,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(o.part_count(), 0);
    assert!(o.to_text().ends_with("\n0\n16384\n0\n"));
    assert_eq!(Orchestra::parse(&o.to_text()).unwrap(), o);
}

#[test]
fn conductor_lines() {
    let bad = [
        ("no port", "127.0.0.1"),
        ("empty port", "127.0.0.1:"),
        ("port 0", "127.0.0.1:0"),
        ("port 65536", "127.0.0.1:65536"),
        ("port with sign", "127.0.0.1:+80"),
        ("port with space", "127.0.0.1: 80"),
        ("huge port", "host:99999999999999999999"),
        ("no host", ":80"),
        ("empty", ""),
        ("unclosed bracket", "[::1:80"),
        ("bad IPv6", "[zz::1]:80"),
        ("IPv6 with too many groups", "[1:2:3:4:5:6:7:8:9]:80"),
        ("IPv6 without port", "[::1]"),
        ("IPv6 without brackets", "::1:80"),
        ("IPv6 with zone", "[fe80::1%eth0]:80"),
        ("space inside", "a b:80"),
        ("leading space", " host:80"),
        ("trailing space", "host:80 "),
        ("tab", "host\t:80"),
        ("label starting with a dash", "-a:1"),
        ("label ending with a dash", "a-.example:1"),
        ("empty label", "a..b:1"),
        ("trailing dot", "example.org.:1"),
        ("label over 63 bytes", &format!("{}.org:1", "a".repeat(64))),
        (
            "host over 253 bytes",
            &format!("{}a:1", "abcdefghi.".repeat(26)),
        ),
        ("path in host", "host/x:80"),
        ("url", "http://host:80"),
    ];
    for (case, text) in bad {
        assert!(check_conductor(text).is_err(), "{case}: {text:?}");
        refused(case, &with_line(1, text), 1, Want::BadConductor);
    }
    for text in [
        "127.0.0.1:9000",
        "10.0.0.1:1",
        "[::1]:9000",
        "[2001:db8::1]:7000",
        "[::ffff:10.0.0.1]:65535",
        "tracker.example.org:65535",
        "host_name:80",
        "host:1",
        &format!("{}.org:1", "a".repeat(63)),
    ] {
        assert_eq!(check_conductor(text), Ok(()), "{text:?}");
        let o = Orchestra::parse(&with_line(1, text)).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(o.conductor, text);
    }
}

#[test]
fn line_1_may_list_several_conductors() {
    for (text, want) in [
        (
            "127.0.0.1:9000,127.0.0.1:9001",
            vec!["127.0.0.1:9000", "127.0.0.1:9001"],
        ),
        (
            "[::1]:1,a.example:2,10.0.0.1:3",
            vec!["[::1]:1", "a.example:2", "10.0.0.1:3"],
        ),
    ] {
        let o = Orchestra::parse(&with_line(1, text)).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(o.conductor, text);
        assert_eq!(o.conductors(), want);
        // Line 1 is not part of the swarm id, and the text is written back as read.
        assert_eq!(o.swarm_id(), base().swarm_id());
        assert_eq!(o.to_text(), with_line(1, text));
    }
    let too_many: Vec<String> = (1..=MAX_CONDUCTORS + 1).map(|p| format!("h:{p}")).collect();
    let bad = [
        ("empty entry", "a:1,,b:2".to_string()),
        ("trailing comma", "a:1,".to_string()),
        ("leading comma", ",a:1".to_string()),
        ("space after the comma", "a:1, b:2".to_string()),
        ("duplicate", "a:1,b:2,a:1".to_string()),
        ("duplicate in another case", "Host:1,host:1".to_string()),
        ("one bad entry", "a:1,b:0".to_string()),
        ("too many", too_many.join(",")),
        ("only commas", ",".repeat(10_000)),
    ];
    for (case, text) in bad {
        assert!(check_conductors(&text).is_err(), "{case}: {text:?}");
        refused(case, &with_line(1, &text), 1, Want::BadConductor);
    }
    let err = Orchestra::parse(&with_line(1, "a:1,,b:2")).unwrap_err();
    assert!(
        err.to_string().contains("conductor 2 of 3 is empty"),
        "{err}"
    );
    let err = Orchestra::parse(&with_line(1, "a:1,a:1")).unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[test]
fn line_ends_and_the_final_newline() {
    let o = base();
    let text = base_text();
    let crlf = text.replace('\n', "\r\n");
    assert_eq!(Orchestra::parse(&crlf).unwrap(), o);
    let unterminated = text.strip_suffix('\n').unwrap();
    assert_eq!(Orchestra::parse(unterminated).unwrap(), o);
    let crlf_unterminated = crlf.strip_suffix("\r\n").unwrap();
    assert_eq!(Orchestra::parse(crlf_unterminated).unwrap(), o);
    // Mixed line ends.
    let mixed = text.replacen('\n', "\r\n", 4);
    assert_eq!(Orchestra::parse(&mixed).unwrap(), o);
    // A lone CR is not a line end.
    let cr_only = text.replace('\n', "\r");
    refused("CR line ends", &cr_only, 1, Want::BadConductor);
    // CRLF keeps the swarm id: it is computed on the canonical form.
    assert_eq!(Orchestra::parse(&crlf).unwrap().swarm_id(), o.swarm_id());
}

#[test]
fn truncated_and_empty_files() {
    // An empty file is one empty line 1, which is not a conductor.
    refused("empty file", "", 1, Want::BadConductor);
    refused("one newline", "\n", 1, Want::BadConductor);
    let expected = [
        "the file name",
        "the full-file checksum",
        "the file size",
        "the part size",
        "the number of parts",
    ];
    let lines = lines();
    for (kept, expected) in (1..=5).zip(expected) {
        refused(
            &format!("only {kept} lines"),
            &join(&lines[..kept]),
            kept + 1,
            Want::Kind(MissingLine { expected }),
        );
    }
}

#[test]
fn bytes_that_are_not_utf8_or_too_many() {
    let mut bytes = base_text().into_bytes();
    // Inside the file name.
    let at = base_text().find("sample.bin").unwrap();
    let mut in_name = bytes.clone();
    in_name[at + 2] = 0xff;
    for (case, input) in [
        ("0xff in the file name", in_name),
        ("lone continuation byte", b"\x80".to_vec()),
        (
            "overlong encoding",
            [b"127.0.0.1:9999\n\xc0\xaf\n".as_slice(), &bytes].concat(),
        ),
        (
            "truncated sequence",
            [bytes.as_slice(), b"\xe6\x97"].concat(),
        ),
    ] {
        let err = Orchestra::parse_bytes(&input).unwrap_err();
        assert_eq!(
            err,
            OrchError {
                line: 0,
                kind: NotUtf8
            },
            "{case}"
        );
        check_display(case, &err);
    }
    // A UTF-8 BOM is valid UTF-8 but not part of a host name.
    let bom = [b"\xef\xbb\xbf".as_slice(), &bytes].concat();
    let err = Orchestra::parse_bytes(&bom).unwrap_err();
    check_error("BOM", &err, 1, &Want::BadConductor);

    // Over the size limit, refused on the length alone (the zeroed buffer is never read).
    let huge = vec![0u8; MAX_ORCH_BYTES + 1];
    let err = Orchestra::parse_bytes(&huge).unwrap_err();
    assert_eq!(
        err,
        OrchError {
            line: 0,
            kind: TooLarge {
                bytes: MAX_ORCH_BYTES + 1
            }
        }
    );
    check_display("too large", &err);
    drop(huge);

    bytes.truncate(bytes.len() - 1);
    assert_eq!(Orchestra::parse_bytes(&bytes).unwrap(), base());
}

#[test]
fn read_refuses_a_bad_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.orch");
    std::fs::write(&path, with_line(2, "../../etc/passwd")).unwrap();
    let err = Orchestra::read(&path).unwrap_err();
    let shown = format!("{err:#}");
    assert!(shown.contains("line 2: "), "{shown}");
    assert!(shown.contains("bad.orch"), "{shown}");
    let good = dir.path().join("good.orch");
    std::fs::write(&good, base_text()).unwrap();
    assert_eq!(Orchestra::read(&good).unwrap(), base());
}
