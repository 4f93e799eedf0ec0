//! `AsymmetricSignatureCryptoService`: Sign, SignHash, GetPublicKey.
//!
//! The `handle_*` methods are the transport-neutral handlers (validation, then the core); the
//! tonic trait and the REST API (`crate::api::yandex::rest`) both call them.

use super::pb::kms::asymmetric_signature_crypto_service_server::AsymmetricSignatureCryptoService;
use super::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricGetPublicKeyResponse, AsymmetricSignHashRequest,
    AsymmetricSignHashResponse, AsymmetricSignRequest, AsymmetricSignResponse,
};
use crate::api::yandex::validate;
use crate::auth::authz::Want;
use crate::auth::RequestContext;
use crate::error::Error;
use crate::signer::{Input, KeyRef, Signer};
use std::sync::Arc;
use tokio::time::Instant;
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

    /// A Yandex request names a key by id and signs with its primary version and its own
    /// scheme; deleted keys do not exist.
    fn key_ref(key_id: &str) -> KeyRef<'_> {
        KeyRef {
            key: key_id,
            version: None,
            scheme: None,
            want: Want::Visible,
        }
    }

    /// Notes the key for the span and the audit record, and checks its id.
    fn key_id(ctx: &RequestContext, key_id: &str) -> Result<(), Error> {
        tracing::Span::current().record("key_id", key_id);
        ctx.note(|a| a.key_id = Some(crate::auth::audit::bounded(key_id)));
        validate::key_id("key_id", key_id)
    }

    /// `Sign`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation, key and HSM failures.
    #[tracing::instrument(name = "Sign", skip_all, fields(key_id))]
    pub async fn handle_sign(
        &self,
        ctx: &RequestContext,
        req: AsymmetricSignRequest,
        deadline: Option<Instant>,
    ) -> Result<AsymmetricSignResponse, Error> {
        Self::key_id(ctx, &req.key_id)?;
        validate::message(&req.message)?;
        let signed = self
            .signer
            .sign(
                ctx,
                Self::key_ref(&req.key_id),
                Input::Message(&req.message),
                deadline,
            )
            .await?;
        Ok(AsymmetricSignResponse {
            key_id: req.key_id,
            signature: signed.signature,
        })
    }

    /// `SignHash`, for every transport.
    ///
    /// # Errors
    /// As [`CryptoService::handle_sign`], and a digest of the wrong length.
    #[tracing::instrument(name = "SignHash", skip_all, fields(key_id))]
    pub async fn handle_sign_hash(
        &self,
        ctx: &RequestContext,
        req: AsymmetricSignHashRequest,
        deadline: Option<Instant>,
    ) -> Result<AsymmetricSignHashResponse, Error> {
        Self::key_id(ctx, &req.key_id)?;
        validate::hash(&req.hash)?;
        let signed = self
            .signer
            .sign(
                ctx,
                Self::key_ref(&req.key_id),
                Input::Digest(&req.hash, "hash"),
                deadline,
            )
            .await?;
        Ok(AsymmetricSignHashResponse {
            key_id: req.key_id,
            signature: signed.signature,
        })
    }

    /// `GetPublicKey`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and unknown keys.
    #[tracing::instrument(name = "GetPublicKey", skip_all, fields(key_id))]
    pub async fn handle_get_public_key(
        &self,
        ctx: &RequestContext,
        req: AsymmetricGetPublicKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<AsymmetricGetPublicKeyResponse, Error> {
        Self::key_id(ctx, &req.key_id)?;
        let (_, _, public_key) = self
            .signer
            .public_key(ctx, Self::key_ref(&req.key_id), deadline)
            .await?;
        Ok(AsymmetricGetPublicKeyResponse {
            key_id: req.key_id,
            public_key: public_key.pem().to_string(),
        })
    }
}

#[tonic::async_trait]
impl AsymmetricSignatureCryptoService for CryptoService {
    async fn sign(
        &self,
        request: Request<AsymmetricSignRequest>,
    ) -> Result<Response<AsymmetricSignResponse>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(self.handle_sign(&ctx, req, deadline).await?))
    }

    async fn sign_hash(
        &self,
        request: Request<AsymmetricSignHashRequest>,
    ) -> Result<Response<AsymmetricSignHashResponse>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_sign_hash(&ctx, req, deadline).await?,
        ))
    }

    async fn get_public_key(
        &self,
        request: Request<AsymmetricGetPublicKeyRequest>,
    ) -> Result<Response<AsymmetricGetPublicKeyResponse>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_get_public_key(&ctx, req, deadline).await?,
        ))
    }
}
