//! Private swarms: the secret, what is derived from it, and where it is kept.
//!
//! Why a module of its own: the secret must reach exactly three places (the composer that makes
//! it, the peer links that prove it, the conductor requests that are signed with it) and no
//! other, so it lives behind one type that never prints itself.
//!
//! - [`SwarmSecret`]: 256 random bits, kept in a key file `NAME.orch.key` beside the `.orch`
//!   (mode 0600). The `.orch` itself keeps the public format, so it can be published for
//!   verification while the key goes only to members (docs/SECURITY.md says why).
//! - [`SwarmKeys`]: HKDF-SHA256 of the secret, salted with the `.orch`'s public swarm id, gives
//!   the Noise pre-shared key of peer links and an Ed25519 signing key. The signing key's public
//!   half **is** the private swarm's id, so a conductor only ever holds a verifier.
//! - [`handshake`]: the Noise `NNpsk0` handshake and the AEAD frames of a private link.
//! - [`failures`]: failed proofs counted per address, and addresses refused for a while.

pub mod failures;
pub mod handshake;

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::orch::{Checksum, SwarmId};
use crate::wire::PeerId;

pub use failures::AuthFailures;

/// What follows a `.orch`'s path to name its key file: `NAME.orch` → `NAME.orch.key`.
pub const KEY_SUFFIX: &str = ".key";
/// The first line of a key file, which says what it is.
const KEY_HEADER: &str = "# torrentnchill private swarm key: give it only to members; keep it 0600";
/// A key file is two short lines; anything much longer is not one.
const MAX_KEY_FILE: u64 = 4096;
/// HKDF labels: each derived key has its own, so no two uses share key material.
const HKDF_SALT_LABEL: &[u8] = b"tnc/1 private swarm";
const PSK_LABEL: &[u8] = b"tnc/1 noise psk";
const SIGNING_LABEL: &[u8] = b"tnc/1 ed25519 signing key";
/// What a conductor request's signature covers, besides its fields.
const CONDUCTOR_LABEL: &[u8] = b"tnc/1 conductor request\n";

/// A private swarm's 256-bit secret. `Debug` does not show it.
#[derive(Clone)]
pub struct SwarmSecret([u8; 32]);

impl fmt::Debug for SwarmSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmSecret(..)")
    }
}

impl SwarmSecret {
    /// 256 bits from the operating system's random source.
    pub fn generate() -> anyhow::Result<SwarmSecret> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| anyhow!("no random numbers: {e}"))?;
        Ok(SwarmSecret(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> SwarmSecret {
        SwarmSecret(bytes)
    }

    /// The key file's text: a comment line, then the secret in 64 hex digits.
    pub fn to_text(&self) -> String {
        format!("{KEY_HEADER}\n{}\n", hex::encode(self.0))
    }

    /// Reads a key file's text: lines starting with `#` and blank lines are ignored, and exactly
    /// one line of 64 hex digits must remain.
    pub fn from_text(text: &str) -> anyhow::Result<SwarmSecret> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let (Some(line), None) = (lines.next(), lines.next()) else {
            bail!("expected one line of 64 hex digits");
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(line, &mut bytes)
            .map_err(|_| anyhow!("expected one line of 64 hex digits"))?;
        Ok(SwarmSecret(bytes))
    }

    /// Reads a key file, refusing one that others may read (where the system has modes).
    pub fn load(path: &Path) -> anyhow::Result<SwarmSecret> {
        let file =
            fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        check_mode(&file, path)?;
        let mut text = String::new();
        file.take(MAX_KEY_FILE)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        SwarmSecret::from_text(&text)
            .with_context(|| format!("{} is not a key file", path.display()))
    }

    /// Writes the key file atomically (a temporary file renamed over `path`), readable by its
    /// owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::atomic_file::replace(path, self.to_text().as_bytes(), 0o600)
    }
}

#[cfg(unix)]
fn check_mode(file: &fs::File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} can be read by others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_file: &fs::File, _path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Where the key file of the `.orch` at `orch_path` is: `NAME.orch.key` beside it.
pub fn key_path(orch_path: &Path) -> PathBuf {
    let mut name = orch_path.as_os_str().to_owned();
    name.push(KEY_SUFFIX);
    PathBuf::from(name)
}

/// The keys of one private swarm, derived from its secret and its `.orch`.
pub struct SwarmKeys {
    /// The Noise pre-shared key of peer links.
    psk: [u8; 32],
    signing: SigningKey,
    /// The private swarm's id: the Ed25519 public key.
    pub swarm: SwarmId,
}

impl fmt::Debug for SwarmKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmKeys {{ swarm: {} }}", self.swarm)
    }
}

impl SwarmKeys {
    /// Derives the keys. `public_swarm` (the `.orch`'s ordinary swarm id) salts the derivation,
    /// so one key file with another `.orch` is another swarm, not a mix of two files.
    pub fn derive(secret: &SwarmSecret, public_swarm: SwarmId) -> SwarmKeys {
        let mut salt = HKDF_SALT_LABEL.to_vec();
        salt.extend_from_slice(&public_swarm.0);
        let hkdf = Hkdf::<Sha256>::new(Some(&salt), &secret.0);
        let mut psk = [0u8; 32];
        let mut seed = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 8160: expand cannot fail.
        let _ = hkdf.expand(PSK_LABEL, &mut psk);
        let _ = hkdf.expand(SIGNING_LABEL, &mut seed);
        let signing = SigningKey::from_bytes(&seed);
        let swarm = Checksum(signing.verifying_key().to_bytes());
        SwarmKeys {
            psk,
            signing,
            swarm,
        }
    }

    pub(crate) fn psk(&self) -> &[u8; 32] {
        &self.psk
    }

    /// Signs a conductor request: the fields of [`SignedFields`] under a label.
    pub fn sign_request(&self, request: &SignedFields) -> [u8; 64] {
        self.signing.sign(&conductor_message(request)).to_bytes()
    }
}

/// What a signed conductor request covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedFields<'a> {
    /// `ANNOUNCE` or `LEAVE`.
    pub command: &'a str,
    /// The conductor's fresh challenge for this connection.
    pub nonce: &'a [u8; 32],
    pub swarm: SwarmId,
    pub peer_id: PeerId,
    pub port: u16,
}

/// The bytes a conductor request's signature is made over: a label, the command, the
/// conductor's nonce, the swarm id, the peer id and the listen port. The member's IP address is
/// the connection's, which the nonce (one per connection) stands for.
fn conductor_message(fields: &SignedFields) -> Vec<u8> {
    let mut message = CONDUCTOR_LABEL.to_vec();
    message.extend_from_slice(fields.command.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(fields.nonce);
    message.extend_from_slice(&fields.swarm.0);
    message.extend_from_slice(&fields.peer_id.0);
    message.extend_from_slice(&fields.port.to_be_bytes());
    message
}

/// True when `signature` is the swarm's signature over `fields` (the swarm id is the key).
pub fn verify_request(fields: &SignedFields, signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&fields.swarm.0) else {
        return false;
    };
    key.verify_strict(
        &conductor_message(fields),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

/// A fresh random 256-bit nonce.
pub fn random_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    if getrandom::getrandom(&mut nonce).is_err() {
        // Without the system's random source, fall back to a fast generator: a guessable nonce
        // only lets a replayed signature through, and the system without one is broken anyway.
        nonce.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orch::Checksum;

    #[test]
    fn key_text_round_trips_and_hides_in_debug() {
        let secret = SwarmSecret::generate().unwrap();
        let again = SwarmSecret::from_text(&secret.to_text()).unwrap();
        assert_eq!(again.0, secret.0);
        assert_eq!(format!("{secret:?}"), "SwarmSecret(..)");
        assert!(SwarmSecret::from_text("abc").is_err());
        assert!(SwarmSecret::from_text(&format!("{0}\n{0}\n", "00".repeat(32))).is_err());
    }

    #[test]
    fn keys_depend_on_secret_and_orch() {
        let a = SwarmSecret::from_bytes([1; 32]);
        let b = SwarmSecret::from_bytes([2; 32]);
        let x = Checksum::of(b"x");
        let y = Checksum::of(b"y");
        let ax = SwarmKeys::derive(&a, x);
        assert_eq!(ax.swarm, SwarmKeys::derive(&a, x).swarm);
        assert_ne!(ax.swarm, SwarmKeys::derive(&b, x).swarm);
        assert_ne!(ax.swarm, SwarmKeys::derive(&a, y).swarm);
        assert_ne!(ax.psk, SwarmKeys::derive(&a, y).psk);
        assert_ne!(ax.psk[..], ax.swarm.0[..]);
    }

    #[test]
    fn signatures_bind_every_field() {
        let keys = SwarmKeys::derive(&SwarmSecret::from_bytes([7; 32]), Checksum::of(b"x"));
        let nonce = [9u8; 32];
        let fields = SignedFields {
            command: "ANNOUNCE",
            nonce: &nonce,
            swarm: keys.swarm,
            peer_id: PeerId([3; 16]),
            port: 4000,
        };
        let signature = keys.sign_request(&fields);
        assert!(verify_request(&fields, &signature));
        let other_nonce = [8u8; 32];
        for changed in [
            SignedFields {
                command: "LEAVE",
                ..fields
            },
            SignedFields {
                nonce: &other_nonce,
                ..fields
            },
            SignedFields {
                port: 4001,
                ..fields
            },
            SignedFields {
                peer_id: PeerId([4; 16]),
                ..fields
            },
            SignedFields {
                swarm: Checksum::of(b"x"),
                ..fields
            },
        ] {
            assert!(!verify_request(&changed, &signature));
        }
    }
}
