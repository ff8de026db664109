//! The reader side of one connection, which owns the conversation: it takes the peer's have-map
//! and `HAVE`s, keeps requests in flight, answers the peer's requests by queueing uploads, and
//! hands every part it receives to the connection's [`Verifier`], which checks it against the
//! `.orch` before storing it.
//!
//! Every read has a deadline ([`crate::net::DeadlineStream`]): each line must come within the
//! peer timeout, each part within the peer timeout per MiB, so a peer trickling bytes cannot
//! hold our requests.

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::link::PeerIn;
use super::verifier::Verifier;
use super::PeerLink;
use crate::member::bitfield::Bitfield;
use crate::member::requests::Pipeline;
use crate::member::shared::Shared;
use crate::member::throttle::CHUNK;
use crate::wire::{LineReader, PeerMessage, WireError, MAX_PEX};

/// How long a part a peer rejected is asked from others only.
const REJECT_RETRY: Duration = Duration::from_secs(2);
/// How long a peer that held our requests without an answer is not dialed or accepted.
pub const STALL_SUSPENSION: Duration = Duration::from_secs(30);
/// Smallest choice of parts the picker randomizes over.
const MIN_PICK_WINDOW: u32 = 16;
/// Bytes read from the socket at once.
const READ_BUFFER: usize = 256 << 10;

type PeerReader<'a> = LineReader<BufReader<PeerIn<'a>>>;

/// The reader side of one connection.
pub struct Conversation<'a> {
    shared: &'a Arc<Shared>,
    link: &'a Arc<PeerLink>,
    their_have: Bitfield,
    got_have_map: bool,
    pipeline: Pipeline,
    buffer: Vec<u8>,
    verifier: Verifier,
    /// The requests out plus the parts still being checked, for the picker.
    asked: Vec<u32>,
    /// Parts this peer rejected, and when: not asked again for [`REJECT_RETRY`].
    rejected: Vec<(u32, Instant)>,
    /// When the oldest unanswered request was sent, or the last part arrived.
    last_progress: Instant,
}

impl<'a> Conversation<'a> {
    /// `handshake_rtt` is the round trip the handshake measured, if it did.
    pub fn new(
        shared: &'a Arc<Shared>,
        link: &'a Arc<PeerLink>,
        handshake_rtt: Option<Duration>,
        verifier: Verifier,
    ) -> Conversation<'a> {
        let mut pipeline = Pipeline::new(
            shared.config.pipeline,
            shared.orch.part_size,
            Instant::now(),
        );
        if let Some(rtt) = handshake_rtt {
            pipeline.note_round_trip(rtt);
        }
        Conversation {
            shared,
            link,
            their_have: Bitfield::new(shared.orch.part_count()),
            got_have_map: false,
            pipeline,
            buffer: Vec::new(),
            verifier,
            asked: Vec::new(),
            rejected: Vec::new(),
            last_progress: Instant::now(),
        }
    }

    /// Runs the conversation until the peer closes, misbehaves, goes silent, or we stop.
    pub fn run(mut self, input: PeerIn<'_>) -> Result<()> {
        let result = self.converse(input);
        // A bad part closes the connection from the verifier: its reason, not the read error
        // the close caused here, is why the connection ended.
        match self.verifier.stopped() {
            Some(why) => Err(anyhow!(why)),
            None => result,
        }
    }

    fn converse(&mut self, input: PeerIn<'_>) -> Result<()> {
        let timeout = self.shared.config.peer_timeout;
        input.deadline().set_deadline(Instant::now() + timeout);
        let mut reader = LineReader::new(BufReader::with_capacity(READ_BUFFER, input));
        self.send_pex();
        let parts = self.shared.orch.part_count();
        let orch = &self.shared.orch;
        let part_len = |i: u32| orch.part_len(i);
        // Each line must come whole within the peer timeout of the one before.
        let mut silent_at = Instant::now() + timeout;
        loop {
            if self.shared.is_shutting_down() {
                return Ok(());
            }
            // A part this peer rejected comes due again before that, maybe: the read wakes
            // then to ask for it, for a peer with nothing to say need not speak (its
            // keep-alive follows its own timeout, not ours), and waiting for its next line
            // could last until we drop it for silence, with the part never asked again.
            let deadline = reader.get_ref().get_ref().deadline();
            deadline.set_idle_timeout(None);
            deadline.set_deadline(self.next_retry().map_or(silent_at, |at| at.min(silent_at)));
            match reader.read_line() {
                Ok(line) => {
                    let message = PeerMessage::parse(line, parts, part_len)
                        .map_err(|e| self.misbehaved(format!("{e}")))?;
                    self.handle(&mut reader, message)?;
                    silent_at = Instant::now() + timeout;
                }
                Err(WireError::Closed) => return Ok(()),
                // Woken for a rejected part; what was read of a line is kept.
                Err(e) if e.is_timeout() && Instant::now() < silent_at => {}
                Err(e) if e.is_timeout() => {
                    bail!("silent for {:?}", self.shared.config.peer_timeout)
                }
                // A reset or a close mid-line is the network or a crash, not misbehaviour.
                Err(WireError::Io(e)) => bail!("{e}"),
                Err(e) => return Err(self.misbehaved(format!("{e}"))),
            }
            self.retry_rejected();
            let complete = self.their_have.is_full();
            self.link.complete.store(complete, Ordering::Relaxed);
            if complete && self.shared.is_seeding() {
                return Ok(());
            }
            self.request_more();
            self.check_progress()?;
        }
    }

    /// Acts on one message from the peer.
    fn handle(&mut self, reader: &mut PeerReader, message: PeerMessage) -> Result<()> {
        let parts = self.shared.orch.part_count();
        if !self.got_have_map && !matches!(message, PeerMessage::HaveMap { .. }) {
            return Err(self.misbehaved("first message was not HAVEMAP".into()));
        }
        match message {
            PeerMessage::HaveMap { bytes } => {
                if self.got_have_map {
                    return Err(self.misbehaved("sent a second HAVEMAP".into()));
                }
                let mut map = vec![0u8; bytes];
                reader.read_payload(&mut map)?;
                self.their_have =
                    Bitfield::from_bytes(map, parts).map_err(|e| self.misbehaved(e))?;
                self.got_have_map = true;
                self.link.their_parts.set_all(&self.their_have);
                let mut picker = self.shared.picker.lock();
                for index in self.their_have.ones() {
                    picker.peer_has(index);
                }
            }
            PeerMessage::Have(index) => {
                self.link.their_parts.set(index);
                if self.their_have.set(index) {
                    self.shared.picker.lock().peer_has(index);
                }
            }
            PeerMessage::Request(index) => self.serve(index)?,
            PeerMessage::Cancel(index) => {
                for _ in 0..self.link.outbox.cancel_upload(index) {
                    self.shared.spread.withdraw(index);
                }
            }
            PeerMessage::Reject(index) => {
                log::debug!("peer {}: rejected part {index}", self.link.addr);
                if self.link.requests.lock().take_out(index).is_some() {
                    self.shared.picker.lock().release(index);
                }
                // Ask others for it; ask this peer again later (see `retry_rejected`).
                if self.their_have.get(index) {
                    self.their_have.clear(index);
                    self.shared.picker.lock().peer_lost(index);
                    self.rejected.push((index, Instant::now()));
                }
            }
            PeerMessage::Piece { index, len } => self.receive(reader, index, len)?,
            PeerMessage::Pex(addrs) => self.shared.book.learn(addrs.into_iter()),
            PeerMessage::Ping => {}
        }
        Ok(())
    }

    fn serve(&mut self, index: u32) -> Result<()> {
        let have = self.shared.picker.lock().have().get(index);
        // Only a member that had the file from the start spreads: it is the one source of the
        // parts nobody else has yet. A member that finished later serves freely.
        let seeding = self.shared.origin && self.shared.is_seeding();
        let draining = self.shared.is_draining();
        let held_back = have && !draining && seeding && {
            // Asked again after a refusal while the uplink has nothing else to send: a second
            // copy then costs no other member anything, and the asker may have no other source
            // (see `Spread::admit`). While the uplink is busy, as when it is the swarm's
            // bottleneck, the part stays held back. (Not under our `held_back` lock: the peer
            // table is taken first everywhere.)
            let insist = (self.link.held_back.lock().get(index) && self.shared.uploads_idle())
                // The end of the first round: the last first copies are under way on other
                // connections, and this one has nothing to send. Holding its asker back would
                // leave that share of the uplink idle for the rest of the round.
                || (self.shared.spread.every_part_served() && self.link.uploads_idle());
            let admitted = self.shared.spread.admit(index, insist);
            let mut held = self.link.held_back.lock();
            if admitted {
                held.clear(index);
            } else {
                held.set(index);
            }
            !admitted
        };
        if !have || draining || held_back {
            if !self.link.outbox.push_reject(index) {
                return Err(self.too_many_requests());
            }
        } else if !self.link.outbox.push_upload(index, seeding) {
            if seeding {
                self.shared.spread.withdraw(index);
            }
            return Err(self.too_many_requests());
        }
        Ok(())
    }

    fn receive(&mut self, reader: &mut PeerReader, index: u32, len: usize) -> Result<()> {
        let arrived = Instant::now();
        let expected = {
            let mut requests = self.link.requests.lock();
            if let Some(sent) = requests.take_out(index) {
                self.pipeline
                    .note_round_trip(arrived.saturating_duration_since(sent));
                true
            } else if requests.take_cancelled(index) {
                false
            } else {
                return Err(self.misbehaved(format!("sent part {index}, which we did not request")));
            }
        };
        // `len` was checked against the .orch by the parser, so the buffer never exceeds the
        // largest part.
        self.buffer.resize(len, 0);
        // The peer timeout for each MiB: a slow link passes, a trickle does not.
        let allowed = self.shared.config.peer_timeout * len.div_ceil(1 << 20).max(1) as u32;
        let deadline = Instant::now() + allowed;
        let stream = reader.get_ref().get_ref().deadline();
        stream.set_deadline(deadline);
        stream.set_idle_timeout(Some(self.shared.config.peer_timeout));
        let read = match &self.shared.download_cap {
            None => reader.read_payload(&mut self.buffer),
            Some(cap) => self.buffer.chunks_mut(CHUNK).try_for_each(|chunk| {
                cap.take(chunk.len());
                reader.read_payload(chunk)
            }),
        };
        if read.is_err() && expected {
            // The request is over without the part: let it be asked again.
            self.shared.picker.lock().release(index);
        }
        match read {
            Ok(()) => {}
            Err(_) if Instant::now() >= deadline => {
                return Err(self.misbehaved(format!("part {index} not complete after {allowed:?}")))
            }
            Err(e) if e.is_timeout() => bail!(
                "silent for {:?} in the middle of part {index}",
                self.shared.config.peer_timeout
            ),
            Err(e) => return Err(e.into()),
        }
        self.last_progress = Instant::now();
        self.pipeline.note_received(len, self.last_progress);
        self.link.note_received(len);
        if !expected {
            return Ok(());
        }
        let part = std::mem::replace(&mut self.buffer, self.verifier.spare());
        if let Err(why) = self.verifier.submit(index, part) {
            // The part never reached the verifier, so nothing else gives its request back.
            self.shared.picker.lock().release(index);
            bail!(why);
        }
        Ok(())
    }

    /// When the first part this peer rejected may be asked of it again.
    fn next_retry(&self) -> Option<Instant> {
        self.rejected
            .iter()
            .map(|&(_, when)| when + REJECT_RETRY)
            .min()
    }

    /// A peer that rejected a part may serve it later (a seeder spreading parts does once it
    /// has sent every part once), and may be the only one with it.
    fn retry_rejected(&mut self) {
        let now = Instant::now();
        let shared = self.shared;
        let their_have = &mut self.their_have;
        self.rejected.retain(|&(index, when)| {
            if now.duration_since(when) < REJECT_RETRY {
                return true;
            }
            if their_have.set(index) {
                shared.picker.lock().peer_has(index);
            }
            false
        });
    }

    /// Keeps the pipeline's depth of requests in flight to this peer.
    fn request_more(&mut self) {
        if !self.got_have_map {
            return;
        }
        let now = Instant::now();
        let depth = self.pipeline.depth(now);
        // Counted before taking our requests' lock: `Member::status` takes the peer table's,
        // then ours.
        let peers = self.shared.peers.lock().len() as u32;
        let mut requests = self.link.requests.lock();
        if requests.out.is_empty() {
            self.last_progress = now;
        }
        let window = pick_window(peers, depth);
        self.asked.clear();
        self.asked.extend(&requests.out);
        self.verifier.add_checking(&mut self.asked);
        while requests.out.len() < depth {
            let picked = self
                .shared
                .picker
                .lock()
                .pick(&self.their_have, &self.asked, window);
            let Some(index) = picked else { break };
            requests.push(index, now);
            self.asked.push(index);
            self.link.send(PeerMessage::Request(index));
        }
    }

    /// Drops a peer that holds our requests without answering: it claims parts it never sends,
    /// or its link stalls (TCP backing off after losses can be silent for longer than the
    /// timeout). Which of the two cannot be told, so it is suspended, not banned: dialed and
    /// accepted again after [`STALL_SUSPENSION`], since it may be the last one with our parts.
    fn check_progress(&self) -> Result<()> {
        let waiting = !self.link.requests.lock().out.is_empty();
        if waiting && self.last_progress.elapsed() > self.shared.config.peer_timeout {
            self.shared
                .book
                .suspend(self.link.peer_id, self.link.listen_addr, STALL_SUSPENSION);
            bail!(
                "suspended for {STALL_SUSPENSION:?}: sent no requested part for {:?}",
                self.shared.config.peer_timeout
            );
        }
        Ok(())
    }

    fn send_pex(&self) {
        let peers: Vec<SocketAddr> = self
            .shared
            .peers
            .lock()
            .values()
            .filter(|l| l.peer_id != self.link.peer_id)
            .filter_map(|l| l.listen_addr)
            .take(MAX_PEX)
            .collect();
        if !peers.is_empty() {
            self.link.send(PeerMessage::Pex(peers));
        }
    }

    /// The peer queued more requests than the protocol allows: banned.
    fn too_many_requests(&self) -> anyhow::Error {
        self.misbehaved(format!(
            "more than {} requests queued",
            self.link.outbox.limit()
        ))
    }

    /// Bans the peer for the rest of this run and returns the error that ends the connection.
    fn misbehaved(&self, why: String) -> anyhow::Error {
        self.shared
            .book
            .ban(self.link.peer_id, self.link.listen_addr);
        anyhow!("banned: {why}")
    }
}

impl Drop for Conversation<'_> {
    /// Gives back every request still out and the peer's share of availability, however the
    /// conversation ended.
    fn drop(&mut self) {
        let requests = self.link.requests.lock().take_all();
        let mut picker = self.shared.picker.lock();
        for index in requests {
            picker.release(index);
        }
        picker.peer_gone(&self.their_have);
    }
}

/// How many parts past the first one we lack the picker may choose among, for a member with
/// `peers` connections keeping `depth` requests out on this one: enough choice that members
/// fetching from one seeder rarely ask for the same part, little enough that parts arrive near
/// file order (see `Picker::pick`). A member with a single peer has no other member to differ
/// from, so it asks within the smallest window of file order: the whole-file hasher then takes
/// more parts as they are verified instead of reading them back from the file (1 GiB from one
/// seeder on loopback, eight runs: 191-682 of 1,024 parts read back, against 783-908).
fn pick_window(peers: u32, depth: usize) -> u32 {
    match peers {
        0 | 1 => MIN_PICK_WINDOW,
        _ => u32::try_from(depth)
            .unwrap_or(u32::MAX)
            .saturating_mul(peers)
            .saturating_mul(2)
            .max(MIN_PICK_WINDOW),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_peer_is_asked_near_file_order_and_several_at_random_over_their_depths() {
        assert_eq!(pick_window(1, 64), MIN_PICK_WINDOW);
        assert_eq!(pick_window(2, 64), 256);
        assert_eq!(pick_window(8, 1), MIN_PICK_WINDOW);
        assert_eq!(pick_window(u32::MAX, usize::MAX), u32::MAX);
    }
}
