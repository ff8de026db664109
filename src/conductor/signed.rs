//! The member's side of a private swarm's conductor requests: on one connection, `CHALLENGE`,
//! then the `ANNOUNCE` or `LEAVE` signed over the conductor's nonce with the swarm's key.
//!
//! Why apart from [`super::client`]: a signed request is a conversation of two exchanges on one
//! connection, where every other call is one line and one reply. The bounds are the same: one
//! deadline from connecting to the last byte.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::client::{left_from, never, over_connection, peers_from, Cancelled};
use crate::net::DeadlineStream;
use crate::secure::{SignedFields, SwarmKeys};
use crate::wire::{ConductorReply, ConductorRequest, LineReader, PeerId, Signature};

/// [`super::announce_unless`] for a private swarm: the request is signed with `keys`.
pub fn announce_signed(
    conductor: &str,
    keys: &SwarmKeys,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
    cancelled: Cancelled,
) -> anyhow::Result<(Duration, Vec<SocketAddr>)> {
    let request = ConductorRequest::Announce {
        swarm: keys.swarm,
        peer_id,
        port,
    };
    let reply = over_connection(conductor, timeout, cancelled, |stream, deadline| {
        talk(stream, keys, request.clone(), deadline, cancelled)
    })?;
    peers_from(conductor, reply)
}

/// [`super::leave`] for a private swarm.
pub fn leave_signed(
    conductor: &str,
    keys: &SwarmKeys,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let request = ConductorRequest::Leave {
        swarm: keys.swarm,
        peer_id,
        port,
    };
    let reply = over_connection(conductor, timeout, &never, |stream, deadline| {
        talk(stream, keys, request.clone(), deadline, &never)
    })?;
    left_from(conductor, reply)
}

fn talk(
    stream: &TcpStream,
    keys: &SwarmKeys,
    request: ConductorRequest,
    deadline: Instant,
    cancelled: Cancelled,
) -> anyhow::Result<ConductorReply> {
    let mut writer = DeadlineStream::new(stream, deadline).cancellable(cancelled);
    let mut reader = LineReader::new(BufReader::new(
        DeadlineStream::new(stream, deadline).cancellable(cancelled),
    ));
    writer
        .write_all(ConductorRequest::Challenge.to_line().as_bytes())
        .context("cannot send CHALLENGE")?;
    let nonce = match ConductorReply::read_from(&mut reader).context("no valid reply")? {
        ConductorReply::Challenge(nonce) => nonce,
        ConductorReply::Error(why) => bail!("refused the challenge: {why}"),
        other => bail!("answered CHALLENGE with {other:?}"),
    };
    let (command, peer_id, port) = match &request {
        ConductorRequest::Announce { peer_id, port, .. } => ("ANNOUNCE", *peer_id, *port),
        ConductorRequest::Leave { peer_id, port, .. } => ("LEAVE", *peer_id, *port),
        _ => bail!("only ANNOUNCE and LEAVE are signed"),
    };
    let signature = keys.sign_request(&SignedFields {
        command,
        nonce: &nonce,
        swarm: keys.swarm,
        peer_id,
        port,
    });
    let signed = ConductorRequest::Signed {
        request: Box::new(request),
        signature: Signature(signature),
    };
    writer
        .write_all(signed.to_line().as_bytes())
        .context("cannot send the request")?;
    ConductorReply::read_from(&mut reader).context("no valid reply")
}
