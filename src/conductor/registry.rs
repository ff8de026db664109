//! The member table: every swarm and its members, as announces, leaves and expiry change it.
//!
//! Why a module of its own: this is the conductor's whole state, and the rules on it (who may
//! join at which cap, who is sampled for an answer, who is forgotten) are easiest to check
//! apart from sockets and threads. Every method takes `now`, so tests control time. The table
//! lives behind one lock in the server; the events describing its changes are queued here,
//! under that lock, so they come in the order the changes were made.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use super::events::{ConductorEvent, EventSink};
use crate::orch::SwarmId;
use crate::wire::{ConductorStats, PeerId, MAX_PEERS_PER_REPLY};

/// Each expiry has its own event and log line up to this many per sweep; the rest are counted.
pub(super) const MAX_EXPIRY_LINES: usize = 100;
/// Announces per second are averaged over this many seconds.
const RATE_WINDOW_SECS: usize = 60;

/// What the per-address caps count by: the IPv4 address, or the /64 network of an IPv6 address
/// (one machine is usually given a whole /64, so counting single IPv6 addresses would cap
/// nothing).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

struct Member {
    addr: SocketAddr,
    peer_id: PeerId,
    last_seen: Instant,
}

/// One swarm's members, in a vector so that a random one is an index away, with an index by
/// address for joins, refreshes and leaves.
#[derive(Default)]
struct Swarm {
    members: Vec<Member>,
    by_addr: HashMap<SocketAddr, usize>,
}

impl Swarm {
    fn remove_at(&mut self, i: usize) -> Member {
        let gone = self.members.swap_remove(i);
        self.by_addr.remove(&gone.addr);
        if let Some(moved) = self.members.get(i) {
            self.by_addr.insert(moved.addr, i);
        }
        gone
    }

    /// Up to `k` distinct random members other than `asker`.
    fn sample(&self, asker: SocketAddr, k: usize) -> Vec<SocketAddr> {
        let n = self.members.len();
        let skip = self.by_addr.get(&asker).copied();
        let others = n - usize::from(skip.is_some());
        if others <= 2 * k {
            let mut all: Vec<SocketAddr> = self
                .members
                .iter()
                .map(|m| m.addr)
                .filter(|a| *a != asker)
                .collect();
            fastrand::shuffle(&mut all);
            all.truncate(k);
            return all;
        }
        // With more than 2k candidates fewer than half the draws are rejected, so this ends
        // quickly, and it costs O(k²) whatever the swarm size.
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let i = fastrand::usize(..n);
            if Some(i) != skip && !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked.into_iter().map(|i| self.members[i].addr).collect()
    }
}

/// Counts events per second over the last [`RATE_WINDOW_SECS`] seconds in a ring of buckets,
/// so the rate costs constant memory whatever the traffic.
struct Rate {
    origin: Instant,
    buckets: [u64; RATE_WINDOW_SECS],
    /// Seconds since `origin` of the newest bucket.
    head: u64,
}

impl Rate {
    fn new(origin: Instant) -> Rate {
        Rate {
            origin,
            buckets: [0; RATE_WINDOW_SECS],
            head: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        if second > self.head {
            let stale = (second - self.head).min(RATE_WINDOW_SECS as u64);
            for s in 1..=stale {
                self.buckets[((self.head + s) % RATE_WINDOW_SECS as u64) as usize] = 0;
            }
            self.head = second;
        }
    }

    fn record(&mut self, now: Instant) {
        self.advance(now);
        self.buckets[(self.head % RATE_WINDOW_SECS as u64) as usize] += 1;
    }

    fn per_second(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let elapsed = now.saturating_duration_since(self.origin).as_secs_f64();
        // The newest bucket is only partly filled: the window is the full older buckets plus
        // the part of the current second that has passed. At least a second, so that the first
        // few announces after start do not read as a huge rate.
        let full = (RATE_WINDOW_SECS - 1) as f64;
        let span = if elapsed < RATE_WINDOW_SECS as f64 {
            elapsed
        } else {
            full + elapsed.fract()
        };
        self.buckets.iter().sum::<u64>() as f64 / span.max(1.0)
    }
}

/// What an announce did to the table, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    Joined,
    Refreshed,
    /// The same address came back with another peer id: the member restarted.
    Restarted,
}

#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_swarms: usize,
    pub(super) max_swarm_members: usize,
    pub(super) max_members: usize,
    pub(super) max_members_per_ip: usize,
}

/// All swarms and their members. Methods take `now` so that tests control time.
pub(super) struct Registry {
    swarms: HashMap<SwarmId, Swarm>,
    members: usize,
    /// Members per source address (see [`source_of`]) over all swarms; no zero entries.
    per_source: HashMap<IpAddr, usize>,
    limits: Limits,
    rate: Rate,
    /// Announces refused for lack of room since the last summary.
    refused: u64,
    /// Where the changes to the table are told, and the summaries made from it.
    pub(super) events: EventSink,
    /// Counts joins, leaves and expiries, and refreshes apart, so that the state file is
    /// written when they moved (see the state module).
    pub(super) changes: Changes,
}

/// How many times the table changed, by kind.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) struct Changes {
    /// Members joined, restarted, left or expired.
    pub(super) membership: u64,
    /// Members refreshed: only their last-seen times moved.
    pub(super) refreshes: u64,
}

impl Changes {
    /// The changes of two tables together (the public and the private one).
    pub(super) fn plus(self, other: Changes) -> Changes {
        Changes {
            membership: self.membership.wrapping_add(other.membership),
            refreshes: self.refreshes.wrapping_add(other.refreshes),
        }
    }
}

impl Registry {
    pub(super) fn new(limits: Limits, now: Instant, events: EventSink) -> Registry {
        Registry {
            swarms: HashMap::new(),
            members: 0,
            per_source: HashMap::new(),
            limits,
            rate: Rate::new(now),
            refused: 0,
            events,
            changes: Changes::default(),
        }
    }

    /// Joins or refreshes the member at `addr`, and returns what changed and up to
    /// [`MAX_PEERS_PER_REPLY`] other members; or why there is no room for it.
    pub(super) fn announce(
        &mut self,
        swarm_id: SwarmId,
        addr: SocketAddr,
        peer_id: PeerId,
        now: Instant,
    ) -> Result<(Change, Vec<SocketAddr>), &'static str> {
        self.rate.record(now);
        let source = source_of(addr.ip());
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        let refusal = match self.swarms.get(&swarm_id) {
            Some(swarm) if swarm.by_addr.contains_key(&addr) => None,
            _ if from_source >= self.limits.max_members_per_ip => {
                Some("too many members from this address")
            }
            None if self.swarms.len() >= self.limits.max_swarms => Some("too many swarms"),
            Some(swarm) if swarm.members.len() >= self.limits.max_swarm_members => {
                Some("swarm is full")
            }
            _ if self.members >= self.limits.max_members => Some("too many members"),
            _ => None,
        };
        if let Some(why) = refusal {
            self.refused += 1;
            return Err(why);
        }
        let swarm = self.swarms.entry(swarm_id).or_default();
        let change = match swarm.by_addr.get(&addr) {
            Some(&i) => {
                let member = &mut swarm.members[i];
                member.last_seen = now;
                if member.peer_id == peer_id {
                    Change::Refreshed
                } else {
                    member.peer_id = peer_id;
                    Change::Restarted
                }
            }
            None => {
                swarm.by_addr.insert(addr, swarm.members.len());
                swarm.members.push(Member {
                    addr,
                    peer_id,
                    last_seen: now,
                });
                self.members += 1;
                *self.per_source.entry(source).or_insert(0) += 1;
                Change::Joined
            }
        };
        let peers = swarm.sample(addr, MAX_PEERS_PER_REPLY);
        self.changes.note(change == Change::Refreshed);
        if change != Change::Refreshed {
            self.events.send(ConductorEvent::Join {
                swarm: swarm_id,
                addr,
                rejoin: change == Change::Restarted,
            });
        }
        Ok((change, peers))
    }

    /// Removes the member if it is there under this peer id. A LEAVE with another peer id is
    /// ignored: it comes from an earlier run at the same address, late, and must not evict the
    /// run that replaced it.
    pub(super) fn leave(&mut self, swarm_id: SwarmId, addr: SocketAddr, peer_id: PeerId) -> bool {
        let Some(swarm) = self.swarms.get_mut(&swarm_id) else {
            return false;
        };
        match swarm.by_addr.get(&addr) {
            Some(&i) if swarm.members[i].peer_id == peer_id => {
                swarm.remove_at(i);
                if swarm.members.is_empty() {
                    self.swarms.remove(&swarm_id);
                }
                self.forget(addr);
                self.changes.note(false);
                self.events.send(ConductorEvent::Leave {
                    swarm: swarm_id,
                    addr,
                });
                true
            }
            _ => false,
        }
    }

    /// Forgets members last seen before `cutoff`, and swarms left empty; returns whom.
    pub(super) fn expire(&mut self, cutoff: Instant) -> Vec<(SwarmId, SocketAddr)> {
        let mut expired = Vec::new();
        self.swarms.retain(|id, swarm| {
            let mut i = 0;
            while i < swarm.members.len() {
                if swarm.members[i].last_seen < cutoff {
                    expired.push((*id, swarm.remove_at(i).addr));
                } else {
                    i += 1;
                }
            }
            !swarm.members.is_empty()
        });
        for (_, addr) in &expired {
            self.forget(*addr);
        }
        if !expired.is_empty() {
            self.changes.note(false);
        }
        for &(swarm, addr) in expired.iter().take(MAX_EXPIRY_LINES) {
            self.events.send(ConductorEvent::Expire { swarm, addr });
        }
        if expired.len() > MAX_EXPIRY_LINES {
            self.events.send(ConductorEvent::ExpireMore {
                count: (expired.len() - MAX_EXPIRY_LINES) as u64,
            });
        }
        expired
    }

    /// Every member, for the state file.
    pub(super) fn snapshot(&self) -> Vec<(SwarmId, SocketAddr, PeerId, Instant)> {
        let mut all = Vec::with_capacity(self.members);
        for (id, swarm) in &self.swarms {
            all.extend(
                swarm
                    .members
                    .iter()
                    .map(|m| (*id, m.addr, m.peer_id, m.last_seen)),
            );
        }
        all
    }

    /// Puts back a member read from the state file, within the same caps as an announce but
    /// without an event or a count in the announce rate; false if there is no room or it is
    /// there already.
    pub(super) fn restore(
        &mut self,
        swarm_id: SwarmId,
        addr: SocketAddr,
        peer_id: PeerId,
        last_seen: Instant,
    ) -> bool {
        let source = source_of(addr.ip());
        let full = match self.swarms.get(&swarm_id) {
            Some(swarm) => {
                swarm.by_addr.contains_key(&addr)
                    || swarm.members.len() >= self.limits.max_swarm_members
            }
            None => self.swarms.len() >= self.limits.max_swarms,
        };
        if full
            || self.members >= self.limits.max_members
            || self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_members_per_ip
        {
            return false;
        }
        let swarm = self.swarms.entry(swarm_id).or_default();
        swarm.by_addr.insert(addr, swarm.members.len());
        swarm.members.push(Member {
            addr,
            peer_id,
            last_seen,
        });
        self.members += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
        true
    }

    /// Counts one member at `addr` out of the totals.
    fn forget(&mut self, addr: SocketAddr) {
        self.members -= 1;
        let source = source_of(addr.ip());
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    pub(super) fn stats(&mut self, now: Instant) -> ConductorStats {
        ConductorStats {
            swarms: self.swarms.len() as u64,
            members: self.members as u64,
            announces_per_sec: self.rate.per_second(now),
        }
    }

    /// Announces refused for lack of room since the last call.
    pub(super) fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }
}

impl Changes {
    fn note(&mut self, refresh: bool) {
        match refresh {
            true => self.refreshes += 1,
            false => self.membership += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orch::Checksum;
    use std::time::Duration;

    fn limits(max_swarms: usize, max_swarm_members: usize, max_members: usize) -> Limits {
        Limits {
            max_swarms,
            max_swarm_members,
            max_members,
            max_members_per_ip: usize::MAX,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    /// A table whose events nobody reads.
    fn quiet(limits: Limits, now: Instant) -> Registry {
        Registry::new(limits, now, EventSink::bounded(1).0)
    }

    #[test]
    fn changes_are_told_as_they_happen() {
        let start = Instant::now();
        let (events, told) = EventSink::bounded(1000);
        let mut registry = Registry::new(limits(10, 1000, 1000), start, events);
        let swarm = Checksum::of(b"s");
        let (id, other) = (PeerId::random(), PeerId::random());
        registry.announce(swarm, addr(1), id, start).unwrap();
        // A refresh changes nothing worth telling; a new peer id at the address is a rejoin.
        registry.announce(swarm, addr(1), id, start).unwrap();
        registry.announce(swarm, addr(1), other, start).unwrap();
        // A late LEAVE of the previous run removes nothing and tells nothing.
        registry.leave(swarm, addr(1), id);
        registry.leave(swarm, addr(1), other);
        let join = |port, rejoin| ConductorEvent::Join {
            swarm,
            addr: addr(port),
            rejoin,
        };
        assert_eq!(
            told.try_iter().collect::<Vec<_>>(),
            [
                join(1, false),
                join(1, true),
                ConductorEvent::Leave {
                    swarm,
                    addr: addr(1)
                }
            ]
        );
        // Past the first MAX_EXPIRY_LINES, expiries of one sweep are counted in one event.
        let extra = 7;
        for port in 1..=(MAX_EXPIRY_LINES + extra) as u16 {
            registry.announce(swarm, addr(port), id, start).unwrap();
        }
        told.try_iter().for_each(drop);
        let expired = registry.expire(start + Duration::from_secs(1));
        assert_eq!(expired.len(), MAX_EXPIRY_LINES + extra);
        let told: Vec<ConductorEvent> = told.try_iter().collect();
        assert_eq!(told.len(), MAX_EXPIRY_LINES + 1);
        for (event, &(swarm, addr)) in told[..MAX_EXPIRY_LINES].iter().zip(&expired) {
            assert_eq!(*event, ConductorEvent::Expire { swarm, addr });
        }
        assert_eq!(
            told.last(),
            Some(&ConductorEvent::ExpireMore {
                count: extra as u64
            })
        );
    }

    #[test]
    fn samples_are_distinct_random_and_never_the_asker() {
        let now = Instant::now();
        let swarm = Checksum::of(b"s");
        let mut registry = quiet(limits(10, 1000, 1000), now);
        for port in 1..=300 {
            registry
                .announce(swarm, addr(port), PeerId::random(), now)
                .unwrap();
        }
        for asker in [1, 2, 150, 300] {
            let (_, peers) = registry
                .announce(swarm, addr(asker), PeerId::random(), now)
                .unwrap();
            assert_eq!(peers.len(), MAX_PEERS_PER_REPLY);
            assert!(!peers.contains(&addr(asker)));
            let mut unique = peers.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), peers.len());
        }
        // Small swarms, including the edge where rejection sampling would start.
        let small = Checksum::of(b"small");
        for port in 1..=(2 * MAX_PEERS_PER_REPLY as u16 + 2) {
            let (_, peers) = registry
                .announce(small, addr(port), PeerId::random(), now)
                .unwrap();
            assert_eq!(peers.len(), (port as usize - 1).min(MAX_PEERS_PER_REPLY));
            assert!(!peers.contains(&addr(port)));
        }
    }

    #[test]
    fn leave_expire_and_caps() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let (a, b) = (Checksum::of(b"a"), Checksum::of(b"b"));
        let id = PeerId::random();
        let mut registry = quiet(limits(2, 2, 3), start);
        assert_eq!(
            registry.announce(a, addr(1), id, start).unwrap().0,
            Change::Joined
        );
        assert_eq!(
            registry.announce(a, addr(1), id, start).unwrap().0,
            Change::Refreshed
        );
        let other = PeerId::random();
        assert_eq!(
            registry.announce(a, addr(1), other, start).unwrap().0,
            Change::Restarted
        );
        registry.announce(a, addr(2), id, later).unwrap();
        assert_eq!(
            registry.announce(a, addr(3), id, later),
            Err("swarm is full")
        );
        registry.announce(b, addr(1), id, later).unwrap();
        assert_eq!(
            registry.announce(Checksum::of(b"c"), addr(1), id, later),
            Err("too many swarms")
        );
        // Refreshing stays possible at every cap.
        registry.announce(a, addr(2), id, later).unwrap();
        assert_eq!(registry.refused, 2);

        // A late LEAVE from the previous run does not evict the new one.
        assert!(!registry.leave(a, addr(1), id));
        assert_eq!(registry.stats(later).members, 3);

        let expired = registry.expire(start + Duration::from_secs(1));
        assert_eq!(expired, vec![(a, addr(1))]);
        assert!(registry.leave(b, addr(1), id));
        let stats = registry.stats(later);
        assert_eq!((stats.swarms, stats.members), (1, 1));
        assert!(registry.leave(a, addr(2), id));
        assert!(registry.swarms.is_empty());
        assert_eq!(registry.members, 0);
    }

    #[test]
    fn total_member_cap() {
        let now = Instant::now();
        let id = PeerId::random();
        let mut registry = quiet(limits(10, 10, 2), now);
        registry
            .announce(Checksum::of(b"a"), addr(1), id, now)
            .unwrap();
        registry
            .announce(Checksum::of(b"b"), addr(1), id, now)
            .unwrap();
        assert_eq!(
            registry.announce(Checksum::of(b"a"), addr(2), id, now),
            Err("too many members")
        );
        // The refused announce created no empty swarm.
        assert_eq!(registry.stats(now).swarms, 2);
    }

    #[test]
    fn restored_members_keep_their_age_and_the_caps() {
        let start = Instant::now();
        let (a, b) = (Checksum::of(b"a"), Checksum::of(b"b"));
        let id = PeerId::random();
        let mut registry = quiet(limits(10, 2, 3), start);
        let seen = start - Duration::from_secs(5);
        assert!(registry.restore(a, addr(1), id, seen));
        assert!(!registry.restore(a, addr(1), id, seen), "there already");
        assert!(registry.restore(a, addr(2), id, seen));
        assert!(!registry.restore(a, addr(3), id, seen), "swarm is full");
        assert!(registry.restore(b, addr(3), id, start));
        assert!(!registry.restore(b, addr(4), id, start), "too many members");
        assert_eq!(registry.changes, Changes::default());
        let mut saved = registry.snapshot();
        saved.sort_by_key(|m| m.1);
        assert_eq!(
            saved,
            [
                (a, addr(1), id, seen),
                (a, addr(2), id, seen),
                (b, addr(3), id, start)
            ]
        );
        // They expire from the time they were last seen, not from the restore.
        let expired = registry.expire(start - Duration::from_secs(1));
        assert_eq!(expired.len(), 2);
        assert_eq!(registry.changes.membership, 1);
        let (_, peers) = registry.announce(b, addr(4), id, start).unwrap();
        assert_eq!(peers, [addr(3)]);
        registry.announce(b, addr(4), id, start).unwrap();
        assert_eq!(
            registry.changes,
            Changes {
                membership: 2,
                refreshes: 1
            }
        );
    }

    #[test]
    fn rate_covers_a_sliding_window() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        assert_eq!(rate.per_second(start), 0.0);
        for tenth in 0..100 {
            rate.record(start + Duration::from_millis(tenth * 100));
        }
        // 100 announces over 10 s.
        let r = rate.per_second(start + Duration::from_secs(10));
        assert!((r - 10.0).abs() < 0.01, "{r}");
        // After the window passes with no traffic, the rate falls to zero.
        let r = rate.per_second(start + Duration::from_secs(10 + RATE_WINDOW_SECS as u64));
        assert_eq!(r, 0.0);
        // A long gap followed by traffic does not mix in stale buckets.
        let t = start + Duration::from_secs(1000);
        rate.record(t);
        assert!((rate.per_second(t) - 1.0 / (RATE_WINDOW_SECS - 1) as f64).abs() < 0.01);
    }

    #[test]
    fn members_are_capped_per_source_address() {
        let now = Instant::now();
        let (a, b) = (Checksum::of(b"a"), Checksum::of(b"b"));
        let id = PeerId::random();
        let mut registry = quiet(
            Limits {
                max_members_per_ip: 3,
                ..limits(10, 100, 100)
            },
            now,
        );
        // The cap counts over all swarms.
        registry.announce(a, addr(1), id, now).unwrap();
        registry.announce(a, addr(2), id, now).unwrap();
        registry.announce(b, addr(3), id, now).unwrap();
        assert_eq!(
            registry.announce(a, addr(4), id, now),
            Err("too many members from this address")
        );
        assert_eq!(
            registry.announce(Checksum::of(b"new"), addr(4), id, now),
            Err("too many members from this address")
        );
        // Members already there refresh, and other addresses are not affected.
        assert_eq!(
            registry.announce(a, addr(1), id, now).unwrap().0,
            Change::Refreshed
        );
        let other = SocketAddr::from(([10, 0, 0, 2], 4));
        registry.announce(a, other, id, now).unwrap();
        // Leaving and expiring give the places back.
        assert!(registry.leave(a, addr(1), id));
        registry.announce(a, addr(4), id, now).unwrap();
        let later = now + Duration::from_secs(5);
        registry.announce(a, addr(4), id, later).unwrap();
        assert_eq!(registry.expire(now + Duration::from_secs(1)).len(), 3);
        assert_eq!(registry.per_source.get(&addr(4).ip()), Some(&1));
        registry.announce(a, addr(5), id, later).unwrap();
        registry.announce(a, addr(6), id, later).unwrap();
        assert!(registry.announce(a, addr(7), id, later).is_err());
        assert_eq!(registry.members, 3);

        // IPv6 addresses count by /64; IPv4-mapped ones as IPv4.
        let v6 = |text: &str| SocketAddr::new(text.parse().unwrap(), 9);
        for host in ["fd00::1", "fd00::2", "fd00::3"] {
            registry.announce(a, v6(host), id, later).unwrap();
        }
        assert!(registry.announce(a, v6("fd00::4"), id, later).is_err());
        registry
            .announce(a, v6("fd00:0:0:1::4"), id, later)
            .unwrap();
        assert_eq!(source_of("::ffff:10.0.0.1".parse().unwrap()), addr(1).ip());
    }
}
