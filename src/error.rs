//! The one error type of the request path, and its single mapping to a gRPC status; REST
//! answers with that status's code and the HTTP status of Yandex's table ([`http_status`]).
//!
//! Client-facing messages say what to fix. Token failures reach clients sanitised, as INTERNAL
//! or UNAVAILABLE; the full cause is logged here, at the edge, once.

use crate::hsm::{ErrorClass, HsmError};
use tonic::{Code, Status};

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Everything a request can fail with, grouped by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field is malformed or out of range; the message names the field and the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is larger than the transport accepts (before any field is looked at).
    #[error("{0}")]
    OutOfRange(String),
    /// The key does not exist (or was deleted).
    #[error("{0}")]
    NotFound(String),
    /// The key exists but cannot be used now: inactive, changed on the token, protected.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No or invalid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without a role for this key.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was hit: rate limit, or no HSM session within the pool wait.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request's own deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A concurrent change got in the way; retrying the request may work.
    #[error("{0}")]
    Aborted(String),
    /// The method exists in the contract but p11kms does not offer it (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// The HSM is unreachable or recovering; retrying later may work.
    #[error("{message}")]
    Unavailable {
        /// Safe for clients.
        message: String,
        /// Logged, never sent.
        #[source]
        source: Option<Source>,
    },
    /// Anything else that went wrong on our side; clients get a generic message.
    #[error("{message}")]
    Internal {
        /// Safe for clients.
        message: String,
        /// Logged, never sent.
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// An INTERNAL error with a logged cause.
    pub fn internal(message: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An UNAVAILABLE error with a logged cause.
    pub fn unavailable(message: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The gRPC code; REST derives its HTTP status from it too. No wildcard arm: a new variant
    /// does not compile until someone decides its code.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Aborted(_) => Code::Aborted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Internal { .. } => Code::Internal,
        }
    }

    /// Logs the full cause chain for server-side failures; client errors are not worth a warning.
    pub fn log(&self) {
        match self {
            Error::Internal { .. } => {
                tracing::error!(error = %chain(self), "request failed");
            }
            // Without a source, the cause (recovery, shutdown) was already logged once where it
            // happened; repeating it per request would flood the log during an outage.
            Error::Unavailable { source: None, .. } => {
                tracing::debug!(error = %self, "request failed fast");
            }
            Error::Unavailable { .. } => {
                tracing::warn!(error = %chain(self), "request failed");
            }
            _ => tracing::debug!(code = ?self.code(), error = %self, "request refused"),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.log();
        Status::new(error.code(), error.to_string())
    }
}

/// The HTTP status REST answers a gRPC code with (Yandex's table); the one mapping.
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::Cancelled => H::from_u16(499).expect("499 is a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code an HTTP status stands for, for responses that carry no code of their own.
pub fn code_of_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// `a: b: c` for an error and its sources.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

impl From<HsmError> for Error {
    fn from(e: HsmError) -> Self {
        let unavailable = |message: &str, e: HsmError| Error::unavailable(message, e);
        match &e {
            HsmError::PoolExhausted(_) => Error::ResourceExhausted(
                "all HSM sessions are busy; retry with backoff or raise hsm.pool_size".into(),
            ),
            HsmError::DeadlineExceeded => Error::DeadlineExceeded(
                "the request deadline passed while waiting for the HSM; retry with a longer deadline".into(),
            ),
            HsmError::ShuttingDown => Error::Unavailable {
                message: "the gateway is shutting down; retry on another replica".into(),
                source: None,
            },
            HsmError::Recovering => Error::Unavailable {
                message: "the HSM is recovering from a fault; retry shortly".into(),
                source: None,
            },
            HsmError::KeyNotResolved(_) => unavailable("the key is being re-resolved; retry", e),
            HsmError::KeyMissing { key_id, .. } => Error::FailedPrecondition(format!(
                "key {key_id} cannot be used: its key material is no longer on the token"
            )),
            HsmError::Key { key_id, reason } => Error::FailedPrecondition(format!(
                "key {key_id} cannot be used: {reason}"
            )),
            HsmError::Module { .. } | HsmError::TokenSelection(_) => {
                unavailable("the HSM is unavailable", e)
            }
            HsmError::Credential(_) => {
                unavailable("the gateway cannot log in to the HSM; an operator must act", e)
            }
            HsmError::Worker(_) => Error::internal("internal error in the signing backend", e),
            HsmError::Call { class, .. } => match class {
                ErrorClass::Request => {
                    Error::internal("the HSM refused an input the gateway accepted", e)
                }
                ErrorClass::KeyConfig => Error::FailedPrecondition(
                    "the HSM does not allow this key to sign with its algorithm; check the key's attributes and the token's mechanisms".into(),
                ),
                ErrorClass::Busy => Error::ResourceExhausted(
                    "the HSM is out of sessions or memory; retry with backoff".into(),
                ),
                ErrorClass::Credential => {
                    unavailable("the gateway cannot log in to the HSM; an operator must act", e)
                }
                ErrorClass::Session
                | ErrorClass::Login
                | ErrorClass::Device
                | ErrorClass::Ambiguous => unavailable("the HSM is unavailable; retry shortly", e),
            },
        }
    }
}
