//! Per-subject rate limit: a token bucket (GCRA, `governor`) per authenticated subject, and per
//! peer IP for requests without a valid credential. Off unless `[rate_limit] per_subject_rps`
//! is set. Checked before any work is done for the request.

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
    clock: DefaultClock,
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
            let period = Duration::from_secs_f64(1.0 / rps);
            let quota = Quota::with_period(period)
                .expect("a positive rate has a positive period")
                .allow_burst(NonZeroU32::new(burst).expect("validated at load"));
            governor::RateLimiter::keyed(quota)
        });
        Self {
            limiter,
            rps: cfg.per_subject_rps.unwrap_or(0.0),
            clock: DefaultClock::default(),
        }
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
}
