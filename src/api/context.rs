//! The request-context layer: one tower layer on the shared router, so that every service on
//! the listener (gRPC and REST alike) gets the same treatment.
//!
//! For every request, in this order, before any service sees it:
//!
//! 1. **Request id.** A client `x-request-id` that is a sane token (1 to 128 of
//!    `A-Z a-z 0-9 . _ ~ : + / = -`) is kept; anything else is replaced by a fresh UUID-shaped id.
//!    The id goes back in the `x-request-id` response header on every answer, errors included.
//! 2. **Authentication** ([`crate::auth::authn`]): bearer token or mTLS subject → [`Caller`],
//!    or anonymous. The `authorization` header is then removed, so no service can log it.
//! 3. **Rate limit** per subject (per peer IP without a valid credential), plus a bucket per
//!    client IP for requests without a valid credential; health checks draw from a generous
//!    bucket of their own per client IP instead ([`crate::auth::rate_limit`]):
//!    RESOURCE_EXHAUSTED, before any work.
//! 4. Refusals that need no service, first match wins: anything but a health check on a
//!    connection of the health reserve ([`super::conn_limit`]) → UNAVAILABLE; a header list over
//!    `server.max_header_list_size` → HTTP 431 (an oversized bearer token has been counted as a
//!    failed authentication in step 2); a presented but invalid credential → UNAUTHENTICATED;
//!    no credential on anything but the public services (endpoint discovery over gRPC and REST,
//!    health, reflection) → UNAUTHENTICATED; a request with a body while the bodies being
//!    received hold `server.max_buffered_body_bytes` (half of it without a valid credential)
//!    ([`super::body_budget`]) → RESOURCE_EXHAUSTED. None of these reads the body.
//! 5. The service runs with a [`RequestContext`] in the request's extensions; the core
//!    authorises with its caller and notes what the audit record needs.
//! 6. **Audit**: when the response (or the layer's own error) is ready, exactly one record is
//!    written *before* the response is handed back to hyper. With `[audit] required = true`, a
//!    record that cannot be written replaces the response with UNAVAILABLE: for a Sign, the
//!    signature never leaves. A request whose client goes away before its answer is ready is
//!    recorded as CANCELLED.
//!
//! The layer speaks each protocol through [`Protocol`]: how an error it produces is rendered,
//! and how an outcome code is read off a response. gRPC errors are `tonic::Status` responses;
//! REST gets the Yandex REST error body; the Alibaba fronts their own error formats.
//!
//! The Alibaba fronts authenticate requests themselves (their signatures cover the request, not
//! a bearer token): for them the layer skips steps 2 and 3 and the credential checks of step 4,
//! leaves the `authorization` header in place, and the front records its caller in the context
//! ([`RequestContext::authenticated`]), rate-limits it by subject, and on a failed
//! authentication draws from the per-IP bucket of requests without a valid credential. Steps 1,
//! 4 (health reserve, header size, body budget without credentials), 5 and 6 are the same.

use super::body_budget::BodyBudget;
use super::peer::Peer;
use crate::auth::audit::{self, Record, SubjectRecord};
use crate::auth::rate_limit::RateKey;
use crate::auth::{Caller, Identity, RequestContext};
use crate::error::Error;
use crate::metrics::MethodNames;
use axum::body::Body;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tower::{Layer, Service, ServiceExt as _};
use tracing::Instrument as _;

/// The request/response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest client request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// gRPC services every client may call without credentials: the Python SDK discovers its
/// endpoints before it has any, and load balancers probe health.
const PUBLIC_GRPC_SERVICES: &[&str] = &[
    "/yandex.cloud.endpoint.ApiEndpointService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];
/// REST paths every client may call without credentials: endpoint discovery (the path itself
/// and anything below it).
const PUBLIC_REST_PATHS: &[&str] = &["/endpoints"];
/// Exempt from the rate limit (probes must keep answering while a subject is throttled).
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Applies the request-context layer to `router`. Call it on the finished router, after every
/// service and route has been added: routes added afterwards would bypass it.
/// `max_header_list_size` is `server.max_header_list_size`, which the layer enforces itself
/// (the transport's own ceiling is higher) so that an oversized request is answered, audited
/// and, if its credential is what is oversized, counted as a failed authentication.
pub fn apply(
    router: axum::Router,
    identity: Arc<Identity>,
    token_serial: String,
    max_header_list_size: usize,
    methods: MethodNames,
) -> axum::Router {
    router.layer(ContextLayer {
        shared: Arc::new(Shared {
            identity,
            token_serial,
            max_header_list_size,
            methods,
        }),
    })
}

/// The wire protocol of a request, deciding how the layer renders its own errors and reads the
/// outcome of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (`content-type: application/grpc…`).
    Grpc,
    /// Anything else: the REST/JSON API.
    Rest,
    /// Alibaba's shared-gateway OpenAPI: `/` with an action (`x-acs-action` or `Action=`).
    AlibabaOpenApi,
    /// Alibaba's KMS instance API: `x-kms-apiname`.
    AlibabaInstance,
}

/// An outcome a service may put into a response's extensions when the protocol cannot tell
/// it from the response alone.
#[derive(Clone, Copy, Debug)]
pub struct Outcome(pub Code);

impl Protocol {
    /// The protocol of `request`, from its headers and path (never its body).
    pub fn of<B>(request: &Request<B>) -> Self {
        let headers = request.headers();
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            return Protocol::Grpc;
        }
        if crate::api::alibaba::instance::is_instance_request(headers) {
            return Protocol::AlibabaInstance;
        }
        if request.uri().path() == "/" && crate::api::alibaba::openapi::is_openapi_request(request)
        {
            return Protocol::AlibabaOpenApi;
        }
        Protocol::Rest
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Rest => "rest",
            Protocol::AlibabaOpenApi => "alibaba-openapi",
            Protocol::AlibabaInstance => "alibaba-instance",
        }
    }

    /// Whether the front authenticates requests itself (see the module docs).
    fn authenticates_itself(self) -> bool {
        matches!(self, Protocol::AlibabaOpenApi | Protocol::AlibabaInstance)
    }

    /// An error answer produced by the layer itself.
    pub fn error(self, code: Code, message: &str, request_id: &str) -> Response<Body> {
        let mut response = match self {
            Protocol::Grpc => tonic::Status::new(code, message).into_http::<Body>(),
            Protocol::Rest => {
                let body = serde_json::json!({
                    "code": code as i32,
                    "message": message,
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.RequestInfo",
                        "requestId": request_id,
                    }],
                });
                let mut r = Response::new(Body::from(body.to_string()));
                *r.status_mut() = crate::api::yandex::status::http_status(code);
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Protocol::AlibabaOpenApi => {
                crate::api::alibaba::openapi::OpenApiError::from_layer(code, message)
                    .into_response(request_id, "")
            }
            Protocol::AlibabaInstance => {
                crate::api::alibaba::instance::InstanceError::from_layer(code, message)
                    .to_response(request_id)
            }
        };
        response.extensions_mut().insert(Outcome(code));
        response
    }

    /// HTTP 431 for a request whose headers are over the limit. gRPC gets the bare status, as
    /// an HTTP/2 server's own 431 would be (clients report it as such); REST its error body.
    pub fn headers_too_large(self, message: &str, request_id: &str) -> Response<Body> {
        let mut response = match self {
            Protocol::Grpc => {
                let mut r = Response::new(Body::from(message.to_string()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            // The OpenAPI carries every parameter in the query string, which counts toward the
            // header list: over the limit, the request cannot be read, and saying so is not
            // throttling. `Rejected.Throttling` (what ResourceExhausted maps to) would tell
            // Alibaba clients to retry a request that can never pass.
            Protocol::AlibabaOpenApi => {
                crate::api::alibaba::openapi::OpenApiError::unparseable(message)
                    .into_response(request_id, "")
            }
            // Likewise: the instance SDK retries Rejected.Throttling, and this never passes.
            // Its error message carries its HTTP status, so it stays 400 (InvalidParameter).
            Protocol::AlibabaInstance => {
                let mut r = crate::api::alibaba::instance::InstanceError::from_layer(
                    Code::InvalidArgument,
                    message,
                )
                .to_response(request_id);
                r.extensions_mut().insert(Outcome(Code::InvalidArgument));
                return r;
            }
            Protocol::Rest => self.error(Code::ResourceExhausted, message, request_id),
        };
        *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        response
            .extensions_mut()
            .insert(Outcome(Code::ResourceExhausted));
        response
    }

    /// The outcome code of a response.
    pub fn outcome(self, response: &Response<Body>) -> Code {
        if let Some(Outcome(code)) = response.extensions().get::<Outcome>() {
            return *code;
        }
        match self {
            // Errors are trailers-only responses (grpc-status in the headers); a response
            // without one is a message followed by an OK status in the trailers.
            Protocol::Grpc => match tonic::Status::from_header_map(response.headers()) {
                Some(status) => status.code(),
                None if response.status().is_success() => Code::Ok,
                None => crate::api::yandex::status::code_of_http(response.status()),
            },
            Protocol::Rest | Protocol::AlibabaOpenApi | Protocol::AlibabaInstance => {
                crate::api::yandex::status::code_of_http(response.status())
            }
        }
    }
}

/// Why the layer answers a request itself.
#[derive(Debug)]
enum Refusal {
    /// An error with a gRPC code (rendered per protocol).
    Status(Code, String),
    /// HTTP 431.
    HeadersTooLarge(String),
}

/// The answer to any but a health check on a connection of the health reserve.
const RESERVE_ONLY: &str = "the gateway is at its connection limit (server.max_connections): \
     this connection was admitted for health checks only; retry on a new connection shortly";

/// A request's header list size as HTTP/2 counts it (RFC 9113 §6.5.2): every field's name and
/// value plus 32 bytes, pseudo-header fields included, so that HTTP/1.1 and HTTP/2 requests
/// meet the same limit.
fn header_list_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (
            ":path",
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ),
        (":scheme", uri.scheme_str().map_or(4, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
    ]
    .iter()
    .map(|(name, len)| name.len() + len + 32)
    .sum::<usize>();
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum::<usize>()
        + pseudo
}

/// A fresh UUID-shaped (version 4) id.
pub(crate) fn new_request_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The client's `x-request-id` if it is a sane token, else a fresh id.
pub fn request_id(headers: &HeaderMap) -> String {
    let sane = |v: &&str| {
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID_LEN
            && v.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'_' | b'~' | b':' | b'+' | b'/' | b'=' | b'-')
            })
    };
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(sane)
        .map_or_else(new_request_id, str::to_string)
}

#[derive(Debug)]
struct Shared {
    identity: Arc<Identity>,
    token_serial: String,
    max_header_list_size: usize,
    /// The methods counted under their own name in the request metrics.
    methods: MethodNames,
}

/// The layer; see the module docs.
#[derive(Clone, Debug)]
pub struct ContextLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The layer's service.
#[derive(Clone, Debug)]
pub struct ContextService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for ContextService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request; the fresh one waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(shared.handle(request, inner).await) })
    }
}

/// What the record of one request needs besides the core's notes.
struct Pending {
    shared: Arc<Shared>,
    started: Instant,
    protocol: Protocol,
    rpc: String,
    peer: Option<Peer>,
    ctx: RequestContext,
    failure: Option<&'static str>,
    trace_id: String,
    /// Set once the record has been written (or attempted): the guard then stays quiet.
    done: bool,
}

impl Pending {
    fn record(&self, outcome: Code) -> Record {
        let f = self.ctx.audit_fields();
        Record {
            trace_id: Some(self.trace_id.clone()),
            time: Record::now(),
            request_id: self.ctx.request_id().to_string(),
            subject: self.ctx.caller_opt().map(|c: &Caller| SubjectRecord {
                id: c.subject_id.clone(),
                kind: c.subject_type.clone(),
                method: c.method.name(),
            }),
            authentication_failure: f.authentication_failure.or(self.failure),
            peer: self.peer.as_ref().map(|p| p.addr.to_string()),
            tls: self.peer.as_ref().is_some_and(|p| p.tls),
            client_certificate: self.peer.as_ref().and_then(|p| p.client_subject.clone()),
            protocol: self.protocol.name(),
            // REST requests name the gRPC method they were routed to, Alibaba requests their
            // action; others their path.
            rpc: f
                .rpc
                .map(str::to_string)
                .or(f.action)
                .unwrap_or_else(|| self.rpc.clone()),
            event: audit::event_of(f.rpc.unwrap_or(&self.rpc)),
            key_id: f.key_id,
            folder_id: f.folder_id,
            operation_id: f.operation_id,
            algorithm: f.algorithm,
            message_sha256: f.message_sha256,
            digest_sha256: f.digest_sha256,
            alias: f.alias,
            version_id: f.version_id,
            transport: None,
            outcome: audit::code_name(outcome),
            latency_ms: (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            token_serial: self.shared.token_serial.clone(),
        }
    }
}

impl Drop for Pending {
    /// The client went away before the answer was ready (hyper dropped the future): the
    /// request still gets its record.
    fn drop(&mut self) {
        if !self.done {
            let record = self.record(Code::Cancelled);
            self.shared.identity.audit.write_detached(&record);
        }
    }
}

/// What the layer knows about a request when it decides whether to answer it itself.
struct Facts<'a> {
    request: &'a Request<Body>,
    peer: Option<&'a Peer>,
    caller: Option<&'a Caller>,
    authenticated: &'a crate::auth::authn::Authenticated,
    public: bool,
    health: bool,
    /// The front authenticates the request itself.
    delegated: bool,
    header_bytes: usize,
}

impl Shared {
    /// Steps 3 and 4 of the module docs: the first refusal that applies, if any.
    fn refusal(&self, f: &Facts<'_>) -> Option<Refusal> {
        let rate = &self.identity.rate;
        let ip = f.peer.map(|p| p.addr.ip());
        let limited = if f.delegated {
            // The front rate-limits once it knows the caller (see the module docs).
            None
        } else if f.health {
            ip.and_then(|ip| rate.check_health(ip).err())
        } else {
            let key = match (f.caller, f.peer) {
                (Some(c), _) => RateKey::Subject(format!("{}:{}", c.subject_type, c.subject_id)),
                (None, Some(p)) => RateKey::Peer(p.addr.ip()),
                (None, None) => RateKey::Unknown,
            };
            rate.check(&key).err().or_else(|| match (f.caller, ip) {
                (None, Some(ip)) => rate.check_anonymous(ip).err(),
                _ => None,
            })
        };
        if let Some(message) = limited {
            return Some(Refusal::Status(Code::ResourceExhausted, message));
        }
        if f.peer.is_some_and(|p| p.health_only) && !f.health {
            return Some(Refusal::Status(Code::Unavailable, RESERVE_ONLY.to_string()));
        }
        if f.header_bytes > self.max_header_list_size {
            return Some(Refusal::HeadersTooLarge(format!(
                "the request headers are {} bytes, over this gateway's limit of {} bytes \
                 (server.max_header_list_size); send fewer or shorter headers (a bearer token \
                 is at most 16384 bytes)",
                f.header_bytes, self.max_header_list_size
            )));
        }
        match f.authenticated {
            Err(_) => {
                return Some(Refusal::Status(
                    Code::Unauthenticated,
                    crate::auth::authn::INVALID_CREDENTIALS.to_string(),
                ))
            }
            Ok(None) if !f.public => {
                return Some(Refusal::Status(
                    Code::Unauthenticated,
                    crate::auth::authn::MISSING_CREDENTIALS.to_string(),
                ))
            }
            Ok(_) => {}
        }
        let budget = f.request.extensions().get::<Arc<BodyBudget>>()?;
        if http_body::Body::is_end_stream(f.request.body()) {
            return None;
        }
        budget
            .admits(f.caller.is_some())
            .err()
            .map(|m| Refusal::Status(Code::ResourceExhausted, m))
    }

    async fn handle<S>(self: Arc<Self>, mut request: Request<Body>, inner: S) -> Response<Body>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let started = Instant::now();
        let protocol = Protocol::of(&request);
        let request_id = request_id(request.headers());
        let trace_id = super::trace::trace_id(request.headers());
        let peer = request.extensions().get::<Peer>().cloned();
        let path = request.uri().path();
        let rpc: String = path.chars().take(256).collect();
        let public = PUBLIC_GRPC_SERVICES.iter().any(|p| path.starts_with(p))
            || PUBLIC_REST_PATHS.iter().any(|p| {
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
        let health = path.starts_with(HEALTH);

        let header_bytes = header_list_size(&request);
        let identity = &self.identity;
        let delegated = protocol.authenticates_itself();
        let authenticated = if delegated {
            Ok(None)
        } else {
            let a = identity
                .authn
                .authenticate(request.headers(), peer.as_ref());
            request.headers_mut().remove(http::header::AUTHORIZATION);
            a
        };
        let public = public || delegated;
        let caller = authenticated.as_ref().ok().cloned().flatten();
        let ctx = RequestContext::new(request_id.clone(), caller.clone());
        let mut pending = Pending {
            shared: Arc::clone(&self),
            started,
            protocol,
            rpc,
            peer: peer.clone(),
            ctx: ctx.clone(),
            failure: authenticated.as_ref().err().map(|f| f.reason()),
            trace_id: trace_id.clone(),
            done: false,
        };
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            trace_id = %trace_id,
            subject = caller.as_ref().map_or("", |c| c.subject_id.as_str()),
        );

        let refused = self.refusal(&Facts {
            request: &request,
            peer: peer.as_ref(),
            caller: caller.as_ref(),
            authenticated: &authenticated,
            public,
            health,
            delegated,
            header_bytes,
        });

        let mut response = match refused {
            Some(refusal) => {
                span.in_scope(|| tracing::debug!(?refusal, "request refused by the context layer"));
                match refusal {
                    Refusal::Status(code, message) => protocol.error(code, &message, &request_id),
                    Refusal::HeadersTooLarge(message) => {
                        protocol.headers_too_large(&message, &request_id)
                    }
                }
            }
            None => {
                request.extensions_mut().insert(ctx);
                match inner.oneshot(request).instrument(span.clone()).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        };

        let outcome = protocol.outcome(&response);
        let record = pending.record(outcome);
        pending.done = true;
        crate::metrics::request(
            record.protocol,
            self.methods.label(&record.rpc),
            record.outcome,
            started.elapsed(),
        );
        if let Err(e) = identity.audit.write(&record).await {
            if identity.audit.required() {
                span.in_scope(|| {
                    tracing::warn!(error = %e, outcome = record.outcome, "answer withheld: its audit record could not be written");
                });
                response = protocol.error(
                    Code::Unavailable,
                    "the audit trail cannot be written, and this gateway does not answer without an audit record; retry later",
                    &request_id,
                );
            }
        }
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&trace_id) {
            headers.insert(super::trace::SERVER_TRACE_ID, v);
        }
        if protocol == Protocol::Grpc {
            response = grpc_error_with_initial_metadata(response);
        }
        response
    }
}

/// The gRPC status fields that end a call.
const GRPC_STATUS_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// A gRPC error answered as headers, no message, then trailers, instead of gRPC's
/// "trailers-only" form (one HEADERS frame holding the status). Clients read a call's initial
/// metadata from the first form only: the Yandex Node SDK looks for `x-request-id` there, and
/// with a trailers-only answer never produces its `ApiError` with the request id. Both forms are
/// valid gRPC; the request id and trace id go in both the headers and the trailers (grpcio and
/// tonic read errors' metadata from the trailers).
fn grpc_error_with_initial_metadata(response: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt as _;
    if !response.headers().contains_key("grpc-status") {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut trailers = HeaderMap::new();
    for name in GRPC_STATUS_HEADERS {
        if let Some(v) = parts.headers.remove(name) {
            trailers.insert(name, v);
        }
    }
    for name in [REQUEST_ID_HEADER, super::trace::SERVER_TRACE_ID] {
        if let Some(v) = parts.headers.get(name) {
            trailers.insert(name, v.clone());
        }
    }
    let body = http_body_util::Empty::<axum::body::Bytes>::new()
        .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers))));
    Response::from_parts(parts, Body::new(body))
}

/// The [`RequestContext`] the layer put into a gRPC request.
///
/// # Errors
/// UNAUTHENTICATED when there is none (a service reached without the layer): fail closed.
pub fn of<T>(request: &tonic::Request<T>) -> Result<RequestContext, tonic::Status> {
    let ctx = request.extensions().get::<RequestContext>().cloned();
    Ok(ctx.ok_or_else(no_context)?)
}

/// The [`RequestContext`] the layer put into a request's extensions (any protocol).
///
/// # Errors
/// UNAUTHENTICATED when there is none (a service reached without the layer): fail closed.
pub fn from_extensions(extensions: &http::Extensions) -> Result<RequestContext, Error> {
    extensions
        .get::<RequestContext>()
        .cloned()
        .ok_or_else(no_context)
}

fn no_context() -> Error {
    tracing::error!("a request reached a service without the request-context layer");
    Error::Unauthenticated(crate::auth::authn::MISSING_CREDENTIALS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_up_otherwise() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 36);
        assert_eq!(&fresh[14..15], "4");
        assert_ne!(request_id(&h), fresh);
        h.insert(REQUEST_ID_HEADER, "abc-123_x.y".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123_x.y");
        for bad in ["", "has space", "quote\"", &"x".repeat(129)] {
            h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(bad).unwrap());
            assert_ne!(request_id(&h), bad, "{bad:?}");
        }
    }
}
