//! The one error type of the request path, for every front. Each front maps it to its own codes
//! in one place: the Yandex fronts to a gRPC status (`api/yandex/status.rs`, whose HTTP status
//! table REST answers with), the Alibaba fronts to their codes and HTTP statuses.
//!
//! Client-facing messages say what to fix. Token failures reach clients sanitised, as INTERNAL
//! or UNAVAILABLE; the full cause is logged here, at the edge, once.

use crate::hsm::{ErrorClass, HsmError};

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
    /// The key, version, alias or operation does not exist (or was deleted).
    #[error("{message}")]
    NotFound {
        /// What is missing.
        what: Missing,
        /// For the client.
        message: String,
    },
    /// What the request would create exists already (an alias name).
    #[error("{0}")]
    AlreadyExists(String),
    /// The key exists but cannot be used or changed now: disabled, being deleted, changed on
    /// the token, protected.
    #[error("{message}")]
    FailedPrecondition {
        /// Why.
        why: Precondition,
        /// For the client.
        message: String,
    },
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

/// What a NOT_FOUND is about (Alibaba answers each with its own code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// A key.
    Key,
    /// A key version.
    Version,
    /// An alias.
    Alias,
    /// An operation, or anything else.
    Other,
}

/// Why a key cannot be used or changed now (Alibaba answers each with its own code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The key is INACTIVE (Alibaba: Disabled).
    Disabled,
    /// The key is deleted, pending destruction.
    PendingDeletion,
    /// The key is still being created.
    Creating,
    /// The key's state does not allow the change (not deleted, protected…).
    State,
    /// A limit on the key: too many versions, or a new one too soon after the last.
    Limit,
    /// The key material is unusable: gone, changed on the token, or unfit for the scheme.
    Unusable,
}

impl Error {
    /// NOT_FOUND about `what`.
    pub fn not_found(what: Missing, message: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            message: message.into(),
        }
    }

    /// FAILED_PRECONDITION because of `why`.
    pub fn precondition(why: Precondition, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            why,
            message: message.into(),
        }
    }

    /// The short name of the variant, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::OutOfRange(_) => "out_of_range",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists(_) => "already_exists",
            Error::FailedPrecondition { .. } => "failed_precondition",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Aborted(_) => "aborted",
            Error::Unimplemented(_) => "unimplemented",
            Error::Unavailable { .. } => "unavailable",
            Error::Internal { .. } => "internal",
        }
    }

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
            _ => tracing::debug!(kind = self.kind(), error = %self, "request refused"),
        }
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
            HsmError::KeyMissing { key_id, .. } => Error::precondition(
                Precondition::Unusable,
                format!("key {key_id} cannot be used: its key material is no longer on the token"),
            ),
            HsmError::Key { key_id, reason } => Error::precondition(
                Precondition::Unusable,
                format!("key {key_id} cannot be used: {reason}"),
            ),
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
                ErrorClass::KeyConfig => Error::precondition(
                    Precondition::Unusable,
                    "the HSM does not allow this key to sign with this scheme; check the key's attributes and the token's mechanisms",
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
