//! The Noise `NNpsk0` handshake of a private peer link, and the AEAD frames that carry every
//! byte after it.
//!
//! Why Noise through `snow`: both sides prove the swarm's pre-shared key without sending it,
//! with fresh ephemeral keys on both sides (forward secrecy for the link), and the handshake
//! and ciphers come from a well-kept crate instead of being designed here. The dialer sends the
//! line [`SECURE_LINE`] then the first handshake message; the acceptor answers with the second.
//! Each handshake message is a 2-byte big-endian length and at most
//! [`MAX_HANDSHAKE_MESSAGE`] bytes (NNpsk0's are 48).
//!
//! - A wrong pre-shared key fails on the acceptor when it decrypts the first message, and on
//!   the dialer when it decrypts the second.
//! - A replayed first message passes on the acceptor, but only the holder of the dialer's
//!   ephemeral key can then encrypt a transport message: the acceptor sends nothing but the
//!   second handshake message until it has decrypted the dialer's first frame (key
//!   confirmation, done by the caller: the dialer's `HELLO` comes first).
//!
//! After the handshake each direction is a stream of frames: a 2-byte big-endian length, then
//! that many bytes of AES-256-GCM ciphertext and tag (at most 65,535, Noise's message limit).
//! The nonce is a counter per direction kept by each side and never sent, so a frame dropped,
//! repeated, reordered or altered fails authentication and ends the link. [`Sealer`] packs many
//! frames into one write; [`Opener`] decrypts straight into the caller's buffer when it can.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use snow::params::NoiseParams;
use snow::StatelessTransportState;

use super::SwarmKeys;

/// The line a dialer sends instead of `HELLO` in a private swarm.
pub const SECURE_LINE: &str = "SECURE tnc/1 NNpsk0";
/// The Noise protocol: NNpsk0 with X25519, AES-256-GCM and SHA-256 (ring's AES-GCM through
/// snow's resolver: AES-NI and carry-less multiply where the CPU has them).
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Bound on one handshake message (NNpsk0's are 48 bytes: an ephemeral key and a tag).
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// Noise's largest message, and so the largest frame.
pub const MAX_FRAME: usize = 65535;
/// The AEAD tag at the end of every frame.
const TAG: usize = 16;
/// Most plaintext one frame carries.
pub const FRAME_PAYLOAD: usize = MAX_FRAME - TAG;
/// Sealed frames gathered before one write to the socket.
const SEAL_BUFFER: usize = 256 << 10;
/// Sealed bytes an [`Opener`] reads ahead at most (room for at least one whole frame).
const OPEN_BUFFER: usize = 256 << 10;

/// Why a handshake failed.
#[derive(Debug)]
pub enum SecureError {
    /// The socket failed or closed, or timed out.
    Io(io::Error),
    /// The other side does not hold the swarm's key, or sent something that is no handshake.
    Refused(&'static str),
}

impl fmt::Display for SecureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecureError::Io(e) => write!(f, "secure handshake: {e}"),
            SecureError::Refused(why) => write!(f, "secure handshake refused: {why}"),
        }
    }
}

impl std::error::Error for SecureError {}

impl From<io::Error> for SecureError {
    fn from(e: io::Error) -> SecureError {
        SecureError::Io(e)
    }
}

/// The prologue both sides mix into the handshake: the protocol label and the swarm id, so a
/// handshake made for one swarm (or one version of this protocol) fails in another.
fn prologue(keys: &SwarmKeys) -> Vec<u8> {
    let mut prologue = format!("{SECURE_LINE}\n").into_bytes();
    prologue.extend_from_slice(&keys.swarm.0);
    prologue
}

fn builder_params() -> NoiseParams {
    // A constant that snow parses: a failure is a bug in this file, caught by every test.
    NOISE_PARAMS.parse().expect("valid Noise parameters")
}

/// Reads one length-prefixed handshake message, refusing one over the bound before reading it.
pub fn read_handshake_message(input: &mut impl Read) -> Result<Vec<u8>, SecureError> {
    let mut len = [0u8; 2];
    input.read_exact(&mut len)?;
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_HANDSHAKE_MESSAGE {
        return Err(SecureError::Refused("handshake message of a wrong length"));
    }
    let mut message = vec![0u8; len];
    input.read_exact(&mut message)?;
    Ok(message)
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

/// The dialer's side: sends [`SECURE_LINE`] and the first message, checks the answer.
pub fn initiate(
    input: &mut impl Read,
    output: &mut impl Write,
    keys: &SwarmKeys,
) -> Result<Channel, SecureError> {
    let prologue = prologue(keys);
    let mut noise = snow::Builder::new(builder_params())
        .prologue(&prologue)
        .psk(0, keys.psk())
        .build_initiator()
        .map_err(|_| SecureError::Refused("cannot start the handshake"))?;
    let mut message = [0u8; MAX_HANDSHAKE_MESSAGE];
    let len = noise
        .write_message(&[], &mut message)
        .map_err(|_| SecureError::Refused("cannot write the handshake"))?;
    let mut first = format!("{SECURE_LINE}\n").into_bytes();
    first.extend_from_slice(&framed(&message[..len]));
    output.write_all(&first)?;
    output.flush()?;
    let answer = read_handshake_message(input)?;
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
    noise
        .read_message(&answer, &mut payload)
        .map_err(|_| SecureError::Refused("the peer does not hold this swarm's key"))?;
    Channel::from_handshake(noise)
}

/// The acceptor's side, once it has read [`SECURE_LINE`]: checks the first message, answers.
/// The caller must read and decrypt the dialer's first frame before it sends anything else.
pub fn respond(
    input: &mut impl Read,
    output: &mut impl Write,
    keys: &SwarmKeys,
) -> Result<Channel, SecureError> {
    let prologue = prologue(keys);
    let mut noise = snow::Builder::new(builder_params())
        .prologue(&prologue)
        .psk(0, keys.psk())
        .build_responder()
        .map_err(|_| SecureError::Refused("cannot start the handshake"))?;
    let first = read_handshake_message(input)?;
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
    noise
        .read_message(&first, &mut payload)
        .map_err(|_| SecureError::Refused("the peer does not hold this swarm's key"))?;
    let mut message = [0u8; MAX_HANDSHAKE_MESSAGE];
    let len = noise
        .write_message(&[], &mut message)
        .map_err(|_| SecureError::Refused("cannot write the handshake"))?;
    output.write_all(&framed(&message[..len]))?;
    output.flush()?;
    Channel::from_handshake(noise)
}

/// The keys of an established link, shared by its reading and writing halves (each keeps its
/// own nonce counter).
#[derive(Clone)]
pub struct Channel {
    transport: Arc<StatelessTransportState>,
}

impl Channel {
    fn from_handshake(noise: snow::HandshakeState) -> Result<Channel, SecureError> {
        let transport = noise
            .into_stateless_transport_mode()
            .map_err(|_| SecureError::Refused("handshake did not finish"))?;
        Ok(Channel {
            transport: Arc::new(transport),
        })
    }

    pub fn opener<R: Read>(&self, inner: R) -> Opener<R> {
        Opener {
            inner,
            transport: Arc::clone(&self.transport),
            nonce: 0,
            raw: vec![0u8; OPEN_BUFFER],
            raw_start: 0,
            raw_end: 0,
            plain: vec![0u8; FRAME_PAYLOAD],
            start: 0,
            end: 0,
        }
    }

    pub fn sealer<W: Write>(&self, inner: W) -> Sealer<W> {
        Sealer {
            inner,
            transport: Arc::clone(&self.transport),
            nonce: 0,
            plain: Vec::with_capacity(FRAME_PAYLOAD),
            out: Pending {
                buf: vec![0u8; SEAL_BUFFER + MAX_FRAME + 2],
                used: 0,
            },
        }
    }
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The reading half: decrypts frames into a byte stream.
pub struct Opener<R> {
    inner: R,
    transport: Arc<StatelessTransportState>,
    /// The nonce the next frame must have been sealed with.
    nonce: u64,
    /// Sealed bytes read ahead: one read takes several frames when they have arrived.
    raw: Vec<u8>,
    raw_start: usize,
    raw_end: usize,
    plain: Vec<u8>,
    /// The part of `plain` not yet read.
    start: usize,
    end: usize,
}

impl<R: Read> Opener<R> {
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Makes at least `want` sealed bytes available in `raw`. False when the stream ended
    /// with none buffered (a clean end, between frames); ending with some is an error.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.raw_end - self.raw_start >= want {
            return Ok(true);
        }
        self.raw.copy_within(self.raw_start..self.raw_end, 0);
        self.raw_end -= self.raw_start;
        self.raw_start = 0;
        while self.raw_end < want {
            match self.inner.read(&mut self.raw[self.raw_end..]) {
                Ok(0) if self.raw_end == 0 => return Ok(false),
                Ok(0) => return Err(mid_frame(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => self.raw_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads and decrypts the next frame into `out` (at least [`FRAME_PAYLOAD`] bytes long).
    /// `Ok(0)`: the stream ended cleanly, between frames.
    fn next_frame(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.fill(2)? {
            return Ok(0);
        }
        let at = self.raw_start;
        let len = u16::from_be_bytes([self.raw[at], self.raw[at + 1]]) as usize;
        if len <= TAG {
            return Err(invalid("empty or short frame"));
        }
        if !self.fill(2 + len)? {
            return Err(mid_frame(io::ErrorKind::UnexpectedEof.into()));
        }
        let at = self.raw_start;
        self.raw_start += 2 + len;
        let nonce = self.nonce;
        self.nonce = nonce
            .checked_add(1)
            .ok_or_else(|| invalid("frame counter exhausted"))?;
        self.transport
            .read_message(nonce, &self.raw[at + 2..at + 2 + len], out)
            .map_err(|_| invalid("a frame failed authentication"))
    }
}

fn mid_frame(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a frame",
        )
    } else {
        e
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.start == self.end {
            if buf.len() >= FRAME_PAYLOAD {
                // Decrypt straight into the caller's buffer: no copy for large reads.
                return self.next_frame(buf);
            }
            let mut plain = std::mem::take(&mut self.plain);
            let got = self.next_frame(&mut plain);
            self.plain = plain;
            self.start = 0;
            self.end = got?;
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.plain[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// The writing half: gathers plaintext into frames and frames into large writes. Nothing
/// reaches the socket until a flush or a full buffer.
pub struct Sealer<W: Write> {
    inner: W,
    transport: Arc<StatelessTransportState>,
    /// The nonce of the next frame: a counter, so never reused.
    nonce: u64,
    plain: Vec<u8>,
    out: Pending,
}

/// Sealed frames waiting for one write: a buffer zeroed once, filled up to `used`, so sealing a
/// frame never clears memory first.
struct Pending {
    buf: Vec<u8>,
    used: usize,
}

impl<W: Write> Sealer<W> {
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

/// Seals `payload` as one frame at the end of `out`, writing `out` to `inner` first when the
/// frame would not fit.
fn seal(
    transport: &StatelessTransportState,
    nonce: &mut u64,
    out: &mut Pending,
    inner: &mut impl Write,
    payload: &[u8],
) -> io::Result<()> {
    if payload.is_empty() {
        return Ok(());
    }
    let len = payload.len() + TAG;
    if out.used + 2 + len > out.buf.len() {
        inner.write_all(&out.buf[..out.used])?;
        out.used = 0;
    }
    let this = *nonce;
    *nonce = this
        .checked_add(1)
        .ok_or_else(|| invalid("frame counter exhausted"))?;
    let at = out.used;
    out.buf[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
    let sealed = transport
        .write_message(this, payload, &mut out.buf[at + 2..at + 2 + len])
        .map_err(|_| invalid("cannot seal a frame"))?;
    debug_assert_eq!(sealed, len);
    out.used += 2 + len;
    Ok(())
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Sealer {
            inner,
            transport,
            nonce,
            plain,
            out,
        } = self;
        if plain.is_empty() && buf.len() >= FRAME_PAYLOAD {
            // Seal straight from the caller's buffer: the encryption is the only copy.
            seal(transport, nonce, out, inner, &buf[..FRAME_PAYLOAD])?;
            return Ok(FRAME_PAYLOAD);
        }
        let n = buf.len().min(FRAME_PAYLOAD - plain.len());
        plain.extend_from_slice(&buf[..n]);
        if plain.len() == FRAME_PAYLOAD {
            seal(transport, nonce, out, inner, plain)?;
            plain.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        seal(
            &self.transport,
            &mut self.nonce,
            &mut self.out,
            &mut self.inner,
            &self.plain,
        )?;
        self.plain.clear();
        if self.out.used > 0 {
            self.inner.write_all(&self.out.buf[..self.out.used])?;
            self.out.used = 0;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orch::Checksum;
    use crate::secure::SwarmSecret;
    use std::io::Cursor;

    fn keys(secret: u8) -> SwarmKeys {
        SwarmKeys::derive(&SwarmSecret::from_bytes([secret; 32]), Checksum::of(b"x"))
    }

    /// Runs both handshakes over in-memory pipes (the dialer's first flight is complete before
    /// the acceptor reads, which NNpsk0 allows).
    fn pair(dialer: &SwarmKeys, acceptor: &SwarmKeys) -> Result<(Channel, Channel), SecureError> {
        let mut noise = snow::Builder::new(builder_params())
            .prologue(&prologue(dialer))
            .psk(0, dialer.psk())
            .build_initiator()
            .unwrap();
        let mut m1 = [0u8; 256];
        let n1 = noise.write_message(&[], &mut m1).unwrap();
        let mut to_dialer = Vec::new();
        let b = respond(
            &mut Cursor::new(framed(&m1[..n1])),
            &mut to_dialer,
            acceptor,
        )?;
        let answer = read_handshake_message(&mut Cursor::new(to_dialer))?;
        let mut payload = [0u8; 256];
        noise
            .read_message(&answer, &mut payload)
            .map_err(|_| SecureError::Refused("bad answer"))?;
        Ok((Channel::from_handshake(noise)?, b))
    }

    #[test]
    fn frames_round_trip_and_refuse_tampering() {
        let (a, b) = pair(&keys(1), &keys(1)).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        {
            let mut sealer = a.sealer(&mut wire);
            sealer.write_all(b"HELLO\n").unwrap();
            sealer.write_all(&data).unwrap();
            sealer.flush().unwrap();
        }
        let mut got = Vec::new();
        b.opener(Cursor::new(wire.clone()))
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(&got[..6], b"HELLO\n");
        assert_eq!(&got[6..], &data[..]);
        // The plaintext is nowhere in the frames.
        assert!(!wire.windows(16).any(|w| w == &data[1000..1016]));

        // One bit flipped, a frame dropped, frames swapped, the stream cut in a frame.
        let mut flipped = wire.clone();
        flipped[100] ^= 1;
        let first_len = 2 + u16::from_be_bytes([wire[0], wire[1]]) as usize;
        let second_len = 2 + u16::from_be_bytes([wire[first_len], wire[first_len + 1]]) as usize;
        let dropped = wire[first_len..].to_vec();
        let mut swapped = wire[first_len..first_len + second_len].to_vec();
        swapped.extend_from_slice(&wire[..first_len]);
        let cut = wire[..first_len + 10].to_vec();
        for bad in [flipped, dropped, swapped, cut] {
            let mut sink = Vec::new();
            assert!(b.opener(Cursor::new(bad)).read_to_end(&mut sink).is_err());
        }
    }

    #[test]
    fn nonces_count_up_and_never_repeat() {
        let (a, _) = pair(&keys(1), &keys(1)).unwrap();
        let mut wire = Vec::new();
        let mut sealer = a.sealer(&mut wire);
        for i in 0..1000u32 {
            sealer.write_all(&i.to_be_bytes()).unwrap();
            sealer.flush().unwrap();
            assert_eq!(sealer.nonce, u64::from(i) + 1);
        }
        drop(sealer);
        // Equal plaintexts never give equal frames.
        let mut frames = std::collections::HashSet::new();
        let mut at = 0;
        while at < wire.len() {
            let len = 2 + u16::from_be_bytes([wire[at], wire[at + 1]]) as usize;
            assert!(frames.insert(wire[at..at + len].to_vec()));
            at += len;
        }
        assert_eq!(frames.len(), 1000);
    }

    #[test]
    fn a_wrong_key_is_refused() {
        assert!(matches!(
            pair(&keys(1), &keys(2)),
            Err(SecureError::Refused(_))
        ));
    }

    #[test]
    fn handshake_messages_are_bounded() {
        let mut too_long = vec![0x01, 0x01];
        too_long.extend_from_slice(&[0u8; 257]);
        assert!(matches!(
            read_handshake_message(&mut Cursor::new(too_long)),
            Err(SecureError::Refused(_))
        ));
        assert!(read_handshake_message(&mut Cursor::new(vec![0, 0])).is_err());
    }
}
