//! `member --check`: compares the file on disk with a `.orch`, part by part, without the
//! network, and says which parts are bad.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use serde::Serialize;

use crate::cli::exit;
use crate::hashing;
use crate::member::storage::Paths;
use crate::orch::Orchestra;

/// What `--check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The file that was checked: `DIR/FILENAME`, or `DIR/FILENAME.part` if only that exists.
    pub path: PathBuf,
    /// True when `path` is the unfinished download, `FILENAME.part`.
    pub partial: bool,
    /// Its size on disk.
    pub size: u64,
    pub parts_total: u32,
    /// Parts missing or whose SHA-256 differs from the .orch, as inclusive ranges, in order.
    pub bad: Vec<(u32, u32)>,
    /// Whether the whole file's SHA-256 matches line 3 of the .orch; checked only for
    /// `DIR/FILENAME` (not for a `.part`) when it is at least as long as the .orch says.
    pub file_checksum_ok: Option<bool>,
}

impl CheckReport {
    pub fn parts_bad(&self) -> u32 {
        self.bad.iter().map(|(a, b)| b - a + 1).sum()
    }

    pub fn parts_valid(&self) -> u32 {
        self.parts_total - self.parts_bad()
    }

    /// `DIR/FILENAME` is exactly the file the .orch describes.
    pub fn is_complete(&self, orch: &Orchestra) -> bool {
        !self.partial
            && self.size == orch.file_size
            && self.bad.is_empty()
            && self.file_checksum_ok == Some(true)
    }

    /// Every part matches yet the whole file does not: the .orch contradicts itself.
    pub fn orch_is_inconsistent(&self) -> bool {
        self.bad.is_empty() && self.file_checksum_ok == Some(false)
    }

    /// The exit code of `member --check`: 0 complete and valid, 3 the .orch contradicts
    /// itself, 1 damaged or unfinished.
    pub fn exit_code(&self, orch: &Orchestra) -> i32 {
        if self.is_complete(orch) {
            exit::OK
        } else if self.orch_is_inconsistent() {
            exit::BAD_ORCH
        } else {
            exit::FAILURE
        }
    }

    /// What `--check` says about the file, in one line.
    pub fn describe(&self, orch: &Orchestra) -> String {
        let path = self.path.display();
        let total = self.parts_total;
        if self.is_complete(orch) {
            return format!(
                "{path}: complete and valid: all {total} parts and the whole file's SHA-256 match"
            );
        }
        if self.orch_is_inconsistent() {
            return format!(
                "{path}: every part matches but the whole file's SHA-256 does not: the .orch is \
                 inconsistent"
            );
        }
        let mut line = format!("{path}: {} of {total} parts valid", self.parts_valid());
        if !self.bad.is_empty() {
            line.push_str(&format!(
                "; {} bad or missing: {}",
                self.parts_bad(),
                describe_ranges(&self.bad, 20)
            ));
        }
        if self.size != orch.file_size && !self.partial {
            line.push_str(&format!(
                "; it is {} bytes, the .orch says {}",
                self.size, orch.file_size
            ));
        }
        line.push_str(if self.partial {
            " (an unfinished download: run member to fetch the rest)"
        } else {
            " (damaged: move it away and run member to fetch a good copy)"
        });
        line
    }

    /// The `check` event of `member --check --json` (docs/JSON.md).
    pub fn event<'a>(
        &'a self,
        orch: &Orchestra,
        orch_path: &'a Path,
        seconds: f64,
    ) -> CheckEvent<'a> {
        CheckEvent {
            orch: orch_path.display().to_string(),
            file: self.path.display().to_string(),
            partial: self.partial,
            size: self.size,
            parts_total: self.parts_total,
            parts_valid: self.parts_valid(),
            bad: &self.bad,
            file_checksum_ok: self.file_checksum_ok,
            complete: self.is_complete(orch),
            seconds,
        }
    }
}

/// `{"event":"check",...}`: what `member --check --json` prints.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename = "check")]
pub struct CheckEvent<'a> {
    pub orch: String,
    pub file: String,
    pub partial: bool,
    pub size: u64,
    pub parts_total: u32,
    pub parts_valid: u32,
    pub bad: &'a [(u32, u32)],
    pub file_checksum_ok: Option<bool>,
    pub complete: bool,
    pub seconds: f64,
}

/// Checks `DIR/FILENAME`, or `DIR/FILENAME.part` when only that exists, against `orch`.
/// `progress` receives the bytes read so far. Fails (naming the path) when neither file exists
/// or the file cannot be read.
pub fn check(dir: &Path, orch: &Orchestra, progress: &dyn Fn(u64)) -> Result<CheckReport> {
    let paths = Paths::new(dir, orch);
    let (path, partial) = if std::fs::symlink_metadata(&paths.complete).is_ok() {
        (paths.complete, false)
    } else if std::fs::symlink_metadata(&paths.partial).is_ok() {
        (paths.partial, true)
    } else {
        // Reading the missing file gives the system's own "No such file" as the cause.
        let error = std::fs::metadata(&paths.complete)
            .err()
            .unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound));
        return Err(error).with_context(|| {
            format!(
                "cannot check {}: neither it nor {} exists",
                paths.complete.display(),
                paths.partial.display()
            )
        });
    };
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot check {}", path.display()))?;
    if !meta.is_file() {
        bail!("cannot check {}: it is not a regular file", path.display());
    }
    let size = meta.len();
    let (matches, file_checksum_ok) = if size >= orch.file_size {
        let want_full = !partial;
        let hashes = hashing::hash_file(&path, orch.file_size, orch.part_size, want_full, progress)
            .with_context(|| format!("cannot check {}", path.display()))?;
        let matches: Vec<bool> = orch
            .part_checksums
            .iter()
            .zip(&hashes.parts)
            .map(|(expected, found)| expected == found)
            .collect();
        (matches, hashes.file.map(|sum| sum == orch.file_checksum))
    } else {
        let matches = hashing::verify_parts(&path, orch, progress)
            .with_context(|| format!("cannot check {}", path.display()))?;
        (matches, None)
    };
    Ok(CheckReport {
        path,
        partial,
        size,
        parts_total: orch.part_count(),
        bad: bad_ranges(&matches),
        file_checksum_ok,
    })
}

/// The runs of `false` in `ok`, as inclusive index ranges.
pub fn bad_ranges(ok: &[bool]) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for (index, good) in ok.iter().enumerate() {
        let index = index as u32;
        if *good {
            continue;
        }
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == index => *last = index,
            _ => ranges.push((index, index)),
        }
    }
    ranges
}

/// `0-3, 7, 9-12`: ranges as a person reads them, at most `limit` of them, then `and N more`.
pub fn describe_ranges(ranges: &[(u32, u32)], limit: usize) -> String {
    let mut text: Vec<String> = ranges
        .iter()
        .take(limit)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > limit {
        text.push(format!("and {} more ranges", ranges.len() - limit));
    }
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(bad_ranges(&[]), vec![]);
        assert_eq!(bad_ranges(&[true, true]), vec![]);
        assert_eq!(
            bad_ranges(&[false, false, true, false, true, false, false, false]),
            vec![(0, 1), (3, 3), (5, 7)]
        );
        assert_eq!(
            describe_ranges(&[(0, 1), (3, 3), (5, 7)], 10),
            "0-1, 3, 5-7"
        );
        assert_eq!(
            describe_ranges(&[(0, 1), (3, 3), (5, 7)], 2),
            "0-1, 3, and 1 more ranges"
        );
    }
}
