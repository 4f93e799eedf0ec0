//! One listener, several protocols: each request goes to the router of its [`Protocol`] (the
//! same test the request-context layer renders its errors by). This works the same over
//! HTTP/1.1 and HTTP/2, with and without TLS, because it looks at nothing but the request's
//! headers and path.

use crate::api::context::{self, Protocol};
use axum::body::Body;
use http::Request;
use tonic::Code;
use tower::ServiceExt as _;

/// The routers of one listener; a protocol without one (with `server.rest_listen`, REST has a
/// listener of its own) is answered with an error that says where it is served.
#[derive(Clone, Default)]
pub struct Routes {
    /// The Yandex gRPC services.
    pub grpc: Option<axum::Router>,
    /// The Yandex REST API.
    pub rest: Option<axum::Router>,
    /// The Alibaba OpenAPI.
    pub alibaba_openapi: Option<axum::Router>,
    /// The Alibaba KMS instance API.
    pub alibaba_instance: Option<axum::Router>,
}

/// Where a protocol is served when this listener does not serve it.
fn elsewhere(protocol: Protocol) -> (Code, &'static str) {
    match protocol {
        Protocol::Rest => (
            Code::NotFound,
            "this listener does not serve the Yandex REST API: it is on the server.rest_listen \
             address if that is set, else on server.listen",
        ),
        Protocol::Grpc => (
            Code::Unimplemented,
            "this listener does not serve gRPC: it is on the server.listen address",
        ),
        Protocol::AlibabaOpenApi | Protocol::AlibabaInstance => (
            Code::Unimplemented,
            "this listener does not serve the Alibaba APIs: they are on the alibaba.listen \
             address if that is set, else on server.listen",
        ),
    }
}

/// A router that sends each request to its protocol's router.
pub fn by_protocol(routes: Routes) -> axum::Router {
    let mux = tower::service_fn(move |request: Request<Body>| {
        let protocol = Protocol::of(&request);
        let target = match protocol {
            Protocol::Grpc => routes.grpc.clone(),
            Protocol::Rest => routes.rest.clone(),
            Protocol::AlibabaOpenApi => routes.alibaba_openapi.clone(),
            Protocol::AlibabaInstance => routes.alibaba_instance.clone(),
        };
        async move {
            match target {
                Some(router) => router.oneshot(request).await,
                None => {
                    let request_id = context::from_extensions(request.extensions())
                        .map(|ctx| ctx.request_id().to_string())
                        .unwrap_or_default();
                    let (code, message) = elsewhere(protocol);
                    Ok(protocol.error(code, message, &request_id))
                }
            }
        }
    });
    axum::Router::new().fallback_service(mux)
}
