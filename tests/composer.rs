//! Runs the real `composer` binary in a temporary folder.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use torrentnchill::orch::{Checksum, Orchestra};

/// `tests/data/golden.orch` was made without our code, by Python's hashlib, for the file that
/// [`golden_content`] makes (named `golden.bin`, part size 16384, default conductor):
///
/// ```python
/// import hashlib
/// data = bytes((i * 7) % 251 for i in range(100_000))
/// parts = [data[i:i + 16384] for i in range(0, len(data), 16384)]
/// lines = ["127.0.0.1:9999", "golden.bin", hashlib.sha256(data).hexdigest(), str(len(data)),
///          "16384", str(len(parts))] + [hashlib.sha256(p).hexdigest() for p in parts]
/// open("golden.orch", "w").write("\n".join(lines) + "\n")
/// ```
///
/// and cross-checked with coreutils: line 3 is `sha256sum golden.bin`, and the part lines are
/// `split -b 16384 -d golden.bin p && sha256sum p*`.
const GOLDEN_ORCH: &str = include_str!("data/golden.orch");
/// SHA-256 of lines 2 to the end of the golden .orch (hashlib again).
const GOLDEN_SWARM: &str = "c9916fca82caf2b9cb976b2bb6c2efd22f590e865854a897952ec577109c7423";

fn golden_content() -> Vec<u8> {
    (0..100_000u64).map(|i| (i * 7 % 251) as u8).collect()
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, data).unwrap();
        path
    }

    /// Runs composer with the temporary folder as the current directory.
    fn composer(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_composer"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "composer failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Asserts exit `code` and exactly one stderr line, `error: ...`, containing every `needle`.
fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in: {err}");
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Checksum::of(data).to_hex()
}

#[test]
fn golden_orch_matches_an_independent_computation() {
    let run = Run::new();
    let data = golden_content();
    let file = run.write("golden.bin", &data);
    let out = run.composer(&["golden.bin", "127.0.0.1:9999", "16384"]);
    assert_ok(&out);

    let written = fs::read_to_string(run.path("golden.bin.orch")).unwrap();
    assert_eq!(written, GOLDEN_ORCH);
    // Line 3 is what coreutils says, when it is installed.
    if let Ok(sum) = Command::new("sha256sum").arg(&file).output() {
        let sum = String::from_utf8(sum.stdout).unwrap();
        let line3 = written.lines().nth(2).unwrap();
        assert_eq!(sum.split_whitespace().next(), Some(line3));
    }
    assert_eq!(written.lines().nth(2).unwrap(), sha256_hex(&data));

    let text = stdout(&out);
    assert!(text.contains("golden.bin.orch"), "{text}");
    assert!(text.contains(GOLDEN_SWARM), "{text}");
    assert!(text.contains("7 of 16384 bytes"), "{text}");
    assert!(text.contains("MB/s"), "{text}");
    // Nothing else is left behind: no temporary file.
    assert_eq!(run.files(), ["golden.bin", "golden.bin.orch"]);
}

#[test]
fn default_part_size_and_conductor() {
    let run = Run::new();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 5u32)
        .map(|i| (i % 253) as u8)
        .collect();
    run.write("data.bin", &data);
    assert_ok(&run.composer(&["data.bin"]));

    let orch = Orchestra::read(&run.path("data.bin.orch")).unwrap();
    assert_eq!(orch.conductor, "127.0.0.1:9999");
    assert_eq!(orch.filename, "data.bin");
    assert_eq!(orch.file_size, data.len() as u64);
    assert_eq!(
        orch.part_size,
        Orchestra::default_part_size(data.len() as u64)
    );
    assert_eq!(orch.part_size, 256 * 1024);
    assert_eq!(orch.part_count(), 13);
    assert_eq!(orch.file_checksum.to_hex(), sha256_hex(&data));
    for (i, part) in data.chunks(orch.part_size as usize).enumerate() {
        assert_eq!(orch.part_checksums[i], Checksum::of(part), "part {i}");
    }
}

#[test]
fn output_option() {
    let run = Run::new();
    run.write("in.bin", &golden_content());
    fs::create_dir(run.path("out")).unwrap();

    // A file path.
    let out = run.composer(&["in.bin", "-o", "out/custom.orch"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("out/custom.orch"));
    let orch = Orchestra::read(&run.path("out/custom.orch")).unwrap();
    assert_eq!(orch.filename, "in.bin");
    assert!(!run.path("in.bin.orch").exists());

    // A folder: <name>.orch in it. And the long form, with a path to the input.
    let input = run.path("in.bin");
    let out = run.composer(&[input.to_str().unwrap(), "--output", "out"]);
    assert_ok(&out);
    assert!(run.path("out/in.bin.orch").exists());

    // An existing .orch is replaced whole.
    fs::write(run.path("out/custom.orch"), "old").unwrap();
    assert_ok(&run.composer(&["in.bin", "host.example:7000", "-o", "out/custom.orch"]));
    let orch = Orchestra::read(&run.path("out/custom.orch")).unwrap();
    assert_eq!(orch.conductor, "host.example:7000");
    let mut left: Vec<String> = fs::read_dir(run.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["custom.orch", "in.bin.orch"]);

    // A folder that does not exist: refused before hashing.
    let out = run.composer(&["in.bin", "-o", "missing/x.orch"]);
    assert_error(&out, 5, &["missing"]);

    // Never over the file it describes.
    let out = run.composer(&["in.bin", "-o", "in.bin"]);
    assert_error(&out, 1, &["in.bin"]);
    assert_eq!(fs::read(run.path("in.bin")).unwrap(), golden_content());
}

#[test]
fn part_size_forms() {
    let run = Run::new();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
    run.write("p.bin", &data);
    for (arg, bytes) in [
        ("262144", 262_144u64),
        ("256K", 262_144),
        ("256k", 262_144),
        ("256KiB", 262_144),
        ("16K", 16_384),
        ("1M", 1 << 20),
        ("1MiB", 1 << 20),
        ("100000", 100_000),
    ] {
        let out = run.composer(&["p.bin", "127.0.0.1:9999", arg, "-o", "p.orch"]);
        assert_ok(&out);
        let orch = Orchestra::read(&run.path("p.orch")).unwrap();
        assert_eq!(orch.part_size, bytes, "{arg}");
        assert_eq!(
            orch.part_count() as u64,
            600_000u64.div_ceil(bytes),
            "{arg}"
        );
        assert_eq!(
            orch.part_checksums[0],
            Checksum::of(&data[..(bytes as usize).min(600_000)])
        );
    }
}

#[test]
fn part_size_out_of_range_or_malformed() {
    let run = Run::new();
    run.write("p.bin", &golden_content());
    for (arg, needle) in [
        ("8K", "smallest"),
        ("16383", "smallest"),
        ("65M", "largest"),
        ("1G", "largest"),
        ("4MB", "unit"),
        ("lots", "number"),
    ] {
        let out = run.composer(&["p.bin", "127.0.0.1:9999", arg]);
        assert_error(&out, 2, &["PART_SIZE", arg, needle]);
    }
    assert_eq!(run.files(), ["p.bin"]);
}

#[test]
fn missing_file() {
    let run = Run::new();
    let out = run.composer(&["nowhere.bin"]);
    assert_error(&out, 5, &["nowhere.bin", "No such file"]);
    assert_eq!(run.files(), Vec::<String>::new());
}

#[test]
fn folder_instead_of_file() {
    let run = Run::new();
    fs::create_dir(run.path("adir")).unwrap();
    assert_error(&run.composer(&["adir"]), 5, &["adir", "not a regular file"]);
}

#[test]
fn bad_conductor() {
    let run = Run::new();
    run.write("c.bin", &golden_content());
    for bad in [
        "localhost",
        "host:0",
        "host:99999",
        "[::1:80",
        "bad host:80",
        "a:1,,b:2",
        "a:1,a:1",
    ] {
        let out = run.composer(&["c.bin", bad]);
        assert_error(&out, 2, &["CONDUCTOR", bad]);
    }
    assert_eq!(run.files(), ["c.bin"]);
    // The forms a .orch accepts.
    for good in [
        "[::1]:9999",
        "tracker.example.org:1",
        "10.0.0.1:65535",
        "10.0.0.1:1,[::1]:2,t.example:3",
    ] {
        assert_ok(&run.composer(&["c.bin", good]));
        let orch = Orchestra::read(&run.path("c.bin.orch")).unwrap();
        assert_eq!(orch.conductor, good);
    }
}

#[test]
fn file_name_that_a_orch_cannot_carry() {
    let run = Run::new();
    run.write("a:b.bin", b"x");
    assert_error(&run.composer(&["a:b.bin"]), 1, &["a:b.bin", "rename"]);
    assert_eq!(run.files(), ["a:b.bin"]);
}

#[test]
fn empty_file() {
    let run = Run::new();
    run.write("empty.bin", b"");
    assert_ok(&run.composer(&["empty.bin"]));
    let orch = Orchestra::read(&run.path("empty.bin.orch")).unwrap();
    assert_eq!(orch.file_size, 0);
    assert_eq!(orch.part_count(), 0);
    assert_eq!(orch.file_checksum, Checksum::of(b""));
}

#[test]
fn json_line() {
    let run = Run::new();
    run.write("golden.bin", &golden_content());
    let out = run.composer(&["golden.bin", "127.0.0.1:9999", "16K", "--json"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["event"], "composed");
    assert_eq!(v["orch"], "golden.bin.orch");
    assert_eq!(v["swarm"], GOLDEN_SWARM);
    assert_eq!(v["file"], "golden.bin");
    assert_eq!(v["file_size"], 100_000);
    assert_eq!(v["part_size"], 16384);
    assert_eq!(v["parts"], 7);
    assert!(v["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        fs::read_to_string(run.path("golden.bin.orch")).unwrap(),
        GOLDEN_ORCH
    );
    assert_eq!(stderr(&out), "");
}

#[test]
fn json_escapes_odd_paths_and_reports_errors() {
    let run = Run::new();
    // A quote and non-ASCII in the file name (a backslash is refused there), a backslash in
    // the output folder.
    let name = "quote\"é.bin";
    run.write(name, b"abc");
    fs::create_dir(run.path("back\\slash")).unwrap();
    let out = run.composer(&[name, "--json", "-o", "back\\slash"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim_end()).unwrap();
    assert_eq!(v["file"], name);
    assert_eq!(v["orch"], format!("back\\slash/{name}.orch"));

    let out = run.composer(&["missing.bin", "--json"]);
    assert_error(&out, 5, &["missing.bin"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim_end()).unwrap();
    assert_eq!(v["event"], "error");
    assert!(v["message"].as_str().unwrap().contains("missing.bin"));
}

#[test]
fn quiet_prints_nothing() {
    let run = Run::new();
    run.write("q.bin", &golden_content());
    let out = run.composer(&["q.bin", "-q"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "");
    assert!(run.path("q.bin.orch").exists());
}

#[test]
fn help_and_version() {
    let run = Run::new();
    let out = run.composer(&["--help"]);
    assert_ok(&out);
    let help = stdout(&out);
    for needle in [
        "Examples:",
        "PART_SIZE",
        "CONDUCTOR",
        "--output",
        "--json",
        "--quiet",
    ] {
        assert!(help.contains(needle), "{needle} not in:\n{help}");
    }
    let out = run.composer(&["--version"]);
    assert_ok(&out);
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")));
    // No file at all is a usage error from clap.
    assert_eq!(run.composer(&[]).status.code(), Some(2));
}

#[test]
fn no_progress_bar_when_not_a_terminal() {
    // stderr is a pipe here, so even a file over the bar threshold draws nothing.
    let run = Run::new();
    let file = fs::File::create(run.path("big.bin")).unwrap();
    file.set_len(65 * 1024 * 1024).unwrap();
    let out = run.composer(&["big.bin"]);
    assert_ok(&out);
    assert_eq!(stderr(&out), "");
}
