//! The REST/JSON form of the Yandex KMS API (contract §2, §3, §5, §7, §10): every HTTP binding
//! of the crypto, key, operation and endpoint services, on the same core as gRPC.
//!
//! A REST request takes the gRPC path through everything that matters:
//! * the **request-context layer** ([`crate::api::context`]) is applied to the whole listener,
//!   so request ids, authentication, rate limits and the audit record are the same code;
//!   a REST record names the gRPC method its binding maps to, with `protocol: "rest"`;
//! * the request is decoded into the **generated request message** ([`messages`], with the
//!   proto3 JSON conventions of [`proto_json`]) and handed to the same transport-neutral
//!   `handle_*` method the tonic service calls ([`crate::api::yandex::grpc`]): validation,
//!   authorisation and the core are shared, and so is the one [`crate::error::Error`];
//! * errors become the Yandex REST error body with the HTTP status of the contract's table
//!   ([`response`], [`crate::error::http_status`]).
//!
//! Modules: [`route`] parses the bindings (the `:verb` suffix included), [`decode`] reads
//! bodies and query strings, [`handlers`] runs one request, `crate::api::mux` shares a listener with gRPC
//! by content type.
//!
//! Size limit: a body over [`MAX_BODY_BYTES`] is refused with OUT_OF_RANGE (HTTP 400), from its
//! `Content-Length` when it declares one, before it is read. The limit is the gRPC limit
//! ([`crate::api::yandex::grpc::MAX_REQUEST_BYTES`]) in base64 plus room for the JSON around it, so
//! that the same request is refused for the same reason on both transports.

pub mod decode;
pub mod handlers;
pub mod messages;
pub mod proto_json;
pub mod response;
pub mod route;

use crate::api::yandex::grpc::crypto::CryptoService;
use crate::api::yandex::grpc::endpoints::EndpointService;
use crate::api::yandex::grpc::keys::KeyService;
use crate::api::yandex::grpc::operations::OperationsService;
use crate::keys::KeyManager;
use crate::signer::Signer;
use std::sync::Arc;

/// Largest REST request body accepted, in bytes: [`crate::api::yandex::grpc::MAX_REQUEST_BYTES`] as
/// base64 (4/3) plus 8 KiB for field names, quotes and whitespace.
pub const MAX_BODY_BYTES: usize = crate::api::yandex::grpc::MAX_REQUEST_BYTES / 3 * 4 + 8 * 1024;

/// The REST API as a router (every path; unknown ones get a REST 404). `endpoints` is what
/// endpoint discovery advertises, as for gRPC.
pub fn routes(
    signer: Arc<Signer>,
    manager: Arc<KeyManager>,
    endpoints: EndpointService,
) -> axum::Router {
    let services = handlers::Services {
        crypto: CryptoService::new(signer),
        keys: KeyService::new(Arc::clone(&manager)),
        operations: OperationsService::new(manager),
        endpoints,
    };
    axum::Router::new()
        .fallback(handlers::serve)
        .with_state(Arc::new(services))
}
