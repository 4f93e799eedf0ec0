//! The gRPC services, built into one router over the shared core.
//!
//! Each service's `handle_*` methods are its transport-neutral handlers: they take the
//! [`RequestContext`], the request message and the deadline, validate, call the core, and
//! return the one [`crate::error::Error`]. The tonic trait methods only unwrap the request
//! (`parts`) and call them; the REST API ([`crate::api::yandex::rest`]) calls the same methods.

pub mod admin;
pub mod crypto;
pub mod deadline;
pub mod endpoints;
pub mod keys;
pub mod operations;
pub mod pb;

use crate::api::context;
use crate::auth::RequestContext;
use crate::keys::KeyManager;
use crate::signer::Signer;
use pb::kms::asymmetric_signature_crypto_service_server::AsymmetricSignatureCryptoServiceServer;
use pb::kms::asymmetric_signature_key_service_server::AsymmetricSignatureKeyServiceServer;
use pb::operation::operation_service_server::OperationServiceServer;
use pb::p11kms::v1::key_admin_service_server::KeyAdminServiceServer;
use pb::yandex::cloud::endpoint::api_endpoint_service_server::ApiEndpointServiceServer;
use std::sync::Arc;

/// The crypto service's full name, as health checks name it.
pub const CRYPTO_SERVICE_NAME: &str =
    "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService";

/// Largest encoded gRPC request accepted. Sign's 32 KiB message plus framing fits; a larger
/// frame is refused from its length prefix, before its body is buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What a `handle_*` method needs from a gRPC request: the context the request-context layer
/// attached, the client's deadline (`grpc-timeout`) and the message.
///
/// # Errors
/// UNAUTHENTICATED when the request did not pass the context layer (fail closed).
pub(crate) fn parts<T>(
    request: tonic::Request<T>,
) -> Result<(RequestContext, Option<tokio::time::Instant>, T), tonic::Status> {
    let deadline = deadline::of(&request);
    let ctx = context::of(&request)?;
    Ok((ctx, deadline, request.into_inner()))
}

/// What the gRPC request gate ([`crate::api::grpc_gate`]) admits: every method of every
/// service [`routes`] serves, described by its descriptor set, with [`MAX_REQUEST_BYTES`].
pub fn gate_methods() -> crate::api::grpc_gate::Methods {
    crate::api::grpc_gate::Methods::from_descriptor_sets(
        &[
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        MAX_REQUEST_BYTES,
    )
    .expect("the compiled descriptor sets are valid")
}

/// Routes for every gRPC service, plus the health reporter to drive. `endpoints` is what
/// endpoint discovery advertises.
pub fn routes(
    signer: Arc<Signer>,
    manager: Arc<KeyManager>,
    endpoints: endpoints::EndpointService,
) -> (axum::Router, tonic_health::server::HealthReporter) {
    let crypto = AsymmetricSignatureCryptoServiceServer::new(crypto::CryptoService::new(signer))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let keys =
        AsymmetricSignatureKeyServiceServer::new(keys::KeyService::new(Arc::clone(&manager)))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    let operations =
        OperationServiceServer::new(operations::OperationsService::new(Arc::clone(&manager)))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    let admin = KeyAdminServiceServer::new(admin::AdminService::new(manager))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // tonic's default is 4 MiB; the gate refuses larger messages first, this is the backstop.
    let health = health.max_decoding_message_size(MAX_REQUEST_BYTES);
    let endpoints =
        ApiEndpointServiceServer::new(endpoints).max_decoding_message_size(MAX_REQUEST_BYTES);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptor set is valid")
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    // v1alpha as well: older grpcurl releases and many other tools only speak v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the compiled descriptor set is valid")
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let router = tonic::service::Routes::new(crypto)
        .add_service(keys)
        .add_service(operations)
        .add_service(admin)
        .add_service(endpoints)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .into_axum_router();
    (router, health_reporter)
}
