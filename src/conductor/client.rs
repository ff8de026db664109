//! The client side of the conductor protocol: the calls members and tools make.
//!
//! Why a module of its own: members (`member::swarm::announcer`), the `conductor --stats` flag and the
//! tests all speak to a conductor, and they must speak the protocol through one implementation,
//! the same that the server answers with, without depending on the server's internals. Every
//! call is one short connection bounded by one deadline from connecting to the last byte.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::net::DeadlineStream;
use crate::orch::SwarmId;
use crate::wire::{ConductorReply, ConductorRequest, ConductorStats, LineReader, PeerId};

/// Asked while a call waits: true ends it at once (the caller is quitting).
pub type Cancelled<'a> = &'a (dyn Fn() -> bool + Sync);

/// For calls nobody cancels.
pub(super) fn never() -> bool {
    false
}

/// Names the conductor in errors, with the address tried when the name was not one.
fn describe(conductor: &str, addr: SocketAddr) -> String {
    if conductor == addr.to_string() {
        format!("conductor {conductor}")
    } else {
        format!("conductor {conductor} ({addr})")
    }
}

/// Sends one request and reads the reply, within `timeout` from connecting to the last byte.
fn exchange(
    conductor: &str,
    request: &ConductorRequest,
    timeout: Duration,
    cancelled: Cancelled,
) -> anyhow::Result<ConductorReply> {
    over_connection(conductor, timeout, cancelled, |stream, deadline| {
        let mut stream = DeadlineStream::new(stream, deadline).cancellable(cancelled);
        stream
            .write_all(request.to_line().as_bytes())
            .context("cannot send the request")?;
        let mut reader = LineReader::new(BufReader::new(stream));
        ConductorReply::read_from(&mut reader).context("no valid reply")
    })
}

/// Connects to the first of `conductor`'s addresses that answers and runs `talk` on that
/// connection, all within `timeout` (`talk` is given the deadline). Name resolution happens
/// before and is bounded only by the system resolver.
pub(super) fn over_connection<T>(
    conductor: &str,
    timeout: Duration,
    cancelled: Cancelled,
    mut talk: impl FnMut(&TcpStream, Instant) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
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
                failure = anyhow!("{}: cannot connect: {e}", describe(conductor, addr));
                continue;
            }
        };
        return talk(&stream, deadline).with_context(|| describe(conductor, addr));
    }
    Err(failure)
}

/// What an `ANNOUNCE` (signed or not) must be answered with: the interval and some members.
pub(super) fn peers_from(
    conductor: &str,
    reply: ConductorReply,
) -> anyhow::Result<(Duration, Vec<SocketAddr>)> {
    match reply {
        ConductorReply::Peers { interval_ms, peers } => {
            Ok((Duration::from_millis(interval_ms), peers))
        }
        ConductorReply::Error(why) => bail!("conductor {conductor} refused the announce: {why}"),
        other => bail!("conductor {conductor} answered an announce with {other:?}"),
    }
}

/// What a `LEAVE` (signed or not) must be answered with.
pub(super) fn left_from(conductor: &str, reply: ConductorReply) -> anyhow::Result<()> {
    match reply {
        ConductorReply::Ok => Ok(()),
        ConductorReply::Error(why) => bail!("conductor {conductor} refused the leave: {why}"),
        other => bail!("conductor {conductor} answered a leave with {other:?}"),
    }
}

/// Joins or refreshes membership of `swarm` as a member accepting peers on `port`, and returns
/// the interval after which to announce again and some other members.
pub fn announce(
    conductor: &str,
    swarm: SwarmId,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<(Duration, Vec<SocketAddr>)> {
    announce_unless(conductor, swarm, peer_id, port, timeout, &never)
}

/// [`announce`], given up as soon as `cancelled` says so: a member quitting does not wait out
/// a conductor that is slow to answer.
pub fn announce_unless(
    conductor: &str,
    swarm: SwarmId,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
    cancelled: Cancelled,
) -> anyhow::Result<(Duration, Vec<SocketAddr>)> {
    let request = ConductorRequest::Announce {
        swarm,
        peer_id,
        port,
    };
    peers_from(
        conductor,
        exchange(conductor, &request, timeout, cancelled)?,
    )
}

/// Tells the conductor this member is quitting, so others stop being sent to it at once.
pub fn leave(
    conductor: &str,
    swarm: SwarmId,
    peer_id: PeerId,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let request = ConductorRequest::Leave {
        swarm,
        peer_id,
        port,
    };
    left_from(conductor, exchange(conductor, &request, timeout, &never)?)
}

/// The counters of a running conductor.
pub fn stats(conductor: &str, timeout: Duration) -> anyhow::Result<ConductorStats> {
    match exchange(conductor, &ConductorRequest::Stats, timeout, &never)? {
        ConductorReply::Stats(stats) => Ok(stats),
        ConductorReply::Error(why) => bail!("conductor {conductor} refused STATS: {why}"),
        other => bail!("conductor {conductor} answered STATS with {other:?}"),
    }
}
