//! An origin seeder's policy for spreading parts: every part once before any part twice.
//!
//! Members that start together all ask the seeder for the rarest parts, and the parts only the
//! seeder has are equally rare, so without a policy two members often get the same part from
//! the seeder while others wait, and the seeder's uplink, the scarcest resource of the swarm,
//! carries duplicates. A member that had the whole file from the start therefore refuses
//! (`REJECT`) a part it has already served while some part has not yet been sent whole once;
//! the asker picks another part and gets this one from the member that already has it. Once
//! every part has gone out once, it serves everything; before that, a peer that asks again for
//! a part it was refused is served if the uplink has nothing else to send (it found no other
//! source, and a second copy then delays nobody), and at the end of the first round, once every
//! part is queued somewhere, a connection with nothing to send is served at once (the last
//! first copies are under way elsewhere, and holding its asker back would leave that
//! connection's share of the uplink idle until they are through). A part counts from the
//! moment it is queued; one cancelled or lost with its connection is withdrawn, so a part that
//! never reached anyone is not held back. Each connection sends the queued part with the fewest
//! copies out first. Members that finish later serve freely: they are not the only source of
//! anything.

use crate::sync::Mutex;

struct Counts {
    /// Copies queued or sent (what admission counts).
    served: Vec<u16>,
    never_served: u32,
    /// Copies actually sent, to send the rarest first among those queued.
    sent: Vec<u16>,
    never_sent: u32,
}

pub struct Spread {
    counts: Mutex<Counts>,
}

impl Spread {
    pub fn new(parts: u32) -> Spread {
        Spread {
            counts: Mutex::new(Counts {
                served: vec![0; parts as usize],
                never_served: parts,
                sent: vec![0; parts as usize],
                never_sent: parts,
            }),
        }
    }

    /// Whether to serve `index` now; counts it as served if so. `insist`: the asker was refused
    /// this part before and asks again, so it found no other source meanwhile (the parts another
    /// seeder sent may never be asked of this one, so "every part once" may never come, and the
    /// member that had a copy from us may have left), and our uplink is idle: serve it.
    pub fn admit(&self, index: u32, insist: bool) -> bool {
        let mut counts = self.counts.lock();
        let Some(&served) = counts.served.get(index as usize) else {
            return false;
        };
        // A second copy waits until every part has been sent whole once, not merely queued:
        // first copies still queued behind slow connections must not lose the uplink to it.
        if served > 0 && !insist && (counts.never_served > 0 || counts.never_sent > 0) {
            return false;
        }
        if served == 0 {
            counts.never_served -= 1;
        }
        counts.served[index as usize] = served.saturating_add(1);
        true
    }

    /// Every part is queued or sent at least once: the first copies still out are under way on
    /// some connection, and nothing is left that only a first copy could carry.
    pub fn every_part_served(&self) -> bool {
        self.counts.lock().never_served == 0
    }

    /// A copy of `index` went out whole. True for the call after which every part has gone out
    /// once: from then on everything is served, and the parts refused so far may be offered
    /// again to those who asked (see `peer::offer_held_back`).
    pub fn sent(&self, index: u32) -> bool {
        let mut counts = self.counts.lock();
        let Some(&sent) = counts.sent.get(index as usize) else {
            return false;
        };
        counts.sent[index as usize] = sent.saturating_add(1);
        if sent == 0 {
            counts.never_sent -= 1;
            return counts.never_sent == 0;
        }
        false
    }

    /// Copies of `index` sent so far.
    pub fn copies_sent(&self, index: u32) -> u16 {
        let counts = self.counts.lock();
        counts.sent.get(index as usize).copied().unwrap_or(u16::MAX)
    }

    /// An admitted part will not be sent after all (cancelled, or the connection ended).
    pub fn withdraw(&self, index: u32) {
        let mut counts = self.counts.lock();
        let Some(&served) = counts.served.get(index as usize) else {
            return;
        };
        if served == 1 {
            counts.never_served += 1;
        }
        counts.served[index as usize] = served.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn every_part_once_before_any_twice() {
        let spread = Spread::new(3);
        assert!(spread.admit(1, false));
        assert!(
            !spread.admit(1, false),
            "1 again while 0 and 2 never went out"
        );
        assert!(spread.admit(0, false));
        assert!(spread.admit(2, false));
        assert!(
            !spread.admit(1, false),
            "every part queued once, but not all sent yet"
        );
        assert!(
            !spread.sent(0) && !spread.sent(0),
            "1 and 2 still to go out"
        );
        assert!(!spread.sent(2));
        assert!(spread.sent(1), "the last part to go out once says so");
        assert!(!spread.sent(1), "and only once");
        assert!(
            spread.admit(1, false),
            "everything went out once: serve freely"
        );
        assert!(!spread.admit(3, false), "out of range");
    }

    #[test]
    fn a_withdrawn_part_counts_as_never_served() {
        let spread = Spread::new(2);
        assert!(spread.admit(0, false));
        spread.withdraw(0);
        assert!(spread.admit(1, false));
        assert!(spread.admit(0, false), "0 never left: it is served again");
        spread.sent(0);
        spread.sent(1);
        assert!(
            spread.admit(0, false),
            "every part went out once: serve freely"
        );
    }
}
