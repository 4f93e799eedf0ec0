//! The instance API's errors: every refusal is an `Error` protobuf body (the SDK parses nothing
//! else, and reads only `ErrorCode`, `ErrorMessage` and `RequestId`) with the HTTP status of
//! its code.
//!
//! The contract (§4.2) gives the statuses of the front's own codes (400, 401, 404) and leaves
//! the rest open (§7.3); the SDK only needs a 4xx/5xx and the exact `Rejected.Throttling` to
//! retry. p11kms answers, one status per code:
//!
//! | code | HTTP | when |
//! |---|---|---|
//! | `InvalidApiName`, `InvalidApiVersion`, `InvalidParam`, `MissingParameter`, `RequestTimeTooSkewed`, `InvalidParameter`, `UnsupportedOperation` | 400 | the request's headers or body |
//! | `SignatureNotMatch` | 401 | the client-key signature does not verify |
//! | `Forbidden.NoPermission` | 403 | no role for this key (as the shared gateway's table) |
//! | `Unauthorized`, `Forbidden.KeyNotFound` | 404 | unknown client key; unknown key |
//! | `Rejected.Disabled`, `Rejected.StateModifiedFailed` | 409 | the key cannot be used now; a concurrent change |
//! | `Rejected.Throttling` | 429 | rate limit, HSM sessions busy: the SDK retries these, and only these |
//! | `InternalFailure` | 500 | a token failure or failed verify-after-sign (sanitised message) |
//! | `ServiceUnavailableTemporary` | 503 | the HSM is unreachable or recovering, shutdown (the shared gateway's code for it) |
//!
//! Domain errors map in one place, [`from_domain`].

use crate::api::context::Outcome;
use crate::error::{Error, Precondition};
use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};
use prost::Message as _;

use super::pb;

/// An instance-API error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// `x-kms-apiname` names no API of the protocol.
    InvalidApiName,
    /// `x-kms-apiversion` is not `dkms-gcs-0.2`.
    InvalidApiVersion,
    /// A header is malformed (`The Param <name> is invalid.`).
    InvalidParam,
    /// A required header is missing.
    MissingParameter,
    /// `date` is more than 15 minutes from the server's clock.
    RequestTimeTooSkewed,
    /// The body or a field in it is not valid.
    InvalidParameter,
    /// An API of the protocol that p11kms does not serve.
    UnsupportedOperation,
    /// The client-key signature does not verify.
    SignatureNotMatch,
    /// No client key has this id.
    Unauthorized,
    /// The caller has no role for this key.
    ForbiddenNoPermission,
    /// No such key.
    ForbiddenKeyNotFound,
    /// The key is disabled.
    RejectedDisabled,
    /// The key is pending deletion.
    RejectedPendingDeletion,
    /// A concurrent change got in the way.
    RejectedStateModifiedFailed,
    /// Too many requests; retry with backoff.
    RejectedThrottling,
    /// Something failed on the gateway's side.
    InternalFailure,
    /// The HSM is unavailable for now.
    ServiceUnavailableTemporary,
}

impl Code {
    /// The `ErrorCode` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidApiName => "InvalidApiName",
            Code::InvalidApiVersion => "InvalidApiVersion",
            Code::InvalidParam => "InvalidParam",
            Code::MissingParameter => "MissingParameter",
            Code::RequestTimeTooSkewed => "RequestTimeTooSkewed",
            Code::InvalidParameter => "InvalidParameter",
            Code::UnsupportedOperation => "UnsupportedOperation",
            Code::SignatureNotMatch => "SignatureNotMatch",
            Code::Unauthorized => "Unauthorized",
            Code::ForbiddenNoPermission => "Forbidden.NoPermission",
            Code::ForbiddenKeyNotFound => "Forbidden.KeyNotFound",
            Code::RejectedDisabled => "Rejected.Disabled",
            Code::RejectedPendingDeletion => "Rejected.PendingDeletion",
            Code::RejectedStateModifiedFailed => "Rejected.StateModifiedFailed",
            Code::RejectedThrottling => "Rejected.Throttling",
            Code::InternalFailure => "InternalFailure",
            Code::ServiceUnavailableTemporary => "ServiceUnavailableTemporary",
        }
    }

    /// The HTTP status (the table in the module docs).
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidApiName
            | Code::InvalidApiVersion
            | Code::InvalidParam
            | Code::MissingParameter
            | Code::RequestTimeTooSkewed
            | Code::InvalidParameter
            | Code::UnsupportedOperation => StatusCode::BAD_REQUEST,
            Code::SignatureNotMatch => StatusCode::UNAUTHORIZED,
            Code::ForbiddenNoPermission => StatusCode::FORBIDDEN,
            Code::Unauthorized | Code::ForbiddenKeyNotFound => StatusCode::NOT_FOUND,
            Code::RejectedDisabled
            | Code::RejectedPendingDeletion
            | Code::RejectedStateModifiedFailed => StatusCode::CONFLICT,
            Code::RejectedThrottling => StatusCode::TOO_MANY_REQUESTS,
            Code::InternalFailure => StatusCode::INTERNAL_SERVER_ERROR,
            Code::ServiceUnavailableTemporary => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC code the audit record shows for the front's own refusals.
    fn outcome(self) -> tonic::Code {
        use tonic::Code as G;
        match self {
            Code::InvalidApiName
            | Code::InvalidApiVersion
            | Code::InvalidParam
            | Code::MissingParameter
            | Code::InvalidParameter => G::InvalidArgument,
            Code::RequestTimeTooSkewed | Code::SignatureNotMatch | Code::Unauthorized => {
                G::Unauthenticated
            }
            Code::UnsupportedOperation => G::Unimplemented,
            Code::ForbiddenNoPermission => G::PermissionDenied,
            Code::ForbiddenKeyNotFound => G::NotFound,
            Code::RejectedDisabled | Code::RejectedPendingDeletion => G::FailedPrecondition,
            Code::RejectedStateModifiedFailed => G::Aborted,
            Code::RejectedThrottling => G::ResourceExhausted,
            Code::InternalFailure => G::Internal,
            Code::ServiceUnavailableTemporary => G::Unavailable,
        }
    }
}

/// A refused instance-API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceError {
    code: Code,
    message: String,
    outcome: tonic::Code,
}

impl InstanceError {
    /// An error with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            outcome: code.outcome(),
        }
    }

    /// `MissingParameter` for a header the request lacks.
    pub fn missing(name: &str) -> Self {
        Self::new(
            Code::MissingParameter,
            format!("Parameter {name} does not exist in http header or body."),
        )
    }

    /// `InvalidParam` for a malformed header, in the contract's exact words (the KMS wrapper
    /// SDK recognises `The Param Date is invalid.` and `The Param Authorization is invalid.`).
    pub fn invalid_param(name: &str) -> Self {
        Self::new(Code::InvalidParam, format!("The Param {name} is invalid."))
    }

    /// `InvalidParameter` for the body or a field in it.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidParameter, message)
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message sent as `ErrorMessage`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP answer: the `Error` protobuf with the code's status.
    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        let status = self.code.status();
        let body = pb::Error {
            status_code: i32::from(status.as_u16()),
            error_code: self.code.as_str().to_string(),
            error_message: self.message.clone(),
            request_id: request_id.to_string(),
        };
        let mut response = Response::new(Body::from(body.encode_to_vec()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(super::CONTENT_TYPE),
        );
        response.extensions_mut().insert(Outcome(self.outcome));
        response
    }
}

impl std::fmt::Display for InstanceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<Error> for InstanceError {
    fn from(error: Error) -> Self {
        from_domain(error)
    }
}

impl InstanceError {
    /// An answer the request-context layer gives itself (rate limit, health reserve, header
    /// size, body budget, audit outage), from its canonical code.
    pub fn from_layer(code: tonic::Code, message: &str) -> Self {
        let code = match code {
            tonic::Code::ResourceExhausted => Code::RejectedThrottling,
            tonic::Code::Unavailable => Code::ServiceUnavailableTemporary,
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Code::InvalidParameter,
            tonic::Code::Unauthenticated => Code::SignatureNotMatch,
            _ => Code::InternalFailure,
        };
        Self::new(code, message)
    }
}

/// The one mapping of domain errors to instance-API codes; logs the error's cause once.
///
/// No wildcard arm: a new domain variant does not compile until its code is decided here.
pub fn from_domain(error: Error) -> InstanceError {
    error.log();
    let outcome = crate::api::outcome::code(&error);
    // Display is the client-safe message (sources of Internal/Unavailable are never shown).
    let message = error.to_string();
    let code = match error {
        Error::InvalidArgument(_) | Error::OutOfRange(_) => Code::InvalidParameter,
        // The instance API names keys only (by id or alias): every miss is the key's.
        Error::NotFound { .. } => Code::ForbiddenKeyNotFound,
        Error::AlreadyExists(_) => Code::InvalidParameter,
        Error::FailedPrecondition { why, .. } => match why {
            Precondition::Disabled => Code::RejectedDisabled,
            Precondition::PendingDeletion => Code::RejectedPendingDeletion,
            Precondition::Creating | Precondition::State | Precondition::Limit => {
                Code::RejectedStateModifiedFailed
            }
            // The key material changed or vanished on the token: only an operator can fix it,
            // and it is not the caller's request that is wrong.
            Precondition::Unusable => Code::InternalFailure,
        },
        Error::Unauthenticated(_) => Code::SignatureNotMatch,
        Error::PermissionDenied(_) => Code::ForbiddenNoPermission,
        Error::ResourceExhausted(_) => Code::RejectedThrottling,
        Error::Aborted(_) => Code::RejectedStateModifiedFailed,
        Error::Unimplemented(_) => Code::UnsupportedOperation,
        Error::DeadlineExceeded(_) | Error::Unavailable { .. } => Code::ServiceUnavailableTemporary,
        Error::Internal { .. } => Code::InternalFailure,
    };
    InstanceError {
        code,
        message,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Missing;

    async fn decoded(response: Response<Body>) -> (StatusCode, pb::Error, tonic::Code) {
        let status = response.status();
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/x-protobuf"
        );
        let outcome = response.extensions().get::<Outcome>().unwrap().0;
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, pb::Error::decode(bytes).unwrap(), outcome)
    }

    #[tokio::test]
    async fn errors_are_error_protobufs_with_the_codes_status() {
        let e = InstanceError::invalid_param("Date");
        assert_eq!(e.message(), "The Param Date is invalid.");
        let (status, body, outcome) = decoded(e.to_response("req-1")).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            pb::Error {
                status_code: 400,
                error_code: "InvalidParam".into(),
                error_message: "The Param Date is invalid.".into(),
                request_id: "req-1".into(),
            }
        );
        assert_eq!(outcome, tonic::Code::InvalidArgument);
        let e = InstanceError::missing("x-kms-acccesskeyid");
        assert_eq!(
            e.message(),
            "Parameter x-kms-acccesskeyid does not exist in http header or body."
        );
        assert_eq!(e.code().status(), 400);
    }

    #[tokio::test]
    async fn domain_errors_map_to_the_contracts_codes() {
        let cases = [
            (Error::InvalidArgument("x".into()), "InvalidParameter", 400),
            (Error::OutOfRange("x".into()), "InvalidParameter", 400),
            (
                Error::not_found(Missing::Key, "x"),
                "Forbidden.KeyNotFound",
                404,
            ),
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
            (Error::Unauthenticated("x".into()), "SignatureNotMatch", 401),
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
                Error::DeadlineExceeded("x".into()),
                "ServiceUnavailableTemporary",
                503,
            ),
            (
                Error::unavailable("the HSM is unavailable", "C_Sign: CKR_DEVICE_REMOVED"),
                "ServiceUnavailableTemporary",
                503,
            ),
            (
                Error::internal("internal error", "secret cause"),
                "InternalFailure",
                500,
            ),
        ];
        for (error, code, status) in cases {
            let grpc = crate::api::outcome::code(&error);
            let (got_status, body, outcome) = decoded(from_domain(error).to_response("r")).await;
            assert_eq!(
                (body.error_code.as_str(), got_status.as_u16()),
                (code, status)
            );
            assert_eq!(body.status_code, i32::from(status));
            assert_eq!(outcome, grpc, "{code}: the audit keeps the domain's code");
            assert!(
                !body.error_message.contains("secret cause")
                    && !body.error_message.contains("CKR_"),
                "causes are logged, never sent: {}",
                body.error_message
            );
        }
    }
}
