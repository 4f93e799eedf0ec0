//! Counting failed authentications per peer, bounded, so that an attacker can neither flood
//! the log nor grow the table: shared by every credential kind ([`super::authn`],
//! [`super::access_keys`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Peers whose failures are counted individually; beyond that, they share one counter.
const MAX_TRACKED_PEERS: usize = 4096;

/// Failure counts per peer IP and in total.
#[derive(Debug, Default)]
pub struct FailureCounter {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_peer: HashMap<IpAddr, u64>,
    others: u64,
    total: u64,
}

/// One failure as counted: this peer's count (or the shared one's) and the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Failures from this peer so far, this one included.
    pub peer: u64,
    /// Failures from anyone so far.
    pub total: u64,
}

impl Counted {
    /// Whether this failure deserves a warning: every one up to 10 per peer, then powers of
    /// two, so a flood costs a logarithmic number of lines.
    pub fn worth_a_warning(self) -> bool {
        self.peer <= 10 || self.peer.is_power_of_two()
    }
}

impl FailureCounter {
    /// Counts one failure from `ip` (unknown peers share one counter).
    pub fn count(&self, ip: Option<IpAddr>) -> Counted {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total += 1;
        let total = c.total;
        let peer = match ip {
            Some(ip) if c.by_peer.contains_key(&ip) || c.by_peer.len() < MAX_TRACKED_PEERS => {
                let n = c.by_peer.entry(ip).or_default();
                *n += 1;
                *n
            }
            _ => {
                c.others += 1;
                c.others
            }
        };
        Counted { peer, total }
    }

    /// Failures from `ip` so far.
    pub fn from(&self, ip: IpAddr) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.by_peer.get(&ip).copied().unwrap_or(0)
    }

    /// Failures so far, from anyone.
    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_peer_and_in_total() {
        let f = FailureCounter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(f.count(Some(a)), Counted { peer: 1, total: 1 });
        assert_eq!(f.count(None), Counted { peer: 1, total: 2 });
        assert_eq!(f.count(Some(a)), Counted { peer: 2, total: 3 });
        assert_eq!((f.from(a), f.total()), (2, 3));
        let warned = (1..=100)
            .filter(|&n| Counted { peer: n, total: n }.worth_a_warning())
            .count();
        assert_eq!(warned, 10 + 3, "1..=10, then 16, 32, 64");
    }
}
