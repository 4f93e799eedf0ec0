//! The instance API's calls on the shared core: `Sign`, `Verify`, `GetPublicKey` (each with the
//! key's primary version, named in the `x-kms-migrationkeyversionid` answer header) and
//! `GenerateRandom` (from the token's generator).
//!
//! `MessageType` is `RAW` (the message is hashed in software, up to
//! `[alibaba] max_raw_message_bytes`) or `DIGEST` (exactly the algorithm's digest length); an
//! empty `MessageType` means RAW. The legacy `Digest` field (2) is taken as a DIGEST when
//! `Message` is empty. Signatures are raw bytes: DER for ECDSA, PSS or PKCS#1 v1.5 for RSA.

use super::api_name::ApiName;
use super::body::{decode, Limits};
use super::error::InstanceError;
use super::pb;
use super::reply::reply;
use crate::api::alibaba::names;
use crate::auth::authz::Want;
use crate::auth::{Action, RequestContext};
use crate::crypto::Scheme;
use crate::error::Error;
use crate::hsm::MAX_RANDOM_BYTES;
use crate::keys::KeyEntry;
use crate::signer::{Input, KeyRef, Signer};
use axum::body::Body;
use http::Response;
use std::sync::Arc;
use tokio::time::Instant;

/// Longest `KeyId` accepted: key ids, and aliases.
const MAX_KEY_REF_LEN: usize = 255;

/// The instance API's calls.
#[derive(Debug, Clone)]
pub struct Handlers {
    signer: Arc<Signer>,
    limits: Limits,
}

/// RAW or DIGEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageType {
    Raw,
    Digest,
}

impl MessageType {
    fn parse(value: &str) -> Result<Self, InstanceError> {
        match value {
            "" | "RAW" => Ok(MessageType::Raw),
            "DIGEST" => Ok(MessageType::Digest),
            other => Err(InstanceError::invalid_parameter(format!(
                "MessageType {:?} is not RAW or DIGEST",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            MessageType::Raw => "RAW",
            MessageType::Digest => "DIGEST",
        }
    }
}

fn key_id(ctx: &RequestContext, key_id: &str) -> Result<(), InstanceError> {
    ctx.note(|a| a.key_id = Some(crate::auth::audit::bounded(key_id)));
    if key_id.is_empty() {
        return Err(InstanceError::invalid_parameter(
            "KeyId is required: the id (or alias) of the key",
        ));
    }
    if key_id.chars().count() > MAX_KEY_REF_LEN || key_id.chars().any(char::is_control) {
        return Err(InstanceError::invalid_parameter(format!(
            "KeyId must be at most {MAX_KEY_REF_LEN} printable characters"
        )));
    }
    Ok(())
}

fn scheme(name: &str) -> Result<Scheme, InstanceError> {
    names::scheme(name).map_err(InstanceError::invalid_parameter)
}

/// A request's message and message type, checked against the limits.
fn input<'a>(
    limits: &Limits,
    message: &'a [u8],
    digest: &'a [u8],
    message_type: &str,
) -> Result<(Input<'a>, MessageType), InstanceError> {
    let kind = MessageType::parse(message_type)?;
    if message.is_empty() && !digest.is_empty() {
        return Ok((Input::Digest(digest, "Digest"), MessageType::Digest));
    }
    match kind {
        MessageType::Raw => {
            limits.check_raw_message(message.len())?;
            Ok((Input::Message(message), kind))
        }
        MessageType::Digest => Ok((Input::Digest(message, "Message"), kind)),
    }
}

/// Checks that the Alibaba APIs serve `key` with `scheme`.
fn servable(key: &KeyEntry, scheme: Option<Scheme>) -> Result<(), InstanceError> {
    let spec = key.algorithm.spec();
    names::served(&key.id, spec)
        .map_err(|why| InstanceError::new(super::error::Code::UnsupportedOperation, why))?;
    if let Some(scheme) = scheme {
        names::fits(spec, scheme).map_err(InstanceError::invalid_parameter)?;
    }
    Ok(())
}

impl Handlers {
    /// Calls over the shared core.
    pub fn new(signer: Arc<Signer>, limits: Limits) -> Self {
        Self { signer, limits }
    }

    /// The body limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `api` on the request message `body`.
    ///
    /// # Errors
    /// The instance API's error.
    pub async fn run(
        &self,
        ctx: &RequestContext,
        api: ApiName,
        body: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, InstanceError> {
        ctx.note(|a| a.action = Some(api.name().to_string()));
        match api {
            ApiName::Sign => self.sign(ctx, decode("SignRequest", body)?, deadline).await,
            ApiName::Verify => {
                self.verify(ctx, decode("VerifyRequest", body)?, deadline)
                    .await
            }
            ApiName::GetPublicKey => {
                self.get_public_key(ctx, decode("GetPublicKeyRequest", body)?, deadline)
                    .await
            }
            ApiName::GenerateRandom => {
                self.generate_random(ctx, decode("GenerateRandomRequest", body)?)
                    .await
            }
            other => Err(InstanceError::from(Error::Unimplemented(format!(
                "{} is not served by this gateway",
                other.name()
            )))),
        }
    }

    /// The key a request names, if the caller may do `action` with it and the Alibaba APIs
    /// serve it with `scheme`.
    async fn key(
        &self,
        ctx: &RequestContext,
        action: Action,
        key: &str,
        scheme: Option<Scheme>,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, InstanceError> {
        key_id(ctx, key)?;
        let entry = self
            .signer
            .key(ctx, action, key, Want::Any, deadline)
            .await?;
        servable(&entry, scheme)?;
        Ok(entry)
    }

    fn primary(key: &KeyEntry) -> KeyRef<'_> {
        KeyRef {
            key: &key.id,
            version: None,
            scheme: None,
            want: Want::Any,
        }
    }

    async fn sign(
        &self,
        ctx: &RequestContext,
        req: pb::SignRequest,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, InstanceError> {
        let scheme = scheme(&req.algorithm)?;
        let (input, kind) = input(&self.limits, &req.message, &req.digest, &req.message_type)?;
        let key = self
            .key(ctx, Action::Sign, &req.key_id, Some(scheme), deadline)
            .await?;
        let signed = self
            .signer
            .sign(
                ctx,
                KeyRef {
                    scheme: Some(scheme),
                    ..Self::primary(&key)
                },
                input,
                deadline,
            )
            .await?;
        Ok(reply(
            &pb::SignResponse {
                key_id: key.id.clone(),
                signature: signed.signature,
                request_id: ctx.request_id().to_string(),
                algorithm: req.algorithm,
                message_type: kind.name().to_string(),
            },
            Some(&signed.version_id),
        ))
    }

    async fn verify(
        &self,
        ctx: &RequestContext,
        req: pb::VerifyRequest,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, InstanceError> {
        let scheme = scheme(&req.algorithm)?;
        let (input, kind) = input(&self.limits, &req.message, &req.digest, &req.message_type)?;
        let key = self
            .key(ctx, Action::Verify, &req.key_id, Some(scheme), deadline)
            .await?;
        let (_, version_id, valid) = self
            .signer
            .verify(
                ctx,
                KeyRef {
                    scheme: Some(scheme),
                    ..Self::primary(&key)
                },
                input,
                &req.signature,
                deadline,
            )
            .await?;
        Ok(reply(
            &pb::VerifyResponse {
                key_id: key.id.clone(),
                value: valid,
                request_id: ctx.request_id().to_string(),
                algorithm: req.algorithm,
                message_type: kind.name().to_string(),
            },
            Some(&version_id),
        ))
    }

    async fn get_public_key(
        &self,
        ctx: &RequestContext,
        req: pb::GetPublicKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, InstanceError> {
        let key = self
            .key(ctx, Action::GetPublicKey, &req.key_id, None, deadline)
            .await?;
        let (_, version_id, public_key) = self
            .signer
            .public_key(ctx, Self::primary(&key), deadline)
            .await?;
        Ok(reply(
            &pb::GetPublicKeyResponse {
                key_id: key.id.clone(),
                public_key: public_key.pem().to_string(),
                request_id: ctx.request_id().to_string(),
            },
            Some(&version_id),
        ))
    }

    /// Random bytes from the token, for any caller that may sign somewhere (it names no key).
    async fn generate_random(
        &self,
        ctx: &RequestContext,
        req: pb::GenerateRandomRequest,
    ) -> Result<Response<Body>, InstanceError> {
        let max = i32::try_from(MAX_RANDOM_BYTES).expect("small");
        if !(1..=max).contains(&req.length) {
            return Err(InstanceError::invalid_parameter(format!(
                "Length {} must be from 1 to {max}",
                req.length
            )));
        }
        let caller = ctx.caller()?;
        if !self.signer.policy().allowed_somewhere(caller, Action::Sign) {
            return Err(InstanceError::from(crate::auth::authz::denied(
                Action::Sign,
            )));
        }
        let len = usize::try_from(req.length).expect("positive");
        let random = self
            .signer
            .hsm()
            .generate_random(len)
            .await
            .map_err(Error::from)?;
        Ok(reply(
            &pb::GenerateRandomResponse {
                random,
                request_id: ctx.request_id().to_string(),
            },
            None,
        ))
    }
}
