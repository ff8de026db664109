//! The parallel file hasher shared by `composer` (which checksums a file to share it) and by the
//! member (which checks an existing file or a partial download before it starts).
//!
//! The file is read once, front to back, in large reads, by the calling thread. Each chunk read
//! goes into a buffer from a small fixed pool and is handed, by reference count, to:
//! - the full-file hasher thread (when the whole-file checksum is wanted), which sees every chunk
//!   in order;
//! - the part hasher threads: part `i` belongs to worker `i % W`, and a worker receives only the
//!   chunks that hold some of its parts, in file order.
//!
//! A chunk is at most [`CHUNK_BYTES`] and never cuts a part in two except at a part boundary: when
//! parts are smaller than a chunk, a chunk holds a whole number of parts; otherwise a chunk lies
//! inside one part. A buffer goes back to the pool when the last thread using it drops it, so
//! memory is [`POOL_BUFFERS`] × [`CHUNK_BYTES`] whatever the file size (plus the part checksums).
//!
//! Every hand-off is a channel, so a thread that fails or panics cannot leave another one blocked:
//! its receiver closes, which discards what was queued for it (returning those buffers), and the
//! reader's next send fails; once the reader stops, its senders close and every hasher ends.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::orch::{Checksum, Orchestra, MAX_PARTS};

/// Largest single read, and the size of each pooled buffer.
pub const CHUNK_BYTES: usize = 1024 * 1024;
const PAGE: usize = 4096;
/// Buffers in the pool: the most file data held in memory at once is this times [`CHUNK_BYTES`].
pub const POOL_BUFFERS: usize = 16;

/// The checksums of a file: of the whole (when asked for) and of every part, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    pub file: Option<Checksum>,
    pub parts: Vec<Checksum>,
}

/// Computes the SHA-256 of every `part_size` part of the first `file_size` bytes of `path` (the
/// last part may be shorter) and, if `want_full`, of those `file_size` bytes as a whole.
///
/// `progress` is called on the calling thread after each chunk with the number of bytes read so
/// far. Fails, naming the path, if the file cannot be read or holds fewer than `file_size` bytes.
pub fn hash_file(
    path: &Path,
    file_size: u64,
    part_size: u64,
    want_full: bool,
    progress: &dyn Fn(u64),
) -> Result<FileHashes> {
    if part_size == 0 {
        bail!("cannot hash {}: the part size is 0", path.display());
    }
    let part_count = file_size.div_ceil(part_size);
    if part_count > MAX_PARTS {
        bail!(
            "cannot hash {}: {file_size} bytes in parts of {part_size} bytes is {part_count} parts, \
             more than the limit of {MAX_PARTS}",
            path.display()
        );
    }
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let actual = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    if actual < file_size {
        bail!(
            "{} is {actual} bytes, shorter than the expected {file_size} bytes",
            path.display()
        );
    }
    advise_sequential(&file);

    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    // The whole-file hasher keeps one core busy by itself; the part hashers share the rest.
    let spare = if want_full {
        cores.saturating_sub(1)
    } else {
        cores
    };
    let tuning = Tuning {
        chunk: CHUNK_BYTES,
        pool: POOL_BUFFERS,
        workers: spare.max(1),
        #[cfg(test)]
        panic_at_part: None,
    };
    hash_open_file(
        &mut file, path, file_size, part_size, want_full, progress, tuning,
    )
}

/// Sizes of the machinery; tests shrink them to exercise many chunks on small files.
#[derive(Clone, Copy)]
struct Tuning {
    chunk: usize,
    pool: usize,
    workers: usize,
    /// Fault injection: the part hasher that reaches this part panics.
    #[cfg(test)]
    panic_at_part: Option<u64>,
}

fn hash_open_file(
    file: &mut File,
    path: &Path,
    file_size: u64,
    part_size: u64,
    want_full: bool,
    progress: &dyn Fn(u64),
    tuning: Tuning,
) -> Result<FileHashes> {
    let part_count = file_size.div_ceil(part_size);
    let workers = (tuning.workers.max(1) as u64).min(part_count.max(1)) as usize;
    let plan = Plan {
        file_size,
        part_size,
        chunk: tuning.chunk as u64,
        workers: workers as u64,
        #[cfg(test)]
        panic_at_part: tuning.panic_at_part,
    };
    let pool = tuning.pool.max(1);
    // Filled in place by the part hashers: the only memory that grows with the file.
    let parts = Mutex::new(vec![Checksum([0; 32]); part_count as usize]);
    let parts_out = &parts;

    let file_checksum = thread::scope(|scope| {
        let (full_tx, full_handle) = if want_full {
            let (tx, rx) = mpsc::sync_channel::<Chunk>(pool);
            let handle = thread::Builder::new()
                .name("hash-file".into())
                .spawn_scoped(scope, move || hash_whole(rx))
                .context("cannot start a hashing thread")?;
            (Some(tx), Some(handle))
        } else {
            (None, None)
        };
        let mut part_txs = Vec::with_capacity(workers);
        let mut part_handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Chunk>(pool);
            let handle = thread::Builder::new()
                .name(format!("hash-parts-{worker}"))
                .spawn_scoped(scope, move || {
                    hash_parts(rx, plan, worker as u64, parts_out)
                })
                .context("cannot start a hashing thread")?;
            part_txs.push(tx);
            part_handles.push(handle);
        }

        // The senders move into `read_all` and are dropped when it returns, however it returns,
        // so that every hasher sees the end of its input.
        let read_result = read_all(file, path, plan, pool, full_tx, part_txs, progress);

        let mut panicked = None;
        let file_checksum = full_handle.and_then(|h| join(h, &mut panicked));
        let worker_counts: Vec<Option<u64>> = part_handles
            .into_iter()
            .map(|h| join(h, &mut panicked))
            .collect();
        if let Some(message) = panicked {
            bail!(
                "hashing {} failed: a hashing thread panicked: {message}",
                path.display()
            );
        }
        read_result?;

        for (worker, count) in worker_counts.into_iter().enumerate() {
            let expected = plan.parts_of_worker(part_count, worker as u64);
            if count != Some(expected) {
                bail!(
                    "hashing {} failed: part hasher {worker} hashed {count:?} parts, not {expected}",
                    path.display()
                );
            }
        }
        Ok(file_checksum)
    })?;
    Ok(FileHashes {
        file: file_checksum,
        parts: parts.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

/// Checks which parts of `path` match `orchestra`, for resuming: entry `i` is true when part `i`
/// is on disk with the right checksum. A file shorter than `orchestra.file_size` (a partial
/// download) is fine: parts that do not fit in it are reported missing.
pub fn verify_parts(
    path: &Path,
    orchestra: &Orchestra,
    progress: &dyn Fn(u64),
) -> Result<Vec<bool>> {
    let on_disk = std::fs::metadata(path)
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    let hashed = if on_disk >= orchestra.file_size {
        orchestra.file_size
    } else {
        on_disk - on_disk % orchestra.part_size.max(1)
    };
    let hashes = hash_file(path, hashed, orchestra.part_size, false, progress)?;
    let mut matches: Vec<bool> = orchestra
        .part_checksums
        .iter()
        .zip(&hashes.parts)
        .map(|(expected, found)| expected == found)
        .collect();
    matches.resize(orchestra.part_checksums.len(), false);
    Ok(matches)
}

/// How the file is cut: sizes and the number of part workers.
#[derive(Clone, Copy)]
struct Plan {
    file_size: u64,
    part_size: u64,
    /// The largest read.
    chunk: u64,
    workers: u64,
    #[cfg(test)]
    panic_at_part: Option<u64>,
}

impl Plan {
    /// Length of the chunk that starts at `pos` (which is always a part boundary when parts are
    /// smaller than a chunk).
    fn chunk_len(&self, pos: u64) -> usize {
        let chunk = self.chunk;
        let len = if self.part_size >= chunk {
            chunk.min(self.part_size - pos % self.part_size)
        } else {
            chunk / self.part_size * self.part_size
        };
        len.min(self.file_size - pos) as usize
    }

    /// The parts that overlap `offset .. offset + len` (len > 0), as an inclusive range.
    fn parts_in(&self, offset: u64, len: usize) -> (u64, u64) {
        (
            offset / self.part_size,
            (offset + len as u64 - 1) / self.part_size,
        )
    }

    /// How many of the `part_count` parts belong to `worker`: those with `index % workers ==
    /// worker`.
    fn parts_of_worker(&self, part_count: u64, worker: u64) -> u64 {
        (part_count + self.workers - 1 - worker) / self.workers
    }

    /// The first part in `first ..= last` that belongs to `worker`, if any.
    fn first_of_worker(&self, first: u64, last: u64, worker: u64) -> Option<u64> {
        let part = first + (worker + self.workers - first % self.workers) % self.workers;
        (part <= last).then_some(part)
    }
}

/// A pooled buffer: when the last reference to it is dropped, its memory goes back to the pool.
struct Buffer {
    data: Vec<u8>,
    /// Where the file bytes begin in `data`: the first page boundary.
    start: usize,
    home: SyncSender<Vec<u8>>,
}

impl Buffer {
    fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // The pool has room for every buffer, so this only fails once the reader is gone.
        let _ = self.home.try_send(std::mem::take(&mut self.data));
    }
}

/// `buffer` holds the file bytes from `offset`.
struct Chunk {
    buffer: Arc<Buffer>,
    offset: u64,
}

/// Reads the file into pooled buffers and hands each chunk to the threads that need it.
fn read_all(
    file: &mut File,
    path: &Path,
    plan: Plan,
    pool_size: usize,
    full_tx: Option<SyncSender<Chunk>>,
    part_txs: Vec<SyncSender<Chunk>>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let stopped = || {
        anyhow!(
            "hashing {} failed: a hashing thread stopped early",
            path.display()
        )
    };
    let (home, pool) = mpsc::sync_channel::<Vec<u8>>(pool_size);
    let mut allocated = 0;
    let mut pos = 0u64;
    while pos < plan.file_size {
        let len = plan.chunk_len(pos);
        let mut data = if allocated < pool_size {
            allocated += 1;
            Vec::with_capacity(plan.chunk as usize + PAGE - 1)
        } else {
            // Every buffer not in the pool is held by a hasher (or queued for one), which drops it
            // when done or when it stops, so this wait always ends.
            pool.recv().map_err(|_| stopped())?
        };
        // Reading into a page-aligned address, as the page cache is, makes the kernel's copy
        // much faster than into a page + 16 bytes (what malloc gives for large blocks).
        let start = data.as_ptr().align_offset(PAGE);
        data.resize(start + len, 0);
        read_full(file, &mut data[start..]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => anyhow!(
                "{} ended at about byte {}, before the expected {} bytes (did it shrink?)",
                path.display(),
                pos,
                plan.file_size
            ),
            _ => anyhow::Error::new(e)
                .context(format!("cannot read {} at byte {pos}", path.display())),
        })?;
        let buffer = Arc::new(Buffer {
            data,
            start,
            home: home.clone(),
        });
        if let Some(tx) = &full_tx {
            let chunk = Chunk {
                buffer: Arc::clone(&buffer),
                offset: pos,
            };
            tx.send(chunk).map_err(|_| stopped())?;
        }
        let (first, last) = plan.parts_in(pos, len);
        for (worker, tx) in part_txs.iter().enumerate() {
            if plan.first_of_worker(first, last, worker as u64).is_some() {
                let chunk = Chunk {
                    buffer: Arc::clone(&buffer),
                    offset: pos,
                };
                tx.send(chunk).map_err(|_| stopped())?;
            }
        }
        drop(buffer);
        pos += len as u64;
        progress(pos);
    }
    Ok(())
}

/// Like `read_exact`, retrying interrupted reads.
fn read_full(file: &mut File, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The whole-file hasher: every chunk, in order.
fn hash_whole(chunks: Receiver<Chunk>) -> Checksum {
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk.buffer.bytes());
    }
    Checksum(hasher.finalize().into())
}

/// A part hasher: the parts `worker`, `worker + W`, ... in order, from the chunks that hold them.
/// Stores each checksum in `out` and returns how many parts it hashed.
fn hash_parts(chunks: Receiver<Chunk>, plan: Plan, worker: u64, out: &Mutex<Vec<Checksum>>) -> u64 {
    let mut done = 0;
    // The part being hashed across chunks, if one is open.
    let mut open: Option<(u64, Sha256)> = None;
    for chunk in chunks {
        let data = chunk.buffer.bytes();
        let start = chunk.offset;
        let end = start + data.len() as u64;
        let (first, last) = plan.parts_in(start, data.len());
        let mut part = plan.first_of_worker(first, last, worker);
        while let Some(index) = part.filter(|&p| p <= last) {
            #[cfg(test)]
            if plan.panic_at_part == Some(index) {
                panic!("injected failure at part {index}");
            }
            let part_start = index * plan.part_size;
            let part_end = (part_start + plan.part_size).min(plan.file_size);
            let from = part_start.max(start);
            let to = part_end.min(end);
            let mut hasher = match open.take() {
                Some((open_index, hasher)) if open_index == index => hasher,
                _ => Sha256::new(),
            };
            hasher.update(&data[(from - start) as usize..(to - start) as usize]);
            if to == part_end {
                let checksum = Checksum(hasher.finalize().into());
                out.lock().unwrap_or_else(|e| e.into_inner())[index as usize] = checksum;
                done += 1;
            } else {
                open = Some((index, hasher));
            }
            part = Some(index + plan.workers);
        }
    }
    done
}

/// Joins a hasher, noting the first panic's message instead of propagating it.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>, panicked: &mut Option<String>) -> Option<T> {
    match handle.join() {
        Ok(value) => Some(value),
        Err(payload) => {
            panicked.get_or_insert_with(|| crate::sync::panic_message(payload.as_ref()));
            None
        }
    }
}

/// Tells the kernel we read front to back, so that it reads ahead further on a cold cache.
/// Advisory: failure is harmless.
fn advise_sequential(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn content(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect()
    }

    fn write_temp(data: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(data).unwrap();
        file.flush().unwrap();
        file
    }

    /// The reference: sha2 directly on the bytes.
    fn expected(data: &[u8], part_size: usize) -> FileHashes {
        FileHashes {
            file: Some(Checksum(Sha256::digest(data).into())),
            parts: data
                .chunks(part_size)
                .map(|part| Checksum(Sha256::digest(part).into()))
                .collect(),
        }
    }

    fn tiny(chunk: usize, pool: usize, workers: usize) -> Tuning {
        Tuning {
            chunk,
            pool,
            workers,
            panic_at_part: None,
        }
    }

    fn hash_with(
        path: &Path,
        len: usize,
        part_size: usize,
        full: bool,
        t: Tuning,
    ) -> Result<FileHashes> {
        let mut file = File::open(path).unwrap();
        hash_open_file(
            &mut file,
            path,
            len as u64,
            part_size as u64,
            full,
            &|_| {},
            t,
        )
    }

    /// Through the public API, with the real chunk and pool sizes, checking progress too.
    fn check(len: usize, part_size: usize) {
        let data = content(len);
        let file = write_temp(&data);
        let last = std::cell::Cell::new(0);
        let calls = std::cell::Cell::new(0);
        let progress = |done: u64| {
            assert!(done > last.get() && done <= len as u64);
            last.set(done);
            calls.set(calls.get() + 1);
        };
        let got = hash_file(file.path(), len as u64, part_size as u64, true, &progress).unwrap();
        assert_eq!(
            got,
            expected(&data, part_size),
            "len {len}, part size {part_size}"
        );
        assert_eq!(last.get(), len as u64);
        assert!(calls.get() >= len.div_ceil(CHUNK_BYTES));
        let parts_only = hash_file(file.path(), len as u64, part_size as u64, false, &|_| {});
        let parts_only = parts_only.unwrap();
        assert_eq!(parts_only.file, None);
        assert_eq!(parts_only.parts, got.parts);
    }

    /// With small chunks and pool, so that small files go through many chunks and pool reuses.
    fn check_tiny(len: usize, part_size: usize, t: Tuning) {
        let data = content(len);
        let file = write_temp(&data);
        let want = expected(&data, part_size);
        let got = hash_with(file.path(), len, part_size, true, t).unwrap();
        assert_eq!(
            got, want,
            "len {len}, part {part_size}, chunk {}, workers {}",
            t.chunk, t.workers
        );
        let got = hash_with(file.path(), len, part_size, false, t).unwrap();
        assert_eq!(got.parts, want.parts);
    }

    #[test]
    fn empty_file() {
        check(0, 16384);
    }

    #[test]
    fn one_byte() {
        check(1, 16384);
    }

    #[test]
    fn exactly_one_part() {
        check(16384, 16384);
    }

    #[test]
    fn one_part_and_one_byte() {
        check(16385, 16384);
    }

    #[test]
    fn many_parts() {
        check(100_000, 16384);
        check(100_000, 1000);
        check(CHUNK_BYTES + 17, 16384);
    }

    #[test]
    fn part_size_not_a_multiple_of_the_chunk() {
        // Real chunk size, parts that do not divide it: smaller than a chunk and larger.
        check(CHUNK_BYTES + 5, 100_003);
        check(CHUNK_BYTES * 2 + 12345, CHUNK_BYTES / 3 * 4 + 1);
        // Small chunks, every mix of sizes.
        for (len, part, chunk) in [
            (100_000, 1000, 4096),
            (100_000, 4096, 4096),
            (100_001, 4096, 4096),
            (100_000, 5000, 4096),
            (100_000, 9999, 4096),
            (100_000, 12288, 4096),
            (100_000, 100_000, 4096),
            (100_000, 200_000, 4096),
        ] {
            for workers in 1..=4 {
                check_tiny(len, part, tiny(chunk, 3, workers));
            }
        }
    }

    #[test]
    fn more_data_than_the_pool_holds() {
        for workers in 1..=3 {
            check_tiny(300_000, 16384, tiny(4096, 2, workers));
            check_tiny(300_000, 50_000, tiny(4096, 1, workers));
        }
    }

    #[test]
    fn hashes_only_file_size_bytes() {
        let data = content(50_000);
        let file = write_temp(&data);
        let got = hash_file(file.path(), 40_000, 16384, true, &|_| {}).unwrap();
        assert_eq!(got, expected(&data[..40_000], 16384));
    }

    #[test]
    fn short_file_is_an_error_naming_path_and_sizes() {
        let file = write_temp(&content(1000));
        let err = hash_file(file.path(), 1001, 16384, true, &|_| {}).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        assert!(text.contains("1000") && text.contains("1001"), "{text}");
    }

    #[test]
    fn missing_file_is_an_error_naming_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.bin");
        let text = format!(
            "{:#}",
            hash_file(&path, 10, 16384, true, &|_| {}).unwrap_err()
        );
        assert!(text.contains("nope.bin"), "{text}");
    }

    #[test]
    fn zero_part_size_is_refused() {
        let file = write_temp(b"abc");
        assert!(hash_file(file.path(), 3, 0, true, &|_| {}).is_err());
    }

    #[test]
    fn a_panicking_hasher_is_an_error_not_a_hang() {
        let data = content(400_000);
        let file = write_temp(&data);
        for workers in 1..=3 {
            for panic_at in [0, 5, 23] {
                let t = Tuning {
                    panic_at_part: Some(panic_at),
                    ..tiny(4096, 2, workers)
                };
                for full in [true, false] {
                    let err = hash_with(file.path(), data.len(), 16384, full, t).unwrap_err();
                    let text = format!("{err:#}");
                    assert!(text.contains("injected failure"), "{text}");
                    assert!(text.contains(&file.path().display().to_string()), "{text}");
                }
            }
        }
    }

    #[test]
    fn verify_parts_reports_matches_and_missing_parts() {
        let data = content(100_000);
        let part = 16384;
        let hashes = expected(&data, part);
        let orchestra = Orchestra::new(
            "127.0.0.1:9999",
            "data.bin",
            hashes.file.unwrap(),
            data.len() as u64,
            part as u64,
            hashes.parts.clone(),
        )
        .unwrap();

        let file = write_temp(&data);
        let all = verify_parts(file.path(), &orchestra, &|_| {}).unwrap();
        assert_eq!(all, vec![true; 7]);

        // A corrupted byte in part 2 and a partial download that stops inside part 5.
        let mut damaged = data.clone();
        damaged[2 * part + 10] ^= 1;
        damaged.truncate(5 * part + 100);
        let file = write_temp(&damaged);
        assert_eq!(
            verify_parts(file.path(), &orchestra, &|_| {}).unwrap(),
            vec![true, true, false, true, true, false, false]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matches_sha2_for_any_sizes(
            len in 0usize..60_000,
            part in 1usize..20_000,
            chunk in 1usize..9_000,
            pool in 1usize..4,
            workers in 1usize..5,
        ) {
            let data = content(len);
            let file = write_temp(&data);
            let got = hash_with(file.path(), len, part, true, tiny(chunk, pool, workers)).unwrap();
            prop_assert_eq!(got, expected(&data, part));
        }
    }
}
