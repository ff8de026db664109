//! Which part to ask a peer for next: rarest first, random among equals, with an endgame.
//!
//! The picker is the one place that knows, for every part, whether we have it, how many connected
//! peers have it and how many requests for it are out. Peer threads share it behind a mutex and
//! hold that lock only for these bookkeeping calls, never across I/O.

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
}

/// Most missing parts one pick looks at. Rarest-first over millions of tiny parts would make
/// every pick scan them all; past this many, the rarest among those seen is good enough.
const MAX_CANDIDATES: u32 = 16_384;
/// How many requests for one part may be out at once in the endgame.
const ENDGAME_COPIES: u8 = 2;

pub struct Picker {
    have: Bitfield,
    /// How many connected peers have each part.
    availability: Vec<u32>,
    /// How many requests for each part are out.
    in_flight: Vec<u8>,
    /// Every part before this one is ours: picks start here.
    first_missing: u32,
}

impl Picker {
    pub fn new(have: Bitfield) -> Picker {
        let len = have.len() as usize;
        let first_missing = (0..have.len())
            .find(|&i| !have.get(i))
            .unwrap_or(have.len());
        Picker {
            have,
            availability: vec![0; len],
            in_flight: vec![0; len],
            first_missing,
        }
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    pub fn parts_done(&self) -> u32 {
        self.have.count()
    }

    pub fn peer_has(&mut self, index: u32) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a += 1;
        }
    }

    /// A peer turned out not to serve a part (it rejected it).
    pub fn peer_lost(&mut self, index: u32) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a = a.saturating_sub(1);
        }
    }

    pub fn peer_gone(&mut self, their_have: &Bitfield) {
        for index in their_have.ones() {
            let a = &mut self.availability[index as usize];
            *a = a.saturating_sub(1);
        }
    }

    /// True when the peer has any part we still need.
    pub fn wants_from(&self, their_have: &Bitfield) -> bool {
        their_have.ones().any(|i| !self.have.get(i))
    }

    /// Picks the next part to request from a peer that has `their_have`, skipping parts already
    /// requested from that peer.
    ///
    /// Rarest first. Among the rarest, a random one of those within `window` parts of the first
    /// part we lack (or the first one past it, if none is): random
    /// so that members fetching from the same seeder ask for different parts, windowed so that
    /// parts arrive roughly in order and the whole-file checksum can follow the download instead
    /// of costing a second pass at the end. The caller scales the window with the requests the
    /// swarm has in flight. Once every missing part is requested somewhere, a second request for
    /// a part already out (the endgame), so that the last parts do not wait on one slow peer.
    pub fn pick(
        &mut self,
        their_have: &Bitfield,
        already_asked: &[u32],
        window: u32,
    ) -> Option<u32> {
        let mut best: Option<(u8, u32, u32)> = None; // (in_flight, availability, index)
        let mut ties = 0u32;
        let mut window_end: Option<u32> = None;
        let mut examined = 0u32;
        for index in self.first_missing..self.have.len() {
            let i = index as usize;
            if self.have.get(index) {
                continue;
            }
            examined += 1;
            if examined > MAX_CANDIDATES && best.is_some() {
                break;
            }
            // The window starts at the first part we lack, whoever has it.
            let window_end = *window_end.get_or_insert(index.saturating_add(window.max(1)));
            if !their_have.get(index) || self.in_flight[i] >= ENDGAME_COPIES {
                continue;
            }
            if self.in_flight[i] > 0 && already_asked.contains(&index) {
                continue;
            }
            let key = (self.in_flight[i], self.availability[i]);
            match best {
                Some((f, a, _)) if key > (f, a) => {}
                Some((f, a, _)) if key == (f, a) => {
                    if index < window_end {
                        ties += 1;
                        if fastrand::u32(0..ties) == 0 {
                            best = Some((key.0, key.1, index));
                        }
                    }
                }
                _ => {
                    best = Some((key.0, key.1, index));
                    ties = 1;
                }
            }
        }
        // Lowest (in flight, availability) wins, so a part already out is only chosen when every
        // missing part this peer has is out somewhere. A second request is the endgame, and
        // only worth its cost once every missing part anyone has is out: before that, a slot
        // left empty is better than bytes sent twice.
        let (in_flight, _, index) = best?;
        if in_flight > 0 && self.some_part_waits() {
            return None;
        }
        self.in_flight[index as usize] += 1;
        Some(index)
    }

    /// True when some part we lack is held by a connected peer and requested from nobody.
    fn some_part_waits(&self) -> bool {
        (self.first_missing..self.have.len()).any(|i| {
            !self.have.get(i)
                && self.in_flight[i as usize] == 0
                && self.availability[i as usize] > 0
        })
    }

    /// A request is over without the part (rejected, failed, or the peer went away).
    pub fn release(&mut self, index: u32) {
        if let Some(f) = self.in_flight.get_mut(index as usize) {
            *f = f.saturating_sub(1);
        }
    }

    /// A verified part is stored; returns false if we already had it (an endgame duplicate).
    pub fn complete(&mut self, index: u32) -> bool {
        self.release(index);
        let new = self.have.set(index);
        while self.first_missing < self.have.len() && self.have.get(self.first_missing) {
            self.first_missing += 1;
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        (0..len).for_each(|i| {
            b.set(i);
        });
        b
    }

    #[test]
    fn bitfield_rejects_spare_bits_and_wrong_sizes() {
        assert!(Bitfield::from_bytes(vec![0xff, 0x80], 9).is_ok());
        assert!(Bitfield::from_bytes(vec![0xff, 0xc0], 9).is_err());
        assert!(Bitfield::from_bytes(vec![0xff], 9).is_err());
        assert_eq!(full(9).count(), 9);
        assert!(full(9).is_full());
    }

    #[test]
    fn picks_rarest_first_and_never_a_part_we_have() {
        let mut have = Bitfield::new(4);
        have.set(0);
        let mut picker = Picker::new(have);
        let everything = full(4);
        for i in 0..4 {
            picker.peer_has(i);
        }
        picker.peer_has(1);
        picker.peer_has(2);
        // Part 3 is held by one peer, parts 1 and 2 by two: 3 comes first.
        assert_eq!(picker.pick(&everything, &[], 1000), Some(3));
        let next = picker.pick(&everything, &[3], 1000).unwrap();
        assert!(next == 1 || next == 2);
    }

    #[test]
    fn is_not_strictly_in_order() {
        let firsts: std::collections::HashSet<u32> = (0..50)
            .map(|_| {
                Picker::new(Bitfield::new(100))
                    .pick(&full(100), &[], 1000)
                    .unwrap()
            })
            .collect();
        assert!(firsts.len() > 10, "random tie-break picked only {firsts:?}");
    }

    #[test]
    fn a_small_window_keeps_picks_near_the_front() {
        let mut picker = Picker::new(Bitfield::new(1000));
        let everything = full(1000);
        let picks: Vec<u32> = (0..100)
            .map(|_| picker.pick(&everything, &[], 8).unwrap())
            .collect();
        assert!(picks.iter().all(|&p| p < 8 + 100), "{picks:?}");
        assert_ne!(picks, (0..100).collect::<Vec<_>>(), "strictly in order");
    }

    #[test]
    fn endgame_duplicates_only_when_nothing_else_is_left() {
        let mut picker = Picker::new(Bitfield::new(2));
        let everything = full(2);
        let a = picker.pick(&everything, &[], 1000).unwrap();
        let b = picker.pick(&everything, &[a], 1000).unwrap();
        assert_ne!(a, b);
        // A second peer may now ask for either, but never twice the same part from one peer.
        let c = picker.pick(&everything, &[], 1000).unwrap();
        let d = picker.pick(&everything, &[c], 1000).unwrap();
        assert_ne!(c, d);
        assert_eq!(
            picker.pick(&everything, &[], 1000),
            None,
            "at most two copies in flight"
        );
        assert!(picker.complete(a));
        assert!(
            !picker.complete(a),
            "the endgame duplicate is not counted twice"
        );
    }
}
