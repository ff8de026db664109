//! The file on disk: positional reads and writes, `sendfile` for uploads, and the life of a
//! download on disk (fresh, resumed, seeding, finished).
//!
//! An unfinished download lives in `FILENAME.part`, beside `FILENAME.part.swarm`, which names the
//! swarm it belongs to; only a completely verified file is renamed to `FILENAME`, and only if no
//! file of that name appeared meanwhile. Resuming re-hashes the `.part` file instead of trusting
//! a saved map, so a crash at any instant (even `kill -9` between a write and a bookkeeping
//! update) can lose at most the parts that were in flight, and never turns a bad part into a
//! "have".

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use super::{Opened, Storage, StorageFactory};
use crate::hashing;
use crate::member::bitfield::Bitfield;
use crate::orch::{Checksum, Orchestra, Span, SwarmId};

/// The download's file: `FILENAME.part` while fetching, `FILENAME` when seeding.
pub struct FileStorage {
    file: File,
    paths: Paths,
    /// The file open is, or has become, the complete `FILENAME`, not the `.part`.
    complete: AtomicBool,
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
    }

    fn send_to(&self, stream: &TcpStream, span: Span) -> io::Result<()> {
        crate::net::send_file(stream, &self.file, span.offset, span.len)
    }

    fn finish(&self) -> Result<()> {
        finish(&self.paths)?;
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    fn name(&self) -> String {
        let path = if self.complete.load(Ordering::Acquire) {
            &self.paths.complete
        } else {
            &self.paths.partial
        };
        path.display().to_string()
    }
}

/// Keeps the download in `DIR/FILENAME` (see the module docs).
#[derive(Clone, Debug)]
pub struct FileStorageFactory {
    pub dir: PathBuf,
}

impl StorageFactory for FileStorageFactory {
    fn open(&self, orch: &Orchestra, progress: &dyn Fn(u64)) -> Result<Opened> {
        prepare(&self.dir, orch, progress)
    }
}

/// The paths of one download.
#[derive(Clone, Debug)]
pub struct Paths {
    pub complete: PathBuf,
    pub partial: PathBuf,
    pub marker: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path, orch: &Orchestra) -> Paths {
        // `filename` was checked to be one plain path component when the .orch was parsed.
        let complete = dir.join(&orch.filename);
        let partial = dir.join(format!("{}.part", orch.filename));
        let marker = dir.join(format!("{}.part.swarm", orch.filename));
        Paths {
            complete,
            partial,
            marker,
        }
    }
}

/// Progress of the start-up check, for the screen.
type VerifyProgress<'a> = &'a dyn Fn(u64);

/// Opens or creates the download for `orch` in `dir`: the complete file to seed, a resumable
/// partial download, or a new one. Never modifies a file that is not ours.
fn prepare(dir: &Path, orch: &Orchestra, progress: VerifyProgress) -> Result<Opened> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the download folder {}", dir.display()))?;
    let paths = Paths::new(dir, orch);
    let swarm = orch.swarm_id();

    if let Ok(meta) = std::fs::symlink_metadata(&paths.complete) {
        return open_complete(paths, orch, meta, progress);
    }

    let partial = std::fs::symlink_metadata(&paths.partial).ok();
    if partial.as_ref().is_some_and(|meta| !meta.is_file()) {
        bail!(
            "{} exists and is not a regular file; not touching it (remove it or use --dir)",
            paths.partial.display()
        );
    }
    let resuming = partial.is_some();
    let have = if let Some(meta) = partial {
        check_marker(&paths, swarm)?;
        use std::os::unix::fs::MetadataExt;
        let allocated = meta.blocks().saturating_mul(512);
        warn_if_short_of_space(dir, orch.file_size.saturating_sub(allocated));
        let parts = hashing::verify_parts(&paths.partial, orch, progress)
            .with_context(|| format!("cannot check {}", paths.partial.display()))?;
        let mut have = Bitfield::new(orch.part_count());
        for (index, ok) in parts.iter().enumerate() {
            if *ok {
                have.set(index as u32);
            }
        }
        have
    } else {
        warn_if_short_of_space(dir, orch.file_size);
        write_marker(&paths, swarm)?;
        Bitfield::new(orch.part_count())
    };
    // O_NOFOLLOW, and a fresh download insists on a new file: a link or a file planted at the
    // partial name between the checks above and this open is refused, not followed.
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(!resuming)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&paths.partial)
        .with_context(|| format!("cannot open {}", paths.partial.display()))?;
    size_up_front(&file, orch.file_size)
        .with_context(|| format!("cannot make room for {}", paths.partial.display()))?;
    Ok(Opened {
        storage: Box::new(FileStorage {
            file,
            paths,
            complete: AtomicBool::new(false),
        }),
        have,
        complete: false,
    })
}

fn open_complete(
    paths: Paths,
    orch: &Orchestra,
    meta: std::fs::Metadata,
    progress: VerifyProgress,
) -> Result<Opened> {
    let name = paths.complete.display();
    if !meta.is_file() {
        bail!(
            "{name} exists and is not a regular file; not touching it (move it away or use --dir)"
        );
    }
    if meta.len() != orch.file_size {
        bail!(
            "{name} exists but is {} bytes, not the {} bytes of this .orch; not touching it \
             (move it away or use --dir)",
            meta.len(),
            orch.file_size
        );
    }
    let hashes = hashing::hash_file(
        &paths.complete,
        orch.file_size,
        orch.part_size,
        true,
        progress,
    )
    .with_context(|| format!("cannot check {name}"))?;
    let bad = hashes
        .parts
        .iter()
        .zip(&orch.part_checksums)
        .filter(|(a, b)| a != b)
        .count();
    if bad > 0 || hashes.file != Some(orch.file_checksum) {
        bail!(
            "{name} exists but differs from this .orch ({bad} of {} parts differ); not touching \
             it (move it away or use --dir)",
            orch.part_count()
        );
    }
    let file = File::open(&paths.complete).with_context(|| format!("cannot open {name}"))?;
    Ok(Opened {
        storage: Box::new(FileStorage {
            file,
            paths,
            complete: AtomicBool::new(true),
        }),
        have: Bitfield::full(orch.part_count()),
        complete: true,
    })
}

const MARKER_HEADER: &str = "torrentnchill partial download";

fn write_marker(paths: &Paths, swarm: SwarmId) -> Result<()> {
    let text = format!("{MARKER_HEADER}\nswarm {swarm}\n");
    let tmp = paths.marker.with_extension("swarm.tmp");
    let write = || -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // A leftover from a crash, or a planted link: removed, never followed.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?
            .write_all(text.as_bytes())?;
        std::fs::rename(&tmp, &paths.marker)
    };
    write().with_context(|| format!("cannot write {}", paths.marker.display()))
}

fn check_marker(paths: &Paths, swarm: SwarmId) -> Result<()> {
    let foreign = |why: &str| {
        anyhow::anyhow!(
            "{} is not a download of this .orch ({why}); not touching it (remove it or use --dir)",
            paths.partial.display()
        )
    };
    let mut text = String::new();
    File::open(&paths.marker)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|e| foreign(&format!("cannot read {}: {e}", paths.marker.display())))?;
    let mut lines = text.lines();
    if lines.next() != Some(MARKER_HEADER) {
        return Err(foreign(&format!("{} is not ours", paths.marker.display())));
    }
    match lines
        .next()
        .and_then(|l| l.strip_prefix("swarm "))
        .and_then(Checksum::from_hex)
    {
        Some(theirs) if theirs == swarm => Ok(()),
        Some(theirs) => Err(foreign(&format!(
            "it belongs to swarm {}, this .orch is swarm {}",
            &theirs.to_hex()[..12],
            &swarm.to_hex()[..12]
        ))),
        None => Err(foreign(&format!(
            "{} names no swarm",
            paths.marker.display()
        ))),
    }
}

/// Gives the file its full size at once and, where the file system allows, reserves the blocks,
/// so that a full disk shows at start rather than in the middle of the download.
fn size_up_front(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    if size > 0 {
        use rustix::fs::{fallocate, FallocateFlags};
        use rustix::io::Errno;
        match fallocate(file, FallocateFlags::empty(), 0, size) {
            Ok(()) | Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {}
            Err(Errno::NOSPC) => {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("not enough free space for {size} bytes"),
                ))
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}

/// Free bytes on the file system holding `dir`, if it can be told.
pub fn free_space(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn warn_if_short_of_space(dir: &Path, needed: u64) {
    if let Some(free) = free_space(dir) {
        if free < needed {
            log::warn!(
                "{} has {free} bytes free but the download needs {needed} more: reserving the \
                 space will fail (or, where it cannot be reserved, the download will stop when \
                 the disk is full)",
                dir.display()
            );
        }
    }
}

/// Moves the verified download to its final name. Refuses to replace a file that appeared
/// under that name meanwhile.
///
/// No fsync: it would cost seconds per GiB, and what it guards against (a power cut before the
/// page cache is written) is caught anyway, since a member re-verifies a complete file at start.
fn finish(paths: &Paths) -> Result<()> {
    // A hard link fails if the name is taken, unlike rename, which would replace it.
    match std::fs::hard_link(&paths.partial, &paths.complete) {
        Ok(()) => {
            std::fs::remove_file(&paths.partial)
                .with_context(|| format!("cannot remove {}", paths.partial.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
            "{} appeared during the download; not replacing it (the verified download stays in {})",
            paths.complete.display(),
            paths.partial.display()
        ),
        Err(_) if !paths.complete.exists() => {
            // File systems without hard links: rename, having just checked the name is free.
            std::fs::rename(&paths.partial, &paths.complete).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    paths.partial.display(),
                    paths.complete.display()
                )
            })?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create {}", paths.complete.display()))
        }
    }
    let _ = std::fs::remove_file(&paths.marker);
    Ok(())
}
