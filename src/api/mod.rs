//! Transports: decoding, field validation, and the listener. The core lives in
//! [`crate::signer`].

pub mod context;
pub mod grpc;
pub mod json;
pub mod key_fields;
pub mod linger;
pub mod peer;
pub mod rest;
pub mod server;
pub mod tls;
pub mod validate;
