//! Composing: checksumming a file and writing the `.orch` that lets a swarm share it.
//!
//! This is the whole operation behind the `composer` program, in the library so that a test, a
//! tool or another program can compose without running a binary, and so that the binary is only
//! flags in and a report out. Everything a person can get wrong is checked before the long hash
//! (the conductor, the part size, the file, its name, where the `.orch` goes), and the `.orch`
//! is written atomically: a reader sees the old file or the whole new one, never part of it.
//!
//! Errors carry a [`ComposeErrorKind`] so that a caller can tell a bad request (usage) from a
//! disk that fails from a file that no `.orch` can describe, and pick its exit code from it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;

use crate::cli::units::{human_bytes, parse_size};
use crate::hashing::hash_file;
use crate::orch::{self, Orchestra, SwarmId, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
use crate::secure::{self, SwarmKeys, SwarmSecret};

/// The conductor a `.orch` names when none is given.
pub const DEFAULT_CONDUCTOR: &str = "127.0.0.1:9999";

/// What to compose. [`ComposeOptions::new`] gives the defaults for everything but the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeOptions {
    /// The file to share.
    pub file: PathBuf,
    /// The conductor members will announce to, as `HOST:PORT`, or several separated by
    /// commas (line 1 of the `.orch`).
    pub conductor: String,
    /// Bytes per part, from [`MIN_PART_SIZE`] to [`MAX_PART_SIZE`]; `None` picks
    /// [`Orchestra::default_part_size`] for the file's size.
    pub part_size: Option<u64>,
    /// Where to write the `.orch`: a file path, or a folder to hold `<file name>.orch`; `None`
    /// writes `<file name>.orch` in the current folder.
    pub output: Option<PathBuf>,
    /// A private swarm: a random secret goes in the key file `NAME.orch.key` beside the
    /// `.orch` (see [`crate::secure`]).
    pub private: bool,
}

impl ComposeOptions {
    /// Composes `file` for the default conductor, with the default part size, into
    /// `<file name>.orch` in the current folder.
    pub fn new(file: impl Into<PathBuf>) -> ComposeOptions {
        ComposeOptions {
            file: file.into(),
            conductor: DEFAULT_CONDUCTOR.to_string(),
            part_size: None,
            output: None,
            private: false,
        }
    }

    /// Options from text as a person typed it: `conductor` as `HOST:PORT` (or several, comma
    /// separated), `part_size` as
    /// [`parse_part_size`] reads it (`None`: from the file size). Refuses the conductor first,
    /// then the part size, with messages that name the value.
    pub fn from_text(
        file: impl Into<PathBuf>,
        conductor: &str,
        part_size: Option<&str>,
    ) -> Result<ComposeOptions, ComposeError> {
        check_conductor(conductor)?;
        let part_size = part_size
            .map(|text| {
                parse_part_size(text).map_err(|why| {
                    ComposeError::new(
                        ComposeErrorKind::Usage,
                        anyhow!("invalid PART_SIZE {text:?}: {why}"),
                    )
                })
            })
            .transpose()?;
        Ok(ComposeOptions {
            conductor: conductor.to_string(),
            part_size,
            ..ComposeOptions::new(file)
        })
    }
}

/// How far the hash has got: `done` of `total` bytes of the file read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// A `.orch` written.
#[derive(Debug, Clone)]
pub struct Composed {
    /// The file described, as given in [`ComposeOptions::file`].
    pub file: PathBuf,
    /// Where the `.orch` was written.
    pub orch_path: PathBuf,
    /// What it says.
    pub orchestra: Orchestra,
    /// From the start of [`compose`] to the `.orch` being on disk: reading, hashing, writing.
    pub elapsed: Duration,
    /// A private swarm's key file and swarm id.
    pub private: Option<(PathBuf, SwarmId)>,
}

impl Composed {
    /// The swarm id: a private swarm's when it is one.
    pub fn swarm(&self) -> SwarmId {
        match &self.private {
            Some((_, swarm)) => *swarm,
            None => self.orchestra.swarm_id(),
        }
    }

    pub fn parts(&self) -> u32 {
        self.orchestra.part_count()
    }

    pub fn part_size(&self) -> u64 {
        self.orchestra.part_size
    }

    pub fn file_size(&self) -> u64 {
        self.orchestra.file_size
    }

    /// The `composed` event of `composer --json`.
    pub fn event(&self) -> ComposedEvent {
        ComposedEvent {
            orch: self.orch_path.to_string_lossy().into_owned(),
            swarm: self.swarm().to_hex(),
            file: self.file.to_string_lossy().into_owned(),
            file_size: self.file_size(),
            part_size: self.part_size(),
            parts: self.parts(),
            // Microseconds: a small file is composed in well under a millisecond.
            seconds: (self.elapsed.as_secs_f64() * 1e6).round() / 1e6,
        }
    }

    /// What `composer` tells a person: where the `.orch` went, what it describes, how fast.
    pub fn summary(&self) -> String {
        let (file_size, part_size) = (self.file_size(), self.part_size());
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            file_size as f64 / seconds / 1e6
        } else {
            0.0
        };
        format!(
            "wrote {}\n  file:  {}, {file_size} bytes ({})\n  parts: {} of {part_size} bytes \
             ({})\n  swarm: {}\n  took:  {seconds:.2} s ({rate:.0} MB/s)\n",
            self.orch_path.display(),
            self.orchestra.filename,
            human_bytes(file_size),
            self.parts(),
            human_bytes(part_size),
            self.swarm().to_hex(),
        ) + &match &self.private {
            Some((key, _)) => format!(
                "  private: the key is in {} (mode 0600): give it only to members, beside \
                 their copy of the .orch\n",
                key.display()
            ),
            None => String::new(),
        }
    }
}

/// `{"event":"composed",...}`, with exactly the fields docs/JSON.md lists for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename = "composed")]
pub struct ComposedEvent {
    pub orch: String,
    pub swarm: String,
    pub file: String,
    pub file_size: u64,
    pub part_size: u64,
    pub parts: u32,
    pub seconds: f64,
}

/// What kind of trouble stopped a compose, for a caller choosing an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeErrorKind {
    /// The request itself is wrong: a conductor or part size a `.orch` cannot hold, or a file
    /// too large for the part size.
    Usage,
    /// The file cannot be read, or the `.orch` cannot be written where it should go.
    Disk,
    /// Anything else: a file name a `.orch` cannot carry, an output that is the file itself.
    Other,
}

/// Why a compose failed: its kind and a message that names the file or value and the cause.
#[derive(Debug)]
pub struct ComposeError {
    kind: ComposeErrorKind,
    error: anyhow::Error,
}

impl ComposeError {
    fn new(kind: ComposeErrorKind, error: anyhow::Error) -> ComposeError {
        ComposeError { kind, error }
    }

    pub fn kind(&self) -> ComposeErrorKind {
        self.kind
    }
}

impl fmt::Display for ComposeError {
    /// The message with its causes on one line, `cannot open x: No such file or directory`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

// The causes are already in the message, so `source` stays empty and nothing is said twice.
impl std::error::Error for ComposeError {}

/// Attaches a [`ComposeErrorKind`] to any error: `result.or_kind(ComposeErrorKind::Disk)?`.
trait OrKind<T> {
    fn or_kind(self, kind: ComposeErrorKind) -> Result<T, ComposeError>;
}

impl<T> OrKind<T> for anyhow::Result<T> {
    fn or_kind(self, kind: ComposeErrorKind) -> Result<T, ComposeError> {
        self.map_err(|error| ComposeError::new(kind, error))
    }
}

fn fail<T>(kind: ComposeErrorKind, error: anyhow::Error) -> Result<T, ComposeError> {
    Err(ComposeError::new(kind, error))
}

/// Parses a part size as people type it (`262144`, `256K`, `4M`, `1MiB`: see
/// [`parse_size`]) and checks it against the limits of a `.orch`.
pub fn parse_part_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    check_part_size(bytes)?;
    Ok(bytes)
}

/// Refuses a conductor (or list of conductors) a `.orch` cannot name.
fn check_conductor(conductor: &str) -> Result<(), ComposeError> {
    orch::check_conductors(conductor).map_err(|why| {
        ComposeError::new(
            ComposeErrorKind::Usage,
            anyhow!("invalid CONDUCTOR {conductor:?}: {why}"),
        )
    })
}

/// Refuses a part size outside [`MIN_PART_SIZE`]..=[`MAX_PART_SIZE`], saying which limit.
fn check_part_size(bytes: u64) -> Result<(), String> {
    if bytes < MIN_PART_SIZE {
        return Err(format!(
            "{bytes} bytes is less than the smallest part size, {} ({MIN_PART_SIZE} bytes)",
            human_bytes(MIN_PART_SIZE)
        ));
    }
    if bytes > MAX_PART_SIZE {
        return Err(format!(
            "{bytes} bytes ({}) is more than the largest part size, {} ({MAX_PART_SIZE} bytes)",
            human_bytes(bytes),
            human_bytes(MAX_PART_SIZE)
        ));
    }
    Ok(())
}

/// Checksums `options.file` and writes its `.orch`. `progress` is called on this thread after
/// each chunk of the file is read.
///
/// Every check that can fail without reading the file is made before the hash starts, so a
/// mistake costs no time on a large file; nothing is left behind on failure.
pub fn compose(
    options: &ComposeOptions,
    progress: &dyn Fn(Progress),
) -> Result<Composed, ComposeError> {
    use ComposeErrorKind::{Disk, Other, Usage};
    let started = Instant::now();
    check_conductor(&options.conductor)?;
    if let Some(bytes) = options.part_size {
        if let Err(why) = check_part_size(bytes) {
            return fail(Usage, anyhow!("invalid PART_SIZE {bytes}: {why}"));
        }
    }
    let file = options.file.as_path();
    let meta = fs::metadata(file)
        .with_context(|| format!("cannot open {}", file.display()))
        .or_kind(Disk)?;
    if !meta.is_file() {
        return fail(Disk, anyhow!("{} is not a regular file", file.display()));
    }
    let file_size = meta.len();
    let filename = file_name(file).or_kind(Other)?;
    let part_size = options
        .part_size
        .unwrap_or_else(|| Orchestra::default_part_size(file_size));
    let parts = file_size.div_ceil(part_size);
    if parts > MAX_PARTS {
        return fail(
            Usage,
            anyhow!(
                "{}: {} in parts of {} is {parts} parts, more than the limit of {MAX_PARTS}; \
                 choose a larger PART_SIZE",
                file.display(),
                human_bytes(file_size),
                human_bytes(part_size)
            ),
        );
    }
    let output = output_path(options.output.as_deref(), &filename);
    check_output(&output, file)?;

    let report = |done: u64| {
        progress(Progress {
            done,
            total: file_size,
        })
    };
    let hashes = hash_file(file, file_size, part_size, true, &report).or_kind(Disk)?;
    let file_checksum = hashes
        .file
        .ok_or_else(|| anyhow!("hashing {} gave no full-file checksum", file.display()))
        .or_kind(Other)?;
    let orchestra = Orchestra::new(
        &options.conductor,
        &filename,
        file_checksum,
        file_size,
        part_size,
        hashes.parts,
    )
    .with_context(|| format!("cannot describe {} in a .orch", file.display()))
    .or_kind(Other)?;
    // The key goes first: a .orch that a member finds without its key would make it join
    // the public swarm. A public compose removes a key left by an earlier private one.
    let key_path = secure::key_path(&output);
    let private = if options.private {
        let secret = SwarmSecret::generate().or_kind(Other)?;
        secret.save(&key_path).or_kind(Disk)?;
        let keys = SwarmKeys::derive(&secret, orchestra.swarm_id());
        Some((key_path, keys.swarm))
    } else {
        match fs::remove_file(&key_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return fail(
                    Disk,
                    anyhow!("cannot remove the old key file {}: {e}", key_path.display()),
                )
            }
            _ => None,
        }
    };
    crate::atomic_file::replace(&output, orchestra.to_text().as_bytes(), 0o666).or_kind(Disk)?;
    Ok(Composed {
        file: options.file.clone(),
        orch_path: output,
        orchestra,
        elapsed: started.elapsed(),
        private,
    })
}

/// The FILENAME line: the file's own name, which must be safe for every member to create.
fn file_name(file: &Path) -> anyhow::Result<String> {
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("{} does not end in a file name", file.display()))?;
    let name = name.to_str().ok_or_else(|| {
        anyhow!(
            "{}: the file name is not valid UTF-8, which a .orch requires; rename the file",
            file.display()
        )
    })?;
    orch::check_filename(name).map_err(|why| {
        anyhow!(
            "{}: the file name cannot go in a .orch: {why}; rename the file",
            file.display()
        )
    })?;
    Ok(name.to_string())
}

/// `output` as given, `output/<name>.orch` when it is a folder, or `<name>.orch` here.
fn output_path(output: Option<&Path>, filename: &str) -> PathBuf {
    let default_name = format!("{filename}.orch");
    match output {
        None => PathBuf::from(default_name),
        Some(path) if path.is_dir() => path.join(default_name),
        Some(path) => path.to_path_buf(),
    }
}

/// Fails early (before a long hash) if the .orch cannot go where it should, or would replace
/// the very file it describes.
fn check_output(output: &Path, file: &Path) -> Result<(), ComposeError> {
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return fail(
            ComposeErrorKind::Disk,
            anyhow!(
                "cannot write {}: {} is not a folder",
                output.display(),
                folder.display()
            ),
        );
    }
    if let (Ok(a), Ok(b)) = (fs::canonicalize(output), fs::canonicalize(file)) {
        if a == b {
            return fail(
                ComposeErrorKind::Other,
                anyhow!(
                    "cannot write {}: it is the file being described",
                    output.display()
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::orch::Checksum;

    #[test]
    fn part_sizes() {
        for (text, bytes) in [
            ("262144", 262144),
            ("256K", 262144),
            ("256k", 262144),
            ("256KiB", 262144),
            ("256kib", 262144),
            ("16K", 16384),
            ("4M", 4 << 20),
            ("1MiB", 1 << 20),
            ("64M", 64 << 20),
        ] {
            assert_eq!(parse_part_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "K",
            "4MB",
            "1.5M",
            "-4M",
            "16383",
            "15K",
            "65M",
            "1G",
            "99999999999999999999G",
        ] {
            assert!(parse_part_size(bad).is_err(), "{bad}");
        }
        let small = parse_part_size("15K").unwrap_err();
        assert!(small.contains("smallest part size, 16.00 KiB"), "{small}");
        let large = parse_part_size("65M").unwrap_err();
        assert!(large.contains("largest part size, 64.00 MiB"), "{large}");
    }

    #[test]
    fn options_from_text_check_the_conductor_then_the_part_size() {
        let options = ComposeOptions::from_text("f.bin", "tracker.lan:7000", Some("4M")).unwrap();
        assert_eq!(options.conductor, "tracker.lan:7000");
        assert_eq!(options.part_size, Some(4 << 20));
        assert_eq!(options.output, None);
        let defaults = ComposeOptions::from_text("f.bin", DEFAULT_CONDUCTOR, None).unwrap();
        assert_eq!(defaults, ComposeOptions::new("f.bin"));
        let both_bad = ComposeOptions::from_text("f.bin", "bad", Some("8K")).unwrap_err();
        assert_eq!(both_bad.kind(), ComposeErrorKind::Usage);
        assert!(
            both_bad
                .to_string()
                .starts_with("invalid CONDUCTOR \"bad\": "),
            "{both_bad}"
        );
        let size = ComposeOptions::from_text("f.bin", "h:1", Some("4MB")).unwrap_err();
        assert_eq!(size.kind(), ComposeErrorKind::Usage);
        assert!(
            size.to_string()
                .starts_with("invalid PART_SIZE \"4MB\": unknown unit"),
            "{size}"
        );
    }

    /// A folder with one file of `len` bytes in it.
    fn folder_with(name: &str, len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let file = dir.path().join(name);
        fs::write(&file, &data).unwrap();
        (dir, file, data)
    }

    fn options(file: &Path, output: &Path) -> ComposeOptions {
        ComposeOptions {
            output: Some(output.to_path_buf()),
            ..ComposeOptions::new(file)
        }
    }

    #[test]
    fn compose_writes_the_orch_and_reports_it() {
        let (dir, file, data) = folder_with("data.bin", 100_000);
        let calls = Cell::new(0u32);
        let last = Cell::new(None);
        let progress = |p: Progress| {
            calls.set(calls.get() + 1);
            last.set(Some(p));
        };
        let composed = compose(
            &ComposeOptions {
                part_size: Some(16384),
                ..options(&file, dir.path())
            },
            &progress,
        )
        .unwrap();
        assert_eq!(composed.orch_path, dir.path().join("data.bin.orch"));
        let written = Orchestra::read(&composed.orch_path).unwrap();
        assert_eq!(written, composed.orchestra);
        assert_eq!(written.conductor, DEFAULT_CONDUCTOR);
        assert_eq!(written.filename, "data.bin");
        assert_eq!(written.file_checksum, Checksum::of(&data));
        assert_eq!(composed.parts(), 7);
        assert_eq!(composed.part_size(), 16384);
        assert_eq!(composed.file_size(), 100_000);
        assert_eq!(composed.swarm(), written.swarm_id());
        let summary = composed.summary();
        assert!(summary.starts_with("wrote "), "{summary}");
        assert!(
            summary.contains("  parts: 7 of 16384 bytes (16.00 KiB)\n"),
            "{summary}"
        );
        assert_eq!(summary.lines().count(), 5, "{summary}");
        let event = serde_json::to_value(composed.event()).unwrap();
        assert_eq!(event["event"], "composed");
        assert_eq!(event["file"], file.to_string_lossy().as_ref());
        assert_eq!(event["swarm"], written.swarm_id().to_hex());
        assert_eq!(event["parts"], 7);
        assert!(calls.get() >= 1);
        assert_eq!(
            last.get(),
            Some(Progress {
                done: 100_000,
                total: 100_000
            })
        );
        // No temporary file is left beside it.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["data.bin", "data.bin.orch"]);
    }

    #[test]
    fn the_default_part_size_follows_the_file_size() {
        let (dir, file, _) = folder_with("d.bin", 3 << 20);
        let composed = compose(&options(&file, &dir.path().join("d.orch")), &|_| {}).unwrap();
        assert_eq!(composed.part_size(), Orchestra::default_part_size(3 << 20));
        assert_eq!(composed.orch_path, dir.path().join("d.orch"));
    }

    #[test]
    fn each_failure_has_its_kind() {
        use ComposeErrorKind::{Disk, Other, Usage};
        let (dir, file, _) = folder_with("k.bin", 1000);
        let out = dir.path();
        let kind_and_text = |options: ComposeOptions| {
            let error = compose(&options, &|_| {}).unwrap_err();
            (error.kind(), error.to_string())
        };
        let cases: Vec<(ComposeOptions, ComposeErrorKind, &str)> = vec![
            (
                ComposeOptions {
                    conductor: "nohost".into(),
                    ..options(&file, out)
                },
                Usage,
                "invalid CONDUCTOR \"nohost\"",
            ),
            (
                ComposeOptions {
                    part_size: Some(1000),
                    ..options(&file, out)
                },
                Usage,
                "invalid PART_SIZE 1000: 1000 bytes is less than the smallest part size",
            ),
            (
                options(&dir.path().join("absent.bin"), out),
                Disk,
                "cannot open",
            ),
            (options(dir.path(), out), Disk, "is not a regular file"),
            (
                options(&file, &dir.path().join("no/such/folder/k.orch")),
                Disk,
                "is not a folder",
            ),
            (
                options(&file, &file),
                Other,
                "it is the file being described",
            ),
        ];
        for (options, kind, needle) in cases {
            let (got, text) = kind_and_text(options);
            assert_eq!(got, kind, "{text}");
            assert!(text.contains(needle), "{needle:?} not in {text:?}");
        }
        let named = dir.path().join("a:b.bin");
        fs::write(&named, b"x").unwrap();
        let (got, text) = kind_and_text(options(&named, out));
        assert_eq!(got, Other, "{text}");
        assert!(text.contains("rename the file"), "{text}");
        // The causes are on the one line: the OS error follows the context.
        let (_, text) = kind_and_text(options(&dir.path().join("absent.bin"), out));
        assert!(text.contains("absent.bin: No such file"), "{text}");
    }

    #[test]
    fn too_many_parts_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sparse.bin");
        // Sparse, so this costs no disk: 4 Mi parts of 16 KiB is 64 GiB, one byte more is over.
        let file_handle = fs::File::create(&file).unwrap();
        file_handle.set_len(MAX_PARTS * MIN_PART_SIZE + 1).unwrap();
        let read = Cell::new(false);
        let error = compose(
            &ComposeOptions {
                part_size: Some(MIN_PART_SIZE),
                ..options(&file, dir.path())
            },
            &|_| read.set(true),
        )
        .unwrap_err();
        assert_eq!(error.kind(), ComposeErrorKind::Usage);
        assert!(
            error.to_string().contains("choose a larger PART_SIZE"),
            "{error}"
        );
        assert!(!read.get(), "the file was read before the refusal");
    }
}
