//! Which part to ask a peer for next, behind a small trait.
//!
//! The picker ([`super::picker`]) keeps the facts (what we have, how many connected peers have
//! each part, how many requests for each are out); a [`PiecePolicy`] only chooses among them.
//! The connection code never knows which policy runs, so another order (in file order, for a
//! consumer that streams the file, or a test's fixed order) is one type away.

use super::bitfield::{ones_where, Bitfield};

/// Most candidate parts one pick looks at. Rarest-first over millions of tiny parts would make
/// every pick scan them all; past this many, the rarest among those seen is good enough.
const MAX_CANDIDATES: usize = 16_384;
/// How many requests for one part may be out at once in the endgame.
pub const ENDGAME_COPIES: u8 = 2;

/// What a policy sees of the member's parts.
///
/// Besides the counts, two sets mirror them (`requested`: a request is out; `available`: a
/// connected peer has it), so that the candidate parts are found a 64-part word at a time: a
/// member asks for the next part after every part it receives and every `HAVE` it hears, and a
/// walk over every missing part at each of those cost as much CPU as hashing the data.
pub struct PartsView<'a> {
    pub have: &'a Bitfield,
    /// How many connected peers have each part.
    pub availability: &'a [u32],
    /// How many requests for each part are out.
    pub in_flight: &'a [u8],
    /// The parts with a request out (`in_flight` above zero).
    pub requested: &'a Bitfield,
    /// The parts some connected peer has (`availability` above zero).
    pub available: &'a Bitfield,
    /// Every part before this one is ours.
    pub first_missing: u32,
}

impl PartsView<'_> {
    /// True when some part we lack is held by a connected peer and requested from nobody.
    pub fn some_part_waits(&self) -> bool {
        ones_where(self.first_missing, self.have.len(), |w| {
            self.available.word(w) & !self.have.word(w) & !self.requested.word(w)
        })
        .next()
        .is_some()
    }

    /// The parts we lack that a peer with `their_have` has and nobody is asked for, in file
    /// order.
    pub fn unrequested<'b>(&'b self, their_have: &'b Bitfield) -> impl Iterator<Item = u32> + 'b {
        ones_where(self.first_missing, self.have.len(), move |w| {
            their_have.word(w) & !self.have.word(w) & !self.requested.word(w)
        })
    }

    /// The parts we lack that a peer with `their_have` has and some peer is asked for, in file
    /// order: the endgame's candidates.
    pub fn requested<'b>(&'b self, their_have: &'b Bitfield) -> impl Iterator<Item = u32> + 'b {
        ones_where(self.first_missing, self.have.len(), move |w| {
            their_have.word(w) & !self.have.word(w) & self.requested.word(w)
        })
    }

    /// Whether `index` may be requested from a peer that has `their_have` and was already
    /// asked for `already_asked`: we lack it, the peer has it, fewer than [`ENDGAME_COPIES`]
    /// requests are out, and this peer was not asked for it yet.
    pub fn may_request(&self, index: u32, their_have: &Bitfield, already_asked: &[u32]) -> bool {
        let i = index as usize;
        !self.have.get(index)
            && their_have.get(index)
            && self.in_flight.get(i).is_some_and(|&f| f < ENDGAME_COPIES)
            && !(self.in_flight[i] > 0 && already_asked.contains(&index))
    }
}

/// One request to fill: a peer that has `their_have`, already asked for `already_asked`.
pub struct Ask<'a> {
    pub their_have: &'a Bitfield,
    pub already_asked: &'a [u32],
    /// How far past the first missing part a pick may reach for its random choice; the caller
    /// scales it with the requests the swarm has in flight.
    pub window: u32,
}

/// Chooses the next part to request. Implementations return only parts that
/// [`PartsView::may_request`] allows (the picker checks, and refuses others).
pub trait PiecePolicy: Send {
    fn pick(&mut self, parts: &PartsView, ask: &Ask) -> Option<u32>;
}

/// Makes the policy a member runs with (`MemberConfig::policy`); a plain function, so that a
/// configuration stays `Clone` and a test can bring its own policy.
pub type PolicyFactory = fn() -> Box<dyn PiecePolicy>;

/// The default: [`RarestFirst`].
pub fn rarest_first() -> Box<dyn PiecePolicy> {
    Box::new(RarestFirst)
}

pub fn in_order() -> Box<dyn PiecePolicy> {
    Box::new(InOrder)
}

/// Rarest first. Among the rarest, a random one of those within `window` parts of the first
/// part we lack (or the first one past it, if none is): random so that members fetching from the
/// same seeder ask for different parts, windowed so that parts arrive roughly in order and the
/// whole-file checksum can follow the download instead of costing a second pass at the end.
/// Once every missing part is requested somewhere, a second request for a part already out
/// (the endgame), so that the last parts do not wait on one slow peer.
pub struct RarestFirst;

impl PiecePolicy for RarestFirst {
    fn pick(&mut self, parts: &PartsView, ask: &Ask) -> Option<u32> {
        // The window starts at the first part we lack, whoever has it.
        let window_end = parts.first_missing.saturating_add(ask.window.max(1));
        if let Some(index) = rarest(parts.unrequested(ask.their_have), parts, window_end) {
            return Some(index);
        }
        // Every missing part this peer has is out somewhere. A second request is the endgame,
        // and only worth its cost once every missing part anyone has is out: before that, a
        // slot left empty is better than bytes sent twice.
        if parts.some_part_waits() {
            return None;
        }
        let allowed = parts
            .requested(ask.their_have)
            .filter(|&index| parts.may_request(index, ask.their_have, ask.already_asked));
        rarest(allowed, parts, window_end)
    }
}

/// The candidate fewest peers have; among those, a random one before `window_end`, or else the
/// first.
fn rarest(
    candidates: impl Iterator<Item = u32>,
    parts: &PartsView,
    window_end: u32,
) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None; // (availability, index)
    let mut ties = 0u32;
    for (examined, index) in candidates.enumerate() {
        let Some(&available) = parts.availability.get(index as usize) else {
            break;
        };
        // A candidate is held by its peer at least: past the window nothing beats one only
        // that peer has, and past the limit the best so far is good enough.
        let unbeatable = index >= window_end && best.is_some_and(|(a, _)| a <= 1);
        if unbeatable || (examined >= MAX_CANDIDATES && best.is_some()) {
            break;
        }
        match best {
            Some((a, _)) if available > a => {}
            Some((a, _)) if available == a => {
                if index < window_end {
                    ties += 1;
                    if fastrand::u32(0..ties) == 0 {
                        best = Some((available, index));
                    }
                }
            }
            _ => {
                best = Some((available, index));
                ties = 1;
            }
        }
    }
    best.map(|(_, index)| index)
}

/// The first part the peer can give us, in file order; the endgame as in [`RarestFirst`]. For
/// a consumer that reads the file while it arrives, and for tests that need a known order.
pub struct InOrder;

impl PiecePolicy for InOrder {
    fn pick(&mut self, parts: &PartsView, ask: &Ask) -> Option<u32> {
        if let Some(index) = parts.unrequested(ask.their_have).next() {
            return Some(index);
        }
        if parts.some_part_waits() {
            return None;
        }
        parts
            .requested(ask.their_have)
            .find(|&index| parts.may_request(index, ask.their_have, ask.already_asked))
    }
}
