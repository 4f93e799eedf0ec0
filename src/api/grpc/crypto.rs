//! `AsymmetricSignatureCryptoService`: Sign, SignHash, GetPublicKey.

use super::deadline;
use super::pb::kms::asymmetric_signature_crypto_service_server::AsymmetricSignatureCryptoService;
use super::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricGetPublicKeyResponse, AsymmetricSignHashRequest,
    AsymmetricSignHashResponse, AsymmetricSignRequest, AsymmetricSignResponse,
};
use crate::api::validate;
use crate::signer::Signer;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The crypto service over the shared [`Signer`].
#[derive(Debug, Clone)]
pub struct CryptoService {
    signer: Arc<Signer>,
}

impl CryptoService {
    /// A service signing with `signer`.
    pub fn new(signer: Arc<Signer>) -> Self {
        Self { signer }
    }
}

#[tonic::async_trait]
impl AsymmetricSignatureCryptoService for CryptoService {
    #[tracing::instrument(name = "Sign", skip_all, fields(key_id))]
    async fn sign(
        &self,
        request: Request<AsymmetricSignRequest>,
    ) -> Result<Response<AsymmetricSignResponse>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        validate::message(&req.message)?;
        let signature = self
            .signer
            .sign(&req.key_id, &req.message, deadline)
            .await?;
        Ok(Response::new(AsymmetricSignResponse {
            key_id: req.key_id,
            signature,
        }))
    }

    #[tracing::instrument(name = "SignHash", skip_all, fields(key_id))]
    async fn sign_hash(
        &self,
        request: Request<AsymmetricSignHashRequest>,
    ) -> Result<Response<AsymmetricSignHashResponse>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        validate::hash(&req.hash)?;
        let signature = self
            .signer
            .sign_hash(&req.key_id, &req.hash, deadline)
            .await?;
        Ok(Response::new(AsymmetricSignHashResponse {
            key_id: req.key_id,
            signature,
        }))
    }

    #[tracing::instrument(name = "GetPublicKey", skip_all, fields(key_id))]
    async fn get_public_key(
        &self,
        request: Request<AsymmetricGetPublicKeyRequest>,
    ) -> Result<Response<AsymmetricGetPublicKeyResponse>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let public_key = self.signer.public_key_pem(&req.key_id, deadline).await?;
        Ok(Response::new(AsymmetricGetPublicKeyResponse {
            key_id: req.key_id,
            public_key,
        }))
    }
}
