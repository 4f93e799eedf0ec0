//! The OpenAPI front as one service on the shared listener: read the request, authenticate its
//! signature, record the caller in the request's context, rate-limit by subject, run the
//! action, answer in Alibaba's format. The request-context layer has already given the request
//! its id and context, and writes its audit record from what is noted here.

use super::actions::{Actions, Call};
use super::{OpenApiAuth, OpenApiError, OpenApiRequest};
use crate::api::context;
use crate::api::peer::Peer;
use crate::auth::rate_limit::RateKey;
use crate::auth::Identity;
use axum::body::Body;
use http::{Request, Response};
use std::sync::Arc;
use std::time::SystemTime;

/// The OpenAPI front.
#[derive(Debug, Clone)]
pub struct OpenApiService {
    auth: Arc<OpenApiAuth>,
    actions: Actions,
    identity: Arc<Identity>,
}

impl OpenApiService {
    /// The front over `actions`, authenticating with `auth`, rate-limiting with `identity`.
    pub fn new(auth: Arc<OpenApiAuth>, actions: Actions, identity: Arc<Identity>) -> Self {
        Self {
            auth,
            actions,
            identity,
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let ctx = match context::from_extensions(request.extensions()) {
            Ok(ctx) => ctx,
            Err(e) => return OpenApiError::from(e).into_response("", ""),
        };
        let request_id = ctx.request_id().to_string();
        let peer = request.extensions().get::<Peer>().cloned();
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_string();
        let (parts, body) = request.into_parts();
        let req = match OpenApiRequest::read(parts, body).await {
            Ok(r) => r,
            Err(e) => return e.into_response(&request_id, &host),
        };
        ctx.note(|a| a.action = Some(crate::auth::audit::bounded(req.action())));
        let who = match self
            .auth
            .authenticate(&req, peer.as_ref(), SystemTime::now())
        {
            Ok(who) => who,
            Err(e) => {
                let reason: &'static str = match e.code() {
                    "InvalidAccessKeyId.NotFound" => "unknown_access_key",
                    "SignatureDoesNotMatch" => "bad_signature",
                    "SignatureNonceUsed" => "replayed_nonce",
                    "InvalidTimeStamp.Expired" | "IllegalTimestamp" => "bad_timestamp",
                    _ => "malformed_credentials",
                };
                ctx.note(|a| a.authentication_failure = Some(reason));
                // Requests without a valid credential share the per-address bucket of the
                // other fronts' anonymous requests.
                if let Some(Err(why)) = peer
                    .as_ref()
                    .map(|p| self.identity.rate.check_anonymous(p.addr.ip()))
                {
                    return OpenApiError::throttling(why).into_response(&request_id, &host);
                }
                return e.into_response(&request_id, &host);
            }
        };
        ctx.authenticated(who.caller.clone());
        let key = RateKey::Subject(format!(
            "{}:{}",
            who.caller.subject_type, who.caller.subject_id
        ));
        if let Err(why) = self.identity.rate.check(&key) {
            return OpenApiError::throttling(why).into_response(&request_id, &host);
        }
        let call = Call {
            ctx: &ctx,
            who: &who,
            params: req.params(),
            // The OpenAPI has no deadline header; the core's own waits are bounded.
            deadline: None,
        };
        match self.actions.run(req.action(), &call).await {
            Ok(reply) => reply.into_response(&request_id),
            Err(e) => e.into_response(&request_id, &host),
        }
    }
}
