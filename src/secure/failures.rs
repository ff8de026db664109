//! Failed proofs of a private swarm's key, counted per address: after [`MAX_FAILURES`] within
//! [`WINDOW`] from one IP address, that address is refused for [`REFUSAL`], so guessing or
//! replaying costs a stranger a minute per handful of tries. Members and the conductor each
//! keep one table.
//!
//! The table is bounded (4,096 addresses): when full, entries with nothing recent are
//! forgotten first, then the oldest. Forgetting an address only forgets its count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// Failures from one address within [`WINDOW`] that get it refused.
pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long an address that failed too often is refused.
pub const REFUSAL: Duration = Duration::from_secs(60);
/// Addresses the table remembers at most.
const MAX_ADDRESSES: usize = 4096;

#[derive(Default)]
struct Record {
    /// The last failures, oldest first, at most [`MAX_FAILURES`].
    failures: Vec<Instant>,
    refused_until: Option<Instant>,
}

impl Record {
    fn last(&self) -> Option<Instant> {
        self.failures.last().copied().max(self.refused_until)
    }
}

/// The per-address table of failures, and the total since start.
#[derive(Default)]
pub struct AuthFailures {
    table: Mutex<HashMap<IpAddr, Record>>,
    total: AtomicU64,
}

impl AuthFailures {
    /// True while `ip` is refused.
    pub fn is_refused(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        self.table
            .lock()
            .get(&ip)
            .and_then(|r| r.refused_until)
            .is_some_and(|until| now < until)
    }

    /// Counts one failure from `ip`; true when that makes the address refused.
    pub fn record(&self, ip: IpAddr, now: Instant) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        let ip = ip.to_canonical();
        let mut table = self.table.lock();
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&ip) {
            let stale = |r: &Record| {
                r.last()
                    .is_none_or(|t| now.saturating_duration_since(t) > WINDOW.max(REFUSAL))
            };
            table.retain(|_, r| !stale(r));
            if table.len() >= MAX_ADDRESSES {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, r)| r.last())
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
        }
        let record = table.entry(ip).or_default();
        record
            .failures
            .retain(|&t| now.saturating_duration_since(t) < WINDOW);
        record.failures.push(now);
        if record.failures.len() >= MAX_FAILURES {
            record.failures.clear();
            record.refused_until = Some(now + REFUSAL);
            return true;
        }
        false
    }

    /// Failures counted since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_in_a_minute_refuse_for_a_minute() {
        let failures = AuthFailures::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(!failures.record(ip, t0 + Duration::from_secs(i)));
        }
        assert!(!failures.is_refused(ip, t0 + Duration::from_secs(4)));
        assert!(failures.record(ip, t0 + Duration::from_secs(5)));
        assert!(failures.is_refused(ip, t0 + Duration::from_secs(6)));
        assert!(!failures.is_refused(other, t0 + Duration::from_secs(6)));
        assert!(!failures.is_refused(ip, t0 + Duration::from_secs(66)));
        assert_eq!(failures.total(), 5);
        // Failures spread over more than the window never add up.
        let slow = AuthFailures::default();
        for i in 0..20 {
            assert!(!slow.record(ip, t0 + Duration::from_secs(20 * i)));
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let failures = AuthFailures::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            failures.record(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(failures.table.lock().len() <= MAX_ADDRESSES);
    }
}
