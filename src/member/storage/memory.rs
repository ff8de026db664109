//! A file kept in memory, for tests: whole swarms run in one process without touching a disk,
//! and a test can look at the bytes a member stored.

use std::io;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::{Opened, Storage, StorageFactory};
use crate::member::bitfield::Bitfield;
use crate::orch::{Checksum, Orchestra};
use crate::sync::Mutex;

/// Bytes in memory behind the [`Storage`] interface; clones share the same bytes.
#[derive(Clone, Debug)]
pub struct MemoryStorage {
    bytes: Arc<Mutex<Vec<u8>>>,
    finished: Arc<Mutex<bool>>,
}

impl MemoryStorage {
    /// A copy of the bytes as they are now.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }

    /// Whether the member finished the download ([`Storage::finish`]).
    pub fn is_finished(&self) -> bool {
        *self.finished.lock()
    }

    /// The range `offset..offset + len`, if it lies inside the data.
    fn range(&self, len: usize, offset: u64, size: usize) -> io::Result<std::ops::Range<usize>> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .filter(|range| range.end <= size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))
    }
}

impl Storage for MemoryStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.lock();
        let range = self.range(buf.len(), offset, bytes.len())?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.lock();
        let range = self.range(buf.len(), offset, bytes.len())?;
        bytes[range].copy_from_slice(buf);
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        *self.finished.lock() = true;
        Ok(())
    }

    fn name(&self) -> String {
        "the in-memory file".into()
    }
}

/// Makes [`MemoryStorage`]s: empty (a member that fetches everything) or holding given bytes (a
/// seeder, or a member that has some parts already: those whose checksum matches count as ours).
#[derive(Clone, Debug, Default)]
pub struct MemoryStorageFactory {
    initial: Option<Arc<Vec<u8>>>,
    /// The storage handed to the member, kept so that a test can look inside.
    opened: Arc<Mutex<Option<MemoryStorage>>>,
}

impl MemoryStorageFactory {
    pub fn empty() -> MemoryStorageFactory {
        MemoryStorageFactory::default()
    }

    pub fn with_bytes(bytes: Arc<Vec<u8>>) -> MemoryStorageFactory {
        MemoryStorageFactory {
            initial: Some(bytes),
            ..MemoryStorageFactory::default()
        }
    }

    /// The storage the member opened, once it has.
    pub fn storage(&self) -> Option<MemoryStorage> {
        self.opened.lock().clone()
    }
}

impl StorageFactory for MemoryStorageFactory {
    fn open(&self, orch: &Orchestra, progress: &dyn Fn(u64)) -> Result<Opened> {
        let size = usize::try_from(orch.file_size)?;
        let bytes = match &self.initial {
            Some(initial) if initial.len() != size => bail!(
                "the in-memory file has {} bytes, the .orch says {size}",
                initial.len()
            ),
            Some(initial) => initial.to_vec(),
            None => vec![0; size],
        };
        let mut have = Bitfield::new(orch.part_count());
        if self.initial.is_some() {
            for index in 0..orch.part_count() {
                let Some(span) = orch.part_span(index) else {
                    continue;
                };
                let part = &bytes[span.offset as usize..][..span.len];
                if Checksum::of(part) == orch.part_checksums[index as usize] {
                    have.set(index);
                }
                progress(span.offset + span.len as u64);
            }
        }
        let complete = have.is_full() && Checksum::of(&bytes) == orch.file_checksum;
        let storage = MemoryStorage {
            bytes: Arc::new(Mutex::new(bytes)),
            finished: Arc::new(Mutex::new(complete)),
        };
        *self.opened.lock() = Some(storage.clone());
        Ok(Opened {
            storage: Box::new(storage),
            have,
            complete,
        })
    }
}
