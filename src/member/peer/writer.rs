//! The writer side of one connection: control lines first, then parts, a `PING` when there has
//! been nothing to send for a third of the peer timeout or a second, whichever is shorter.
//!
//! A part goes from the file to the socket with `sendfile` on a plain link. A sealed link (a
//! private swarm) must encrypt it, so it is read (`pread`, one [`CHUNK`] at a time) straight
//! into the frame buffer, sealed there in place and written with the frames gathered into large
//! writes.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::link::PeerOut;
use super::outbox::{Next, Outgoing};
use super::PeerLink;
use crate::member::fair_share;
use crate::member::shared::Shared;
use crate::member::throttle::CHUNK;
use crate::orch::Span;
use crate::wire::{have_map_len, PeerMessage};

/// Longest time without a line to the peer: a `PING` then.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(1);

/// The writer side of one connection: control lines first, then parts.
pub fn write_loop(shared: &Shared, link: &PeerLink, mut out: PeerOut) -> Result<()> {
    // Our peers' timeouts may be shorter than ours: a peer that drops us for a silence it
    // takes for a hang loses what it knew of us and dials again.
    let ping_every = (shared.config.peer_timeout / 3).min(MAX_PING_INTERVAL);
    // What this connection has been sending, for a spreading seeder's even shares.
    let mut own_rate = fair_share::connection_rate();
    let mut paced = false;
    loop {
        let item = match link
            .outbox
            .next(ping_every, |index| shared.spread.copies_sent(index))
        {
            Next::Closed => return Ok(()),
            Next::Idle => {
                out.write_all(PeerMessage::Ping.to_line().as_bytes())?;
                out.flush()?;
                continue;
            }
            Next::Send(item) => item,
        };
        match item {
            Outgoing::Line(message) => out.write_all(message.to_line().as_bytes())?,
            Outgoing::HaveMap(map) => {
                debug_assert_eq!(map.len(), have_map_len(shared.orch.part_count()));
                out.write_all(
                    PeerMessage::HaveMap { bytes: map.len() }
                        .to_line()
                        .as_bytes(),
                )?;
                out.write_all(&map)?;
            }
            Outgoing::Part { index, counted } => {
                let Some(span) = shared.orch.part_span(index) else {
                    continue;
                };
                let len = span.len;
                // Only a seeder that spreads: it is the one source of what it has not sent.
                let even = shared.origin && shared.is_seeding();
                // A member downloading, unless the user capped its uploads.
                let governed =
                    !shared.origin && !shared.is_seeding() && shared.upload_cap.is_none();
                let now = Instant::now();
                let pace = if even {
                    shared.fair_share.begin(&own_rate, now)
                } else if governed {
                    shared.uplink.begin(now, || shared.lag().is_behind())
                } else {
                    None
                };
                // A socket left unpaced needs no call for each part.
                if pace.is_some() || paced {
                    paced = pace.is_some();
                    let rate = pace.unwrap_or(u64::MAX);
                    if let Err(e) = crate::net::pace(&link.stream, rate) {
                        log::debug!("peer {}: cannot pace: {e}", link.addr);
                    }
                }
                let sent = out
                    .write_all(PeerMessage::Piece { index, len }.to_line().as_bytes())
                    .and_then(|()| send_part(shared, &mut out, span))
                    .map_err(|e| anyhow::anyhow!("sending part {index}: {e}"));
                let bytes = if sent.is_ok() { len as u64 } else { 0 };
                if even {
                    let now = Instant::now();
                    shared.fair_share.end(bytes, now);
                    own_rate.note(bytes, now);
                } else if governed {
                    shared.uplink.end(bytes, Instant::now());
                }
                link.outbox.upload_done();
                shared.note_uploads_changed();
                if let Err(e) = sent {
                    if counted {
                        shared.spread.withdraw(index);
                    }
                    return Err(e);
                }
                if shared.spread.sent(index) {
                    super::offer_held_back(shared);
                }
                shared
                    .counters
                    .bytes_up
                    .fetch_add(len as u64, Ordering::Relaxed);
                link.note_sent(len);
            }
        }
        if link.outbox.is_empty() {
            out.flush()?;
        }
    }
}

/// Sends the part's bytes, in chunks that each wait for the upload cap when there is one.
fn send_part(shared: &Shared, out: &mut PeerOut, span: Span) -> std::io::Result<()> {
    let chunk_of = |done: usize| Span {
        offset: span.offset + done as u64,
        len: (span.len - done).min(CHUNK),
    };
    match out {
        PeerOut::Plain(out) => {
            out.flush()?;
            let stream = out.get_ref();
            let Some(cap) = &shared.upload_cap else {
                return shared.storage.send_to(stream, span);
            };
            let mut done = 0;
            while done < span.len {
                let chunk = chunk_of(done);
                cap.take(chunk.len);
                shared.storage.send_to(stream, chunk)?;
                done += chunk.len;
            }
        }
        // Sealed: each chunk is read from storage straight into the frame that seals it; the
        // frames reach the socket at the next flush or when the sealer's buffer is full.
        PeerOut::Sealed(sealer) => {
            let mut done = 0;
            while done < span.len {
                let chunk = chunk_of(done);
                if let Some(cap) = &shared.upload_cap {
                    cap.take(chunk.len);
                }
                sealer.write_from(chunk.len, |at, into| {
                    shared.storage.read_at(chunk.offset + at as u64, into)
                })?;
                done += chunk.len;
            }
        }
    }
    Ok(())
}
