//! The queue between the member and one connection's writer thread.
//!
//! Control lines go before part data, so that our requests and `HAVE`s never wait behind an
//! upload to the same peer; queued uploads are bounded, so a peer that floods requests without
//! reading cannot make us hold more than [`MAX_QUEUED_UPLOADS`] of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};
use crate::wire::PeerMessage;

/// Most uploads a peer may have queued with us; more is a protocol violation.
pub const MAX_QUEUED_UPLOADS: usize = 64;

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
#[derive(Default)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Condvar,
}

impl Outbox {
    pub fn push(&self, item: Outgoing) {
        let mut state = self.state.lock();
        state.control.push_back(item);
        self.ready.notify_one();
    }

    pub fn push_upload(&self, index: u32, counted: bool) -> bool {
        let mut state = self.state.lock();
        if state.uploads.len() >= MAX_QUEUED_UPLOADS {
            return false;
        }
        state.uploads.push_back((index, counted));
        self.ready.notify_one();
        true
    }

    /// Queues a `REJECT`; false when [`MAX_QUEUED_UPLOADS`] are already waiting to be sent,
    /// which only a peer that floods requests without reading the answers can cause.
    pub fn push_reject(&self, index: u32) -> bool {
        let mut state = self.state.lock();
        if state.rejects >= MAX_QUEUED_UPLOADS {
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
