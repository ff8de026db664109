//! The writer side of one connection: control lines first, then parts, a `PING` when there has
//! been nothing to send for a third of the peer timeout.

use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use anyhow::Result;

use super::outbox::{Next, Outgoing};
use super::PeerLink;
use crate::member::shared::Shared;
use crate::member::throttle::CHUNK;
use crate::orch::Span;
use crate::wire::{have_map_len, PeerMessage};

/// The writer side of one connection: control lines first, then parts.
pub fn write_loop(shared: &Shared, link: &PeerLink, stream: TcpStream) -> Result<()> {
    let mut out = BufWriter::with_capacity(64 << 10, &stream);
    let ping_every = shared.config.peer_timeout / 3;
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
                let sent = out
                    .write_all(PeerMessage::Piece { index, len }.to_line().as_bytes())
                    .and_then(|()| out.flush())
                    .and_then(|()| send_part(shared, &stream, span))
                    .map_err(|e| anyhow::anyhow!("sending part {index}: {e}"));
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
            }
        }
        if link.outbox.is_empty() {
            out.flush()?;
        }
    }
}

/// Sends the part's bytes, in chunks that each wait for the upload cap when there is one.
fn send_part(shared: &Shared, stream: &TcpStream, span: Span) -> std::io::Result<()> {
    let Some(cap) = &shared.upload_cap else {
        return shared.storage.send_to(stream, span);
    };
    let mut done = 0;
    while done < span.len {
        let len = (span.len - done).min(CHUNK);
        cap.take(len);
        let chunk = Span {
            offset: span.offset + done as u64,
            len,
        };
        shared.storage.send_to(stream, chunk)?;
        done += len;
    }
    Ok(())
}
