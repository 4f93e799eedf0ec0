//! One listener, two protocols: a request whose `content-type` starts with `application/grpc`
//! goes to the gRPC services, anything else to the REST API ([`Protocol::of`], the same test
//! the request-context layer renders its errors by). This works the same over HTTP/1.1 and
//! HTTP/2, with and without TLS, because it looks at nothing but the request.

use super::response;
use crate::api::context::{self, Protocol};
use axum::body::Body;
use http::Request;
use tower::ServiceExt as _;

/// A router that sends gRPC requests to `grpc` and all others to `rest`. A protocol without a
/// router here (with `server.rest_listen`, each listener serves one) is answered with an error
/// that names the other listener.
pub fn by_content_type(grpc: Option<axum::Router>, rest: Option<axum::Router>) -> axum::Router {
    let mux = tower::service_fn(move |request: Request<Body>| {
        let protocol = Protocol::of(&request);
        let target = match protocol {
            Protocol::Grpc => grpc.clone(),
            Protocol::Rest => rest.clone(),
        };
        async move {
            match target {
                Some(router) => router.oneshot(request).await,
                None => {
                    let request_id = context::from_extensions(request.extensions())
                        .map(|ctx| ctx.request_id().to_string())
                        .unwrap_or_default();
                    Ok(response::wrong_listener(protocol, &request_id))
                }
            }
        }
    });
    axum::Router::new().fallback_service(mux)
}
