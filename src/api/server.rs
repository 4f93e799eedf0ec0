//! The listener: accepts connections, terminates TLS, serves HTTP/1.1 and HTTP/2 on each, and
//! drains gracefully.
//!
//! We drive hyper directly rather than through tonic's transport so that gRPC and REST can share
//! one listener, and so that TLS, deadlines and connection limits are ours to enforce.
//!
//! Every connection gets its own task, so a slow or stalled client never holds up `accept`.
//! What one connection may cost is bounded, the same for TLS and plaintext:
//! - **setup**: from TCP accept, the client has [`ServerLimits::setup_timeout`] to finish the
//!   TLS handshake *and* start speaking HTTP (the 24-byte HTTP/2 preface, or as many bytes of an
//!   HTTP/1 request); otherwise the socket is closed and the task ends;
//! - **HTTP/2**: concurrent streams, header list size, keepalive PINGs (an unanswered PING
//!   closes the connection), and the reset-stream limits against Rapid Reset and friends;
//! - **age**: after [`ServerLimits::max_connection_age`] (±10% jitter, so that connections
//!   opened together do not all reconnect together) the connection gets a graceful GOAWAY, and
//!   is closed if its requests are not done after [`ServerLimits::max_connection_age_grace`].
//!
//! What all connections together may cost is bounded too ([`Edge`]): connections in total and
//! per client address, with a reserve for health checks ([`super::conn_limit`]), and the bytes
//! held by request bodies still being received ([`super::body_budget`]). Header lists are
//! limited to `server.max_header_list_size` by the request-context layer, which answers and
//! audits the refusal; HTTP/2 and HTTP/1.1 themselves get four times that as a hard ceiling
//! (h2 answers 431 up to four times its own limit and closes the connection beyond).
//!
//! Answers the transport gives without a request reaching the request-context layer are
//! audited ([`super::transport_audit`]): streams h2 refuses (read off the frames we write,
//! [`super::h2_watch`]) and HTTP/1.1 request heads hyper refuses. Protocol errors that never
//! become a request get a counted log line ([`super::transport_log`]).
//!
//! A connection that ends gracefully lingers (bounded) until the client has closed too, and a
//! request body refused unread is drained (bounded), so that no answer we sent is lost to a
//! TCP reset ([`super::linger`]).
//!
//! Each request carries a [`Peer`] in its extensions: the remote address, whether it came over
//! TLS, and the verified mTLS client's identity.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::body_budget::{BodyBudget, CountedBody};
use super::conn_limit::{ConnectionLimits, Slot, RESERVE_CONNECTION_AGE};
use super::h2_watch::{FrameScanner, Sent};
use super::linger::{LingeringBody, LingeringClose};
use super::peer::Peer;
use super::tls::{self, ServerTls};
use super::transport_audit::{self, H2Refusals, TransportAudit};
use super::transport_log::{self, Event};
use crate::config::{ServerConfig, DEFAULT_HANDSHAKE_TIMEOUT_MS};

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The transport's own header ceiling, as a multiple of `server.max_header_list_size`.
const HARD_HEADER_FACTOR: u32 = 4;
/// HTTP/2 flow control: what a client may send on one stream before p11kms has read it. Twice
/// the largest request (64 KiB gRPC, ~93 KiB REST) arrives in one round trip; hyper's default
/// (1 MiB) would let a stalled stream park that much unread.
const STREAM_WINDOW: u32 = 128 * 1024;
/// The same over a whole connection: the most unread request data one connection can hold.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes buffered per stream for a client that does not read them (hyper's default,
/// 400 KB, times 128 streams would be 50 MB per connection); our answers are small.
const MAX_SEND_BUF: usize = 64 * 1024;

/// Listener limits (`[server]` and `[server.tls]` in the config).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest header block accepted, in bytes (enforced by the request-context layer).
    pub max_header_list_size: u32,
    /// The HTTP/2 and HTTP/1.1 layers' own ceiling: [`HARD_HEADER_FACTOR`] times that.
    pub hard_header_list_size: u32,
    /// Interval of HTTP/2 keepalive PINGs; `None`: none are sent.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Age after which a connection gets a graceful GOAWAY (jittered ±10%); `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// How long requests may run after that GOAWAY before the connection is closed.
    pub max_connection_age_grace: Duration,
    /// Streams a client may reset before they were accepted, per connection.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for the client's protocol errors, per connection.
    pub max_local_error_reset_streams: usize,
    /// HTTP/1.1: how long a request's headers may take to arrive.
    pub header_read_timeout: Duration,
    /// From TCP accept to a finished TLS handshake and the first bytes of HTTP.
    pub setup_timeout: Duration,
    /// How long in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::from_config(&ServerConfig::default())
    }
}

impl ServerLimits {
    /// The limits a `[server]` section sets.
    pub fn from_config(cfg: &ServerConfig) -> Self {
        let ms = Duration::from_millis;
        Self {
            max_concurrent_streams: cfg.max_concurrent_streams,
            max_header_list_size: cfg.max_header_list_size,
            hard_header_list_size: cfg.max_header_list_size * HARD_HEADER_FACTOR,
            keepalive_interval: (cfg.keepalive_interval_ms > 0)
                .then(|| ms(cfg.keepalive_interval_ms)),
            keepalive_timeout: ms(cfg.keepalive_timeout_ms),
            max_connection_age: (cfg.max_connection_age_ms > 0)
                .then(|| ms(cfg.max_connection_age_ms)),
            max_connection_age_grace: ms(cfg.max_connection_age_grace_ms),
            max_pending_accept_reset_streams: cfg.max_pending_accept_reset_streams,
            max_local_error_reset_streams: cfg.max_local_error_reset_streams,
            header_read_timeout: ms(cfg.header_read_timeout_ms),
            setup_timeout: ms(cfg
                .tls
                .as_ref()
                .map_or(DEFAULT_HANDSHAKE_TIMEOUT_MS, |t| t.handshake_timeout_ms)),
            shutdown_grace: ms(cfg.shutdown_grace_ms),
        }
    }
}

/// What every listener shares: the limits over all connections, and the audit trail for
/// answers the transport gives.
#[derive(Debug)]
pub struct Edge {
    /// Connections open, in total and per address.
    pub connections: Arc<ConnectionLimits>,
    /// Bytes held by request bodies still being received.
    pub bodies: Arc<BodyBudget>,
    /// Records for answers given below the request-context layer.
    pub audit: Arc<TransportAudit>,
}

impl Edge {
    /// From `[server]`.
    pub fn new(cfg: &ServerConfig, audit: Arc<TransportAudit>) -> Arc<Self> {
        Arc::new(Self {
            connections: ConnectionLimits::new(
                cfg.max_connections,
                cfg.max_connections_per_ip,
                cfg.health_reserve_connections,
            ),
            bodies: BodyBudget::new(cfg.max_buffered_body_bytes),
            audit,
        })
    }
}

/// What every connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: axum::Router,
    limits: ServerLimits,
    tls: Option<Arc<ServerTls>>,
    edge: Arc<Edge>,
    /// Shutdown began: no new requests; GOAWAY on every connection.
    draining: CancellationToken,
    /// The shutdown grace is over: every connection is dropped.
    closing: CancellationToken,
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// stops accepting and waits up to the grace period for open requests.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    tls: Option<Arc<ServerTls>>,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.hard_header_list_size)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(MAX_SEND_BUF)
        .max_pending_accept_reset_streams(Some(limits.max_pending_accept_reset_streams))
        .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's default holds ~400 KB of unfinished headers per connection; hyper needs at
        // least 8 KiB.
        .max_buf_size((limits.hard_header_list_size as usize).max(8192));
    let grace = limits.shutdown_grace;
    let shared = Arc::new(Shared {
        builder,
        router,
        limits,
        tls,
        edge,
        draining: CancellationToken::new(),
        closing: CancellationToken::new(),
    });

    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match shared.edge.connections.admit(remote.ip()) {
                    Ok(slot) => {
                        connections.spawn(connection(Arc::clone(&shared), stream, remote, slot));
                    }
                    // Dropping the stream closes it before anything is read or written.
                    Err(refusal) => transport_log::note(Event::ConnectionRefused, remote, &refusal.name()),
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    shared.draining.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            shared.closing.cancel();
            connections.wait().await;
        }
    }
}

/// One accepted socket, from handshake to close; `slot` is its place in the connection limits,
/// freed when it ends.
async fn connection(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr, slot: Slot) {
    let setup_deadline = Instant::now() + shared.limits.setup_timeout;
    let _ = stream.set_nodelay(true);
    let stream = LingeringClose::new(stream);
    let Some(tls) = &shared.tls else {
        let peer = Peer {
            addr: remote,
            tls: false,
            client_subject: None,
            health_only: slot.reserve,
        };
        return serve_http(&shared, stream, peer, setup_deadline).await;
    };
    let handshake = tokio::time::timeout_at(setup_deadline, tls.acceptor().accept(stream));
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        // A half-done handshake has no request to finish: drop it at once.
        () = shared.draining.cancelled() => return,
    };
    let stream = match outcome {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return log_handshake_failure(remote, &e),
        Err(_elapsed) => {
            // Dropping the half-open stream closes the socket: nothing stays behind.
            tracing::debug!(%remote, timeout = ?shared.limits.setup_timeout, "TLS handshake timed out; disconnected");
            return;
        }
    };
    let session = stream.get_ref().1;
    // Only a verified chain gets here: with mTLS configured, rustls refused the handshake of a
    // client without a certificate that chains to the client CA bundle.
    let client_subject = if tls.mtls() {
        session
            .peer_certificates()
            .and_then(<[_]>::first)
            .and_then(tls::client_subject)
    } else {
        None
    };
    tracing::debug!(
        %remote,
        alpn = %String::from_utf8_lossy(session.alpn_protocol().unwrap_or_default()),
        client_subject = client_subject.as_deref().unwrap_or(""),
        "TLS connection established"
    );
    if tls.mtls() && client_subject.is_none() {
        tracing::warn!(%remote, "the verified client certificate has neither a URI SAN nor a CN; the caller has no mTLS identity");
    }
    let peer = Peer {
        addr: remote,
        tls: true,
        client_subject,
        health_only: slot.reserve,
    };
    serve_http(&shared, stream, peer, setup_deadline).await;
}

fn log_handshake_failure(remote: SocketAddr, error: &io::Error) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        // A refused client certificate is worth an operator's attention; scanners and clients
        // that hang up are not.
        Some(
            e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => {
            tracing::info!(%remote, error = %e, "TLS handshake refused: client certificate");
        }
        _ => tracing::debug!(%remote, %error, "TLS handshake failed"),
    }
}

/// Runs HTTP on an established (TLS or plaintext) stream until it closes, ages out, or the
/// server shuts down.
async fn serve_http<S>(shared: &Shared, io: S, peer: Peer, setup_deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = peer.addr;
    let started = Arc::new(AtomicBool::new(false));
    let io = SetupWatch {
        inner: io,
        read: 0,
        preface: true,
        started: Arc::clone(&started),
        sent: None,
        refusals: Vec::new(),
        report: H2Refusals {
            audit: Arc::clone(&shared.edge.audit),
            peer: peer.clone(),
            max_streams: shared.limits.max_concurrent_streams,
            hard_headers: shared.limits.hard_header_list_size,
        },
    };
    let bodies = Arc::clone(&shared.edge.bodies);
    let request_peer = peer.clone();
    let service = TowerToHyperService::new(shared.router.clone().map_request(
        move |request: http::Request<hyper::body::Incoming>| {
            let mut request = LingeringBody::wrap(request)
                .map(|body| CountedBody::new(body, Arc::clone(&bodies)));
            request.extensions_mut().insert(request_peer.clone());
            request.extensions_mut().insert(Arc::clone(&bodies));
            request
        },
    ));
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);

    // A reserve connection is for a probe or two, not for keeping.
    let age = if peer.health_only {
        Some(RESERVE_CONNECTION_AGE)
    } else {
        shared.limits.max_connection_age.map(jittered)
    };
    let aged_out = tokio::time::sleep(age.unwrap_or(Duration::ZERO));
    tokio::pin!(aged_out);
    let mut awaiting_setup = true;
    let mut goaway_sent = false;
    let mut close_at: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    transport_audit::connection_error(&shared.edge.audit, &peer, &*e);
                }
                return;
            }
            () = tokio::time::sleep_until(setup_deadline), if awaiting_setup => {
                awaiting_setup = false;
                if !started.load(Ordering::Relaxed) {
                    tracing::debug!(%remote, "no HTTP from the client in time; disconnected");
                    return;
                }
            }
            () = &mut aged_out, if age.is_some() && !goaway_sent => {
                tracing::debug!(%remote, ?age, "connection reached its maximum age; GOAWAY");
                goaway_sent = true;
                conn.as_mut().graceful_shutdown();
                close_at = Some(Instant::now() + shared.limits.max_connection_age_grace);
            }
            () = shared.draining.cancelled(), if !goaway_sent => {
                goaway_sent = true;
                conn.as_mut().graceful_shutdown();
            }
            () = async { tokio::time::sleep_until(close_at.expect("guarded")).await }, if close_at.is_some() => {
                tracing::debug!(%remote, "requests outlived the max-age grace; closing");
                return;
            }
            () = shared.closing.cancelled() => return,
        }
    }
}

/// `age` ±10%, so that connections opened in a burst do not all reconnect in one.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(rand::random_range(0.9..=1.1))
}

/// Passes I/O through, notes when the client has sent enough to be speaking HTTP (the whole
/// HTTP/2 preface, or as many bytes of an HTTP/1 request), and on an HTTP/2 connection reads
/// the frames we write for the refusals h2 makes on its own ([`super::h2_watch`]).
struct SetupWatch<S> {
    inner: S,
    read: usize,
    /// Every byte read so far matched the HTTP/2 preface.
    preface: bool,
    started: Arc<AtomicBool>,
    /// Set once the connection is known to be HTTP/2.
    sent: Option<FrameScanner>,
    refusals: Vec<Sent>,
    report: H2Refusals,
}

impl<S> SetupWatch<S> {
    fn wrote(&mut self, bufs: &[&[u8]], mut n: usize) {
        let Some(scanner) = &mut self.sent else {
            return;
        };
        for buf in bufs {
            let take = n.min(buf.len());
            scanner.feed(&buf[..take], &mut self.refusals);
            n -= take;
            if n == 0 {
                break;
            }
        }
        for sent in self.refusals.drain(..) {
            self.report.report(sent);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SetupWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.read < H2_PREFACE.len() {
            let this = &mut *self;
            for &byte in &buf.filled()[before..] {
                if this.read == H2_PREFACE.len() {
                    break;
                }
                this.preface &= byte == H2_PREFACE[this.read];
                this.read += 1;
            }
            if this.read == H2_PREFACE.len() {
                this.started.store(true, Ordering::Relaxed);
                if this.preface {
                    this.sent = Some(FrameScanner::default());
                }
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SetupWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(&[buf], n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
            self.wrote(&slices, n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
