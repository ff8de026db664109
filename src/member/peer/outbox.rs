//! The queue between the member and one connection's writer thread.
//!
//! Control lines go before part data, so that our requests and `HAVE`s never wait behind an
//! upload to the same peer; queued uploads are bounded, so a peer that floods requests without
//! reading cannot make us hold more than [`queued_uploads_allowed`] of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};
use crate::wire::PeerMessage;

/// Uploads a peer may always have queued with us; more is a protocol violation unless the parts
/// are small enough for [`queued_uploads_allowed`] to allow more.
pub const BASE_QUEUED_UPLOADS: usize = 64;
/// Most bytes of queued uploads that [`queued_uploads_allowed`] allows for small parts: 64
/// parts of 256 KiB, so that a link with a large bandwidth × delay product stays as full with
/// small parts as with those.
const QUEUED_UPLOAD_BYTES: u64 = 16 << 20;
/// Most uploads a peer may have queued with us, whatever the part size.
const MOST_QUEUED_UPLOADS: usize = 1024;

/// How many uploads a peer may have queued with us for parts of `part_size` bytes: both ends
/// compute it from the `.orch`. [`BASE_QUEUED_UPLOADS`] for parts of 256 KiB and more, the same
/// bytes in more requests for smaller parts, at most [`MOST_QUEUED_UPLOADS`].
pub fn queued_uploads_allowed(part_size: u64) -> usize {
    let by_bytes = QUEUED_UPLOAD_BYTES / part_size.max(1);
    usize::try_from(by_bytes)
        .unwrap_or(MOST_QUEUED_UPLOADS)
        .clamp(BASE_QUEUED_UPLOADS, MOST_QUEUED_UPLOADS)
}

/// What a connection's writer sends next.
pub enum Outgoing {
    Line(PeerMessage),
    HaveMap(Vec<u8>),
    /// A part, and whether the spreading policy counted it (see [`Spread`]).
    ///
    /// [`Spread`]: crate::member::spread::Spread
    Part {
        index: u32,
        counted: bool,
    },
}

/// What the writer does next.
pub enum Next {
    Send(Outgoing),
    /// Nothing to send for a while: time for a `PING`.
    Idle,
    Closed,
}

#[derive(Default)]
struct OutboxState {
    control: VecDeque<Outgoing>,
    /// Parts to send, each with whether the spreading policy counted it.
    uploads: VecDeque<(u32, bool)>,
    /// A part is being sent right now.
    sending: bool,
    /// `REJECT`s in `control`: answers to the peer's requests, bounded like queued uploads.
    rejects: usize,
    closed: bool,
}

/// The queue between the member and one connection's writer thread.
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Condvar,
    /// Most uploads, and most `REJECT`s, queued at once ([`queued_uploads_allowed`]).
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::default(),
            ready: Condvar::new(),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn push(&self, item: Outgoing) {
        let mut state = self.state.lock();
        state.control.push_back(item);
        self.ready.notify_one();
    }

    pub fn push_upload(&self, index: u32, counted: bool) -> bool {
        let mut state = self.state.lock();
        if state.uploads.len() >= self.limit {
            return false;
        }
        state.uploads.push_back((index, counted));
        self.ready.notify_one();
        true
    }

    /// Queues a `REJECT`; false when [`Outbox::limit`] are already waiting to be sent,
    /// which only a peer that floods requests without reading the answers can cause.
    pub fn push_reject(&self, index: u32) -> bool {
        let mut state = self.state.lock();
        if state.rejects >= self.limit {
            return false;
        }
        state.rejects += 1;
        state
            .control
            .push_back(Outgoing::Line(PeerMessage::Reject(index)));
        self.ready.notify_one();
        true
    }

    /// Drops queued uploads of `index`; returns how many the spreading policy had counted.
    pub fn cancel_upload(&self, index: u32) -> usize {
        let mut state = self.state.lock();
        let before = state.uploads.iter().filter(|u| u.1).count();
        state.uploads.retain(|&(i, _)| i != index);
        before - state.uploads.iter().filter(|u| u.1).count()
    }

    /// Closes the queue and returns the counted uploads that will never be sent.
    pub fn close(&self) -> Vec<u32> {
        let mut state = self.state.lock();
        state.closed = true;
        self.ready.notify_all();
        state
            .uploads
            .drain(..)
            .filter_map(|(index, counted)| counted.then_some(index))
            .collect()
    }

    pub fn upload_done(&self) {
        self.state.lock().sending = false;
        self.ready.notify_all();
    }

    /// True when no part is queued or being sent.
    pub fn uploads_idle(&self) -> bool {
        let state = self.state.lock();
        state.uploads.is_empty() && !state.sending
    }

    /// The next item, control first; `None` after `idle` without one (time for a `PING`) or
    /// when closed (`Err`).
    /// `copies_sent` orders queued parts: fewest copies already sent first, so that a seeder
    /// sends every part once before it sends any part twice.
    pub fn next(&self, idle: Duration, copies_sent: impl Fn(u32) -> u16) -> Next {
        let mut state = self.state.lock();
        let deadline = Instant::now() + idle;
        loop {
            if state.closed {
                return Next::Closed;
            }
            if let Some(item) = state.control.pop_front() {
                if matches!(item, Outgoing::Line(PeerMessage::Reject(_))) {
                    state.rejects = state.rejects.saturating_sub(1);
                }
                return Next::Send(item);
            }
            let fewest = (0..state.uploads.len()).min_by_key(|&i| copies_sent(state.uploads[i].0));
            if let Some((index, counted)) = fewest.and_then(|i| state.uploads.remove(i)) {
                state.sending = true;
                return Next::Send(Outgoing::Part { index, counted });
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Idle;
            }
            state = self.ready.wait_timeout(state, deadline - now).0;
        }
    }

    pub fn is_empty(&self) -> bool {
        let state = self.state.lock();
        state.control.is_empty() && state.uploads.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parts_may_queue_the_bytes_that_large_ones_do() {
        assert_eq!(queued_uploads_allowed(16 << 20), BASE_QUEUED_UPLOADS);
        assert_eq!(queued_uploads_allowed(256 << 10), BASE_QUEUED_UPLOADS);
        assert_eq!(queued_uploads_allowed(64 << 10), 256);
        assert_eq!(queued_uploads_allowed(16 << 10), 1024);
        assert_eq!(queued_uploads_allowed(1), MOST_QUEUED_UPLOADS);
        assert_eq!(queued_uploads_allowed(0), MOST_QUEUED_UPLOADS);
    }

    #[test]
    fn uploads_and_rejects_past_the_limit_are_refused() {
        let outbox = Outbox::new(3);
        assert!((0..3).all(|i| outbox.push_upload(i, false)));
        assert!(!outbox.push_upload(3, false));
        assert!((0..3).all(|i| outbox.push_reject(i)));
        assert!(!outbox.push_reject(3));
    }
}
