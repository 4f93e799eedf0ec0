//! Prometheus metrics: recorded with the `metrics` facade, rendered in the Prometheus text
//! format by `metrics-exporter-prometheus`.
//!
//! Two kinds of series:
//! * **Events** (requests, C_Sign latencies, pool-wait timeouts, pin mismatches, failed
//!   verifications, rate-limited requests, failed TLS handshakes) are counted where they happen,
//!   through the functions below.
//! * **State** (the session pool, the token's epoch and health, the audit sink, keys by state,
//!   recoveries) is read from the parts that own it when Prometheus scrapes ([`Observed`]), so
//!   nothing keeps a second copy up to date.
//!
//! The recorder is process-wide (the `metrics` facade has one): [`install`] sets it up once,
//! before the parts that count are built. Label values are bounded: a front, a method from a
//! fixed set (anything else is `other`), a gRPC code name, a mechanism, a bucket, a key state.
//! Never a key id, a subject or a request id.

mod observed;

pub use observed::Observed;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// `p11kms_requests_total`.
pub const REQUESTS: &str = "p11kms_requests_total";
/// `p11kms_request_duration_seconds`.
pub const REQUEST_DURATION: &str = "p11kms_request_duration_seconds";
/// `p11kms_hsm_sign_duration_seconds`.
pub const SIGN_DURATION: &str = "p11kms_hsm_sign_duration_seconds";
const POOL_WAIT_TIMEOUTS: &str = "p11kms_hsm_pool_wait_timeouts_total";
const POOL_WAITERS: &str = "p11kms_hsm_pool_waiters";
const PIN_MISMATCHES: &str = "p11kms_key_pin_mismatches_total";
const VERIFY_FAILURES: &str = "p11kms_verify_after_sign_failures_total";
const RATE_LIMITED: &str = "p11kms_rate_limited_total";
const TLS_HANDSHAKE_FAILURES: &str = "p11kms_tls_handshake_failures_total";

/// Histogram buckets, in seconds: 50 µs to ~26 s (a software token answers in tens of µs, a
/// network HSM in ms, a stalled one in seconds).
fn buckets() -> Vec<f64> {
    (0..20).map(|i| 0.000_05 * 2f64.powi(i)).collect()
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle). Counts made
/// before it are lost, so the daemon calls it first thing.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let b = buckets();
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &b)
                .and_then(|p| p.set_buckets_for_metric(Matcher::Full(SIGN_DURATION.into()), &b))
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "Requests answered, by front, method and gRPC code"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "From a request's arrival to its answer, by front and method"
    );
    describe_histogram!(
        SIGN_DURATION,
        Unit::Seconds,
        "C_Sign calls on the token, by mechanism"
    );
    describe_counter!(
        POOL_WAIT_TIMEOUTS,
        "Requests that waited for a session longer than hsm.pool_wait_ms"
    );
    describe_gauge!(POOL_WAITERS, "Requests waiting for a session now");
    describe_counter!(
        PIN_MISMATCHES,
        "Keys refused because the token's public key differs from the pinned one"
    );
    describe_counter!(
        VERIFY_FAILURES,
        "Signatures from the token that did not verify under the pinned public key (withheld)"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by bucket");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or timed out"
    );
    // Present from the start, at 0: an alert on a rate needs the series before the first event.
    for name in [
        POOL_WAIT_TIMEOUTS,
        PIN_MISMATCHES,
        VERIFY_FAILURES,
        TLS_HANDSHAKE_FAILURES,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(POOL_WAITERS).set(0.0);
    observed::describe();
}

/// Methods that may appear as a `method` label: gRPC paths (REST bindings are recorded under
/// theirs), Alibaba OpenAPI actions and instance API names. Anything else is `other`.
#[derive(Clone, Debug, Default)]
pub struct MethodNames(Arc<HashSet<String>>);

impl MethodNames {
    /// The known names.
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(names.into_iter().collect()))
    }

    /// `method` if known, else `other`.
    pub fn label(&self, method: &str) -> String {
        if self.0.contains(method) {
            method.to_string()
        } else {
            "other".to_string()
        }
    }
}

/// Counts one answered request.
pub fn request(front: &'static str, method: String, code: &'static str, took: Duration) {
    metrics::histogram!(REQUEST_DURATION, "front" => front, "method" => method.clone())
        .record(took.as_secs_f64());
    metrics::counter!(REQUESTS, "front" => front, "method" => method, "code" => code).increment(1);
}

/// One `C_Sign` call with `mechanism`.
pub fn sign_call(mechanism: &'static str, took: Duration) {
    metrics::histogram!(SIGN_DURATION, "mechanism" => mechanism).record(took.as_secs_f64());
}

/// A request gave up waiting for a session.
pub fn pool_wait_timeout() {
    metrics::counter!(POOL_WAIT_TIMEOUTS).increment(1);
}

/// A request starts (`+1.0`) or stops (`-1.0`) waiting for a session.
pub fn pool_waiters(delta: f64) {
    metrics::gauge!(POOL_WAITERS).increment(delta);
}

/// A key's public key did not match its pin.
pub fn pin_mismatch() {
    metrics::counter!(PIN_MISMATCHES).increment(1);
}

/// A signature from the token did not verify.
pub fn verify_failure() {
    metrics::counter!(VERIFY_FAILURES).increment(1);
}

/// A request was refused by the `bucket` rate limit (`subject`, `anonymous` or `health`).
pub fn rate_limited(bucket: &'static str) {
    metrics::counter!(RATE_LIMITED, "bucket" => bucket).increment(1);
}

/// A TLS handshake failed or timed out.
pub fn tls_handshake_failure() {
    metrics::counter!(TLS_HANDSHAKE_FAILURES).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        let names = MethodNames::new(["/a.B/C".to_string()]);
        assert_eq!(names.label("/a.B/C"), "/a.B/C");
        assert_eq!(names.label("/x/y"), "other");
        assert_eq!(names.label("random-action-123"), "other");
    }

    #[test]
    fn buckets_span_fifty_microseconds_to_seconds() {
        let b = buckets();
        assert!((b[0] - 0.000_05).abs() < 1e-12);
        assert!(b[19] > 20.0 && b[19] < 30.0, "{}", b[19]);
    }
}
