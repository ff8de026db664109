//! Where a member keeps the file, behind two small interfaces: [`Storage`] (positional reads and
//! writes, sending a part to a socket, and the finish of a verified download) and
//! [`StorageFactory`] (what is there at start: a complete file to seed, a partial download to
//! resume, or nothing yet). The member never touches a file itself, so tests swap in
//! [`memory::MemoryStorage`] and run whole swarms without a disk.

pub mod file;
pub mod memory;

use std::io::{self, Write};
use std::net::TcpStream;

use anyhow::Result;

use super::bitfield::Bitfield;
use crate::orch::{Orchestra, Span};

pub use file::{FileStorage, FileStorageFactory, Paths};
pub use memory::{MemoryStorage, MemoryStorageFactory};

/// Positional access to the file being shared. Implementations must allow concurrent calls:
/// peer threads read and write different parts at once without a global lock.
pub trait Storage: Send + Sync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Sends the bytes of `span` to `stream`. The default reads them into memory first; a file
    /// sends them from the page cache without a copy.
    fn send_to(&self, stream: &TcpStream, span: Span) -> io::Result<()> {
        let mut buf = vec![0u8; span.len];
        self.read_at(span.offset, &mut buf)?;
        (&mut &*stream).write_all(&buf)
    }

    /// Every part is verified and so is the whole file: make it the finished file (a file
    /// storage renames `FILENAME.part` to `FILENAME`).
    fn finish(&self) -> Result<()>;

    /// What to call the data in messages: the path being written, say.
    fn name(&self) -> String;
}

/// What a [`StorageFactory`] found at start.
pub struct Opened {
    pub storage: Box<dyn Storage>,
    /// The parts already there and verified.
    pub have: Bitfield,
    /// The complete, verified file was found: nothing to fetch.
    pub complete: bool,
}

/// Opens the storage for one `.orch`: the complete file to seed, a resumable partial download,
/// or a new one. `progress` receives the bytes checked while what exists is verified.
pub trait StorageFactory: Send + Sync + std::fmt::Debug {
    fn open(&self, orch: &Orchestra, progress: &dyn Fn(u64)) -> Result<Opened>;
}
