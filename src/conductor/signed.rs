//! The member's side of a private swarm's conductor requests: on one connection, `CHALLENGE`,
//! then the `ANNOUNCE` or `LEAVE` signed over the conductor's nonce with the swarm's key.
//!
//! Why apart from [`super::client`]: a signed request is a conversation of two exchanges on one
//! connection, where every other call is one line and one reply. The bounds are the same: one
//! deadline from connecting to the last byte.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::client::Cancelled;
use crate::net::DeadlineStream;
use crate::secure::{SignedFields, SwarmKeys};
use crate::wire::{ConductorReply, ConductorRequest, LineReader, PeerId, Signature};

fn never() -> bool {
    false
}

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
    match exchange(conductor, keys, request, timeout, cancelled)? {
        ConductorReply::Peers { interval_ms, peers } => {
            Ok((Duration::from_millis(interval_ms), peers))
        }
        ConductorReply::Error(why) => bail!("conductor {conductor} refused the announce: {why}"),
        other => bail!("conductor {conductor} answered an announce with {other:?}"),
    }
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
    match exchange(conductor, keys, request, timeout, &never)? {
        ConductorReply::Ok => Ok(()),
        ConductorReply::Error(why) => bail!("conductor {conductor} refused the leave: {why}"),
        other => bail!("conductor {conductor} answered a leave with {other:?}"),
    }
}

fn exchange(
    conductor: &str,
    keys: &SwarmKeys,
    request: ConductorRequest,
    timeout: Duration,
    cancelled: Cancelled,
) -> anyhow::Result<ConductorReply> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = conductor
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve conductor {conductor}"))?
        .collect();
    let mut failure = anyhow!("conductor {conductor}: the name resolves to no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let stream = match crate::net::connect(addr, left, cancelled) {
            Ok(stream) => stream,
            Err(e) => {
                failure = anyhow!("conductor {conductor} ({addr}): cannot connect: {e}");
                continue;
            }
        };
        return talk(&stream, keys, request, deadline, cancelled)
            .with_context(|| format!("conductor {conductor} ({addr})"));
    }
    Err(failure)
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
