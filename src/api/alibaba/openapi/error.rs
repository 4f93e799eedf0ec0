//! OpenAPI errors: Alibaba's code, HTTP status, message and recommendation, rendered as the
//! JSON body the SDKs parse (contract §2.7, §4.1):
//!
//! ```json
//! {"RequestId":"…","HostId":"…","Code":"Forbidden.KeyNotFound","Message":"…","Recommend":"…"}
//! ```
//!
//! with `Content-Type: application/json;charset=utf-8` and the request id again in
//! `x-acs-request-id` (the ACS4 path of the Python SDK reads it from there). Every domain
//! error is mapped in one function, [`OpenApiError::from_domain`].
//!
//! Codes that no KMS document lists come from Alibaba's POP gateway conventions (contract §4.1,
//! "Signature and auth codes"); each constructor says why it uses its code.

use super::reply;
use crate::api::context::Outcome;
use crate::error::{Error, Missing, Precondition};
use axum::body::Body;
use http::{Response, StatusCode};
use std::borrow::Cow;
use tonic::Code;

/// An error answer of the OpenAPI front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenApiError {
    code: Cow<'static, str>,
    status: StatusCode,
    message: String,
    recommend: String,
    /// The gRPC code the audit record shows, so that records of both clouds read alike.
    outcome: Code,
}

/// Client input shown in a message: at most 64 characters, no control characters.
pub(crate) fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

impl OpenApiError {
    /// An error with any code; prefer the named constructors.
    pub fn new(
        code: impl Into<Cow<'static, str>>,
        status: StatusCode,
        message: impl Into<String>,
        outcome: Code,
    ) -> Self {
        Self {
            code: code.into(),
            status,
            message: message.into(),
            recommend: String::new(),
            outcome,
        }
    }

    /// Adds a hint on what to do (the body's `Recommend`).
    #[must_use]
    pub fn recommend(mut self, recommend: impl Into<String>) -> Self {
        self.recommend = recommend.into();
        self
    }

    /// The Alibaba error code, e.g. `Forbidden.KeyNotFound`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The recommendation (may be empty).
    pub fn recommendation(&self) -> &str {
        &self.recommend
    }

    /// The gRPC code of the audit record.
    pub fn outcome(&self) -> Code {
        self.outcome
    }

    // --- parameters and transport ---------------------------------------------------------

    /// `MissingParameter` (400), in the documented wording.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            StatusCode::BAD_REQUEST,
            format!(
                "The parameter \"{}\" is needed but not provided.",
                shown(name)
            ),
            Code::InvalidArgument,
        )
    }

    /// `InvalidParameter` (400): the documented wording, then what is wrong with it.
    pub fn invalid_parameter(name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            "InvalidParameter",
            StatusCode::BAD_REQUEST,
            format!(
                "The specified parameter \"{}\" is not valid: {why}",
                shown(name)
            ),
            Code::InvalidArgument,
        )
    }

    /// `ParseRequestParameterException` (400, documented): the request as a whole cannot be
    /// read (encoding, size, number of parameters, body type), before any one parameter is.
    pub fn unparseable(why: impl std::fmt::Display) -> Self {
        Self::new(
            "ParseRequestParameterException",
            StatusCode::BAD_REQUEST,
            format!("The request parameters cannot be parsed: {why}"),
            Code::InvalidArgument,
        )
    }

    /// `UnsupportedHTTPMethod` (403, documented).
    pub fn unsupported_method(method: &str) -> Self {
        Self::new(
            "UnsupportedHTTPMethod",
            StatusCode::FORBIDDEN,
            format!(
                "This http method is not supported: {}; send the request as GET or POST to /",
                shown(method)
            ),
            Code::InvalidArgument,
        )
    }

    /// An action this gateway does not offer. `UnsupportedOperation` (400) is the KMS code
    /// for it (instance API, contract §4.2; `Rejected.UnsupportedOperation` in §7).
    pub fn unsupported_action(action: &str) -> Self {
        Self::new(
            "UnsupportedOperation",
            StatusCode::BAD_REQUEST,
            format!(
                "The action \"{}\" is not supported by this gateway (KMS API 2016-01-20).",
                shown(action)
            ),
            Code::Unimplemented,
        )
    }

    // --- authentication -------------------------------------------------------------------

    /// `IncompleteSignature` (400, documented: "does not conform to Alibaba Cloud
    /// standards"): the request is not signed in a form this gateway verifies.
    pub fn incomplete_signature(why: impl std::fmt::Display) -> Self {
        Self::new(
            "IncompleteSignature",
            StatusCode::BAD_REQUEST,
            format!("The request signature does not conform to Alibaba Cloud standards: {why}"),
            Code::Unauthenticated,
        )
    }

    /// `SignatureDoesNotMatch` (400). The message ends with `:` and our string-to-sign, and
    /// has no other colon: the legacy Python SDK takes `Message.split(':')[1]`, compares it
    /// with its own string-to-sign, and tells a wrong secret (equal) from a different
    /// canonicalisation (not equal). The string-to-sign holds no secret.
    pub fn signature_does_not_match(string_to_sign: &str) -> Self {
        Self::new(
            "SignatureDoesNotMatch",
            StatusCode::BAD_REQUEST,
            format!(
                "Specified signature does not match our calculation. Server string to sign \
                 is:{string_to_sign}"
            ),
            Code::Unauthenticated,
        )
        .recommend(
            "Check the AccessKey secret. If it is right, compare the server's string to sign \
             with your SDK's: a proxy that rewrites the Host header, the query or the body \
             breaks the signature.",
        )
    }

    /// `InvalidAccessKeyId.NotFound` (404, documented).
    pub fn access_key_not_found() -> Self {
        Self::new(
            "InvalidAccessKeyId.NotFound",
            StatusCode::NOT_FOUND,
            "The AccessKey ID provided does not exist in our records.",
            Code::Unauthenticated,
        )
        .recommend("Use an AccessKeyId listed in this gateway's [[alibaba.access_keys]].")
    }

    /// `IllegalTimestamp` (400, documented): the signing time is missing or unreadable.
    pub fn illegal_timestamp(name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            "IllegalTimestamp",
            StatusCode::BAD_REQUEST,
            format!(
                "The input parameter \"{name}\" that is required for processing this request \
                 is not supplied or not valid: {why}"
            ),
            Code::Unauthenticated,
        )
    }

    /// `InvalidTimeStamp.Expired` (400): POP's code for a signing time too far from ours;
    /// KMS documents only `IllegalTimestamp`, which is about a missing one.
    pub fn timestamp_expired(why: impl std::fmt::Display) -> Self {
        Self::new(
            "InvalidTimeStamp.Expired",
            StatusCode::BAD_REQUEST,
            format!("The request time is not within 15 minutes of the server time: {why}"),
            Code::Unauthenticated,
        )
        .recommend("Synchronise the client's clock (NTP) and send a fresh request.")
    }

    /// `SignatureNonceUsed` (400): POP's code for a replayed nonce.
    pub fn nonce_used(name: &str) -> Self {
        Self::new(
            "SignatureNonceUsed",
            StatusCode::BAD_REQUEST,
            format!(
                "The request signature nonce has been used already; every request needs a \
                 fresh {name}."
            ),
            Code::Unauthenticated,
        )
    }

    /// STS security tokens are refused. The code follows the documented `Unsupported.*`
    /// family (`Unsupported.Alias`, `Unsupported.Origin`: 400, "not valid for this api").
    pub fn security_token_unsupported(name: &str) -> Self {
        Self::new(
            "Unsupported.SecurityToken",
            StatusCode::BAD_REQUEST,
            format!(
                "STS security tokens ({name}) are not supported by this gateway; sign with a \
                 long-term AccessKey pair that the gateway is configured with."
            ),
            Code::Unauthenticated,
        )
        .recommend("Drop security_token from the client configuration.")
    }

    // --- limits and the domain ------------------------------------------------------------

    /// `Rejected.Throttling` (429): retryable; the SDKs' retry logic knows this code.
    pub fn throttling(why: impl std::fmt::Display) -> Self {
        Self::new(
            "Rejected.Throttling",
            StatusCode::TOO_MANY_REQUESTS,
            format!("QPS Limit Exceeded: {why}"),
            Code::ResourceExhausted,
        )
    }

    /// An answer the request-context layer gives itself (rate limit, health reserve, header
    /// size, body budget, audit outage), from its canonical code.
    pub fn from_layer(code: Code, message: &str) -> Self {
        let (name, status) = match code {
            Code::ResourceExhausted => ("Rejected.Throttling", StatusCode::TOO_MANY_REQUESTS),
            Code::Unavailable => (
                "ServiceUnavailableTemporary",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            Code::InvalidArgument | Code::OutOfRange => {
                ("InvalidParameter", StatusCode::BAD_REQUEST)
            }
            Code::Unauthenticated => ("IncompleteSignature", StatusCode::BAD_REQUEST),
            _ => ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR),
        };
        Self::new(name, status, message, code)
    }

    /// The one mapping of the core's errors to Alibaba codes. No wildcard arm: a new variant
    /// does not compile until it has a code here. Server-side failures keep their sanitised
    /// message and log the full cause, as the other fronts do.
    pub fn from_domain(error: &Error) -> Self {
        error.log();
        let message = error.to_string();
        let (code, status) = match error {
            Error::InvalidArgument(_) | Error::OutOfRange(_) => {
                ("InvalidParameter", StatusCode::BAD_REQUEST)
            }
            Error::NotFound { what, .. } => (
                match what {
                    Missing::Key | Missing::Other => "Forbidden.KeyNotFound",
                    Missing::Version => "Forbidden.KeyVersionNotFound",
                    Missing::Alias => "Forbidden.AliasNotFound",
                },
                StatusCode::NOT_FOUND,
            ),
            // Only alias names can exist already.
            Error::AlreadyExists(_) => ("AliasAlreadyExists", StatusCode::BAD_REQUEST),
            Error::FailedPrecondition { why, .. } => match why {
                Precondition::Disabled => ("Rejected.Disabled", StatusCode::CONFLICT),
                Precondition::PendingDeletion => ("Rejected.PendingDeletion", StatusCode::CONFLICT),
                Precondition::Creating | Precondition::State => {
                    ("Rejected.StateModifiedFailed", StatusCode::CONFLICT)
                }
                Precondition::Limit => ("Rejected.LimitExceeded", StatusCode::BAD_REQUEST),
                // The key material changed or vanished on the token: only an operator can fix
                // it, and it is not the caller's request that is wrong.
                Precondition::Unusable => ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR),
            },
            Error::Unauthenticated(_) => ("IncompleteSignature", StatusCode::BAD_REQUEST),
            Error::PermissionDenied(_) => ("Forbidden.NoPermission", StatusCode::FORBIDDEN),
            Error::ResourceExhausted(_) => ("Rejected.Throttling", StatusCode::TOO_MANY_REQUESTS),
            // A concurrent change got in the way: a state change that did not happen.
            Error::Aborted(_) => ("Rejected.StateModifiedFailed", StatusCode::CONFLICT),
            Error::Unimplemented(_) => ("UnsupportedOperation", StatusCode::BAD_REQUEST),
            Error::DeadlineExceeded(_) | Error::Unavailable { .. } => (
                "ServiceUnavailableTemporary",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            Error::Internal { .. } => ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR),
        };
        Self::new(code, status, message, crate::api::outcome::code(error))
    }

    /// The error response: the JSON body, its content type, `x-acs-request-id`, and the
    /// outcome for the audit record. `host_id` is the body's `HostId` (the host the client
    /// addressed, as Alibaba's gateways answer).
    pub fn into_response(self, request_id: &str, host_id: &str) -> Response<Body> {
        let body = serde_json::json!({
            "RequestId": request_id,
            "HostId": shown(host_id),
            "Code": self.code,
            "Message": self.message,
            "Recommend": self.recommend,
        });
        let mut response = reply::json_response(self.status, &body, request_id);
        response.extensions_mut().insert(Outcome(self.outcome));
        response
    }
}

impl From<Error> for OpenApiError {
    fn from(error: Error) -> Self {
        Self::from_domain(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn parts(r: Response<Body>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn renders_the_body_headers_and_outcome_the_sdks_read() {
        let r = OpenApiError::missing_parameter("KeyId").into_response("req-1", "kms.local:443");
        assert_eq!(
            r.extensions().get::<Outcome>().unwrap().0,
            Code::InvalidArgument
        );
        let (status, headers, body) = parts(r).await;
        assert_eq!(status, 400);
        assert_eq!(headers["content-type"], "application/json;charset=utf-8");
        assert_eq!(headers["x-acs-request-id"], "req-1");
        assert_eq!(
            body,
            serde_json::json!({
                "RequestId": "req-1",
                "HostId": "kms.local:443",
                "Code": "MissingParameter",
                "Message": "The parameter \"KeyId\" is needed but not provided.",
                "Recommend": "",
            })
        );
    }

    #[test]
    fn signature_mismatch_splits_on_its_one_colon_into_our_string_to_sign() {
        let sts = "POST&%2F&AccessKeyId%3Dtestid";
        let e = OpenApiError::signature_does_not_match(sts);
        assert_eq!(
            (e.code(), e.status().as_u16()),
            ("SignatureDoesNotMatch", 400)
        );
        let pieces: Vec<&str> = e.message().split(':').collect();
        assert_eq!(pieces.len(), 2, "{}", e.message());
        assert_eq!(pieces[1], sts);
        let acs3 =
            "ACS3-HMAC-SHA256\n956383dae17609dde087592521ca8da559b20e8d865a666936d62d0335dc89a6";
        let e = OpenApiError::signature_does_not_match(acs3);
        assert_eq!(e.message().split(':').nth(1), Some(acs3));
    }

    #[test]
    fn every_domain_error_has_its_code_and_status() {
        let cases = [
            (Error::InvalidArgument("x".into()), "InvalidParameter", 400),
            (Error::OutOfRange("x".into()), "InvalidParameter", 400),
            (
                Error::not_found(Missing::Key, "x"),
                "Forbidden.KeyNotFound",
                404,
            ),
            (
                Error::not_found(Missing::Version, "x"),
                "Forbidden.KeyVersionNotFound",
                404,
            ),
            (
                Error::not_found(Missing::Alias, "x"),
                "Forbidden.AliasNotFound",
                404,
            ),
            (Error::AlreadyExists("x".into()), "AliasAlreadyExists", 400),
            (
                Error::precondition(Precondition::Disabled, "x"),
                "Rejected.Disabled",
                409,
            ),
            (
                Error::precondition(Precondition::PendingDeletion, "x"),
                "Rejected.PendingDeletion",
                409,
            ),
            (
                Error::precondition(Precondition::State, "x"),
                "Rejected.StateModifiedFailed",
                409,
            ),
            (
                Error::Unauthenticated("x".into()),
                "IncompleteSignature",
                400,
            ),
            (
                Error::PermissionDenied("x".into()),
                "Forbidden.NoPermission",
                403,
            ),
            (
                Error::ResourceExhausted("x".into()),
                "Rejected.Throttling",
                429,
            ),
            (
                Error::DeadlineExceeded("x".into()),
                "ServiceUnavailableTemporary",
                503,
            ),
            (
                Error::Aborted("x".into()),
                "Rejected.StateModifiedFailed",
                409,
            ),
            (
                Error::Unimplemented("x".into()),
                "UnsupportedOperation",
                400,
            ),
            (
                Error::unavailable("the HSM is unavailable", std::io::Error::other("pin x")),
                "ServiceUnavailableTemporary",
                503,
            ),
            (
                Error::internal("internal error", std::io::Error::other("secret cause")),
                "InternalFailure",
                500,
            ),
        ];
        for (error, code, status) in cases {
            let grpc = crate::api::outcome::code(&error);
            let e = OpenApiError::from(error);
            assert_eq!((e.code(), e.status().as_u16()), (code, status));
            assert_eq!(e.outcome(), grpc);
            assert!(!e.message().contains("secret cause") && !e.message().contains("pin x"));
        }
    }

    #[test]
    fn client_input_in_messages_is_bounded_and_printable() {
        let e = OpenApiError::unsupported_action(&format!("Evil\n{}", "x".repeat(500)));
        assert!(!e.message().contains('\n'));
        assert!(e.message().len() < 200, "{}", e.message());
    }
}
