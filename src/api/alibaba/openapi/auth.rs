//! Authenticating an OpenAPI request: which signature it carries, whose AccessKey signed it,
//! whether the signature is right, and whether the request is fresh. One entry point,
//! [`OpenApiAuth::authenticate`]; every refusal is counted and logged by the key store.
//!
//! The order of the checks, and why:
//!
//! 1. **Which signature.** An `Authorization` header is ACS3, a `Signature` parameter RPC v1;
//!    neither, both, or two `Authorization` headers are refused (`IncompleteSignature`).
//! 2. **STS tokens** (`x-acs-security-token`, `SecurityToken`) are refused before the
//!    AccessKeyId is looked up: an STS AccessKeyId is never configured here, and "not
//!    supported" is the useful answer.
//! 3. **What must be signed (ACS3).** `SignedHeaders` is honoured as sent, but it must cover
//!    what makes the request fresh and what selects the action: `x-acs-date`,
//!    `x-acs-signature-nonce`, `x-acs-content-sha256`, and `x-acs-action` / `x-acs-version`
//!    when present. In v1 everything that matters is a (signed) parameter, and the `Action`
//!    and `Version` parameters are required (the `x-acs-*` headers are unsigned there).
//! 4. **The AccessKeyId** (`InvalidAccessKeyId.NotFound`).
//! 5. **Time and nonce form**: cheap, and a stale request never costs a MAC.
//! 6. **Body hash (ACS3)**: `x-acs-content-sha256` must be the SHA-256 of the body, the only
//!    thing that binds the body to the signature.
//! 7. **The signature**, in constant time (`SignatureDoesNotMatch` with our string-to-sign).
//! 8. **The nonce**, last: only a verified request may take a place in the bounded memory.

use super::error::OpenApiError;
use super::freshness::{check_nonce, check_skew, parse_timestamp, NonceCache};
use super::request::OpenApiRequest;
use super::signature::{self, Acs3Authorization};
use crate::api::peer::Peer;
use crate::auth::access_keys::{AccessKey, AccessKeys};
use crate::auth::Caller;
use crate::config::AlibabaConfig;
use base64::Engine as _;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use std::time::SystemTime;

const DATE: &str = "x-acs-date";
const NONCE: &str = "x-acs-signature-nonce";
const CONTENT_SHA256: &str = "x-acs-content-sha256";
const SECURITY_TOKEN: &str = "x-acs-security-token";
/// Headers an ACS3 signature must cover whenever the request has them.
const SIGNED_WHEN_PRESENT: &[&str] = &["x-acs-action", "x-acs-version", "x-acs-accesskey-id"];

/// Which signature a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// ACS3-HMAC-SHA256 in the `Authorization` header.
    Acs3HmacSha256,
    /// RPC v1 HMAC-SHA1 in the `Signature` parameter.
    RpcV1HmacSha1,
}

/// A request whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// Who it is.
    pub caller: Caller,
    /// The AccessKeyId it was signed with.
    pub access_key_id: String,
    /// Where keys it creates go.
    pub folder_id: String,
    /// How it was signed.
    pub scheme: Scheme,
}

/// The OpenAPI front's authentication: the AccessKeys and the nonce memory.
#[derive(Debug)]
pub struct OpenApiAuth {
    keys: AccessKeys,
    nonces: NonceCache,
}

impl OpenApiAuth {
    /// From `[alibaba]` (validated at load).
    pub fn from_config(config: &AlibabaConfig) -> Self {
        Self::new(
            AccessKeys::from_config(&config.access_keys),
            NonceCache::new(config.max_remembered_nonces),
        )
    }

    /// From its parts.
    pub fn new(keys: AccessKeys, nonces: NonceCache) -> Self {
        Self { keys, nonces }
    }

    /// The AccessKeys (and their failure counts).
    pub fn keys(&self) -> &AccessKeys {
        &self.keys
    }

    /// The nonce memory.
    pub fn nonces(&self) -> &NonceCache {
        &self.nonces
    }

    /// Authenticates `request` at `now`. A refusal is counted against `peer` and logged
    /// (code, peer, claimed AccessKeyId; never a secret or a signature).
    ///
    /// # Errors
    /// The precise OpenAPI error; see the module docs for the order of the checks.
    pub fn authenticate(
        &self,
        request: &OpenApiRequest,
        peer: Option<&Peer>,
        now: SystemTime,
    ) -> Result<Authenticated, OpenApiError> {
        let mut claimed = None;
        let result = self.check(request, now, &mut claimed);
        if let Err(e) = &result {
            self.keys.count_failure(e.code(), claimed.as_deref(), peer);
        }
        result
    }

    fn check(
        &self,
        request: &OpenApiRequest,
        now: SystemTime,
        claimed: &mut Option<String>,
    ) -> Result<Authenticated, OpenApiError> {
        let headers = request.headers();
        let params = request.params();
        let mut authorization = headers.get_all(http::header::AUTHORIZATION).iter();
        let scheme =
            match (
                authorization.next(),
                authorization.next(),
                params.contains("Signature"),
            ) {
                (None, _, false) => return Err(OpenApiError::incomplete_signature(
                    "the request is not signed; sign it with an AccessKey pair (ACS3-HMAC-SHA256 \
                     in the Authorization header, or RPC v1 in the Signature parameter)",
                )),
                (Some(_), Some(_), _) => {
                    return Err(OpenApiError::incomplete_signature(
                        "the Authorization header is given more than once",
                    ))
                }
                (Some(_), None, true) => {
                    return Err(OpenApiError::incomplete_signature(
                        "the request carries both an Authorization header and a Signature \
                     parameter; send one signature",
                    ))
                }
                (Some(value), None, false) => {
                    let value = value.to_str().map_err(|_| {
                        OpenApiError::incomplete_signature("the Authorization header is not text")
                    })?;
                    Some(signature::parse_acs3_authorization(value)?)
                }
                (None, _, true) => None,
            };
        if headers.contains_key(SECURITY_TOKEN) {
            return Err(OpenApiError::security_token_unsupported(SECURITY_TOKEN));
        }
        if params.get("SecurityToken").is_some_and(|t| !t.is_empty()) {
            return Err(OpenApiError::security_token_unsupported("SecurityToken"));
        }
        match scheme {
            Some(acs3) => self.check_acs3(request, &acs3, now, claimed),
            None => self.check_v1(request, now, claimed),
        }
    }

    fn lookup(&self, id: &str, claimed: &mut Option<String>) -> Result<&AccessKey, OpenApiError> {
        *claimed = Some(id.to_string());
        self.keys
            .get(id)
            .ok_or_else(OpenApiError::access_key_not_found)
    }

    fn check_acs3(
        &self,
        request: &OpenApiRequest,
        auth: &Acs3Authorization,
        now: SystemTime,
        claimed: &mut Option<String>,
    ) -> Result<Authenticated, OpenApiError> {
        let headers = request.headers();
        let signed: Vec<&str> = auth.signed_header_names().collect();
        let required = [DATE, NONCE, CONTENT_SHA256].into_iter().chain(
            SIGNED_WHEN_PRESENT
                .iter()
                .copied()
                .filter(|h| headers.contains_key(*h)),
        );
        for name in required {
            if !signed.contains(&name) {
                return Err(OpenApiError::incomplete_signature(format!(
                    "SignedHeaders must include {name}"
                )));
            }
        }
        let key = self.lookup(&auth.access_key_id, claimed)?;
        let date = single_header(request, DATE)?;
        let signed_at = match date {
            Some(d) => parse_timestamp(DATE, d)?,
            None => {
                return Err(OpenApiError::illegal_timestamp(
                    DATE,
                    "the header is missing",
                ))
            }
        };
        check_skew(signed_at, now)?;
        let nonce = check_nonce(NONCE, single_header(request, NONCE)?)?;
        let hashed_payload = single_header(request, CONTENT_SHA256)?
            .ok_or_else(|| OpenApiError::missing_parameter(CONTENT_SHA256))?;
        let body_hash = Sha256::digest(request.body());
        let matches = hex::decode(hashed_payload).is_ok_and(|h| h[..] == body_hash[..]);
        if !matches {
            return Err(OpenApiError::invalid_parameter(
                CONTENT_SHA256,
                format!(
                    "it is not the SHA-256 of the request body ({} bytes, SHA-256 {}); hash \
                     exactly the bytes sent",
                    request.body().len(),
                    hex::encode(body_hash)
                ),
            ));
        }
        let canonical = signature::acs3_canonical_request(
            request.method().as_str(),
            request.path(),
            request.query_pairs(),
            headers,
            request.host(),
            &auth.signed_headers,
            hashed_payload,
        )?;
        let string_to_sign = signature::acs3_string_to_sign(&canonical);
        let secret = key.secret().expose_secret().as_bytes();
        if !signature::acs3_verify(secret, &string_to_sign, &auth.signature) {
            return Err(OpenApiError::signature_does_not_match(&string_to_sign));
        }
        self.remember(&auth.access_key_id, nonce, NONCE, signed_at, now)?;
        Ok(authenticated(
            key,
            &auth.access_key_id,
            Scheme::Acs3HmacSha256,
        ))
    }

    fn check_v1(
        &self,
        request: &OpenApiRequest,
        now: SystemTime,
        claimed: &mut Option<String>,
    ) -> Result<Authenticated, OpenApiError> {
        let params = request.params();
        let required = |name: &str| {
            params
                .get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| OpenApiError::missing_parameter(name))
        };
        // The x-acs-* headers are not signed in v1: what they select must come signed.
        required("Action")?;
        required("Version")?;
        let method = required("SignatureMethod")?;
        if method != "HMAC-SHA1" {
            return Err(OpenApiError::incomplete_signature(format!(
                "SignatureMethod {:?} is not supported; RPC v1 signatures are HMAC-SHA1 (or use \
                 ACS3-HMAC-SHA256, the SDKs' default)",
                super::error::shown(method)
            )));
        }
        let version = required("SignatureVersion")?;
        if version != "1.0" {
            return Err(OpenApiError::incomplete_signature(format!(
                "SignatureVersion {:?} is not supported; RPC v1 signatures are version 1.0",
                super::error::shown(version)
            )));
        }
        let access_key_id = required("AccessKeyId")?;
        let key = self.lookup(access_key_id, claimed)?;
        let signed_at = match params.get("Timestamp").filter(|t| !t.is_empty()) {
            Some(t) => parse_timestamp("Timestamp", t)?,
            None => {
                return Err(OpenApiError::illegal_timestamp(
                    "Timestamp",
                    "the parameter is missing",
                ))
            }
        };
        check_skew(signed_at, now)?;
        let nonce = check_nonce("SignatureNonce", params.get("SignatureNonce"))?;
        let presented = base64::engine::general_purpose::STANDARD
            .decode(params.get("Signature").unwrap_or_default())
            .ok()
            .filter(|s| s.len() == 20)
            .ok_or_else(|| {
                OpenApiError::incomplete_signature(
                    "the Signature parameter of an RPC v1 request is the base64 of 20 bytes",
                )
            })?;
        let string_to_sign = signature::v1_string_to_sign(
            request.method().as_str(),
            request
                .query_pairs()
                .iter()
                .chain(request.form_pairs())
                .filter(|(name, _)| name != "Signature")
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        let secret = key.secret().expose_secret().as_bytes();
        if !signature::v1_verify(secret, &string_to_sign, &presented) {
            return Err(OpenApiError::signature_does_not_match(&string_to_sign));
        }
        self.remember(access_key_id, nonce, "SignatureNonce", signed_at, now)?;
        Ok(authenticated(key, access_key_id, Scheme::RpcV1HmacSha1))
    }

    fn remember(
        &self,
        access_key_id: &str,
        nonce: &str,
        name: &str,
        signed_at: SystemTime,
        now: SystemTime,
    ) -> Result<(), OpenApiError> {
        self.nonces
            .admit(access_key_id, nonce, signed_at, now)
            .map_err(|refusal| refusal.into_error(name, self.nonces.capacity()))
    }
}

fn authenticated(key: &AccessKey, access_key_id: &str, scheme: Scheme) -> Authenticated {
    Authenticated {
        caller: key.caller().clone(),
        access_key_id: access_key_id.to_string(),
        folder_id: key.folder_id().to_string(),
        scheme,
    }
}

/// A header that must not repeat, as text.
fn single_header<'a>(
    request: &'a OpenApiRequest,
    name: &str,
) -> Result<Option<&'a str>, OpenApiError> {
    let mut values = request.headers().get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| OpenApiError::invalid_parameter(name, "the header is not text")),
        (Some(_), Some(_)) => Err(OpenApiError::invalid_parameter(
            name,
            "the header is given more than once",
        )),
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
