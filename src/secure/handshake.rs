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
//! After the handshake each direction is a stream of frames: a 4-byte big-endian length, then
//! that many bytes of AES-256-GCM ciphertext and tag (at most [`MAX_FRAME`]). The nonce is a
//! counter per direction kept by each side and never sent, so a frame dropped, repeated,
//! reordered or altered fails authentication and ends the link.
//!
//! Why the frames are sealed with ring on the keys of the Noise split (snow's `risky-raw-split`)
//! rather than by snow's transport: snow seals at most 65,535 bytes at a time and copies every
//! byte once more on each side (its seal copies the plaintext into the message, its open the
//! message into the plaintext); a part of a private swarm then cost a copy more than it needs on
//! the seeder and on the member. Here the seeder reads a part straight into the frame buffer
//! and seals it there ([`Sealer::write_from`]), the member reads a frame straight into its part
//! buffer and opens it there ([`Opener`]). Nothing else changes: the same keys, ring's
//! AES-256-GCM (the cipher snow's ring resolver uses), Noise's nonce layout (4 zero bytes, the
//! counter big-endian) and no associated data, so each frame's sealed bytes are exactly the
//! Noise transport message snow would make (a test checks it); only frames may be longer. The
//! two keys are used one per direction, never both ways, and the counters never repeat.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use snow::params::NoiseParams;

use super::SwarmKeys;

/// The line a dialer sends instead of `HELLO` in a private swarm.
pub const SECURE_LINE: &str = "SECURE tnc/1 NNpsk0";
/// The Noise protocol: NNpsk0 with X25519, AES-256-GCM and SHA-256 (ring's AES-GCM through
/// snow's resolver: AES-NI and carry-less multiply where the CPU has them).
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Bound on one handshake message (NNpsk0's are 48 bytes: an ephemeral key and a tag).
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// The length before each frame: 4 bytes, big-endian.
const HEADER: usize = 4;
/// The AEAD tag at the end of every frame.
const TAG: usize = 16;
/// Most plaintext one frame carries.
pub const FRAME_PAYLOAD: usize = 256 << 10;
/// Most sealed bytes in one frame (after its header).
pub const MAX_FRAME: usize = FRAME_PAYLOAD + TAG;
/// Sealed frames gathered before one write to the socket.
const SEAL_BUFFER: usize = 256 << 10;
/// What an [`Opener`] holds: one whole frame and as much read ahead again.
const OPEN_BUFFER: usize = 2 * (HEADER + MAX_FRAME);
/// Bytes read ahead of a frame that is read for lines: several frames at once.
const READ_AHEAD: usize = OPEN_BUFFER;
/// Bytes read ahead of the tag of a frame read into place (a part): the next header, not the
/// next frame, which is better read into place too.
const SMALL_AHEAD: usize = 4096;

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

/// Noise's handshake state for this swarm's keys, as the dialer (`initiator`) or the acceptor.
fn handshake_state(keys: &SwarmKeys, initiator: bool) -> Result<snow::HandshakeState, SecureError> {
    let prologue = prologue(keys);
    let builder = snow::Builder::new(builder_params())
        .prologue(&prologue)
        .psk(0, keys.psk());
    match initiator {
        true => builder.build_initiator(),
        false => builder.build_responder(),
    }
    .map_err(|_| SecureError::Refused("cannot start the handshake"))
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
    let mut noise = handshake_state(keys, true)?;
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
    Channel::from_handshake(noise, true)
}

/// The acceptor's side, once it has read [`SECURE_LINE`]: checks the first message, answers.
/// The caller must read and decrypt the dialer's first frame before it sends anything else.
pub fn respond(
    input: &mut impl Read,
    output: &mut impl Write,
    keys: &SwarmKeys,
) -> Result<Channel, SecureError> {
    let mut noise = handshake_state(keys, false)?;
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
    Channel::from_handshake(noise, false)
}

/// The keys of an established link, shared by its reading and writing halves (each keeps its
/// own nonce counter): the two transport keys of the Noise split, one per direction.
#[derive(Clone)]
pub struct Channel {
    send: Arc<LessSafeKey>,
    receive: Arc<LessSafeKey>,
}

impl Channel {
    fn from_handshake(
        mut noise: snow::HandshakeState,
        initiator: bool,
    ) -> Result<Channel, SecureError> {
        if !noise.is_handshake_finished() {
            return Err(SecureError::Refused("handshake did not finish"));
        }
        // Noise's split: the first key seals what the initiator sends, the second what the
        // responder sends. snow's transport would use them the same way, 65,535 bytes at a time.
        let (to_responder, to_initiator) = noise.dangerously_get_raw_split();
        let key = |bytes: &[u8; 32]| {
            UnboundKey::new(&AES_256_GCM, bytes)
                .map(|k| Arc::new(LessSafeKey::new(k)))
                .map_err(|_| SecureError::Refused("cannot use the transport keys"))
        };
        let (send, receive) = if initiator {
            (key(&to_responder)?, key(&to_initiator)?)
        } else {
            (key(&to_initiator)?, key(&to_responder)?)
        };
        Ok(Channel { send, receive })
    }

    pub fn opener<R: Read>(&self, inner: R) -> Opener<R> {
        Opener {
            inner,
            key: Arc::clone(&self.receive),
            nonce: 0,
            raw: vec![0u8; OPEN_BUFFER],
            raw_start: 0,
            raw_end: 0,
            plain_start: 0,
            plain_end: 0,
        }
    }

    pub fn sealer<W: Write>(&self, inner: W) -> Sealer<W> {
        Sealer {
            inner,
            key: Arc::clone(&self.send),
            nonce: 0,
            buf: vec![0u8; SEAL_BUFFER + HEADER + MAX_FRAME],
            used: 0,
            open: 0,
        }
    }
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The AES-GCM nonce of frame `counter`: as Noise makes it, 4 zero bytes and the counter in
/// 8 big-endian bytes. A counter that would wrap ends the link instead.
fn next_nonce(counter: &mut u64) -> io::Result<Nonce> {
    let this = *counter;
    *counter = this
        .checked_add(1)
        .ok_or_else(|| invalid("frame counter exhausted"))?;
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&this.to_be_bytes());
    Ok(Nonce::assume_unique_for_key(bytes))
}

/// The reading half: decrypts frames into a byte stream.
pub struct Opener<R> {
    inner: R,
    key: Arc<LessSafeKey>,
    /// The nonce counter the next frame must have been sealed with.
    nonce: u64,
    /// Sealed bytes read ahead, and a frame decrypted in place.
    raw: Vec<u8>,
    raw_start: usize,
    raw_end: usize,
    /// The decrypted frame in `raw` not yet read.
    plain_start: usize,
    plain_end: usize,
}

impl<R: Read> Opener<R> {
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Makes at least `want` sealed bytes available in `raw`, reading at most `ahead` bytes
    /// past them. False when the stream ended with none buffered (a clean end, between frames);
    /// ending with some is an error. Only called with no decrypted bytes left unread.
    fn fill(&mut self, want: usize, ahead: usize) -> io::Result<bool> {
        if self.raw_end - self.raw_start >= want {
            return Ok(true);
        }
        self.raw.copy_within(self.raw_start..self.raw_end, 0);
        self.raw_end -= self.raw_start;
        self.raw_start = 0;
        let limit = want.saturating_add(ahead).min(self.raw.len());
        while self.raw_end < want {
            match self.inner.read(&mut self.raw[self.raw_end..limit]) {
                Ok(0) if self.raw_end == 0 => return Ok(false),
                Ok(0) => return Err(mid_frame(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => self.raw_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads the next frame's header: the length of its sealed bytes. `None` at a clean end.
    fn header(&mut self, ahead: usize) -> io::Result<Option<usize>> {
        if !self.fill(HEADER, ahead)? {
            return Ok(None);
        }
        let at = self.raw_start;
        let mut len = [0u8; HEADER];
        len.copy_from_slice(&self.raw[at..at + HEADER]);
        let len = u32::from_be_bytes(len) as usize;
        if len <= TAG || len > MAX_FRAME {
            return Err(invalid("frame of a wrong length"));
        }
        self.raw_start += HEADER;
        Ok(Some(len))
    }

    /// Decrypts the next frame in place in `raw`. False at a clean end.
    fn next_frame(&mut self, sealed: usize) -> io::Result<()> {
        if !self.fill(sealed, READ_AHEAD)? {
            return Err(mid_frame(io::ErrorKind::UnexpectedEof.into()));
        }
        let at = self.raw_start;
        self.raw_start += sealed;
        let nonce = next_nonce(&mut self.nonce)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut self.raw[at..at + sealed])
            .map_err(|_| invalid("a frame failed authentication"))?;
        self.plain_start = at;
        self.plain_end = at + plain.len();
        Ok(())
    }

    /// Reads and decrypts a frame of `sealed` bytes straight into `out`, which holds its
    /// plaintext: the bytes already read ahead are copied, the rest read into place.
    fn frame_into(&mut self, sealed: usize, out: &mut [u8]) -> io::Result<usize> {
        let len = sealed - TAG;
        let have = (self.raw_end - self.raw_start).min(len);
        out[..have].copy_from_slice(&self.raw[self.raw_start..self.raw_start + have]);
        self.raw_start += have;
        if have < len {
            self.inner
                .read_exact(&mut out[have..len])
                .map_err(mid_frame)?;
        }
        // The tag, and little more: what follows is better read into place too.
        if !self.fill(TAG, SMALL_AHEAD)? {
            return Err(mid_frame(io::ErrorKind::UnexpectedEof.into()));
        }
        let tag: [u8; TAG] = self.raw[self.raw_start..self.raw_start + TAG]
            .try_into()
            .map_err(|_| invalid("short tag"))?;
        self.raw_start += TAG;
        let nonce = next_nonce(&mut self.nonce)?;
        self.key
            .open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(tag), &mut out[..len], 0..)
            .map_err(|_| invalid("a frame failed authentication"))?;
        Ok(len)
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
        if self.plain_start == self.plain_end {
            // Large reads (parts) want the next frame read into place; small ones (lines)
            // want several frames read at once.
            let large = buf.len() >= FRAME_PAYLOAD;
            let Some(sealed) = self.header(if large { SMALL_AHEAD } else { READ_AHEAD })? else {
                return Ok(0);
            };
            if sealed - TAG <= buf.len() {
                return self.frame_into(sealed, buf);
            }
            self.next_frame(sealed)?;
        }
        let n = buf.len().min(self.plain_end - self.plain_start);
        buf[..n].copy_from_slice(&self.raw[self.plain_start..self.plain_start + n]);
        self.plain_start += n;
        Ok(n)
    }
}

/// The writing half: gathers plaintext into frames in place and frames into large writes.
/// Nothing reaches the socket until a flush or a full buffer.
pub struct Sealer<W: Write> {
    inner: W,
    key: Arc<LessSafeKey>,
    /// The nonce counter of the next frame: never reused.
    nonce: u64,
    /// Sealed frames, then the frame being filled (its header at `used`); zeroed once.
    buf: Vec<u8>,
    used: usize,
    /// Plaintext bytes in the frame being filled.
    open: usize,
}

impl<W: Write> Sealer<W> {
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Room in the open frame, after writing out the sealed ones when a new frame would not
    /// fit behind them.
    fn room(&mut self) -> io::Result<usize> {
        if self.open == 0 && self.used + HEADER + MAX_FRAME > self.buf.len() {
            self.inner.write_all(&self.buf[..self.used])?;
            self.used = 0;
        }
        Ok(FRAME_PAYLOAD - self.open)
    }

    /// Seals the open frame, if it holds anything.
    fn seal(&mut self) -> io::Result<()> {
        if self.open == 0 {
            return Ok(());
        }
        let start = self.used + HEADER;
        let end = start + self.open;
        let nonce = next_nonce(&mut self.nonce)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut self.buf[start..end])
            .map_err(|_| invalid("cannot seal a frame"))?;
        self.buf[end..end + TAG].copy_from_slice(tag.as_ref());
        let sealed = (self.open + TAG) as u32;
        self.buf[self.used..start].copy_from_slice(&sealed.to_be_bytes());
        self.used = end + TAG;
        self.open = 0;
        Ok(())
    }

    /// Writes `len` bytes that `fill(offset, into)` puts straight into the frames (a part read
    /// from storage lands where it is sealed: no copy).
    pub fn write_from(
        &mut self,
        len: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = self.room()?.min(len - done);
            let at = self.used + HEADER + self.open;
            fill(done, &mut self.buf[at..at + n])?;
            self.open += n;
            done += n;
            if self.open == FRAME_PAYLOAD {
                self.seal()?;
            }
        }
        Ok(())
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.room()?.min(data.len());
        let at = self.used + HEADER + self.open;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.open += n;
        if self.open == FRAME_PAYLOAD {
            self.seal()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal()?;
        if self.used > 0 {
            self.inner.write_all(&self.buf[..self.used])?;
            self.used = 0;
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
        Ok((Channel::from_handshake(noise, true)?, b))
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
        let frame_len = |at: usize| {
            HEADER + u32::from_be_bytes(wire[at..at + HEADER].try_into().unwrap()) as usize
        };
        let first_len = frame_len(0);
        let second_len = frame_len(first_len);
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
            let len =
                HEADER + u32::from_be_bytes(wire[at..at + HEADER].try_into().unwrap()) as usize;
            assert!(frames.insert(wire[at..at + len].to_vec()));
            at += len;
        }
        assert_eq!(frames.len(), 1000);
    }

    /// A frame's sealed bytes are exactly the Noise transport message snow would make with the
    /// same handshake: the keys of the split, Noise's nonces, no associated data.
    #[test]
    fn a_frame_is_a_noise_transport_message() {
        let keys = keys(1);
        let mut dialer = snow::Builder::new(builder_params())
            .prologue(&prologue(&keys))
            .psk(0, keys.psk())
            .build_initiator()
            .unwrap();
        let mut m1 = [0u8; 256];
        let n1 = dialer.write_message(&[], &mut m1).unwrap();
        let mut to_dialer = Vec::new();
        let acceptor = respond(&mut Cursor::new(framed(&m1[..n1])), &mut to_dialer, &keys).unwrap();
        let answer = read_handshake_message(&mut Cursor::new(to_dialer)).unwrap();
        dialer.read_message(&answer, &mut [0u8; 256]).unwrap();
        let snow_transport = dialer.into_stateless_transport_mode().unwrap();
        let mut wire = Vec::new();
        for (nonce, text) in [b"first frame".as_slice(), b"second"]
            .into_iter()
            .enumerate()
        {
            let mut message = vec![0u8; text.len() + TAG];
            snow_transport
                .write_message(nonce as u64, text, &mut message)
                .unwrap();
            wire.extend_from_slice(&(message.len() as u32).to_be_bytes());
            wire.extend_from_slice(&message);
        }
        let mut got = Vec::new();
        acceptor
            .opener(Cursor::new(wire))
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, b"first framesecond");
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
