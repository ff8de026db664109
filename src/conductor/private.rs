//! The conductor's side of private swarms: a member proves it holds the swarm's key by signing
//! its request over a fresh challenge, and only then sees the member list.
//!
//! Why a module of its own: the conductor holds no secret at all. A private swarm's id is an
//! Ed25519 public key, so the id verifies the signature. Signed requests go to a table of their
//! own ([`Private::registry`]), apart from the public swarms': an unsigned `ANNOUNCE` naming a
//! private swarm's id lands in the public table, among strangers, and never sees a member who
//! signed; nor can it take the id from the members who do (there is no id to squat).
//!
//! A connection asks `CHALLENGE` and gets a fresh 256-bit nonce, good for one signed request
//! on that connection; a request whose signature fails (or with no challenge) is refused and
//! counted against the address ([`AuthFailures`]), which is refused for a while after a few.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use log::{debug, info};

use super::events::EventSink;
use super::registry::{Limits, Registry};
use super::{short, LOG_TARGET};
use crate::secure::{self, AuthFailures, SignedFields};
use crate::sync::Mutex;
use crate::wire::{ConductorReply, ConductorRequest};

/// What a conductor keeps for private swarms.
pub(super) struct Private {
    /// The members of private swarms, apart from the public table. Its changes are not sent
    /// as events: only counted in the summaries.
    pub(super) registry: Mutex<Registry>,
    pub(super) failures: AuthFailures,
}

impl Private {
    pub(super) fn new(limits: Limits, now: Instant) -> Private {
        let (events, _nobody) = EventSink::bounded(1);
        Private {
            registry: Mutex::new(Registry::new(limits, now, events)),
            failures: AuthFailures::default(),
        }
    }

    /// Answers `CHALLENGE` and signed requests. `challenge` is this connection's open
    /// challenge: set by `CHALLENGE`, used up by the next signed request whatever its fate.
    pub(super) fn answer(
        &self,
        ip: IpAddr,
        request: ConductorRequest,
        challenge: &mut Option<[u8; 32]>,
        answer_in: impl FnOnce(&Mutex<Registry>, ConductorRequest) -> ConductorReply,
    ) -> ConductorReply {
        let now = Instant::now();
        if self.failures.is_refused(ip, now) {
            return ConductorReply::Error("too many failed signatures from this address".into());
        }
        match request {
            ConductorRequest::Challenge => {
                let nonce = secure::random_nonce();
                *challenge = Some(nonce);
                ConductorReply::Challenge(nonce)
            }
            ConductorRequest::Signed { request, signature } => {
                let nonce = challenge.take();
                let (command, swarm, peer_id, port) = match *request {
                    ConductorRequest::Announce {
                        swarm,
                        peer_id,
                        port,
                    } => ("ANNOUNCE", swarm, peer_id, port),
                    ConductorRequest::Leave {
                        swarm,
                        peer_id,
                        port,
                    } => ("LEAVE", swarm, peer_id, port),
                    _ => return ConductorReply::Error("only ANNOUNCE and LEAVE are signed".into()),
                };
                let valid = nonce.is_some_and(|nonce| {
                    let fields = SignedFields {
                        command,
                        nonce: &nonce,
                        swarm,
                        peer_id,
                        port,
                    };
                    secure::verify_request(&fields, &signature.0)
                });
                if !valid {
                    let addr = SocketAddr::new(ip, port);
                    debug!(target: LOG_TARGET, "bad signature for {} from {addr}", short(&swarm));
                    if self.failures.record(ip, now) {
                        info!(target: LOG_TARGET, "refusing {ip} for a while: too many bad signatures");
                    }
                    return ConductorReply::Error(if nonce.is_none() {
                        "a signed request needs a CHALLENGE first".into()
                    } else {
                        "bad signature".into()
                    });
                }
                answer_in(&self.registry, *request)
            }
            _ => ConductorReply::Error("not a private swarm request".into()),
        }
    }
}
