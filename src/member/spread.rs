//! A complete member's policy for spreading parts: every part once before any part twice.
//!
//! Members that start together all ask the seeder for the rarest parts, and the parts only the
//! seeder has are equally rare, so without a policy two members often get the same part from
//! the seeder while others wait, and the seeder's uplink, the scarcest resource of the swarm,
//! carries duplicates. A complete member therefore refuses (`REJECT`) a part it has already
//! served while some part has never left it; the asker picks another part and gets this one from
//! the member that already has it. Once every part has gone out once, it serves everything.
//! A part counts from the moment it is queued; one cancelled or lost with its connection is
//! withdrawn, so a part that never reached anyone is not held back. And each connection sends
//! the queued part with the fewest copies out first, so that while second copies wait in the
//! queues, first copies still go ahead of them.

use std::sync::Mutex;

struct Counts {
    /// Copies queued or sent (what admission counts).
    served: Vec<u16>,
    never_served: u32,
    /// Copies actually sent, to send the rarest first among those queued.
    sent: Vec<u16>,
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
            }),
        }
    }

    /// Whether to serve `index` now; counts it as served if so.
    pub fn admit(&self, index: u32) -> bool {
        let mut counts = self.counts.lock().unwrap();
        let Some(&served) = counts.served.get(index as usize) else {
            return false;
        };
        if served > 0 && counts.never_served > 0 {
            return false;
        }
        if served == 0 {
            counts.never_served -= 1;
        }
        counts.served[index as usize] = served.saturating_add(1);
        true
    }

    /// A copy of `index` went out whole.
    pub fn sent(&self, index: u32) {
        if let Some(sent) = self.counts.lock().unwrap().sent.get_mut(index as usize) {
            *sent = sent.saturating_add(1);
        }
    }

    /// Copies of `index` sent so far.
    pub fn copies_sent(&self, index: u32) -> u16 {
        let counts = self.counts.lock().unwrap();
        counts.sent.get(index as usize).copied().unwrap_or(u16::MAX)
    }

    /// An admitted part will not be sent after all (cancelled, or the connection ended).
    pub fn withdraw(&self, index: u32) {
        let mut counts = self.counts.lock().unwrap();
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
        assert!(spread.admit(1));
        assert!(!spread.admit(1), "1 again while 0 and 2 never went out");
        assert!(spread.admit(0));
        assert!(spread.admit(2));
        assert!(spread.admit(1), "everything went out once: serve freely");
        assert!(!spread.admit(3), "out of range");
    }

    #[test]
    fn a_withdrawn_part_counts_as_never_served() {
        let spread = Spread::new(2);
        assert!(spread.admit(0));
        spread.withdraw(0);
        assert!(spread.admit(1));
        assert!(spread.admit(0), "0 never left: it is served again");
        assert!(spread.admit(0), "every part went out once: serve freely");
    }
}
