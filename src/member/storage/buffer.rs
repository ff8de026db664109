//! The buffer a part lives in from the socket to the disk.
//!
//! Why: writes past the page cache (`O_DIRECT`, see `direct.rs`) need the bytes at an address
//! aligned to the disk's block, and a `Vec<u8>` from the heap has no such alignment: every part
//! was copied into an aligned scratch buffer before its write, a copy that cost 40 % of a
//! SHA-256 pass in the 1 -> 1 profile (issue 13). A part buffer keeps its bytes at a 4 KiB
//! boundary inside a slightly larger vector, so a part is received, hashed and written in place.

use std::ops::{Deref, DerefMut};

/// Alignment of offsets, lengths and buffers for `O_DIRECT`: 4 KiB covers the logical block of
/// common disks.
pub const ALIGN: usize = 4096;

/// Bytes starting at a 4 KiB-aligned address; derefs to the bytes.
#[derive(Default)]
pub struct PartBuffer {
    /// Holds the bytes at `start..start + len`; its heap block never moves once allocated,
    /// so `start` stays aligned however the buffer itself is moved.
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl PartBuffer {
    /// Makes the buffer `len` bytes long, reallocating (zeroed) only when it has no room.
    pub fn resize(&mut self, len: usize) {
        let room = self.bytes.len().saturating_sub(self.start);
        if room < len {
            self.bytes = vec![0; len.saturating_add(ALIGN)];
            self.start = self.bytes.as_ptr().align_offset(ALIGN).min(ALIGN);
        }
        self.len = len;
    }
}

impl Deref for PartBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl DerefMut for PartBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for PartBuffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for PartBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartBuffer({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_start_aligned_and_survive_shrinking_and_moves() {
        let mut buffer = PartBuffer::default();
        assert!(buffer.is_empty());
        buffer.resize(3 * ALIGN + 5);
        assert_eq!(buffer.len(), 3 * ALIGN + 5);
        assert_eq!(buffer.as_ptr() as usize % ALIGN, 0);
        buffer[0] = 7;
        buffer.resize(100);
        assert_eq!(
            (buffer.len(), buffer[0]),
            (100, 7),
            "shrinking keeps the block"
        );
        let moved = buffer;
        assert_eq!(moved.as_ptr() as usize % ALIGN, 0);
        let mut grown = moved;
        grown.resize(1 << 20);
        assert_eq!(grown.as_ptr() as usize % ALIGN, 0);
        assert!(grown.iter().skip(1).all(|&b| b == 0));
    }
}
