//! The audit trail: one JSON object per line, one line per request, allowed or not.
//!
//! Records are written by one dedicated thread (never on the async runtime, never in the HSM's
//! blocking pool), which appends whatever has queued up in one `write` (group commit) and tells
//! each request whether its line made it. The request-context layer waits for that answer
//! before the response leaves; with `[audit] required = true` a record that could not be
//! written within `write_timeout_ms` turns the response into UNAVAILABLE, so no signature leaves
//! unaudited.
//!
//! The file is opened with `O_APPEND` (and `O_NONBLOCK`, so a FIFO without a reader fails
//! instead of hanging) and reopened on SIGHUP, for log rotation. After a failed write or open the
//! sink is reopened at most once a second.
//!
//! What a record holds: time (RFC 3339), request id, subject (id, type, how it authenticated)
//! or none, peer address, rpc method, key id, folder, algorithm, the SHA-256 of the message
//! (Sign) or of the digest given (SignHash), the outcome code, latency and the token serial;
//! for an answer the transport gave on its own, what it answered
//! (`crate::api::transport_audit`). Never a credential, a PIN or message bytes.

use crate::config::{AuditConfig, AuditSink};
use serde::Serialize;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Records that may wait for the writer; more fail at once (the sink is not keeping up).
const QUEUE: usize = 65_536;
/// Lines written in one batch at most.
const BATCH: usize = 1024;
/// Least time between two attempts at reopening a failed sink.
const REOPEN_SPACING: Duration = Duration::from_secs(1);

/// What the core notes about a request for its record.
#[derive(Clone, Debug, Default)]
pub struct AuditFields {
    /// The gRPC method a REST request was routed to (`/package.Service/Method`); the record's
    /// `rpc` is then that method rather than the URL path.
    pub rpc: Option<&'static str>,
    /// The key (as requested; at most 64 characters kept).
    pub key_id: Option<String>,
    /// The key's folder, or the folder of Create/List.
    pub folder_id: Option<String>,
    /// The operation (OperationService.Get, or the one a change produced).
    pub operation_id: Option<String>,
    /// The key's algorithm.
    pub algorithm: Option<&'static str>,
    /// Sign: SHA-256 (hex) of the message.
    pub message_sha256: Option<String>,
    /// SignHash: SHA-256 (hex) of the digest as given.
    pub digest_sha256: Option<String>,
    /// The alias the request named the key by (at most 64 characters kept).
    pub alias: Option<String>,
    /// The key version used or named.
    pub version_id: Option<String>,
    /// The action of a front whose requests name it (Alibaba's `Action`, `x-kms-apiname`).
    pub action: Option<String>,
    /// Why a front that authenticates requests itself refused the credentials.
    pub authentication_failure: Option<&'static str>,
}

/// Keeps a client-chosen string bounded in the record.
pub fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The subject part of a record.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectRecord {
    /// Subject id.
    pub id: String,
    /// Subject type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `token`, `jwt`, `mtls` or `access_key` (an Alibaba AccessKey signature).
    pub method: &'static str,
}

/// One audit record.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// The request id (also returned in `x-request-id`).
    pub request_id: String,
    /// The authenticated subject; `null` for anonymous requests.
    pub subject: Option<SubjectRecord>,
    /// Why a presented credential was refused (never the credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_failure: Option<&'static str>,
    /// Remote address.
    pub peer: Option<String>,
    /// Whether the connection was TLS.
    pub tls: bool,
    /// The verified client certificate's identity, with mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// `grpc` or `rest`.
    pub protocol: &'static str,
    /// The method: `/package.Service/Method`, for gRPC and for REST requests that matched a
    /// binding; the URL path of any other request.
    pub rpc: String,
    /// The Yandex Audit Trails data-event name, for the crypto calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    /// Key id.
    pub key_id: Option<String>,
    /// Folder id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<String>,
    /// Operation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// Algorithm.
    pub algorithm: Option<&'static str>,
    /// Sign: SHA-256 (hex) of the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_sha256: Option<String>,
    /// SignHash: SHA-256 (hex) of the digest given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_sha256: Option<String>,
    /// The alias the request named the key by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The key version used or named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// What the transport answered, for a request refused before the request-context layer
    /// saw it (`HTTP/2 REFUSED_STREAM …`, `HTTP/2 431 …`, `HTTP/1.1 400 …`); `protocol` is then
    /// `http2` or `http1` and `rpc` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// The gRPC code name of the answer, e.g. `OK`, `PERMISSION_DENIED`.
    pub outcome: &'static str,
    /// From arrival to the answer being ready, in milliseconds.
    pub latency_ms: f64,
    /// The HSM token's serial number.
    pub token_serial: String,
}

impl Record {
    /// The current time as RFC 3339.
    pub fn now() -> String {
        prost_types::Timestamp::from(SystemTime::now()).to_string()
    }
}

/// The Yandex Audit Trails event for a crypto rpc path.
pub fn event_of(rpc: &str) -> Option<&'static str> {
    let method = rpc.strip_prefix(
        "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/",
    )?;
    match method {
        "Sign" => Some("AsymmetricSign"),
        "SignHash" => Some("AsymmetricSignHash"),
        "GetPublicKey" => Some("AsymmetricGetPublicKey"),
        _ => None,
    }
}

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The writer reported an error.
    #[error("{0}")]
    Write(String),
    /// The writer did not answer in time.
    #[error("the audit record was not written within {0:?}")]
    Timeout(Duration),
    /// Too many records are waiting.
    #[error("the audit queue is full ({QUEUE} records): the sink is not keeping up")]
    QueueFull,
    /// The writer is gone.
    #[error("the audit writer has stopped")]
    Stopped,
}

enum Cmd {
    Line(Vec<u8>, Option<oneshot::Sender<Result<(), String>>>),
    Reopen,
    Flush(oneshot::Sender<()>),
}

/// The audit sink, shared by every request.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Cmd>>,
    required: bool,
    timeout: Duration,
    healthy: AtomicBool,
    written: AtomicU64,
    failed: AtomicU64,
}

impl AuditLog {
    /// Starts the writer for `[audit]`.
    ///
    /// # Errors
    /// When a required file sink cannot be opened at start-up.
    pub fn start(cfg: &AuditConfig) -> Result<Self, String> {
        let target = match cfg.sink {
            AuditSink::Off => {
                tracing::warn!("the audit trail is off ([audit] sink = \"off\")");
                return Ok(Self {
                    tx: None,
                    required: false,
                    timeout: cfg.write_timeout(),
                    healthy: AtomicBool::new(true),
                    written: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                });
            }
            AuditSink::Stdout => Target::Stdout,
            AuditSink::File => Target::File(cfg.file.clone().expect("validated at load")),
        };
        let mut sink = Sink::new(target, cfg.fsync);
        if let Err(e) = sink.open() {
            if cfg.required {
                return Err(format!("audit.file: {e}"));
            }
            tracing::error!(error = %e, "cannot open the audit file; records are lost until it can be opened");
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("p11kms-audit".into())
            .spawn(move || writer(sink, rx))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Self {
            tx: Some(tx),
            required: cfg.required,
            timeout: cfg.write_timeout(),
            healthy: AtomicBool::new(true),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Whether a record that cannot be written must fail the request.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records that could not be written so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes `record` and waits (up to the write timeout) until it is in the sink.
    ///
    /// # Errors
    /// When it could not be written in time; logged here (once per outage).
    pub async fn write(&self, record: &Record) -> Result<(), AuditError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (ack, done) = oneshot::channel();
        let outcome = match tx.try_send(Cmd::Line(line(record), Some(ack))) {
            Err(TrySendError::Full(_)) => Err(AuditError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(AuditError::Stopped),
            Ok(()) => match tokio::time::timeout(self.timeout, done).await {
                Err(_) => Err(AuditError::Timeout(self.timeout)),
                Ok(Err(_)) => Err(AuditError::Stopped),
                Ok(Ok(Err(e))) => Err(AuditError::Write(e)),
                Ok(Ok(Ok(()))) => Ok(()),
            },
        };
        self.account(&outcome);
        outcome
    }

    /// Queues `record` without waiting (a request whose client went away).
    pub fn write_detached(&self, record: &Record) {
        if let Some(tx) = &self.tx {
            let outcome = match tx.try_send(Cmd::Line(line(record), None)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(AuditError::QueueFull),
                Err(TrySendError::Disconnected(_)) => Err(AuditError::Stopped),
            };
            if outcome.is_err() {
                self.account(&outcome);
            }
        }
    }

    /// Waits (up to the write timeout) until every record queued so far has been written or
    /// has failed: call it before the process exits, so that records of cancelled requests
    /// (queued without waiting) are not lost.
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (ack, done) = oneshot::channel();
            if tx.try_send(Cmd::Flush(ack)).is_ok() {
                let _ = tokio::time::timeout(self.timeout, done).await;
            }
        }
    }

    /// Reopens the file (after rotation); a no-op for stdout.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            if tx.try_send(Cmd::Reopen).is_err() {
                tracing::warn!("could not ask the audit writer to reopen its file (queue full)");
            }
        }
    }

    fn account(&self, outcome: &Result<(), AuditError>) {
        match outcome {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                if !self.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("audit records are being written again");
                }
            }
            Err(e) => {
                let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if self.healthy.swap(false, Ordering::AcqRel) {
                    if self.required {
                        tracing::error!(error = %e, "AUDIT RECORD NOT WRITTEN: requests fail with UNAVAILABLE until the audit sink works again ([audit] required = true)");
                    } else {
                        tracing::error!(error = %e, "AUDIT RECORD NOT WRITTEN: requests are served without audit records until the sink works again");
                    }
                } else {
                    tracing::debug!(error = %e, failed = n, "audit record not written");
                }
            }
        }
    }
}

fn line(record: &Record) -> Vec<u8> {
    let mut out = serde_json::to_vec(record).expect("an audit record always serialises");
    out.push(b'\n');
    out
}

enum Target {
    Stdout,
    File(PathBuf),
}

struct Sink {
    target: Target,
    fsync: bool,
    file: Option<std::fs::File>,
    last_open: Option<Instant>,
}

impl Sink {
    fn new(target: Target, fsync: bool) -> Self {
        Self {
            target,
            fsync,
            file: None,
            last_open: None,
        }
    }

    fn open(&mut self) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.last_open = Some(Instant::now());
        self.file = None;
        let Target::File(path) = &self.target else {
            return Ok(());
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if meta.is_dir() {
            return Err(format!("{} is a directory", path.display()));
        }
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), String> {
        let path = match &self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                return out
                    .write_all(buf)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write to stdout: {e}"));
            }
            Target::File(path) => path.clone(),
        };
        if self.file.is_none() {
            if self.last_open.is_some_and(|t| t.elapsed() < REOPEN_SPACING) {
                return Err(format!("{} is not open (a reopen failed)", path.display()));
            }
            self.open()?;
        }
        let fsync = self.fsync;
        let file = self.file.as_mut().expect("opened above");
        let written = file
            .write_all(buf)
            .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        written.map_err(|e| {
            // Reopened on the next batch (at most once a second).
            self.file = None;
            format!("cannot write to {}: {e}", path.display())
        })
    }
}

fn writer(mut sink: Sink, rx: mpsc::Receiver<Cmd>) {
    let mut buf = Vec::new();
    let mut acks = Vec::new();
    let flush = |sink: &mut Sink, buf: &mut Vec<u8>, acks: &mut Vec<oneshot::Sender<_>>| {
        if buf.is_empty() && acks.is_empty() {
            return;
        }
        let result = sink.write(buf);
        if let Err(e) = &result {
            if acks.is_empty() {
                // Only detached records in this batch: nobody else will log it.
                tracing::error!(error = %e, "audit records of cancelled requests not written");
            }
        }
        buf.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Line(line, ack) => {
                    buf.extend_from_slice(&line);
                    acks.extend(ack);
                }
                Cmd::Flush(done) => {
                    flush(&mut sink, &mut buf, &mut acks);
                    let _ = done.send(());
                }
                Cmd::Reopen => {
                    flush(&mut sink, &mut buf, &mut acks);
                    match sink.open() {
                        Ok(()) => tracing::info!("audit sink reopened"),
                        Err(e) => tracing::error!(error = %e, "audit sink reopen failed"),
                    }
                }
            }
            taken += 1;
            if taken < BATCH {
                next = rx.try_recv().ok();
            }
        }
        flush(&mut sink, &mut buf, &mut acks);
    }
}

/// The gRPC code name, as in `google.rpc.Code` (`PERMISSION_DENIED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            time: Record::now(),
            request_id: id.into(),
            subject: None,
            authentication_failure: None,
            peer: None,
            tls: false,
            client_certificate: None,
            protocol: "grpc",
            rpc: "/x/Y".into(),
            event: None,
            key_id: None,
            folder_id: None,
            operation_id: None,
            algorithm: None,
            message_sha256: None,
            digest_sha256: None,
            alias: None,
            version_id: None,
            transport: None,
            outcome: "OK",
            latency_ms: 0.5,
            token_serial: "s".into(),
        }
    }

    #[tokio::test]
    async fn appends_lines_and_reopens_after_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("audit.log");
        let cfg = AuditConfig {
            sink: AuditSink::File,
            file: Some(path.clone()),
            required: true,
            ..AuditConfig::default()
        };
        let log = AuditLog::start(&cfg).unwrap();
        log.write(&record("a")).await.unwrap();
        std::fs::rename(&path, dir.join("audit.log.1")).unwrap();
        log.write(&record("b")).await.unwrap(); // still the renamed file
        log.reopen();
        log.write(&record("c")).await.unwrap();
        let old = std::fs::read_to_string(dir.join("audit.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 2);
        assert_eq!(new.lines().count(), 1);
        assert!(new.contains("\"request_id\":\"c\""));
        // A directory where the file was: the reopen fails, writes fail.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        log.reopen();
        assert!(log.write(&record("d")).await.is_err());
        assert_eq!((log.written(), log.failed()), (3, 1));
    }
}
