//! The instance API as one service on the shared listener: authenticate the client key's
//! signature (before the body is read), record the caller in the request's context,
//! rate-limit by subject, run the call, answer with the protobuf reply or `Error`. The
//! request-context layer has already given the request its id and context, and writes its
//! audit record from what is noted here.

use super::handlers::Handlers;
use super::request::accept;
use super::InstanceError;
use crate::api::context;
use crate::auth::client_keys::ClientKeyStore;
use crate::auth::rate_limit::RateKey;
use crate::auth::Identity;
use axum::body::Body;
use http::{Request, Response};
use std::sync::Arc;
use std::time::SystemTime;

/// The instance-API front.
#[derive(Debug, Clone)]
pub struct InstanceService {
    keys: Arc<ClientKeyStore>,
    handlers: Handlers,
    identity: Arc<Identity>,
}

impl InstanceService {
    /// The front over `handlers`, authenticating with `keys`, rate-limiting with `identity`.
    pub fn new(keys: Arc<ClientKeyStore>, handlers: Handlers, identity: Arc<Identity>) -> Self {
        Self {
            keys,
            handlers,
            identity,
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let ctx = match context::from_extensions(request.extensions()) {
            Ok(ctx) => ctx,
            Err(e) => return InstanceError::from(e).to_response(""),
        };
        let request_id = ctx.request_id().to_string();
        let peer_ip = request
            .extensions()
            .get::<crate::api::peer::Peer>()
            .map(|p| p.addr.ip());
        if let Some(api) = request
            .headers()
            .get(super::auth::header::API_NAME)
            .and_then(|v| v.to_str().ok())
        {
            ctx.note(|a| a.action = Some(crate::auth::audit::bounded(api)));
        }
        let accepted = match accept(
            request,
            &self.keys,
            self.handlers.limits(),
            SystemTime::now(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                if matches!(
                    e.code(),
                    super::error::Code::SignatureNotMatch | super::error::Code::Unauthorized
                ) {
                    ctx.note(|a| a.authentication_failure = Some("bad_client_key_signature"));
                }
                // Requests without a valid credential share the per-address bucket of the
                // other fronts' anonymous requests.
                if let Some(Err(why)) = peer_ip.map(|ip| self.identity.rate.check_anonymous(ip)) {
                    return InstanceError::from(crate::error::Error::ResourceExhausted(why))
                        .to_response(&request_id);
                }
                return e.to_response(&request_id);
            }
        };
        ctx.authenticated(accepted.caller.clone());
        let key = RateKey::Subject(format!(
            "{}:{}",
            accepted.caller.subject_type, accepted.caller.subject_id
        ));
        if let Err(why) = self.identity.rate.check(&key) {
            return InstanceError::from(crate::error::Error::ResourceExhausted(why))
                .to_response(&request_id);
        }
        match self
            .handlers
            .run(&ctx, accepted.api, &accepted.body, None)
            .await
        {
            Ok(response) => response,
            Err(e) => e.to_response(&request_id),
        }
    }
}
