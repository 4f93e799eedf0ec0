//! The canonical code (`google.rpc.Code`) of a domain error: what audit records and logs show
//! for every front, whatever codes the front answers with. The Yandex fronts answer with it
//! directly (`api/yandex/status.rs`).

use crate::error::Error;
use tonic::Code;

/// The canonical code of an error. No wildcard arm: a new variant does not compile until
/// someone decides its code.
pub fn code(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition { .. } => Code::FailedPrecondition,
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
