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
//! 3. **Rate limit** per subject (per peer IP without a valid credential): RESOURCE_EXHAUSTED,
//!    before any work. Health checks are exempt.
//! 4. A presented but invalid credential → UNAUTHENTICATED. No credential on anything but the
//!    public services (endpoint discovery over gRPC and REST, health, reflection) →
//!    UNAUTHENTICATED.
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
//! REST gets the Yandex REST error body.

use super::peer::Peer;
use crate::auth::audit::{self, Record, SubjectRecord};
use crate::auth::rate_limit::RateKey;
use crate::auth::{Caller, Identity, RequestContext};
use crate::error::Error;
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
pub fn apply(router: axum::Router, identity: Arc<Identity>, token_serial: String) -> axum::Router {
    router.layer(ContextLayer {
        shared: Arc::new(Shared {
            identity,
            token_serial,
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
}

/// An outcome a service may put into a response's extensions when the protocol cannot tell
/// it from the response alone.
#[derive(Clone, Copy, Debug)]
pub struct Outcome(pub Code);

impl Protocol {
    /// The protocol of `request`.
    pub fn of<B>(request: &Request<B>) -> Self {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            Protocol::Grpc
        } else {
            Protocol::Rest
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Rest => "rest",
        }
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
        };
        response.extensions_mut().insert(Outcome(code));
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
            Protocol::Rest => crate::api::yandex::status::code_of_http(response.status()),
        }
    }
}

/// A fresh UUID-shaped (version 4) id.
fn new_request_id() -> String {
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
    /// Set once the record has been written (or attempted): the guard then stays quiet.
    done: bool,
}

impl Pending {
    fn record(&self, outcome: Code) -> Record {
        let f = self.ctx.audit_fields();
        Record {
            time: Record::now(),
            request_id: self.ctx.request_id().to_string(),
            subject: self.ctx.caller_opt().map(|c: &Caller| SubjectRecord {
                id: c.subject_id.clone(),
                kind: c.subject_type.clone(),
                method: c.method.name(),
            }),
            authentication_failure: self.failure,
            peer: self.peer.as_ref().map(|p| p.addr.to_string()),
            tls: self.peer.as_ref().is_some_and(|p| p.tls),
            client_certificate: self.peer.as_ref().and_then(|p| p.client_subject.clone()),
            protocol: self.protocol.name(),
            // REST requests name the gRPC method they were routed to; others their path.
            rpc: f.rpc.map_or_else(|| self.rpc.clone(), str::to_string),
            event: audit::event_of(f.rpc.unwrap_or(&self.rpc)),
            key_id: f.key_id,
            folder_id: f.folder_id,
            operation_id: f.operation_id,
            algorithm: f.algorithm,
            message_sha256: f.message_sha256,
            digest_sha256: f.digest_sha256,
            alias: f.alias,
            version_id: f.version_id,
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

impl Shared {
    async fn handle<S>(self: Arc<Self>, mut request: Request<Body>, inner: S) -> Response<Body>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let started = Instant::now();
        let protocol = Protocol::of(&request);
        let request_id = request_id(request.headers());
        let peer = request.extensions().get::<Peer>().cloned();
        let path = request.uri().path();
        let rpc: String = path.chars().take(256).collect();
        let public = PUBLIC_GRPC_SERVICES.iter().any(|p| path.starts_with(p))
            || PUBLIC_REST_PATHS.iter().any(|p| {
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
        let health = path.starts_with(HEALTH);

        let identity = &self.identity;
        let authenticated = identity
            .authn
            .authenticate(request.headers(), peer.as_ref());
        request.headers_mut().remove(http::header::AUTHORIZATION);
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
            done: false,
        };
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            subject = caller.as_ref().map_or("", |c| c.subject_id.as_str()),
        );

        let refused = if health {
            None
        } else {
            let key = match (&caller, &peer) {
                (Some(c), _) => RateKey::Subject(format!("{}:{}", c.subject_type, c.subject_id)),
                (None, Some(p)) => RateKey::Peer(p.addr.ip()),
                (None, None) => RateKey::Unknown,
            };
            identity
                .rate
                .check(&key)
                .err()
                .map(|m| (Code::ResourceExhausted, m))
        };
        let refused = refused.or_else(|| match &authenticated {
            Err(_) => Some((
                Code::Unauthenticated,
                crate::auth::authn::INVALID_CREDENTIALS.to_string(),
            )),
            Ok(None) if !public => Some((
                Code::Unauthenticated,
                crate::auth::authn::MISSING_CREDENTIALS.to_string(),
            )),
            Ok(_) => None,
        });

        let mut response = match refused {
            Some((code, message)) => {
                span.in_scope(|| tracing::debug!(code = ?code, %message, "request refused by the context layer"));
                protocol.error(code, &message, &request_id)
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
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        response
    }
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
