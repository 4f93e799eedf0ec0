//! The gateway path: M concurrent gRPC clients, each on its own HTTP/2 connection (one
//! connection would serialise them on its single socket and flow-control window).
//!
//! The client is as thin as gRPC gets: tonic's generated client straight over hyper's HTTP/2
//! connection, with no tower buffer, pool or reconnect layer. The load generator shares the
//! machine with the daemon, so every microsecond it spends is one the daemon does not get.

use super::procfs::Proc;
use super::stats::{Sample, Tally, Window};
use super::verify;
use crate::api::yandex::grpc::pb::kms::asymmetric_signature_crypto_service_client::AsymmetricSignatureCryptoServiceClient;
use crate::api::yandex::grpc::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricSignHashRequest, AsymmetricSignRequest,
};
use crate::crypto::Algorithm;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};

/// One HTTP/2 connection, as a tower service for tonic's generated client.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    send: http2::SendRequest<tonic::body::Body>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.send.send_request(request))
    }
}

/// The crypto service over one [`Connection`].
pub(crate) type Client = AsymmetricSignatureCryptoServiceClient<Connection>;

/// Where the gateway listens and how to authenticate to it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    origin: http::Uri,
    /// `authorization: Bearer <token>`, sent on every call when set.
    auth: Option<MetadataValue<Ascii>>,
}

impl Target {
    /// A plaintext gRPC endpoint, sending `bearer` when given.
    pub(crate) fn new(addr: SocketAddr, bearer: Option<&str>) -> Result<Self, String> {
        let auth = bearer
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    "the bearer token holds characters a header cannot carry".to_string()
                })
            })
            .transpose()?;
        Ok(Self {
            addr,
            origin: format!("http://{addr}")
                .parse()
                .map_err(|e| format!("{addr}: {e}"))?,
            auth,
        })
    }

    /// Resolves `endpoint` (`host:port` or `http://host:port`).
    pub(crate) async fn resolve(endpoint: &str, bearer: Option<&str>) -> Result<Self, String> {
        if endpoint.starts_with("https://") {
            return Err(format!(
                "{endpoint}: the bench speaks plaintext gRPC only; point it at a plaintext (loopback) listener"
            ));
        }
        let authority = endpoint
            .strip_prefix("http://")
            .unwrap_or(endpoint)
            .trim_end_matches('/');
        let addr = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority} resolves to no address"))?;
        Self::new(addr, bearer)
    }

    /// Opens a new HTTP/2 connection with the crypto service's client on it.
    pub(crate) async fn connect(&self) -> Result<Client, String> {
        Ok(AsymmetricSignatureCryptoServiceClient::with_origin(
            self.connection().await?,
            self.origin(),
        ))
    }

    /// The origin a generated client on a [`Target::connection`] needs (`with_origin`).
    pub(crate) fn origin(&self) -> http::Uri {
        self.origin.clone()
    }

    /// Opens a new HTTP/2 connection, for any service's generated client.
    pub(crate) async fn connection(&self) -> Result<Connection, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", self.addr))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { send })
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }

    /// GetPublicKey's PEM for `key_id`.
    pub(crate) async fn public_key_pem(&self, key_id: &str) -> Result<String, String> {
        let mut client = self.connect().await?;
        let request = self.request(AsymmetricGetPublicKeyRequest {
            key_id: key_id.to_string(),
        });
        client
            .get_public_key(request)
            .await
            .map(|r| r.into_inner().public_key)
            .map_err(|s| format!("GetPublicKey {key_id}: {:?}: {}", s.code(), s.message()))
    }
}

/// What the clients call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// SignHash with a digest of the key's hash length.
    SignHash,
    /// Sign with a message of this many bytes.
    Sign(usize),
    /// GetPublicKey (served from memory; no token call).
    GetPublicKey,
}

impl Op {
    /// The row label.
    pub(crate) fn label(self) -> String {
        match self {
            Op::SignHash => "SignHash".into(),
            Op::Sign(n) if n % 1024 == 0 => format!("Sign {} KiB", n / 1024),
            Op::Sign(n) => format!("Sign {n} B"),
            Op::GetPublicKey => "GetPublicKey".into(),
        }
    }
}

/// One gateway run.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) op: Op,
    pub(crate) algorithm: Algorithm,
    /// The keys to spread requests over, round robin (one for most runs; many for scale runs).
    pub(crate) key_ids: Arc<Vec<String>>,
    pub(crate) clients: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Open loop at this many requests per second in total; closed loop when `None`.
    pub(crate) rate: Option<f64>,
    /// The daemon process, when it runs on this machine.
    pub(crate) daemon: Option<Proc>,
}

/// What a gateway run measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    pub(crate) window: Duration,
    pub(crate) daemon_cpu_seconds: Option<f64>,
    pub(crate) client_cpu_seconds: Option<f64>,
    pub(crate) peak_rss_kib: Option<u64>,
}

/// Runs `plan` against `target`.
///
/// # Errors
/// When the clients cannot connect.
pub(crate) async fn run(target: &Target, plan: &Plan) -> Result<Measured, String> {
    let mut clients = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        clients.push(target.connect().await?);
    }
    let window = Window::after(plan.warmup, plan.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let pace = plan.rate.map(|r| {
            let interval = Duration::from_secs_f64(plan.clients as f64 / r);
            (interval, interval.mul_f64(i as f64 / plan.clients as f64))
        });
        let worker = Worker {
            target: target.clone(),
            plan: plan.clone(),
            index: i,
            window,
            pace,
        };
        tasks.spawn(worker.run(client));
    }

    // The OS's view of both processes over exactly the window.
    tokio::time::sleep_until(window.start.into()).await;
    let daemon = plan.daemon;
    let daemon_before = daemon.and_then(|d| d.cpu_seconds().ok());
    let rss_reset = daemon.is_some_and(|d| d.reset_peak_rss().is_ok());
    let client_before = Proc::Myself.cpu_seconds().ok();
    tokio::time::sleep_until(window.end.into()).await;
    let daemon_after = daemon.and_then(|d| d.cpu_seconds().ok());
    let client_after = Proc::Myself.cpu_seconds().ok();
    let peak_rss_kib = daemon.and_then(|d| d.peak_rss_kib().ok());
    if daemon.is_some() && !rss_reset {
        tracing::warn!("cannot reset the daemon's peak RSS; it is the peak since start");
    }

    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined.map_err(|e| format!("a client task failed: {e}"))?);
    }
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(Measured {
        tally,
        window: window.length(),
        daemon_cpu_seconds: delta(daemon_before, daemon_after),
        client_cpu_seconds: delta(client_before, client_after),
        peak_rss_kib,
    })
}

struct Worker {
    target: Target,
    plan: Plan,
    index: usize,
    window: Window,
    pace: Option<(Duration, Duration)>,
}

impl Worker {
    async fn run(self, mut client: Client) -> Tally {
        let Worker {
            target,
            plan,
            index,
            window,
            pace,
        } = self;
        let mut tally = Tally::default();
        let mut digest = vec![0u8; verify::digest_len(plan.algorithm)];
        rand::fill(&mut digest[..]);
        let message = match plan.op {
            Op::Sign(n) => {
                let mut m = vec![0u8; n];
                rand::fill(&mut m[..]);
                m
            }
            _ => Vec::new(),
        };
        let message_digest = verify::digest(plan.algorithm, &message);
        let keys = plan.key_ids.len();
        let mut next = pace.map(|(_, offset)| Instant::now() + offset);
        let mut n: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= window.end {
                break;
            }
            // Open loop: latency counts from the scheduled time when the client is behind
            // (queueing is the system's), from the actual send when it slept (the tokio timer
            // wakes up to a millisecond late, which is the client's doing, not the gateway's).
            let began = match (&mut next, pace) {
                (Some(at), Some((interval, _))) => {
                    let scheduled = *at;
                    *at += interval;
                    if scheduled > now {
                        tokio::time::sleep_until(scheduled.into()).await;
                        Instant::now()
                    } else {
                        scheduled
                    }
                }
                _ => now,
            };
            n += 1;
            let key = (index + (n as usize) * plan.clients) % keys;
            let key_id = plan.key_ids[key].clone();
            let (outcome, signed) = match plan.op {
                Op::SignHash => {
                    digest[..8].copy_from_slice(&n.to_be_bytes());
                    let request = target.request(AsymmetricSignHashRequest {
                        key_id,
                        hash: digest.clone(),
                    });
                    let outcome = client
                        .sign_hash(request)
                        .await
                        .map(|r| r.into_inner().signature);
                    (outcome, &digest)
                }
                Op::Sign(_) => {
                    let request = target.request(AsymmetricSignRequest {
                        key_id,
                        message: message.clone(),
                    });
                    let outcome = client.sign(request).await.map(|r| r.into_inner().signature);
                    (outcome, &message_digest)
                }
                Op::GetPublicKey => {
                    let request = target.request(AsymmetricGetPublicKeyRequest { key_id });
                    let outcome = client
                        .get_public_key(request)
                        .await
                        .map(|r| r.into_inner().public_key.into_bytes());
                    (outcome, &message_digest)
                }
            };
            let done = Instant::now();
            if !window.contains(done) {
                continue;
            }
            match outcome {
                Ok(signature) => {
                    if tally.ok(done - began) {
                        tally.samples.push(Sample {
                            key,
                            digest: signed.clone(),
                            signature,
                        });
                    }
                }
                Err(status) => tally.error(format!("{:?}", status.code()), || {
                    format!("{:?}: {}", status.code(), status.message())
                }),
            }
        }
        tally
    }
}
