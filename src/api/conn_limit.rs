//! Connection limits: at most `server.max_connections` open connections over every listener
//! and `server.max_connections_per_ip` from one client address, plus a small reserve beyond the
//! global limit for health checks.
//!
//! A connection past a limit is closed as soon as it is accepted, before TLS or HTTP, so it
//! costs a file descriptor for an instant. The reserve exists because a full gateway must
//! still answer its orchestrator's probes, or a flood would get it restarted: a connection
//! admitted into the reserve may carry health checks only (the request-context layer refuses
//! anything else with UNAVAILABLE) and is asked to go away after [`RESERVE_CONNECTION_AGE`].
//! The per-address limit applies to reserve connections too, so one address cannot take the
//! reserve.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a reserve connection may live (graceful GOAWAY, then a short grace).
pub const RESERVE_CONNECTION_AGE: Duration = Duration::from_secs(10);

/// The limits and the connections open now.
#[derive(Debug)]
pub struct ConnectionLimits {
    max: usize,
    per_ip: usize,
    reserve: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address has `max_connections_per_ip` open.
    PerIp,
    /// `max_connections` plus the health reserve are open.
    Full,
}

impl Refusal {
    /// For the log line.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::PerIp => "server.max_connections_per_ip",
            Refusal::Full => "server.max_connections + server.health_reserve_connections",
        }
    }
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
    /// Admitted into the health reserve: health checks only.
    pub reserve: bool,
}

impl ConnectionLimits {
    /// From `[server]`: the global limit, the per-address limit and the health reserve.
    pub fn new(max: usize, per_ip: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_ip,
            reserve,
            open: Mutex::default(),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    ///
    /// # Errors
    /// The limit that is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = open.by_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.per_ip {
            return Err(Refusal::PerIp);
        }
        let reserve = if open.total < self.max {
            false
        } else if open.total < self.max + self.reserve {
            true
        } else {
            return Err(Refusal::Full);
        };
        open.total += 1;
        *open.by_ip.entry(ip).or_default() += 1;
        Ok(Slot {
            limits: Arc::clone(self),
            ip,
            reserve,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_global_and_reserve() {
        let limits = ConnectionLimits::new(3, 2, 1);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let b1 = limits.admit(b).unwrap();
        assert!(!b1.reserve);
        let c1 = limits.admit(c).unwrap();
        assert!(c1.reserve, "the fourth connection is in the reserve");
        assert_eq!(limits.admit(c).unwrap_err(), Refusal::Full);
        drop((a1, c1));
        let again = limits.admit(b).unwrap();
        assert!(!again.reserve, "back under the global limit");
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::PerIp);
        drop((again, b1));
        assert_eq!(limits.open(), 1);
    }
}
