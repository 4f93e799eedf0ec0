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
