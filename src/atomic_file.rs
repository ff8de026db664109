//! Replacing a small file atomically: the `.orch`, a private swarm's key file, the conductor's
//! state file.
//!
//! Why one place: each of them must never be seen half written (a reader, or the program after
//! a crash, finds the old file or the whole new one), and the three writers had grown three
//! copies of the same temporary-file dance.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes `bytes` to a temporary file next to `path` (same file system), created with `mode`
/// (before the umask; 0o600 for a secret), syncs it, renames it over `path` and syncs the
/// folder so that the rename survives a crash. On failure the temporary file is removed and
/// `path` is left as it was.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let temp = temp_path(path);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut out = options
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        out.write_all(bytes)
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        fs::rename(&temp, path)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    // The rename is durable once the folder is synced; without it the new file still replaced
    // the old one for every reader.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// `.NAME.PID.tmp` beside `path`: hidden, and apart for two processes writing at once.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.txt");
        replace(&path, b"old", 0o666).unwrap();
        replace(&path, b"new", 0o666).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_is_created_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        replace(&path, b"secret", 0o600).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failure_leaves_what_was_there_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder in the way: the temporary file is written, then the rename fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"kept").unwrap();
        assert!(replace(&path, b"x", 0o666).is_err());
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"kept");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["taken"], "the temporary file was left behind");
    }
}
