//! The Yandex fronts' one mapping of the core's [`Error`] to a gRPC status, and of gRPC codes
//! to the HTTP statuses of Yandex's REST table.

use crate::error::Error;
use tonic::{Code, Status};

/// The gRPC code of an error: the canonical code, which Yandex answers with as it is.
pub fn code(error: &Error) -> Code {
    crate::api::outcome::code(error)
}

/// The status a failed call answers with; logs the cause first.
pub fn status(error: Error) -> Status {
    error.log();
    Status::new(code(&error), error.to_string())
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        status(error)
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
