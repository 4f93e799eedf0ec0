//! What one measured run produced, and the result row it becomes.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// When a run warms up and when it is measured. Every worker sees the same instants.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Measurement starts: what completes before it is warm-up.
    pub(crate) start: Instant,
    /// Measurement ends: workers stop issuing requests.
    pub(crate) end: Instant,
}

impl Window {
    /// A window starting after `warmup` from now and lasting `duration`.
    pub(crate) fn after(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
        }
    }

    /// Whether a request finishing at `t` is measured.
    pub(crate) fn contains(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }

    pub(crate) fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// A signature kept for verification after the run (verifying during it would skew timings).
#[derive(Debug)]
pub(crate) struct Sample {
    /// Index of the key that signed, in the run's key list.
    pub(crate) key: usize,
    /// What was signed; for GetPublicKey samples, unused.
    pub(crate) digest: Vec<u8>,
    /// The signature (GetPublicKey: the PEM).
    pub(crate) signature: Vec<u8>,
}

/// Take every `SAMPLE_EVERY`th successful signature (and the first) for verification.
pub(crate) const SAMPLE_EVERY: u64 = 100;

/// One worker's record of the measured window.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Latencies of successful requests, in nanoseconds.
    pub(crate) latencies_ns: Vec<u64>,
    /// Failed requests by status (gRPC code name or PKCS#11 error).
    pub(crate) errors: BTreeMap<String, u64>,
    /// The first error's full text, for the operator.
    pub(crate) first_error: Option<String>,
    pub(crate) samples: Vec<Sample>,
    ok: u64,
}

impl Tally {
    /// Records a success; returns whether its signature should be kept as a sample.
    pub(crate) fn ok(&mut self, latency: Duration) -> bool {
        self.latencies_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        let sample = self.ok % SAMPLE_EVERY == 0;
        self.ok += 1;
        sample
    }

    pub(crate) fn error(&mut self, kind: String, detail: impl FnOnce() -> String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(detail());
        }
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.samples.extend(other.samples);
        self.ok += other.ok;
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest request.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of `latencies_ns` (an HDR histogram, 3 significant figures).
    pub(crate) fn of(latencies_ns: &[u64]) -> Self {
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 3_600_000_000_000, 3)
            .expect("valid histogram bounds");
        for &ns in latencies_ns {
            h.saturating_record(ns.max(1_000));
        }
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1_000.0,
        }
    }
}

/// Which side of the comparison a run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// PKCS#11 sessions in the bench process, one thread each.
    Direct,
    /// gRPC clients against p11kms.
    Gateway,
}

/// How hard a run pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// Closed loop: every worker sends its next request as soon as the last one returns.
    Saturation,
    /// Open loop at half the saturation throughput measured just before.
    Half,
}

/// One row of the results.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// The Yandex algorithm name.
    pub algorithm: String,
    /// Direct or gateway.
    pub path: PathKind,
    /// `sign-digest` (direct), `SignHash`, `Sign 1 KiB`, `Sign 32 KiB`, `GetPublicKey`.
    pub operation: String,
    /// Saturation or half load.
    pub load: Load,
    /// Requests per second asked for (half load only).
    pub target_rate: Option<f64>,
    /// The daemon's `signing.verify_ecdsa` (gateway runs only; RSA is always verified).
    pub verify_ecdsa: Option<bool>,
    /// PKCS#11 sessions: direct threads, or the daemon's pool.
    pub sessions: usize,
    /// Concurrent workers: direct threads, or gRPC clients (one HTTP/2 connection each).
    pub workers: usize,
    /// Length of the measured window, in seconds.
    pub seconds: f64,
    /// Successful requests in the window.
    pub ok: u64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency of the successful requests.
    pub latency: Latency,
    /// Failed requests in the window.
    pub errors: u64,
    /// Failed requests by status.
    pub error_kinds: BTreeMap<String, u64>,
    /// Sampled signatures (every 100th) that verified independently.
    pub verified: u64,
    /// Sampled signatures that did NOT verify. Anything but 0 is a bug.
    pub invalid: u64,
    /// CPU seconds per request of the daemon (gateway), or of the signing threads (direct),
    /// in microseconds, from `/proc/<pid>/stat`.
    pub cpu_us_per_op: Option<f64>,
    /// CPU per request of the bench's own gRPC clients (gateway runs), in microseconds.
    pub client_cpu_us_per_op: Option<f64>,
    /// The daemon's peak RSS during the run (`VmHWM`, reset at the window start), in KiB.
    pub peak_rss_kib: Option<u64>,
    /// Gateway throughput over the direct throughput of the same algorithm and load.
    pub ratio: Option<f64>,
}
