//! The gRPC services, built into one router over the shared core.

pub mod admin;
pub mod crypto;
pub mod deadline;
pub mod keys;
pub mod operations;
pub mod pb;

use crate::keys::KeyManager;
use crate::signer::Signer;
use pb::kms::asymmetric_signature_crypto_service_server::AsymmetricSignatureCryptoServiceServer;
use pb::kms::asymmetric_signature_key_service_server::AsymmetricSignatureKeyServiceServer;
use pb::operation::operation_service_server::OperationServiceServer;
use pb::p11kms::v1::key_admin_service_server::KeyAdminServiceServer;
use std::sync::Arc;

/// The crypto service's full name, as health checks name it.
pub const CRYPTO_SERVICE_NAME: &str =
    "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService";

/// Largest encoded gRPC request accepted. Sign's 32 KiB message plus framing fits; a larger
/// frame is refused from its length prefix, before its body is buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Routes for every gRPC service, plus the health reporter to drive.
pub fn routes(
    signer: Arc<Signer>,
    manager: Arc<KeyManager>,
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptor set is valid");
    let router = tonic::service::Routes::new(crypto)
        .add_service(keys)
        .add_service(operations)
        .add_service(admin)
        .add_service(health)
        .add_service(reflection)
        .into_axum_router();
    (router, health_reporter)
}
