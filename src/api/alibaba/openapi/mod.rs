//! The shared-gateway OpenAPI of Alibaba Cloud KMS (version 2016-01-20), the API that
//! `alibabacloud-kms20160120`, `aliyun-python-sdk-kms` and `@alicloud/kms20160120` call.
//! The wire contract is `shared/reference/alibaba-kms-api.md` §1, §2 and §4.
//!
//! A request goes through these pieces, in this order, before any handler (and so before any
//! HSM call) runs:
//!
//! 1. [`request`]: `GET`/`POST` to `/`, parameters from the query and a form body, bounded
//!    in size and count; the action (`x-acs-action` or `Action`) and the version checked.
//! 2. [`auth`]: the signature (ACS3-HMAC-SHA256 or RPC v1 HMAC-SHA1, canonicalised in
//!    [`signature`] with [`encoding`]), the AccessKey ([`crate::auth::access_keys`]), and
//!    freshness ([`freshness`]: 15-minute clock window, each nonce once, bounded memory).
//! 3. The action handler reads its parameters through [`params::Params`]' typed getters and
//!    answers with a [`reply::Reply`], or an [`error::OpenApiError`]; core errors become
//!    Alibaba codes in one place, [`error::OpenApiError::from_domain`].

pub mod actions;
pub mod auth;
pub mod encoding;
pub mod error;
pub mod freshness;
pub mod params;
pub mod reply;
pub mod request;
pub mod service;
pub mod signature;

pub use auth::{Authenticated, OpenApiAuth, Scheme};
pub use error::OpenApiError;
pub use params::Params;
pub use reply::Reply;
pub use request::OpenApiRequest;

/// Whether a request to `/` is for the OpenAPI: it names an action (`x-acs-action`, or an
/// `Action` parameter in the query), or carries the version header or a form body. The Yandex
/// REST API has no route at `/`.
pub fn is_openapi_request<B>(request: &http::Request<B>) -> bool {
    let headers = request.headers();
    if headers.contains_key("x-acs-action") || headers.contains_key("x-acs-version") {
        return true;
    }
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    form || request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("Action"))
    })
}
