//! A set of part indices: what a member has, and what each peer says it has.
//!
//! The same bytes go on the wire as a `HAVEMAP` (part 0 in the high bit of byte 0), so a map
//! received from a peer is taken only after checking its size and its spare bits.

/// A set of part indices, as sent in a `HAVEMAP` (part 0 in the high bit of byte 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; crate::wire::have_map_len(len)],
            len,
        }
    }

    /// Takes a received map, refusing one of the wrong size or with bits set past the end.
    pub fn from_bytes(bytes: Vec<u8>, len: u32) -> Result<Bitfield, String> {
        let expected = crate::wire::have_map_len(len);
        if bytes.len() != expected {
            return Err(format!(
                "have-map of {} bytes, expected {expected}",
                bytes.len()
            ));
        }
        let spare = (expected * 8) as u64 - u64::from(len);
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[expected - 1] & mask != 0 {
                return Err("have-map has bits set past the last part".into());
            }
        }
        Ok(Bitfield { bytes, len })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.bytes[(index / 8) as usize] & (0x80 >> (index % 8)) != 0
    }

    /// Sets a bit; returns true if it was not set before.
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.len || self.get(index) {
            return false;
        }
        self.bytes[(index / 8) as usize] |= 0x80 >> (index % 8);
        true
    }

    pub fn clear(&mut self, index: u32) {
        if index < self.len {
            self.bytes[(index / 8) as usize] &= !(0x80 >> (index % 8));
        }
    }

    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// A map with every part set: what a seeder has.
    pub fn full(len: u32) -> Bitfield {
        let mut all = Bitfield::new(len);
        (0..len).for_each(|i| {
            all.set(i);
        });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_spare_bits_and_wrong_sizes() {
        assert!(Bitfield::from_bytes(vec![0xff, 0x80], 9).is_ok());
        assert!(Bitfield::from_bytes(vec![0xff, 0xc0], 9).is_err());
        assert!(Bitfield::from_bytes(vec![0xff], 9).is_err());
        assert_eq!(Bitfield::full(9).count(), 9);
        assert!(Bitfield::full(9).is_full());
        assert!(!Bitfield::new(9).get(9));
    }
}
