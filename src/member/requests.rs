//! Our requests on one connection: which parts are out, which were cancelled, and how many to
//! keep in flight.
//!
//! Shared between the connection's reader, which sends and answers them, and whichever thread
//! completes a part, which cancels the endgame duplicate asked of another peer.

/// Bytes of requests kept in flight per peer when the pipeline depth is not set.
const PIPELINE_BYTES: u64 = 2 << 20;
/// Fewest and most requests in flight per peer when the depth comes from the part size.
const MIN_DEPTH: u64 = 2;
const MAX_DEPTH: u64 = 16;

#[derive(Debug, Default)]
pub struct Requests {
    /// Parts requested and not yet received, rejected or cancelled.
    pub out: Vec<u32>,
    /// Cancelled requests whose part may still arrive; accepted and discarded.
    pub cancelled: Vec<u32>,
}

impl Requests {
    /// Takes `index` off the requests out; true if it was out.
    pub fn take_out(&mut self, index: u32) -> bool {
        take(&mut self.out, index)
    }

    /// Takes `index` off the cancelled requests; true if it was there.
    pub fn take_cancelled(&mut self, index: u32) -> bool {
        take(&mut self.cancelled, index)
    }

    /// The part arrived from another peer: the request here is cancelled, and the part, if it
    /// still comes, discarded. True if it was out here.
    pub fn cancel(&mut self, index: u32) -> bool {
        let was_out = self.take_out(index);
        if was_out {
            self.cancelled.push(index);
        }
        was_out
    }
}

fn take(list: &mut Vec<u32>, index: u32) -> bool {
    match list.iter().position(|&i| i == index) {
        Some(pos) => {
            list.swap_remove(pos);
            true
        }
        None => false,
    }
}

/// Requests to keep in flight per peer: `configured` if set, else about 2 MiB
/// worth of parts.
pub fn pipeline_depth(configured: Option<usize>, part_size: u64) -> usize {
    configured.unwrap_or_else(|| {
        let depth = PIPELINE_BYTES / part_size.max(1);
        depth.clamp(MIN_DEPTH, MAX_DEPTH) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_out_and_cancelled() {
        let mut requests = Requests::default();
        requests.out.extend([1, 2, 3]);
        assert!(requests.cancel(2));
        assert!(!requests.cancel(9));
        assert!(!requests.take_out(2));
        assert!(requests.take_cancelled(2));
        assert!(!requests.take_cancelled(2));
        assert!(requests.take_out(3));
        assert_eq!(requests.out, [1]);
    }

    #[test]
    fn depth_follows_the_part_size_unless_set() {
        assert_eq!(pipeline_depth(None, 256 << 10), 8);
        assert_eq!(pipeline_depth(None, 64 << 10), 16);
        assert_eq!(pipeline_depth(None, 16 << 20), 2);
        assert_eq!(pipeline_depth(Some(5), 16 << 20), 5);
        assert_eq!(pipeline_depth(None, 0), 16);
    }
}
