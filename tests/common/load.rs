//! A verified-load client for fault-injection tests (`pkcs11-reliability.md` §6 "Verified
//! load"), plus the probes those tests need.
//!
//! * [`Load::start`] runs N concurrent clients, **each on its own HTTP/2 connection**, mixing
//!   the given keys (use at least one ECDSA and one RSA key) and `Sign`/`SignHash`. Every
//!   request carries a `grpc-timeout`; every answer is recorded with its start and finish time
//!   and its status code; every `OK` signature is verified at once (RustCrypto, [`verify`])
//!   against the public key in its [`LoadKey`], which the test fetched **before** the fault.
//!   A signature that does not verify is an *invalid signature*; the budget is 0 everywhere
//!   ([`Report::assert_no_invalid`]).
//! * The connections are [`raw_connection`]s: a plain hyper HTTP/2 client. tonic's own
//!   `Channel` enforces `grpc-timeout` on the client side too and answers `CANCELLED` itself
//!   when it fires, which would hide what the *server* answered at the deadline. Here the
//!   client only has a backstop ([`LoadConfig::backstop`]) past the deadline; a request still
//!   unanswered then is recorded as [`Outcome::NoAnswer`].
//! * [`Report`] answers the questions the pass criteria ask: codes per time window, the
//!   recovery time (from a moment to the first of 100 consecutive verified responses, §6
//!   "Recovery time"), the first failure after a fault.
//! * [`thread_count`], [`fd_count`]: `/proc` probes of the daemon; [`wait_health`] polls
//!   `grpc.health.v1` until it reports a status.
//! * [`cpu_shared`] / [`cpu_exclusive`]: a lock across test processes (nextest runs each test
//!   in its own process, in parallel). Load tests hold it shared; a test that measures
//!   latencies in milliseconds holds it exclusively, so that no other load test's CPU burn
//!   (the 256-client soak saturates a small CI machine) lands in its numbers.
//!
//! ```ignore
//! let keys = vec![LoadKey::fetch(&daemon, P256).await, LoadKey::fetch(&daemon, RSA).await];
//! let load = Load::start(&daemon, keys, LoadConfig::default()).await;
//! load.wait_valid_run_after(Instant::now(), 100, Duration::from_secs(10)).await;
//! // ... inject a fault, lift it at `lifted` ...
//! let recovery = load.wait_valid_run_after(lifted, 100, Duration::from_secs(10)).await;
//! let report = load.stop().await;
//! report.assert_no_invalid();
//! ```

use super::verify::{self, ParsedKey};
use super::{dev_key_id, Bearer, Daemon, ServingStatus};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_crypto_service_client::AsymmetricSignatureCryptoServiceClient;
use p11kms::api::yandex::grpc::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricSignHashRequest, AsymmetricSignRequest,
};
use p11kms::crypto::Algorithm;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A plain HTTP/2 connection (hyper's client, no tonic `Channel` layers).
pub type RawConnection = Client<HttpConnector, tonic::body::Body>;
/// A [`RawConnection`] whose requests carry a bearer token.
pub type AuthRawConnection = InterceptedService<RawConnection, Bearer>;
/// The crypto service over a [`RawConnection`], with the daemon's admin token.
pub type RawCryptoClient = AsymmetricSignatureCryptoServiceClient<AuthRawConnection>;
/// `grpc.health.v1` over a [`RawConnection`].
pub type RawHealthClient = HealthClient<RawConnection>;

/// A new HTTP/2-only client with one connection of its own (opened on first use). It sends
/// `grpc-timeout` but never enforces it: the status a test sees is the server's.
pub fn raw_connection() -> RawConnection {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(http)
}

fn origin(addr: SocketAddr) -> Uri {
    format!("http://{addr}").parse().expect("valid origin")
}

/// The crypto service on a new [`raw_connection`], sending the daemon's admin token.
pub fn raw_crypto_client(daemon: &Daemon) -> RawCryptoClient {
    raw_crypto_client_as(daemon.addr(), Some(daemon.admin_token()))
}

/// The crypto service on a new [`raw_connection`] to `addr`, sending `token` (or nothing).
pub fn raw_crypto_client_as(addr: SocketAddr, token: Option<&str>) -> RawCryptoClient {
    AsymmetricSignatureCryptoServiceClient::with_origin(
        InterceptedService::new(raw_connection(), Bearer::from_option(token)),
        origin(addr),
    )
}

/// `grpc.health.v1` on a new [`raw_connection`].
pub fn raw_health_client(addr: SocketAddr) -> RawHealthClient {
    HealthClient::with_origin(raw_connection(), origin(addr))
}

/// A key the load signs with, and its public key as fetched before any fault.
#[derive(Clone, Debug)]
pub struct LoadKey {
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The KMS key id.
    pub id: String,
    /// The public key every signature must verify under.
    pub key: ParsedKey,
    /// Keep each OK response's digest and signature in its [`Record`] (to check them against
    /// another key later).
    pub keep_signatures: bool,
}

impl LoadKey {
    /// The dev key of `algorithm`, with its public key fetched now through `GetPublicKey` and
    /// structurally checked.
    pub async fn fetch(daemon: &Daemon, algorithm: Algorithm) -> LoadKey {
        let id = dev_key_id(algorithm);
        let pem = daemon
            .kms()
            .await
            .public_key(&id)
            .await
            .unwrap_or_else(|s| panic!("GetPublicKey {id} before the fault: {s:?}"));
        let key = verify::parse_public_key(&pem, algorithm)
            .unwrap_or_else(|e| panic!("GetPublicKey {id}: {e}"));
        LoadKey {
            algorithm,
            id,
            key,
            keep_signatures: false,
        }
    }

    /// Keeps the signatures made with this key (see [`LoadKey::keep_signatures`]).
    pub fn keeping_signatures(mut self) -> Self {
        self.keep_signatures = true;
        self
    }
}

/// How the load behaves.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Concurrent clients, each on its own connection.
    pub clients: usize,
    /// The `grpc-timeout` of every request.
    pub deadline: Duration,
    /// How long past the deadline a client waits for an answer before recording
    /// [`Outcome::NoAnswer`].
    pub backstop: Duration,
    /// A client's pause after a failed request, as a real client backs off (fail-fast answers
    /// would otherwise spin).
    pub pause_after_failure: Duration,
    /// A client's pause after every request (0: back to back).
    pub pause: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            clients: 16,
            deadline: Duration::from_secs(2),
            backstop: Duration::from_secs(5),
            pause_after_failure: Duration::from_millis(50),
            pause: Duration::ZERO,
        }
    }
}

/// Which RPC a request used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `Sign` (the server hashes).
    Sign,
    /// `SignHash`.
    SignHash,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// OK, and the signature verified under the key fetched before the fault.
    Valid,
    /// OK, but the signature did NOT verify: the one thing that must never happen.
    Invalid(String),
    /// A gRPC status other than OK.
    Failed(Code, String),
    /// No answer within deadline + backstop.
    NoAnswer,
}

impl Outcome {
    /// `OK`, `INVALID`, `NO_ANSWER` or the status code's name (`Unavailable`, ...).
    pub fn label(&self) -> String {
        match self {
            Outcome::Valid => "OK".into(),
            Outcome::Invalid(_) => "INVALID_SIGNATURE".into(),
            Outcome::Failed(code, _) => format!("{code:?}"),
            Outcome::NoAnswer => "NO_ANSWER".into(),
        }
    }

    /// The status code, if the server answered with one other than OK.
    pub fn code(&self) -> Option<Code> {
        match self {
            Outcome::Failed(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// One request of the load.
#[derive(Clone, Debug)]
pub struct Record {
    /// The client (and connection) number.
    pub client: usize,
    /// Index into the load's keys.
    pub key: usize,
    /// The RPC.
    pub op: Op,
    /// Just before the request was sent.
    pub started: Instant,
    /// When the answer (or the backstop) arrived.
    pub finished: Instant,
    /// What came back.
    pub outcome: Outcome,
    /// `(digest, signature)` of an OK answer, for keys with `keep_signatures`.
    pub signed: Option<(Vec<u8>, Vec<u8>)>,
}

impl Record {
    /// Time from sending to the answer.
    pub fn latency(&self) -> Duration {
        self.finished - self.started
    }
}

struct Shared {
    records: Mutex<Vec<Record>>,
    stop: CancellationToken,
}

/// A running load. Stop it with [`Load::stop`]; dropping it stops the clients too.
pub struct Load {
    shared: Arc<Shared>,
    tasks: tokio::task::JoinSet<()>,
    keys: Arc<Vec<LoadKey>>,
    /// When the load started.
    pub t0: Instant,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl Load {
    /// Starts `cfg.clients` clients against `daemon`, cycling through `keys`.
    pub async fn start(daemon: &Daemon, keys: Vec<LoadKey>, cfg: LoadConfig) -> Load {
        assert!(!keys.is_empty(), "the load needs keys");
        let shared = Arc::new(Shared {
            records: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        });
        let keys = Arc::new(keys);
        let mut tasks = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for client in 0..cfg.clients {
            let shared = Arc::clone(&shared);
            let keys = Arc::clone(&keys);
            let cfg = cfg.clone();
            let conn = raw_crypto_client(daemon);
            tasks.spawn(run_client(client, conn, keys, cfg, shared));
        }
        Load {
            shared,
            tasks,
            keys,
            t0,
        }
    }

    /// The keys, in the order [`Record::key`] indexes.
    pub fn keys(&self) -> &[LoadKey] {
        &self.keys
    }

    /// Everything recorded so far.
    pub fn report(&self) -> Report {
        let records = self
            .shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Report::new(records, self.t0, Arc::clone(&self.keys))
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Polls (every 20 ms) until `cond` holds for the records so far; panics after `timeout`
    /// with the load's summary. Returns the report that satisfied it.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Report) -> bool,
    ) -> Report {
        let limit = Instant::now() + timeout;
        loop {
            let report = self.report();
            if cond(&report) {
                return report;
            }
            assert!(
                Instant::now() < limit,
                "load: {what} did not happen within {timeout:?}\n{}",
                report.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for `n` consecutive verified answers finishing after `t`; returns the time from
    /// `t` to the first of them (the §6 recovery time).
    pub async fn wait_valid_run_after(&self, t: Instant, n: usize, timeout: Duration) -> Duration {
        let report = self
            .wait_until(
                &format!("{n} consecutive verified signatures"),
                timeout,
                |r| r.recovery_after(t, n).is_some(),
            )
            .await;
        report.recovery_after(t, n).expect("checked")
    }

    /// Waits for the first failed answer finishing after `t`; returns its record.
    pub async fn wait_failure_after(&self, t: Instant, timeout: Duration) -> Record {
        let report = self
            .wait_until("a failed request", timeout, |r| {
                r.first_failure_after(t).is_some()
            })
            .await;
        report.first_failure_after(t).expect("checked").clone()
    }

    /// Stops the clients (each finishes the request it has in flight) and returns everything
    /// recorded.
    pub async fn stop(mut self) -> Report {
        self.shared.stop.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            joined.expect("a load client panicked");
        }
        self.report()
    }
}

async fn run_client(
    client: usize,
    mut conn: RawCryptoClient,
    keys: Arc<Vec<LoadKey>>,
    cfg: LoadConfig,
    shared: Arc<Shared>,
) {
    let mut i = 0usize;
    while !shared.stop.is_cancelled() {
        let key_index = (client + i) % keys.len();
        let key = &keys[key_index];
        let op = if (i / keys.len() + client) % 2 == 0 {
            Op::Sign
        } else {
            Op::SignHash
        };
        let message = format!("load client {client} request {i}").repeat(1 + i % 5);
        let digest = verify::hash_of(key.algorithm).digest(message.as_bytes());
        let started = Instant::now();
        let answer = tokio::time::timeout(
            cfg.deadline + cfg.backstop,
            send(
                &mut conn,
                key,
                op,
                message.into_bytes(),
                &digest,
                cfg.deadline,
            ),
        )
        .await;
        let finished = Instant::now();
        let (outcome, signed) = match answer {
            Err(_) => (Outcome::NoAnswer, None),
            Ok(Err(status)) => (
                Outcome::Failed(status.code(), status.message().to_string()),
                None,
            ),
            Ok(Ok(signature)) => {
                let outcome = match key.key.verify_digest(key.algorithm, &digest, &signature) {
                    Ok(()) => Outcome::Valid,
                    Err(e) => Outcome::Invalid(format!("{op:?} {}: {e}", key.id)),
                };
                let signed = key.keep_signatures.then_some((digest, signature));
                (outcome, signed)
            }
        };
        let failed = outcome != Outcome::Valid;
        shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Record {
                client,
                key: key_index,
                op,
                started,
                finished,
                outcome,
                signed,
            });
        i += 1;
        let pause = if failed {
            cfg.pause.max(cfg.pause_after_failure)
        } else {
            cfg.pause
        };
        if !pause.is_zero() {
            // A client's back-off between requests, not a wait for readiness.
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shared.stop.cancelled() => {}
            }
        }
    }
}

async fn send(
    conn: &mut RawCryptoClient,
    key: &LoadKey,
    op: Op,
    message: Vec<u8>,
    digest: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>, tonic::Status> {
    let (key_id, signature) = match op {
        Op::Sign => {
            let mut req = tonic::Request::new(AsymmetricSignRequest {
                key_id: key.id.clone(),
                message,
            });
            req.set_timeout(deadline);
            let resp = conn.sign(req).await?.into_inner();
            (resp.key_id, resp.signature)
        }
        Op::SignHash => {
            let mut req = tonic::Request::new(AsymmetricSignHashRequest {
                key_id: key.id.clone(),
                hash: digest.to_vec(),
            });
            req.set_timeout(deadline);
            let resp = conn.sign_hash(req).await?.into_inner();
            (resp.key_id, resp.signature)
        }
    };
    if key_id != key.id {
        return Ok(Vec::new()); // fails verification: recorded as an invalid answer
    }
    Ok(signature)
}

/// What a load recorded, sorted by finish time.
#[derive(Clone)]
pub struct Report {
    /// Every answered request, by finish time.
    pub records: Vec<Record>,
    /// When the load started.
    pub t0: Instant,
    keys: Arc<Vec<LoadKey>>,
}

impl Report {
    fn new(mut records: Vec<Record>, t0: Instant, keys: Arc<Vec<LoadKey>>) -> Self {
        records.sort_by_key(|r| r.finished);
        Report { records, t0, keys }
    }

    /// The key a record signed with.
    pub fn key_of(&self, record: &Record) -> &LoadKey {
        &self.keys[record.key]
    }

    /// Requests answered.
    pub fn total(&self) -> usize {
        self.records.len()
    }

    /// Verified signatures.
    pub fn valid(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.outcome == Outcome::Valid)
            .count()
    }

    /// Requests that did not return a verified signature.
    pub fn failed(&self) -> usize {
        self.total() - self.valid()
    }

    /// OK answers whose signature did not verify.
    pub fn invalid(&self) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Invalid(_)))
            .collect()
    }

    /// Panics, listing them, if any OK answer's signature did not verify.
    #[track_caller]
    pub fn assert_no_invalid(&self) {
        let invalid = self.invalid();
        assert!(
            invalid.is_empty(),
            "{} INVALID signatures reached clients:\n{:#?}\n{}",
            invalid.len(),
            invalid.iter().take(10).collect::<Vec<_>>(),
            self.summary()
        );
    }

    /// Answers by [`Outcome::label`].
    pub fn counts(&self) -> BTreeMap<String, usize> {
        count(self.records.iter())
    }

    /// Answers finishing in `[from, to)`, by [`Outcome::label`].
    pub fn counts_finished_in(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        count(self.finished_in(from, to))
    }

    /// Records finishing in `[from, to)`.
    pub fn finished_in(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(move |r| r.finished >= from && r.finished < to)
    }

    /// Records sent at or after `from` and answered before `to`.
    pub fn within(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(move |r| r.started >= from && r.finished < to)
    }

    /// The first answer finishing after `t` that is not a verified signature.
    pub fn first_failure_after(&self, t: Instant) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.finished >= t && r.outcome != Outcome::Valid)
    }

    /// The last answer that is not a verified signature.
    pub fn last_failure(&self) -> Option<&Record> {
        self.records
            .iter()
            .rev()
            .find(|r| r.outcome != Outcome::Valid)
    }

    /// The §6 recovery time: from `t` to the first of `n` consecutive (by finish time) verified
    /// answers finishing after `t`.
    pub fn recovery_after(&self, t: Instant, n: usize) -> Option<Duration> {
        let mut run_start: Option<&Record> = None;
        let mut run = 0;
        for r in self.records.iter().filter(|r| r.finished >= t) {
            if r.outcome == Outcome::Valid {
                if run == 0 {
                    run_start = Some(r);
                }
                run += 1;
                if run >= n {
                    return run_start.map(|s| s.finished - t);
                }
            } else {
                run = 0;
            }
        }
        None
    }

    /// Verified answers per second over the load's life.
    pub fn throughput(&self) -> f64 {
        match self.records.last() {
            Some(last) => self.valid() as f64 / (last.finished - self.t0).as_secs_f64(),
            None => 0.0,
        }
    }

    /// Latency percentile (0.0..=1.0) of the records `filter` selects.
    pub fn latency_percentile(&self, p: f64, filter: impl Fn(&Record) -> bool) -> Option<Duration> {
        let mut l: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| filter(r))
            .map(Record::latency)
            .collect();
        if l.is_empty() {
            return None;
        }
        l.sort();
        let i = ((l.len() - 1) as f64 * p).round() as usize;
        Some(l[i])
    }

    /// One paragraph for assertion messages and test output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "load: {} answers ({} verified, {:.0}/s) over {:?}; by outcome: {:?}",
            self.total(),
            self.valid(),
            self.throughput(),
            self.records
                .last()
                .map(|r| r.finished - self.t0)
                .unwrap_or_default(),
            self.counts()
        );
        let mut messages: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.records {
            if let Outcome::Failed(code, m) = &r.outcome {
                *messages.entry(format!("{code:?}: {m}")).or_default() += 1;
            }
        }
        for (m, n) in messages.iter().take(12) {
            let _ = write!(s, "\n  {n} x {m}");
        }
        s
    }

    /// Seconds since the load started, for printing timelines.
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64()
    }
}

fn count<'a>(records: impl Iterator<Item = &'a Record>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.outcome.label()).or_default() += 1;
    }
    counts
}

/// Threads of process `pid` (entries of `/proc/<pid>/task`).
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// Open file descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// One `grpc.health.v1` check on `client`; `None` when it failed.
pub async fn health_of(client: &mut RawHealthClient, service: &str) -> Option<ServingStatus> {
    let resp = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .ok()?;
    Some(resp.into_inner().status())
}

/// How far apart the daemon starts recovery attempts: at least a second, plus up to 200 ms of
/// jitter (`src/hsm/recovery.rs`). When a fault ends, the next attempt may be this far away.
pub const RECOVERY_ATTEMPT_SPACING: Duration = Duration::from_millis(1200);

/// How soon after a device-class fault ends service must be back (§6 recovery time): the next
/// recovery attempt, then the attempt itself. That re-does what start-up did (the library, the
/// login, every key with its trial signature), so it is allowed three times what this daemon's
/// start-up took on this machine in this run, rather than a figure tuned on a quiet one.
pub fn recovery_bound(daemon: &Daemon) -> Duration {
    RECOVERY_ATTEMPT_SPACING + 3 * daemon.startup()
}

/// Polls `grpc.health.v1` (the whole server, `""`) every 20 ms until it reports `want`; returns
/// how long that took. Panics after `timeout`.
pub async fn wait_health(daemon: &Daemon, want: ServingStatus, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut client = raw_health_client(daemon.addr());
    loop {
        let got = health_of(&mut client, "").await;
        if got == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "health did not become {want:?} within {timeout:?} (last: {got:?})\n{}",
            daemon.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GetPublicKey` on `client`, without a deadline.
pub async fn get_public_key(
    client: &mut RawCryptoClient,
    key_id: &str,
) -> Result<String, tonic::Status> {
    Ok(client
        .get_public_key(AsymmetricGetPublicKeyRequest {
            key_id: key_id.to_string(),
        })
        .await?
        .into_inner()
        .public_key)
}

/// A held [`cpu_shared`] or [`cpu_exclusive`] lock; released on drop.
pub struct CpuGuard {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn cpu_lock(arg: nix::fcntl::FlockArg) -> CpuGuard {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).expect("create CARGO_TARGET_TMPDIR");
    let path = root.join("p11kms-faults-cpu.lock");
    let file = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let lock = nix::fcntl::Flock::lock(file, arg)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", path.display()));
    CpuGuard { _lock: lock }
}

/// Held by tests that put load on the machine: any number at once, but never together with a
/// [`cpu_exclusive`] holder. Blocks until available.
pub fn cpu_shared() -> CpuGuard {
    cpu_lock(nix::fcntl::FlockArg::LockShared)
}

/// Held by a test whose pass criteria are latencies of tens of milliseconds: no load test of
/// this suite runs meanwhile. Blocks until available.
pub fn cpu_exclusive() -> CpuGuard {
    cpu_lock(nix::fcntl::FlockArg::LockExclusive)
}
