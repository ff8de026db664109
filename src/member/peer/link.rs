//! The two byte streams of one connection, plain (a public swarm) or sealed (a private one), so
//! that the handshake, the reader and the writer are the same code for both.
//!
//! - [`PeerIn`]: what the reader reads, through the deadline of [`DeadlineStream`]; sealed, it
//!   is an [`Opener`] that decrypts and authenticates every frame.
//! - [`PeerOut`]: what the writer writes, buffered; sealed, a [`Sealer`]. A part is sent with
//!   `sendfile` on a plain link; a sealed one cannot hand the page cache to the socket, so the
//!   part is read (`pread`) into the sealer's frames, sealed in place and written in large
//!   writes (`writer::send_part`).

use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;

use crate::net::DeadlineStream;
use crate::secure::handshake::{Channel, Opener, Sealer};

/// Buffer of a plain link's writer (a sealed link gathers frames in its [`Sealer`]).
const WRITE_BUFFER: usize = 64 << 10;

/// The reading side of a connection.
pub enum PeerIn<'a> {
    Plain(DeadlineStream<'a>),
    Sealed(Box<Opener<DeadlineStream<'a>>>),
}

impl<'a> PeerIn<'a> {
    pub fn new(stream: DeadlineStream<'a>, channel: Option<&Channel>) -> PeerIn<'a> {
        match channel {
            None => PeerIn::Plain(stream),
            Some(channel) => PeerIn::Sealed(Box::new(channel.opener(stream))),
        }
    }

    /// The socket's deadline, for the reader to move.
    pub fn deadline(&self) -> &DeadlineStream<'a> {
        match self {
            PeerIn::Plain(stream) => stream,
            PeerIn::Sealed(opener) => opener.get_ref(),
        }
    }
}

impl Read for PeerIn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerIn::Plain(stream) => stream.read(buf),
            PeerIn::Sealed(opener) => opener.read(buf),
        }
    }
}

/// The writing side of a connection.
pub enum PeerOut {
    Plain(BufWriter<TcpStream>),
    Sealed(Box<Sealer<TcpStream>>),
}

impl PeerOut {
    pub fn new(stream: TcpStream, channel: Option<&Channel>) -> PeerOut {
        match channel {
            None => PeerOut::Plain(BufWriter::with_capacity(WRITE_BUFFER, stream)),
            Some(channel) => PeerOut::Sealed(Box::new(channel.sealer(stream))),
        }
    }
}

impl Write for PeerOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerOut::Plain(out) => out.write(buf),
            PeerOut::Sealed(out) => out.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            PeerOut::Plain(out) => out.write_all(buf),
            PeerOut::Sealed(out) => out.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerOut::Plain(out) => out.flush(),
            PeerOut::Sealed(out) => out.flush(),
        }
    }
}
