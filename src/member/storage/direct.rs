//! Writing verified parts past the page cache (`O_DIRECT`), and reading them back the same way.
//!
//! Why: a buffered write copies every byte into page-cache pages the kernel must allocate first.
//! On the virtual machines this project is measured on, memory freed for a few seconds goes back
//! to the host, so each new page also costs a fault in the host: writing a new 1 GiB file took
//! 2.1 CPU-seconds there, the same write with `O_DIRECT` 0.12 (docs/BENCHMARKS.md, issue 13).
//! During a download the member rarely reads a part back soon after writing it (the whole-file
//! hasher is handed the buffer itself), so the cache buys little while it costs most of the CPU
//! above the two SHA-256 passes.
//!
//! `O_DIRECT` wants the offset, the length and the buffer's address aligned to the device's block.
//! Parts arrive in heap buffers with no such alignment, so a write goes through an aligned scratch
//! buffer: a copy between two buffers already in the CPU cache's reach, a fraction of the
//! page-cache write it replaces. What cannot go direct (offsets off the alignment when the part
//! size is not a multiple of 4 KiB, the last part's tail, a file system that refuses `O_DIRECT`)
//! goes through the page cache as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};

use super::buffer::ALIGN;
use crate::sync::Mutex;

/// Scratch buffers kept between writes: one for each verifier thread writing at that moment is
/// enough, and more would only hold memory.
const MAX_SCRATCH: usize = 4;

/// A second handle on the download's file, opened with `O_DIRECT`.
pub struct DirectIo {
    file: File,
    scratch: Mutex<Vec<Scratch>>,
    /// Cleared when the file system refuses a direct write: from then on the cache is used.
    working: AtomicBool,
}

impl DirectIo {
    /// Opens `file` (already open for writing) a second time with `O_DIRECT`, through
    /// `/proc/self/fd` so that it is the same file even if its name has been replaced meanwhile.
    /// `None` where the file system or the system does not allow it.
    pub fn reopen(file: &File) -> Option<DirectIo> {
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| log::debug!("writes go through the page cache: O_DIRECT refused: {e}"))
            .ok()?;
        Some(DirectIo {
            file: direct,
            scratch: Mutex::new(Vec::new()),
            working: AtomicBool::new(true),
        })
    }

    /// Writes as much of the start of `buf` at `offset` as can go direct, and says how many
    /// bytes that was (0 when none could); the rest is the caller's to write through the cache.
    pub fn write_prefix(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() / ALIGN * ALIGN;
        if (buf.as_ptr() as usize).is_multiple_of(ALIGN) {
            // A part buffer (see `buffer.rs`): written in place.
            return self.transfer(offset, len, || self.file.write_all_at(&buf[..len], offset));
        }
        self.with_window(offset, buf.len(), |window| {
            window.copy_from_slice(&buf[..window.len()]);
            self.file.write_all_at(window, offset)
        })
    }

    /// Reads as much of the start of `buf` from `offset` as can come direct (a part written
    /// direct is not in the page cache, and reading it through the cache would fill new pages
    /// only to copy them once), and says how many bytes that was.
    pub fn read_prefix(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        if (buf.as_ptr() as usize).is_multiple_of(ALIGN) {
            let aligned = len / ALIGN * ALIGN;
            return self.transfer(offset, aligned, || {
                self.file.read_exact_at(&mut buf[..aligned], offset)
            });
        }
        self.with_window(offset, len, |window| {
            self.file.read_exact_at(window, offset)?;
            buf[..window.len()].copy_from_slice(window);
            Ok(())
        })
    }

    /// Runs `io` on an aligned scratch window covering the aligned prefix of `len` bytes at
    /// `offset`; the window's length, or 0 when nothing can go direct.
    fn with_window(
        &self,
        offset: u64,
        len: usize,
        io: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let len = len / ALIGN * ALIGN;
        if !self.may_go_direct(offset, len) {
            return Ok(0);
        }
        let mut scratch = self
            .scratch
            .lock()
            .pop()
            .filter(|s| s.fits(len))
            .unwrap_or_else(|| Scratch::new(len));
        let done = self.transfer(offset, len, || match scratch.window(len) {
            Some(window) => io(window),
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        });
        let mut kept = self.scratch.lock();
        if kept.len() < MAX_SCRATCH {
            kept.push(scratch);
        }
        done
    }

    fn may_go_direct(&self, offset: u64, len: usize) -> bool {
        len > 0 && offset.is_multiple_of(ALIGN as u64) && self.working.load(Ordering::Relaxed)
    }

    /// Runs `io`, a direct transfer of `len` bytes at `offset`, if one may be tried; the bytes
    /// done (0 if none, and from then on none, when the file system refused).
    fn transfer(
        &self,
        offset: u64,
        len: usize,
        io: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<usize> {
        if !self.may_go_direct(offset, len) {
            return Ok(0);
        }
        match io() {
            Ok(()) => Ok(len),
            // The file system takes O_DIRECT opens but not this transfer (or a short one left an
            // unaligned rest): the caller does the whole of it again through the cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!("the page cache is used from now: O_DIRECT transfer refused");
                self.working.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

/// A heap buffer with an aligned window in it (safe code has no aligned `Vec<u8>`).
struct Scratch {
    bytes: Vec<u8>,
}

impl Scratch {
    fn new(len: usize) -> Scratch {
        Scratch {
            bytes: vec![0; len.saturating_add(ALIGN)],
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.bytes.len() >= len.saturating_add(ALIGN)
    }

    /// `len` bytes starting at the first aligned address.
    fn window(&mut self, len: usize) -> Option<&mut [u8]> {
        let start = self.bytes.as_ptr().align_offset(ALIGN);
        self.bytes.get_mut(start..start.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn scratch_file(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("tnc-direct-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (dir, file)
    }

    #[test]
    fn aligned_writes_land_and_unaligned_ones_are_left_to_the_caller() {
        let (dir, file) = scratch_file("aligned");
        file.set_len(3 * ALIGN as u64 + 100).unwrap();
        let Some(direct) = DirectIo::reopen(&file) else {
            println!("skipped: {} refuses O_DIRECT", dir.display());
            return;
        };
        let data: Vec<u8> = (0..2 * ALIGN + 100).map(|i| (i % 251) as u8).collect();
        // Offset aligned, length not: the aligned prefix goes direct.
        assert_eq!(direct.write_prefix(ALIGN as u64, &data).unwrap(), 2 * ALIGN);
        // Offset not aligned: nothing goes direct.
        assert_eq!(direct.write_prefix(10, &data).unwrap(), 0);
        // Shorter than one block: nothing goes direct.
        assert_eq!(direct.write_prefix(0, &data[..100]).unwrap(), 0);
        let mut back = vec![0u8; 2 * ALIGN];
        file.read_exact_at(&mut back, ALIGN as u64).unwrap();
        assert_eq!(back, data[..2 * ALIGN]);
        // And read back direct: the aligned prefix of what is asked.
        let mut direct_back = vec![0u8; 2 * ALIGN + 7];
        assert_eq!(
            direct.read_prefix(ALIGN as u64, &mut direct_back).unwrap(),
            2 * ALIGN
        );
        assert_eq!(direct_back[..2 * ALIGN], data[..2 * ALIGN]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn scratch_windows_are_aligned_whatever_the_heap_gives() {
        for len in [ALIGN, 3 * ALIGN, 1 << 20] {
            let mut scratch = Scratch::new(len);
            let window = scratch.window(len).unwrap();
            assert_eq!(window.len(), len);
            assert_eq!(window.as_ptr() as usize % ALIGN, 0);
        }
    }
}
