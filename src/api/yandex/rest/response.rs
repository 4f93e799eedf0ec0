//! REST answers: the JSON message with 200, or the Yandex REST error body (the
//! `google.rpc.Status` shape with the numeric gRPC code, the request id in a `RequestInfo`
//! detail) with the HTTP status of the contract's table. Errors are rendered by the
//! request-context layer's [`Protocol::Rest`], the same code that answers for refused
//! credentials and rate limits, so every REST error looks alike.

use super::route::Unrouted;
use crate::api::context::Protocol;
use crate::error::Error;
use axum::body::Body;
use http::{header, HeaderValue, Method, Response};

/// 200 with `value` as the body.
pub fn ok(value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error answer for `error` (logged here, once, like the gRPC edge does).
pub fn error(error: &Error, request_id: &str) -> Response<Body> {
    error.log();
    Protocol::Rest.error(
        crate::api::yandex::status::code(error),
        &error.to_string(),
        request_id,
    )
}

/// The answer for a request that matched no binding: 404 NOT_FOUND for an unknown path, 405
/// (code UNIMPLEMENTED, with `Allow`) for a method the path is not bound for.
pub fn unrouted(why: Unrouted, method: &Method, path: &str, request_id: &str) -> Response<Body> {
    let shown: String = path.chars().take(200).collect();
    match why {
        Unrouted::NotFound => error(
            &Error::not_found(
                crate::error::Missing::Other,
                format!(
                    "no REST method at {method} {shown}; the API is \
                     /kms/v1/asymmetricSignatureKeys[/{{keyId}}[:verb]], /operations/{{id}} and \
                     /endpoints (see the README)"
                ),
            ),
            request_id,
        ),
        Unrouted::MethodNotAllowed(allowed) => {
            let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let mut response = error(
                &Error::Unimplemented(format!(
                    "{method} is not allowed on {shown}; use {}",
                    names.join(" or ")
                )),
                request_id,
            );
            *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            response
        }
        Unrouted::BadValue(e) => error(&e, request_id),
    }
}
