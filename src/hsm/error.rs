//! Every PKCS#11 failure is classified here, once, by what the gateway must do about it.

use cryptoki::error::{Error as CkError, RvError};

/// What a PKCS#11 failure means for the gateway (see `pkcs11-reliability.md` §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input was refused; the caller's fault. Never triggers recovery.
    Request,
    /// The session is dead or its operation state is poisoned: discard it, never reuse it.
    Session,
    /// The login state is gone: log in again once, then re-resolve keys.
    Login,
    /// The token or the device is gone or broken: full recovery (finalize, initialize, log in).
    Device,
    /// The PIN is wrong, locked or expired: fail closed; only an operator can fix it.
    Credential,
    /// The key or mechanism does not allow the operation: a configuration problem for that key.
    KeyConfig,
    /// The token is out of sessions or memory right now.
    Busy,
    /// Ambiguous failure (`CKR_GENERAL_ERROR`, `CKR_FUNCTION_FAILED`): inputs were validated, so
    /// it points at the token; a probe decides whether recovery is needed.
    Ambiguous,
}

impl ErrorClass {
    /// Whether a session that returned this error must be discarded rather than pooled.
    pub fn poisons_session(self) -> bool {
        !matches!(self, ErrorClass::Request | ErrorClass::KeyConfig)
    }
}

/// Classifies a PKCS#11 return value. The match is exhaustive on purpose: a new `RvError`
/// variant must be classified by a person, not defaulted.
pub fn classify(rv: RvError) -> ErrorClass {
    use ErrorClass::*;
    match rv {
        RvError::ArgumentsBad
        | RvError::DataInvalid
        | RvError::DataLenRange
        | RvError::EncryptedDataInvalid
        | RvError::EncryptedDataLenRange
        | RvError::SignatureInvalid
        | RvError::SignatureLenRange
        | RvError::AttributeReadOnly
        | RvError::AttributeSensitive
        | RvError::AttributeTypeInvalid
        | RvError::AttributeValueInvalid
        | RvError::TemplateIncomplete
        | RvError::TemplateInconsistent
        | RvError::DomainParamsInvalid
        | RvError::BufferTooSmall
        | RvError::InformationSensitive
        | RvError::ActionProhibited
        | RvError::PublicKeyInvalid
        | RvError::KeySizeRange
        | RvError::CurveNotSupported
        | RvError::WrappedKeyInvalid
        | RvError::WrappedKeyLenRange
        | RvError::UnwrappingKeyHandleInvalid
        | RvError::UnwrappingKeySizeRange
        | RvError::UnwrappingKeyTypeInconsistent
        | RvError::WrappingKeyHandleInvalid
        | RvError::WrappingKeySizeRange
        | RvError::WrappingKeyTypeInconsistent
        | RvError::KeyNotWrappable
        | RvError::KeyUnextractable
        | RvError::KeyIndigestible
        | RvError::KeyNeeded
        | RvError::KeyNotNeeded
        | RvError::KeyChanged
        | RvError::SavedStateInvalid
        | RvError::StateUnsaveable
        | RvError::NewPinMode
        | RvError::NextOtp
        | RvError::ExceededMaxIterations
        | RvError::RandomSeedNotSupported
        | RvError::RandomNoRng
        | RvError::NoEvent
        | RvError::FunctionRejected => Request,

        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::OperationActive
        | RvError::OperationNotInitialized
        | RvError::FunctionCanceled
        | RvError::Cancel
        | RvError::SessionReadOnly
        | RvError::SessionParallelNotSupported => Session,

        RvError::UserNotLoggedIn
        | RvError::ObjectHandleInvalid
        | RvError::KeyHandleInvalid
        | RvError::UserAnotherAlreadyLoggedIn
        | RvError::UserTooManyTypes
        | RvError::SessionExists
        | RvError::SessionReadOnlyExists
        | RvError::SessionReadWriteSoExists
        // Only reachable from C_Login, where it is success; anywhere else, re-login sorts it out.
        | RvError::UserAlreadyLoggedIn => Login,

        RvError::DeviceError
        | RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SlotIdInvalid
        | RvError::CryptokiNotInitialized
        | RvError::FipsSelfTestFailed
        | RvError::LibraryLoadFailed
        | RvError::MutexBad
        | RvError::MutexNotLocked
        | RvError::CantLock
        | RvError::NeedToCreateThreads
        | RvError::CryptokiAlreadyInitialized
        | RvError::FunctionNotParallel => Device,

        RvError::PinIncorrect
        | RvError::PinInvalid
        | RvError::PinLenRange
        | RvError::PinExpired
        | RvError::PinLocked
        | RvError::PinTooWeak
        | RvError::UserPinNotInitialized
        | RvError::UserTypeInvalid => Credential,

        RvError::KeyFunctionNotPermitted
        | RvError::KeyTypeInconsistent
        | RvError::MechanismInvalid
        | RvError::MechanismParamInvalid
        | RvError::FunctionNotSupported
        | RvError::TokenWriteProtected => KeyConfig,

        RvError::SessionCount | RvError::DeviceMemory | RvError::HostMemory => Busy,

        RvError::GeneralError
        | RvError::FunctionFailed
        | RvError::VendorDefined(_)
        | RvError::UnknownErrorCode(_) => Ambiguous,
    }
}

/// A failed PKCS#11 call, or a failed check of what the token holds.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// A PKCS#11 function returned an error.
    #[error("{context}: {source}")]
    Call {
        /// What the gateway was doing.
        context: &'static str,
        /// Its classification.
        class: ErrorClass,
        /// The cryptoki error, with the function and return value.
        #[source]
        source: CkError,
    },
    /// The module could not be loaded or used at all.
    #[error("cannot load the PKCS#11 module {path}: {source}")]
    Module {
        /// The module path.
        path: String,
        /// Why.
        #[source]
        source: CkError,
    },
    /// No token (or more than one) matched the configured label or serial.
    #[error("{0}")]
    TokenSelection(String),
    /// The PIN cannot be used, and will not be tried again.
    #[error("{0}")]
    Credential(String),
    /// No private key on the token matches a configured key's selector.
    #[error("key {key_id}: no private key with {selector} on the token")]
    KeyMissing {
        /// The KMS key id.
        key_id: String,
        /// The selector, as text.
        selector: String,
    },
    /// A configured key is ambiguous, or not fit for its algorithm.
    #[error("key {key_id}: {reason}")]
    Key {
        /// The KMS key id.
        key_id: String,
        /// What is wrong, in words an operator can act on.
        reason: String,
    },
    /// No session became free before the pool wait limit.
    #[error("no HSM session became free within {0:?}")]
    PoolExhausted(std::time::Duration),
    /// The token is being recovered; requests fail fast until it is back.
    #[error("the HSM is recovering from a fault")]
    Recovering,
    /// The key's handle belongs to an older token epoch; it must be resolved again.
    #[error("key {0} is not resolved on the current token")]
    KeyNotResolved(String),
    /// The request's deadline passed while it waited for a session or for the token.
    #[error("the request deadline passed while waiting for the HSM")]
    DeadlineExceeded,
    /// The gateway is shutting down and takes no new HSM work.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A blocking PKCS#11 task panicked or was lost.
    #[error("a PKCS#11 worker failed: {0}")]
    Worker(String),
}

impl HsmError {
    /// Wraps a cryptoki error with context, classifying it.
    pub fn call(context: &'static str, source: CkError) -> Self {
        let class = match &source {
            CkError::Pkcs11(rv, _) => classify(*rv),
            // Anything cryptoki reports without an RV is a binding or module problem.
            _ => ErrorClass::Device,
        };
        HsmError::Call {
            context,
            class,
            source,
        }
    }

    /// At start-up: whether only an operator can fix this (a wrong module path or PIN),
    /// rather than a token that is absent or not answering yet.
    pub fn needs_operator(&self) -> bool {
        matches!(self, HsmError::Module { .. }) || self.class() == Some(ErrorClass::Credential)
    }

    /// The class, where the error came from a PKCS#11 call.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            HsmError::Call { class, .. } => Some(*class),
            HsmError::Credential(_) => Some(ErrorClass::Credential),
            _ => None,
        }
    }

    /// The PKCS#11 return value, if any.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Call {
                source: CkError::Pkcs11(rv, _),
                ..
            } => Some(*rv),
            _ => None,
        }
    }
}

/// Adds context to a cryptoki result.
pub(crate) trait Context<T> {
    /// Attaches `context` and classifies the error.
    fn context(self, context: &'static str) -> Result<T, HsmError>;
}

impl<T> Context<T> for Result<T, CkError> {
    fn context(self, context: &'static str) -> Result<T, HsmError> {
        self.map_err(|e| HsmError::call(context, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_never_looks_like_device_trouble() {
        for rv in [
            RvError::DataLenRange,
            RvError::ArgumentsBad,
            RvError::DataInvalid,
        ] {
            assert_eq!(classify(rv), ErrorClass::Request);
            assert!(!classify(rv).poisons_session());
        }
    }

    #[test]
    fn classes_match_the_reliability_table() {
        assert_eq!(classify(RvError::SessionHandleInvalid), ErrorClass::Session);
        assert_eq!(classify(RvError::OperationActive), ErrorClass::Session);
        assert_eq!(classify(RvError::UserNotLoggedIn), ErrorClass::Login);
        assert_eq!(classify(RvError::ObjectHandleInvalid), ErrorClass::Login);
        assert_eq!(classify(RvError::DeviceRemoved), ErrorClass::Device);
        assert_eq!(classify(RvError::TokenNotPresent), ErrorClass::Device);
        assert_eq!(
            classify(RvError::CryptokiNotInitialized),
            ErrorClass::Device
        );
        assert_eq!(classify(RvError::PinIncorrect), ErrorClass::Credential);
        assert_eq!(classify(RvError::PinLocked), ErrorClass::Credential);
        assert_eq!(classify(RvError::PinExpired), ErrorClass::Credential);
        assert_eq!(classify(RvError::SessionCount), ErrorClass::Busy);
        assert_eq!(classify(RvError::MechanismInvalid), ErrorClass::KeyConfig);
        assert_eq!(classify(RvError::GeneralError), ErrorClass::Ambiguous);
    }
}
