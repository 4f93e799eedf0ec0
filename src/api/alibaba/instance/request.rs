//! Accepting an instance-API request, cheapest checks first: the headers' form and the clock,
//! the declared body size, the client key's signature, the API, and only then the body (read
//! within its limit and checked against the signed `content-sha256`). No body is buffered for
//! a caller that is not authenticated, and nothing here touches the HSM.

use super::api_name::ApiName;
use super::auth::Presented;
use super::body::Limits;
use super::error::InstanceError;
use crate::auth::client_keys::ClientKeyStore;
use crate::auth::Caller;
use axum::body::{Body, Bytes};
use http::Request;
use std::time::SystemTime;

/// An authenticated request for an API p11kms serves, with its body.
#[derive(Debug)]
pub struct Accepted {
    /// The API called.
    pub api: ApiName,
    /// Who called.
    pub caller: Caller,
    /// The client key that signed the request.
    pub client_key_id: String,
    /// The request message, still encoded (decode with [`super::body::decode`]).
    pub body: Bytes,
}

/// Authenticates `request` with `keys` at `now` and reads its body within `limits`.
///
/// # Errors
/// The first check that fails, as the instance API's error.
pub async fn accept(
    request: Request<Body>,
    keys: &ClientKeyStore,
    limits: &Limits,
    now: SystemTime,
) -> Result<Accepted, InstanceError> {
    let (parts, body) = request.into_parts();
    let presented = Presented::from_headers(&parts.method, &parts.headers, now)?;
    limits.check_declared(&parts.headers)?;
    let authenticated = presented.verify(keys)?;
    let api = authenticated.api.served()?;
    let body = limits.read(body).await?;
    authenticated.check_body(&body)?;
    Ok(Accepted {
        api,
        caller: authenticated.caller,
        client_key_id: authenticated.client_key_id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::super::error::Code;
    use super::super::test_client::{caller, sdk_headers, signed, store, KEY_ID};
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio_stream::StreamExt as _;

    fn request(headers: http::HeaderMap, body: Body) -> Request<Body> {
        let mut r = Request::post("/").body(body).unwrap();
        *r.headers_mut() = headers;
        r
    }

    /// A body that notes whether anyone read it.
    fn watched(bytes: &[u8]) -> (Body, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&read);
        let bytes = Bytes::copy_from_slice(bytes);
        let stream = tokio_stream::once(()).map(move |()| {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes.clone())
        });
        (Body::from_stream(stream), read)
    }

    #[tokio::test]
    async fn a_signed_request_is_accepted_with_its_body_and_caller() {
        let now = SystemTime::now();
        let body = b"\x0a\x05key-1";
        let accepted = accept(
            request(sdk_headers("Sign", body, now), Body::from(&body[..])),
            &store(),
            &Limits::new(1024),
            now,
        )
        .await
        .unwrap();
        assert_eq!(accepted.api, ApiName::Sign);
        assert_eq!(accepted.caller, caller());
        assert_eq!(accepted.client_key_id, KEY_ID);
        assert_eq!(&accepted.body[..], body);
    }

    #[tokio::test]
    async fn bodies_are_not_read_before_the_caller_is_authenticated() {
        let now = SystemTime::now();
        let limits = Limits::new(1024);
        let refused = |headers, body: Body| async {
            accept(request(headers, body), &store(), &limits, now)
                .await
                .unwrap_err()
        };

        // Over the limit by its Content-Length: refused unread, even from a valid caller.
        let big = vec![0u8; limits.max_body_bytes() + 1];
        let (body, read) = watched(&big);
        let e = refused(sdk_headers("Sign", &big, now), body).await;
        assert_eq!(e.code(), Code::InvalidParameter);
        assert!(!read.load(Ordering::SeqCst));

        // An unknown client key, a bad signature, an API p11kms does not serve: unread.
        let mut unknown = sdk_headers("Sign", b"x", now);
        unknown.insert(
            "x-kms-acccesskeyid",
            "KAAP.00000000-0000-4000-8000-000000000000".parse().unwrap(),
        );
        let mut forged = sdk_headers("Sign", b"x", now);
        forged.insert(
            "date",
            httpdate::fmt_http_date(now + std::time::Duration::from_secs(1))
                .parse()
                .unwrap(),
        );
        for (headers, code) in [
            (unknown, Code::Unauthorized),
            (forged, Code::SignatureNotMatch),
            (
                sdk_headers("Encrypt", b"x", now),
                Code::UnsupportedOperation,
            ),
        ] {
            let (body, read) = watched(b"x");
            assert_eq!(refused(headers, body).await.code(), code);
            assert!(!read.load(Ordering::SeqCst), "{code:?}");
        }

        // Read, then refused: a body that is not the signed one, and one longer than declared.
        let e = refused(sdk_headers("Sign", b"signed", now), Body::from("sent")).await;
        assert_eq!(e.code(), Code::InvalidParam);
        let mut headers = sdk_headers("Sign", b"x", now);
        headers.insert("content-length", "1".parse().unwrap());
        let headers = signed(headers);
        let e = refused(headers, Body::from(big)).await;
        assert_eq!(e.code(), Code::InvalidParameter);
        assert!(e.message().contains("over the limit"), "{}", e.message());
    }
}
