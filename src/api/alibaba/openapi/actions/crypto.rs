//! `AsymmetricSign`, `AsymmetricVerify` and `GetPublicKey`, with `DryRun`.
//!
//! Alibaba requires `KeyVersionId` on all three (the primary version is not implied). The
//! digest is exactly 32 bytes for the `*_SHA_256` algorithms; the core checks it, before any
//! token call.
//!
//! `DryRun=true` always fails (contract §1.2): `DryRunOperationError` (HTTP 412) when the call
//! would have succeeded, `ValidationError` (400) for a parameter or state problem,
//! `AccessDeniedError` (403) when the caller may not. The checks are the real ones: the request
//! is authenticated, authorised and validated, then stops before the token (nothing is signed).

use super::{key_ref, Actions, Call, MAX_DIGEST_BYTES, MAX_SIGNATURE_BYTES, MAX_VERSION_ID_LEN};
use crate::api::alibaba::names;
use crate::api::alibaba::openapi::{OpenApiError, Reply};
use crate::auth::authz::Want;
use crate::auth::Action;
use crate::crypto::Scheme;
use crate::keys::KeyEntry;
use crate::signer::{Input, KeyRef};
use base64::Engine as _;
use http::StatusCode;
use tonic::Code;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a DryRun found.
fn dry_run_outcome(checked: Result<(), OpenApiError>) -> OpenApiError {
    match checked {
        Ok(()) => OpenApiError::new(
            "DryRunOperationError",
            StatusCode::PRECONDITION_FAILED,
            "The request would have succeeded, but DryRun is set: nothing was signed.",
            Code::FailedPrecondition,
        ),
        Err(e) if matches!(e.code(), "Forbidden.NoPermission" | "IncompleteSignature") => {
            OpenApiError::new(
                "AccessDeniedError",
                StatusCode::FORBIDDEN,
                format!("DryRun: the request would be refused: {}", e.message()),
                Code::PermissionDenied,
            )
        }
        Err(e) => OpenApiError::new(
            "ValidationError",
            StatusCode::BAD_REQUEST,
            format!(
                "DryRun: the request would fail with {}: {}",
                e.code(),
                e.message()
            ),
            Code::InvalidArgument,
        ),
    }
}

/// The required algorithm, as a scheme.
fn algorithm(call: &Call<'_>) -> Result<Scheme, OpenApiError> {
    let name = call.params.required_string("Algorithm", 64)?;
    names::scheme(name).map_err(|why| OpenApiError::invalid_parameter("Algorithm", why))
}

/// Checks that the Alibaba APIs serve `key` and that `scheme` fits it.
pub(in crate::api::alibaba) fn servable(
    key: &KeyEntry,
    scheme: Option<Scheme>,
) -> Result<(), OpenApiError> {
    let spec = key.algorithm.spec();
    names::served(&key.id, spec).map_err(|why| {
        OpenApiError::new(
            "UnsupportedOperation",
            StatusCode::BAD_REQUEST,
            why,
            Code::FailedPrecondition,
        )
    })?;
    if let Some(scheme) = scheme {
        names::fits(spec, scheme)
            .map_err(|why| OpenApiError::invalid_parameter("Algorithm", why))?;
    }
    Ok(())
}

impl Actions {
    /// The key a call names (id or alias; deleted keys included, as PendingDeletion), if the
    /// caller may do `action` with it, checked to be one the Alibaba APIs serve.
    async fn servable_key(
        &self,
        call: &Call<'_>,
        action: Action,
        scheme: Option<Scheme>,
    ) -> Result<std::sync::Arc<KeyEntry>, OpenApiError> {
        let key = self
            .signer
            .key(call.ctx, action, key_ref(call)?, Want::Any, call.deadline)
            .await
            .map_err(OpenApiError::from)?;
        super::keys::published(&key)?;
        servable(&key, scheme)?;
        Ok(key)
    }

    fn version<'p>(call: &Call<'p>) -> Result<&'p str, OpenApiError> {
        call.params
            .required_string("KeyVersionId", MAX_VERSION_ID_LEN)
    }

    pub(super) async fn asymmetric_sign(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let scheme = algorithm(call)?;
        let version = Self::version(call)?;
        let digest = call.params.required_base64("Digest", MAX_DIGEST_BYTES)?;
        let dry_run = call.params.boolean("DryRun")?.unwrap_or(false);
        let key = self.servable_key(call, Action::Sign, Some(scheme)).await;
        fn r<'k>(key: &'k KeyEntry, version: &'k str, scheme: Scheme) -> KeyRef<'k> {
            KeyRef {
                key: &key.id,
                version: Some(version),
                scheme: Some(scheme),
                want: Want::Any,
            }
        }
        if dry_run {
            let checked = match key {
                Ok(key) => self
                    .signer
                    .prepare(
                        call.ctx,
                        r(&key, version, scheme),
                        Input::Digest(&digest, "Digest"),
                        call.deadline,
                    )
                    .await
                    .map(|_| ())
                    .map_err(OpenApiError::from),
                Err(e) => Err(e),
            };
            return Err(dry_run_outcome(checked));
        }
        let key = key?;
        let signed = self
            .signer
            .sign(
                call.ctx,
                r(&key, version, scheme),
                Input::Digest(&digest, "Digest"),
                call.deadline,
            )
            .await
            .map_err(OpenApiError::from)?;
        Ok(Reply::new()
            .field("KeyId", signed.key.id.clone())
            .field("KeyVersionId", signed.version_id)
            .field("Value", B64.encode(&signed.signature)))
    }

    pub(super) async fn asymmetric_verify(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let scheme = algorithm(call)?;
        let version = Self::version(call)?;
        let digest = call.params.required_base64("Digest", MAX_DIGEST_BYTES)?;
        let signature = call.params.required_base64("Value", MAX_SIGNATURE_BYTES)?;
        let dry_run = call.params.boolean("DryRun")?.unwrap_or(false);
        let key = self.servable_key(call, Action::Verify, Some(scheme)).await;
        let checked = match key {
            Ok(key) => self
                .signer
                .verify(
                    call.ctx,
                    KeyRef {
                        key: &key.id,
                        version: Some(version),
                        scheme: Some(scheme),
                        want: Want::Any,
                    },
                    Input::Digest(&digest, "Digest"),
                    &signature,
                    call.deadline,
                )
                .await
                .map_err(OpenApiError::from),
            Err(e) => Err(e),
        };
        if dry_run {
            return Err(dry_run_outcome(checked.map(|_| ())));
        }
        let (key, version_id, valid) = checked?;
        Ok(Reply::new()
            .field("KeyId", key.id.clone())
            .field("KeyVersionId", version_id)
            .field("Value", valid))
    }

    pub(super) async fn get_public_key(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let version = Self::version(call)?;
        let dry_run = call.params.boolean("DryRun")?.unwrap_or(false);
        let key = self.servable_key(call, Action::GetPublicKey, None).await;
        let checked = match key {
            Ok(key) => self
                .signer
                .public_key(
                    call.ctx,
                    KeyRef {
                        key: &key.id,
                        version: Some(version),
                        scheme: None,
                        want: Want::Any,
                    },
                    call.deadline,
                )
                .await
                .map_err(OpenApiError::from),
            Err(e) => Err(e),
        };
        if dry_run {
            return Err(dry_run_outcome(checked.map(|_| ())));
        }
        let (key, version_id, public_key) = checked?;
        Ok(Reply::new()
            .field("KeyId", key.id.clone())
            .field("KeyVersionId", version_id)
            .field("PublicKey", public_key.pem().to_string()))
    }
}
