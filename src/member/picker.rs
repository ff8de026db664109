//! The facts behind every request: for each part, whether we have it, how many connected peers
//! have it and how many requests for it are out; the choice itself is a [`PiecePolicy`]'s.
//!
//! Peer threads share one picker behind a mutex and hold that lock only for these bookkeeping
//! calls, never across I/O.

use std::time::Instant;

use super::bitfield::{ones_where, Bitfield};
use super::policy::{Ask, PartsView, PiecePolicy};

/// Which parts [`Picker::pick_outside`] may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outside {
    /// Parts no connected peer has and nobody is asked for.
    Unavailable,
    /// Parts nobody is asked for.
    Unrequested,
    /// Parts asked from one peer only: a second copy, the endgame's.
    Duplicate,
}

pub struct Picker {
    have: Bitfield,
    availability: Vec<u32>,
    in_flight: Vec<u8>,
    /// The parts whose `in_flight` is above zero, and those whose `availability` is: kept with
    /// the counts so that picks test 64 parts at a time (see [`PartsView`]).
    requested: Bitfield,
    available: Bitfield,
    /// Every part before this one is ours: picks start here.
    first_missing: u32,
    policy: Box<dyn PiecePolicy>,
    /// When the first part we did not have at start was stored: how long a newcomer waits
    /// before it has anything to give.
    first_new_part_at: Option<Instant>,
}

impl Picker {
    pub fn new(have: Bitfield, policy: Box<dyn PiecePolicy>) -> Picker {
        let len = have.len() as usize;
        let first_missing = (0..have.len())
            .find(|&i| !have.get(i))
            .unwrap_or(have.len());
        Picker {
            requested: Bitfield::new(have.len()),
            available: Bitfield::new(have.len()),
            have,
            availability: vec![0; len],
            in_flight: vec![0; len],
            first_missing,
            policy,
            first_new_part_at: None,
        }
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    pub fn first_new_part_at(&self) -> Option<Instant> {
        self.first_new_part_at
    }

    pub fn parts_done(&self) -> u32 {
        self.have.count()
    }

    /// Whether some connected peer has a part we lack: if not, only new peers can help.
    pub fn any_part_to_fetch(&self) -> bool {
        ones_where(self.first_missing, self.have.len(), |w| {
            self.available.word(w) & !self.have.word(w)
        })
        .next()
        .is_some()
    }

    pub fn peer_has(&mut self, index: u32) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a = a.saturating_add(1);
            self.available.set(index);
        }
    }

    /// A peer turned out not to serve a part (it rejected it).
    pub fn peer_lost(&mut self, index: u32) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a = a.saturating_sub(1);
            if *a == 0 {
                self.available.clear(index);
            }
        }
    }

    pub fn peer_gone(&mut self, their_have: &Bitfield) {
        for index in their_have.ones() {
            self.peer_lost(index);
        }
    }

    /// Picks the next part to request from a peer that has `their_have`, skipping parts already
    /// requested from that peer, and counts the request as out.
    pub fn pick(
        &mut self,
        their_have: &Bitfield,
        already_asked: &[u32],
        window: u32,
    ) -> Option<u32> {
        let parts = PartsView {
            have: &self.have,
            availability: &self.availability,
            in_flight: &self.in_flight,
            requested: &self.requested,
            available: &self.available,
            first_missing: self.first_missing,
        };
        let ask = Ask {
            their_have,
            already_asked,
            window,
        };
        let index = self.policy.pick(&parts, &ask)?;
        if !parts.may_request(index, their_have, already_asked) {
            log::error!("the piece policy chose part {index}, which may not be requested");
            return None;
        }
        self.count_request(index);
        Some(index)
    }

    /// A part for a source outside the swarm (an HTTP origin), counted as in flight: one we
    /// lack, of the kind `which` says, not in `already_asked` (that source's own requests),
    /// among those fewest connected peers have. Parts of our `share` (`(rank, n)`: those whose
    /// index is `rank` modulo `n`) come first, the first of them in file order, so that
    /// members asking one origin at once take different parts and each one's parts arrive
    /// near file order (the whole-file checksum follows them); past our share, a random one,
    /// to keep away from the part its owner is fetching.
    pub fn pick_outside(
        &mut self,
        which: Outside,
        share: (u32, u32),
        already_asked: &[u32],
    ) -> Option<u32> {
        let (rank, members) = share;
        let mut best: Option<(bool, u32, u32)> = None; // (not ours, availability, index)
        let mut ties = 0u32;
        let (have, requested, held) = (&self.have, &self.requested, &self.available);
        let candidates = ones_where(self.first_missing, have.len(), |w| {
            let missing = !have.word(w);
            match which {
                Outside::Unavailable => missing & !requested.word(w) & !held.word(w),
                Outside::Unrequested => missing & !requested.word(w),
                Outside::Duplicate => missing & requested.word(w),
            }
        });
        for index in candidates {
            let i = index as usize;
            let (available, in_flight) = (self.availability[i], self.in_flight[i]);
            if which == Outside::Duplicate && (in_flight != 1 || already_asked.contains(&index)) {
                continue;
            }
            let key = (index % members.max(1) != rank, available);
            match best {
                Some((o, a, _)) if key > (o, a) => {}
                Some((o, a, _)) if key == (o, a) => {
                    ties += 1;
                    if o && fastrand::u32(0..ties) == 0 {
                        best = Some((o, a, index));
                    }
                }
                _ => {
                    best = Some((key.0, key.1, index));
                    ties = 1;
                }
            }
        }
        let (_, _, index) = best?;
        self.count_request(index);
        Some(index)
    }

    fn count_request(&mut self, index: u32) {
        if let Some(f) = self.in_flight.get_mut(index as usize) {
            *f = f.saturating_add(1);
            self.requested.set(index);
        }
    }

    /// A request is over without the part (rejected, failed, or the peer went away).
    pub fn release(&mut self, index: u32) {
        if let Some(f) = self.in_flight.get_mut(index as usize) {
            *f = f.saturating_sub(1);
            if *f == 0 {
                self.requested.clear(index);
            }
        }
    }

    /// A verified part is stored; returns false if we already had it (an endgame duplicate).
    pub fn complete(&mut self, index: u32) -> bool {
        self.release(index);
        let new = self.have.set(index);
        if new && self.first_new_part_at.is_none() {
            self.first_new_part_at = Some(Instant::now());
        }
        while self.first_missing < self.have.len() && self.have.get(self.first_missing) {
            self.first_missing += 1;
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::policy::{InOrder, RarestFirst, ENDGAME_COPIES};

    fn rarest(have: Bitfield) -> Picker {
        Picker::new(have, Box::new(RarestFirst))
    }

    #[test]
    fn picks_rarest_first_and_never_a_part_we_have() {
        let mut have = Bitfield::new(4);
        have.set(0);
        let mut picker = rarest(have);
        let everything = Bitfield::full(4);
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
    fn knows_whether_any_peer_has_a_part_we_lack() {
        let mut have = Bitfield::new(3);
        have.set(0);
        let mut picker = rarest(have);
        assert!(!picker.any_part_to_fetch());
        // A peer with only what we have is no help; one with part 2 is.
        picker.peer_has(0);
        assert!(!picker.any_part_to_fetch());
        picker.peer_has(2);
        assert!(picker.any_part_to_fetch());
        picker.peer_lost(2);
        assert!(!picker.any_part_to_fetch());
    }

    #[test]
    fn is_not_strictly_in_order() {
        let firsts: std::collections::HashSet<u32> = (0..50)
            .map(|_| {
                rarest(Bitfield::new(100))
                    .pick(&Bitfield::full(100), &[], 1000)
                    .unwrap()
            })
            .collect();
        assert!(firsts.len() > 10, "random tie-break picked only {firsts:?}");
    }

    #[test]
    fn a_small_window_keeps_picks_near_the_front() {
        let mut picker = rarest(Bitfield::new(1000));
        let everything = Bitfield::full(1000);
        let picks: Vec<u32> = (0..100)
            .map(|_| picker.pick(&everything, &[], 8).unwrap())
            .collect();
        assert!(picks.iter().all(|&p| p < 8 + 100), "{picks:?}");
        assert_ne!(picks, (0..100).collect::<Vec<_>>(), "strictly in order");
    }

    #[test]
    fn endgame_duplicates_only_when_nothing_else_is_left() {
        for policy in [
            Box::new(RarestFirst) as Box<dyn PiecePolicy>,
            Box::new(InOrder),
        ] {
            let mut picker = Picker::new(Bitfield::new(2), policy);
            let everything = Bitfield::full(2);
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

    #[test]
    fn in_order_takes_the_first_part_the_peer_has() {
        let mut picker = Picker::new(Bitfield::new(10), Box::new(InOrder));
        let mut theirs = Bitfield::new(10);
        for i in [3, 5, 7] {
            theirs.set(i);
            picker.peer_has(i);
        }
        assert_eq!(picker.pick(&theirs, &[], 1), Some(3));
        assert_eq!(picker.pick(&theirs, &[3], 1), Some(5));
        assert!(picker.complete(3));
        assert_eq!(picker.pick(&theirs, &[5], 1), Some(7));
    }

    #[test]
    fn outside_picks_take_parts_nobody_has_or_is_asked_for() {
        let mut have = Bitfield::new(6);
        have.set(0);
        let mut picker = rarest(have);
        let mut theirs = Bitfield::new(6);
        for i in [1, 2, 3] {
            theirs.set(i);
            picker.peer_has(i);
        }
        picker.peer_has(1);
        let asked = picker.pick(&theirs, &[], 100).unwrap();
        // Our share (odd parts of two members) first.
        let unavailable =
            |picker: &mut Picker, share| picker.pick_outside(Outside::Unavailable, share, &[]);
        assert_eq!(unavailable(&mut picker, (1, 2)), Some(5));
        assert_eq!(unavailable(&mut picker, (1, 2)), Some(4));
        let mut in_order = rarest(Bitfield::new(10));
        let picks: Vec<_> = (0..5).map(|_| unavailable(&mut in_order, (2, 3))).collect();
        assert_eq!(picks[..3], [Some(2), Some(5), Some(8)]);
        assert_eq!(unavailable(&mut picker, (1, 2)), None);
        // Then the rarest of those peers have that nobody is asked for.
        let unrequested = Outside::Unrequested;
        let rest = picker.pick_outside(unrequested, (0, 1), &[]).unwrap();
        assert!(rest != asked && rest != 0 && rest < 4, "{rest}");
        let last = picker.pick_outside(unrequested, (0, 1), &[]).unwrap();
        assert!(last != rest && last != asked);
        assert_eq!(picker.pick_outside(unrequested, (0, 1), &[]), None);
        // Then a second copy of one asked once, but not of our own requests.
        let mine = [4, 5, rest, last];
        let duplicate = picker.pick_outside(Outside::Duplicate, (0, 1), &mine);
        assert_eq!(duplicate, Some(asked));
        assert_eq!(picker.pick_outside(Outside::Duplicate, (0, 1), &mine), None);
    }

    /// The word-at-a-time picks choose what a walk over every part would: the lowest (requests
    /// out, peers that have it) among the parts this peer may be asked for, within the window
    /// when one there has that key, else the first; nothing while an endgame copy would be
    /// sent before some part nobody is asked for.
    #[test]
    fn picks_match_a_walk_over_every_part() {
        fastrand::seed(14);
        for round in 0..300 {
            let len = fastrand::u32(1..300);
            let mut have = Bitfield::new(len);
            for i in 0..len {
                if fastrand::u8(0..4) == 0 {
                    have.set(i);
                }
            }
            let mut picker = rarest(have.clone());
            let mut theirs = Bitfield::new(len);
            for i in 0..len {
                if fastrand::bool() {
                    theirs.set(i);
                }
                for _ in 0..fastrand::u32(0..3) {
                    picker.peer_has(i);
                }
                if theirs.get(i) {
                    picker.peer_has(i);
                }
            }
            // Requests out: some by this peer, some by others, some released again.
            let mut asked = Vec::new();
            for _ in 0..fastrand::u32(0..len + 1) {
                let i = fastrand::u32(0..len);
                if !have.get(i) && picker.in_flight[i as usize] < ENDGAME_COPIES {
                    picker.count_request(i);
                    match fastrand::u8(0..3) {
                        0 if !asked.contains(&i) => asked.push(i),
                        1 => picker.release(i),
                        _ => {}
                    }
                }
            }
            let window = fastrand::u32(1..50);
            let parts = PartsView {
                have: &picker.have,
                availability: &picker.availability,
                in_flight: &picker.in_flight,
                requested: &picker.requested,
                available: &picker.available,
                first_missing: picker.first_missing,
            };
            let allowed: Vec<u32> = (0..len)
                .filter(|&i| parts.may_request(i, &theirs, &asked))
                .collect();
            let key = |i: u32| (parts.in_flight[i as usize], parts.availability[i as usize]);
            let waits = (0..len).any(|i| {
                !have.get(i)
                    && parts.in_flight[i as usize] == 0
                    && parts.availability[i as usize] > 0
            });
            let best = allowed.iter().map(|&i| key(i)).min();
            let expected = match best {
                Some((f, _)) if f > 0 && waits => None,
                other => other,
            };
            let ask = Ask {
                their_have: &theirs,
                already_asked: &asked,
                window,
            };
            let picked = RarestFirst.pick(&parts, &ask);
            assert_eq!(picked.map(key), expected, "round {round}");
            if let (Some(index), Some(wanted)) = (picked, expected) {
                let window_end = parts.first_missing + window;
                let first = allowed.iter().copied().find(|&i| key(i) == wanted);
                let in_window = allowed.iter().any(|&i| key(i) == wanted && i < window_end);
                assert!(
                    if in_window {
                        index < window_end
                    } else {
                        Some(index) == first
                    },
                    "round {round}: {index}"
                );
            }
            let in_order = InOrder.pick(&parts, &ask);
            let first_free = allowed.iter().copied().find(|&i| key(i).0 == 0);
            let in_order_expected = match first_free {
                Some(i) => Some(i),
                None if waits => None,
                None => allowed.first().copied(),
            };
            assert_eq!(in_order, in_order_expected, "round {round}");
            assert_eq!(
                picker.any_part_to_fetch(),
                (0..len).any(|i| !have.get(i) && picker.availability[i as usize] > 0)
            );
        }
    }

    /// A policy that breaks the rules is refused, not obeyed.
    #[test]
    fn a_policy_cannot_pick_a_part_we_have() {
        struct Always(u32);
        impl PiecePolicy for Always {
            fn pick(&mut self, _: &PartsView, _: &Ask) -> Option<u32> {
                Some(self.0)
            }
        }
        let mut have = Bitfield::new(4);
        have.set(1);
        let mut picker = Picker::new(have, Box::new(Always(1)));
        assert_eq!(picker.pick(&Bitfield::full(4), &[], 4), None);
        let mut picker = Picker::new(Bitfield::new(4), Box::new(Always(9)));
        assert_eq!(picker.pick(&Bitfield::full(4), &[], 4), None);
    }
}
