//! The Alibaba Cloud KMS instance API ("dedicated gateway", contract §3 and §4.2): `POST /`
//! with a protobuf body, the API named in `x-kms-apiname`, `x-kms-apiversion: dkms-gcs-0.2`,
//! authenticated by a client key's RSA signature.
//!
//! The pieces, in the order a request meets them:
//!
//! * [`request::accept`]: header checks and client-key authentication ([`auth`], keys from
//!   [`crate::auth::client_keys`]), the API ([`api_name`]), the body within its size limit and
//!   checked against the signed hash ([`body`]);
//! * [`body::decode`]: the request message ([`pb`], from `proto/alibaba/dkms_gcs.proto`),
//!   bounded, malformed input refused as `InvalidParameter`;
//! * [`reply::reply`] for answers, [`error`] for refusals: always the `Error` protobuf, with
//!   domain errors mapped in one place ([`error::from_domain`]).
//!
//! The wire types stay in this folder: nothing below `api/alibaba/` imports [`pb`].

pub mod api_name;
pub mod auth;
pub mod body;
pub mod error;
pub mod handlers;
pub mod pb;
pub mod reply;
pub mod request;
pub mod service;
#[cfg(test)]
mod test_client;

pub use error::InstanceError;

use http::HeaderMap;

/// The content type of requests and answers.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The answer header that names the key version used (Sign, Verify, GetPublicKey).
pub const MIGRATION_KEY_VERSION_HEADER: &str = "x-kms-migrationkeyversionid";

/// Whether a request is for the instance API: it names its API in `x-kms-apiname` (the
/// Yandex fronts never send that header).
pub fn is_instance_request(headers: &HeaderMap) -> bool {
    headers.contains_key(auth::header::API_NAME)
}
