//! The `HELLO` exchange that opens every connection, and what is settled before anything else
//! is sent: the same swarm, not ourselves.
//!
//! The dialer speaks first; the side that accepted answers before judging the peer, so that a
//! member that dialed itself sees its own id and stops dialing that address.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::member::shared::Shared;
use crate::net::DeadlineStream;
use crate::wire::{Hello, LineReader};

/// How long a new connection may take to say `HELLO`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handshake learnt of the peer.
pub struct Greeting {
    pub hello: Hello,
    /// The dialer's round trip: from sending its `HELLO` to reading the answer.
    pub rtt: Option<Duration>,
}

/// Exchanges `HELLO`s on `stream`; `dialed` is the address we dialed, for an outgoing
/// connection. Returns the peer's `HELLO` once it is known to be another member of our swarm.
pub fn exchange(
    shared: &Shared,
    stream: &TcpStream,
    dialed: Option<SocketAddr>,
) -> Result<Greeting> {
    let ours = Hello {
        swarm: shared.swarm,
        peer_id: shared.peer_id,
        listen_port: shared.listen_port,
    };
    let mut writer = stream;
    let sent = Instant::now();
    if dialed.is_some() {
        writer.write_all(ours.to_line().as_bytes())?;
    }
    // The HELLO must arrive whole within the handshake timeout, however slowly it trickles.
    // It is read a byte at a time so that nothing after it is buffered away from the reader
    // that takes over the connection.
    let mut hello = LineReader::new(BufReader::with_capacity(
        1,
        DeadlineStream::within(stream, HANDSHAKE_TIMEOUT),
    ));
    let theirs = Hello::parse(hello.read_line()?)?;
    let rtt = dialed.is_some().then(|| sent.elapsed());
    if theirs.swarm != shared.swarm {
        let _ = writer.write_all(b"ERROR not in this swarm\n");
        bail!(
            "peer is in swarm {}, not ours",
            &theirs.swarm.to_hex()[..12]
        );
    }
    if dialed.is_none() {
        writer.write_all(ours.to_line().as_bytes())?;
    }
    if theirs.peer_id == shared.peer_id {
        if let Some(dialed) = dialed {
            shared.book.mark_self(dialed);
        }
        bail!("connected to ourselves");
    }
    Ok(Greeting { hello: theirs, rtt })
}
