//! The `HELLO` exchange that opens every connection, and what is settled before anything else
//! is sent: the same swarm, not ourselves.
//!
//! In a private swarm a Noise handshake ([`secure`]) comes first and the `HELLO`s travel sealed.
//! The dialer speaks first; the side that accepted answers before judging the peer, so that a
//! member that dialed itself sees its own id and stops dialing that address.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::link::{PeerIn, PeerOut};
use crate::member::shared::Shared;
use crate::net::DeadlineStream;
use crate::secure::handshake::{self as noise, Channel, SECURE_LINE};
use crate::wire::{Hello, LineReader};

/// How long a new connection may take to say `HELLO`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handshake learnt of the peer.
pub struct Greeting {
    pub hello: Hello,
    /// The dialer's round trip: from sending its `HELLO` to reading the answer.
    pub rtt: Option<Duration>,
}

/// In a private swarm, runs the Noise handshake that comes before the `HELLO`s (see
/// [`crate::secure::handshake`]) and returns the link's keys; in a public swarm, nothing.
/// The acceptor reads the dialer's first line itself: anything but [`SECURE_LINE`] is refused,
/// a public `HELLO` naming our private swarm as a failed proof.
pub fn secure(
    shared: &Shared,
    stream: &TcpStream,
    dialed: Option<SocketAddr>,
) -> Result<Option<Channel>> {
    let Some(keys) = &shared.keys else {
        return Ok(None);
    };
    let mut raw = DeadlineStream::within(stream, HANDSHAKE_TIMEOUT);
    if dialed.is_some() {
        let mut output = stream;
        return Ok(Some(noise::initiate(&mut raw, &mut output, keys)?));
    }
    // Read a byte at a time, so that nothing after the line is buffered away.
    let mut first = LineReader::new(BufReader::with_capacity(1, &mut raw));
    let line = first.read_line()?;
    if line.trim() != SECURE_LINE {
        if Hello::parse(line).is_ok_and(|h| h.swarm == shared.swarm) {
            shared.auth_failed(stream);
            bail!("a HELLO without the handshake of this private swarm");
        }
        let _ = (&mut &*stream).write_all(b"ERROR not in this swarm\n");
        bail!("not a member of this private swarm");
    }
    let mut output = stream;
    match noise::respond(&mut raw, &mut output, keys) {
        Ok(channel) => Ok(Some(channel)),
        Err(e) => {
            shared.auth_failed(stream);
            Err(e.into())
        }
    }
}

/// Exchanges `HELLO`s over the connection's streams; `dialed` is the address we dialed, for an
/// outgoing connection. Returns the peer's `HELLO` once it is known to be another member of our
/// swarm.
pub fn exchange(
    shared: &Shared,
    input: &mut PeerIn,
    output: &mut PeerOut,
    dialed: Option<SocketAddr>,
) -> Result<Greeting> {
    let ours = Hello {
        swarm: shared.swarm,
        peer_id: shared.peer_id,
        listen_port: shared.listen_port,
    };
    let sent = Instant::now();
    if dialed.is_some() {
        output.write_all(ours.to_line().as_bytes())?;
        output.flush()?;
    }
    // The HELLO must arrive whole within the handshake timeout, however slowly it trickles.
    // It is read a byte at a time so that nothing after it is buffered away from the reader
    // that takes over the connection.
    input
        .deadline()
        .set_deadline(Instant::now() + HANDSHAKE_TIMEOUT);
    let mut hello = LineReader::new(BufReader::with_capacity(1, &mut *input));
    let line = match hello.read_line() {
        Ok(line) => line,
        Err(e) => {
            // Key confirmation: a dialer that cannot seal its HELLO does not hold the key (it
            // may have replayed someone's first handshake message).
            if dialed.is_none() && shared.keys.is_some() {
                shared.auth_failed(input.deadline().stream());
            }
            return Err(e.into());
        }
    };
    let theirs = Hello::parse(line)?;
    let rtt = dialed.is_some().then(|| sent.elapsed());
    if theirs.swarm != shared.swarm {
        let _ = output
            .write_all(b"ERROR not in this swarm\n")
            .and_then(|()| output.flush());
        bail!(
            "peer is in swarm {}, not ours",
            &theirs.swarm.to_hex()[..12]
        );
    }
    if dialed.is_none() {
        output.write_all(ours.to_line().as_bytes())?;
        output.flush()?;
    }
    if theirs.peer_id == shared.peer_id {
        if let Some(dialed) = dialed {
            shared.book.mark_self(dialed);
        }
        bail!("connected to ourselves");
    }
    Ok(Greeting { hello: theirs, rtt })
}
