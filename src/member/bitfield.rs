//! A set of part indices: what a member has, and what each peer says it has.
//!
//! The same bytes go on the wire as a `HAVEMAP` (part 0 in the high bit of byte 0), so a map
//! received from a peer is taken only after checking its size and its spare bits.

use std::sync::atomic::{AtomicU64, Ordering};

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
        ones_where(0, self.len, |w| self.word(w))
    }

    /// Parts `64 * w` to `64 * w + 63` as one word, the lowest index in the highest bit (the
    /// map's own order), zero past the end: for set operations a word at a time.
    pub fn word(&self, w: usize) -> u64 {
        let start = w.saturating_mul(8);
        let mut word = [0u8; 8];
        if let Some(rest) = self.bytes.get(start..) {
            let n = rest.len().min(8);
            word[..n].copy_from_slice(&rest[..n]);
        }
        u64::from_be_bytes(word)
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

/// A set of part indices that one thread adds to and others read without a lock: what a peer
/// has told us it has, for the threads that announce our parts.
pub struct SharedBitfield {
    words: Vec<AtomicU64>,
    len: u32,
}

impl SharedBitfield {
    pub fn new(len: u32) -> SharedBitfield {
        SharedBitfield {
            words: (0..(len as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            len,
        }
    }

    fn place(&self, index: u32) -> Option<(&AtomicU64, u64)> {
        let word = self.words.get((index / 64) as usize)?;
        (index < self.len).then_some((word, 1u64 << (index % 64)))
    }

    pub fn set(&self, index: u32) {
        if let Some((word, bit)) = self.place(index) {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    pub fn get(&self, index: u32) -> bool {
        self.place(index)
            .is_some_and(|(word, bit)| word.load(Ordering::Relaxed) & bit != 0)
    }

    /// Adds every part of `parts`.
    pub fn set_all(&self, parts: &Bitfield) {
        for index in parts.ones() {
            self.set(index);
        }
    }

    /// How many parts are in the set now.
    pub fn count(&self) -> u32 {
        self.words
            .iter()
            .map(|word| word.load(Ordering::Relaxed).count_ones())
            .sum()
    }

    /// The parts not in the set now, in order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&index| !self.get(index))
    }
}

/// The indices from `from` to `len - 1`, in order, whose bit is set in `word(w)`, a word made
/// as [`Bitfield::word`] makes them (typically an expression over several maps' words): one
/// test per 64 parts where no bit is set.
pub fn ones_where(from: u32, len: u32, word: impl Fn(usize) -> u64) -> impl Iterator<Item = u32> {
    let words = (len as usize).div_ceil(64);
    let mut w = (from / 64) as usize;
    let mut bits = match w < words {
        true => word(w) & (u64::MAX >> (from % 64)),
        false => 0,
    };
    std::iter::from_fn(move || loop {
        if bits != 0 {
            let offset = bits.leading_zeros();
            bits &= !((1u64 << 63) >> offset);
            // Bits past `len` (a negated map has them) end the iteration.
            let index = u32::try_from(w as u64 * 64 + u64::from(offset)).ok()?;
            return (index < len).then_some(index);
        }
        w += 1;
        if w >= words {
            return None;
        }
        bits = word(w);
    })
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

    #[test]
    fn a_shared_set_holds_what_was_added_and_counts_it() {
        let set = SharedBitfield::new(130);
        let mut map = Bitfield::new(130);
        map.set(0);
        map.set(129);
        set.set_all(&map);
        set.set(64);
        set.set(130); // past the end: ignored
        assert!(set.get(0) && set.get(64) && set.get(129) && !set.get(1) && !set.get(130));
        assert_eq!(set.count(), 3);
        let missing: Vec<u32> = set.missing().collect();
        assert_eq!(missing.len(), 127);
        assert!(missing.windows(2).all(|w| w[0] < w[1]), "in order");
        assert!(!missing.iter().any(|i| [0, 64, 129].contains(i)));
    }

    #[test]
    fn ones_where_walks_the_set_bits_of_a_word_expression_in_order() {
        let len = 200;
        let mut a = Bitfield::new(len);
        let mut b = Bitfield::new(len);
        for i in [0, 5, 63, 64, 70, 127, 128, 150, 199] {
            a.set(i);
        }
        for i in [5, 64, 150] {
            b.set(i);
        }
        let a_not_b: Vec<u32> = ones_where(0, len, |w| a.word(w) & !b.word(w)).collect();
        assert_eq!(a_not_b, [0, 63, 70, 127, 128, 199]);
        let from_64: Vec<u32> = ones_where(64, len, |w| a.word(w)).collect();
        assert_eq!(from_64, [64, 70, 127, 128, 150, 199]);
        let from_71: Vec<u32> = ones_where(71, len, |w| a.word(w)).collect();
        assert_eq!(from_71, [127, 128, 150, 199]);
        // A negated map has bits past the end: they are not parts.
        let missing: Vec<u32> = ones_where(190, len, |w| !a.word(w)).collect();
        assert_eq!(missing, (190..199).collect::<Vec<_>>());
        assert_eq!(ones_where(len, len, |w| !a.word(w)).next(), None);
        assert_eq!(ones_where(0, 0, |_| u64::MAX).next(), None);
        assert_eq!(
            a.ones().collect::<Vec<_>>(),
            (0..len).filter(|&i| a.get(i)).collect::<Vec<_>>()
        );
    }
}
