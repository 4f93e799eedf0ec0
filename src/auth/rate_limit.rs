//! Rate limits, token buckets (GCRA, `governor`) checked before any work is done for a request:
//!
//! - per authenticated subject, and per peer IP for requests without a valid credential; off
//!   unless `[rate_limit] per_subject_rps` is set;
//! - per client IP for requests without a valid credential (`anonymous_per_ip_rps`), on by
//!   default: whoever has no credential cannot make the gateway work for free;
//! - per client IP for health checks (`health_per_ip_rps`), on by default and generous, a bucket
//!   of their own so that an orchestrator's probes are not starved by other traffic from its
//!   address, while a health-check flood is still bounded.

use crate::config::RateLimitConfig;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Whose bucket a request draws from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An authenticated subject: `type:id`.
    Subject(String),
    /// No valid credential: the peer's address.
    Peer(IpAddr),
    /// No valid credential and no known peer.
    Unknown,
}

/// The limiter; [`RateLimiter::check`] is free when the limit is off.
#[derive(Debug)]
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<RateKey>>,
    rps: f64,
    anonymous: Option<IpBucket>,
    health: Option<IpBucket>,
    clock: DefaultClock,
}

/// One bucket per client IP address.
#[derive(Debug)]
struct IpBucket {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    rps: f64,
    what: &'static str,
}

fn quota(rps: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rps);
    Quota::with_period(period)
        .expect("a positive rate has a positive period")
        .allow_burst(NonZeroU32::new(burst).expect("validated at load"))
}

fn ip_bucket(rps: f64, burst: u32, what: &'static str) -> Option<IpBucket> {
    (rps > 0.0).then(|| IpBucket {
        limiter: governor::RateLimiter::keyed(quota(rps, burst)),
        rps,
        what,
    })
}

impl RateLimiter {
    /// From `[rate_limit]` (validated at load).
    pub fn from_config(cfg: &RateLimitConfig) -> Self {
        let limiter = cfg.per_subject_rps.map(|rps| {
            let burst = cfg.burst.unwrap_or_else(|| {
                // Whole requests: at least 1, at most what fits.
                let b = rps.ceil().clamp(1.0, f64::from(u32::MAX));
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let b = b as u32;
                b
            });
            governor::RateLimiter::keyed(quota(rps, burst))
        });
        Self {
            limiter,
            rps: cfg.per_subject_rps.unwrap_or(0.0),
            anonymous: ip_bucket(
                cfg.anonymous_per_ip_rps,
                cfg.anonymous_burst,
                "requests without a valid credential",
            ),
            health: ip_bucket(cfg.health_per_ip_rps, cfg.health_burst, "health checks"),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request without a valid credential from `ip`'s bucket.
    ///
    /// # Errors
    /// As [`RateLimiter::check`].
    pub fn check_anonymous(&self, ip: IpAddr) -> Result<(), String> {
        self.check_ip(self.anonymous.as_ref(), ip)
    }

    /// Takes one health check from `ip`'s bucket.
    ///
    /// # Errors
    /// As [`RateLimiter::check`].
    pub fn check_health(&self, ip: IpAddr) -> Result<(), String> {
        self.check_ip(self.health.as_ref(), ip)
    }

    fn check_ip(&self, bucket: Option<&IpBucket>, ip: IpAddr) -> Result<(), String> {
        let Some(bucket) = bucket else {
            return Ok(());
        };
        bucket.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            format!(
                "rate limit exceeded: at most {} {} per second per client address; back off \
                 and retry in {} ms or later",
                bucket.rps,
                bucket.what,
                wait.as_millis().max(1)
            )
        })
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// Takes one request from `key`'s bucket.
    ///
    /// # Errors
    /// The time until the next request would be allowed, with a message saying to back off.
    pub fn check(&self, key: &RateKey) -> Result<(), String> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            format!(
                "rate limit exceeded: at most {} requests per second per caller; back off and \
                 retry in {} ms or later",
                self.rps,
                wait.as_millis().max(1)
            )
        })
    }

    /// Forgets idle buckets; call now and then so that many one-off peers cost no memory.
    pub fn housekeeping(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        for bucket in [&self.anonymous, &self.health].into_iter().flatten() {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subject_exhausting_its_bucket_leaves_others_alone() {
        let limiter = RateLimiter::from_config(&RateLimitConfig {
            per_subject_rps: Some(1.0),
            burst: Some(3),
            ..RateLimitConfig::default()
        });
        let a = RateKey::Subject("serviceAccount:a".into());
        let b = RateKey::Subject("serviceAccount:b".into());
        for _ in 0..3 {
            limiter.check(&a).unwrap();
        }
        let err = limiter.check(&a).unwrap_err();
        assert!(err.contains("back off"), "{err}");
        limiter.check(&b).unwrap();
        let off = RateLimiter::from_config(&RateLimitConfig::default());
        assert!(!off.enabled());
        for _ in 0..1000 {
            off.check(&a).unwrap();
        }
    }

    #[test]
    fn anonymous_requests_and_health_checks_have_separate_buckets_per_address() {
        let limiter = RateLimiter::from_config(&RateLimitConfig {
            anonymous_per_ip_rps: 1.0,
            anonymous_burst: 2,
            health_per_ip_rps: 1.0,
            health_burst: 5,
            ..RateLimitConfig::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        limiter.check_anonymous(a).unwrap();
        limiter.check_anonymous(a).unwrap();
        let err = limiter.check_anonymous(a).unwrap_err();
        assert!(err.contains("without a valid credential"), "{err}");
        limiter.check_anonymous(b).unwrap();
        for _ in 0..5 {
            limiter.check_health(a).unwrap();
        }
        assert!(limiter
            .check_health(a)
            .unwrap_err()
            .contains("health checks"));
        let off = RateLimiter::from_config(&RateLimitConfig {
            anonymous_per_ip_rps: 0.0,
            health_per_ip_rps: 0.0,
            ..RateLimitConfig::default()
        });
        for _ in 0..1000 {
            off.check_anonymous(a).unwrap();
            off.check_health(a).unwrap();
        }
    }
}
