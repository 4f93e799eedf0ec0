//! The core of every API: sign, sign a digest, and publish a public key.
//!
//! Transports validate fields first; this module looks the key up, authorises the caller for
//! the key and operation (before anything reaches the HSM: a denied request costs no token
//! call), checks its status, hashes in software, signs on the token, DER-encodes ECDSA output
//! and verifies the signature against the key's public key before it can leave the process.
//! What the audit record needs (key, algorithm, SHA-256 of the message or digest) is noted in
//! the request's context.

use crate::auth::authz::Want;
use crate::auth::{Action, Policy, RequestContext};
use crate::crypto::{ecdsa_der, KeyKind};
use crate::error::Error;
use crate::hsm::Hsm;
use crate::keys::{KeyEntry, KeyRegistry, Status};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Signs with the registry's keys on the token.
#[derive(Debug)]
pub struct Signer {
    keys: Arc<KeyRegistry>,
    policy: Arc<Policy>,
    hsm: Hsm,
    verify_ecdsa: bool,
    verify_failures: AtomicU64,
}

impl Signer {
    /// A signer over `keys` on `hsm`, authorising with `policy`. RSA signatures are always
    /// verified before they are returned; ECDSA ones when `verify_ecdsa` is set.
    pub fn new(keys: Arc<KeyRegistry>, hsm: Hsm, verify_ecdsa: bool, policy: Arc<Policy>) -> Self {
        Self {
            keys,
            policy,
            hsm,
            verify_ecdsa,
            verify_failures: AtomicU64::new(0),
        }
    }

    /// The key registry.
    pub fn keys(&self) -> &Arc<KeyRegistry> {
        &self.keys
    }

    /// The HSM.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// Signatures withheld because they did not verify.
    pub fn verify_failures(&self) -> u64 {
        self.verify_failures.load(Ordering::Relaxed)
    }

    /// The key `key_id` if the context's caller may do `action` with it (see
    /// [`crate::auth::authz`] for unknown keys and re-scans).
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn key(
        &self,
        ctx: &RequestContext,
        action: Action,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        ctx.note(|a| a.key_id = Some(crate::auth::audit::bounded(key_id)));
        self.policy
            .authorize_key(&self.keys, ctx, action, key_id, Want::Visible, deadline)
            .await
    }

    async fn signing_key(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let key = self.key(ctx, Action::Sign, key_id, deadline).await?;
        match key.status {
            Status::Active => Ok(key),
            Status::Inactive => Err(Error::FailedPrecondition(format!(
                "key {key_id} is INACTIVE; activate it before signing"
            ))),
            Status::Creating => Err(Error::FailedPrecondition(format!(
                "key {key_id} is still being created"
            ))),
        }
    }

    /// Hashes `message` with the key's hash and signs the digest. The message has been
    /// validated by the transport.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION, and HSM failures.
    pub async fn sign(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        message: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, Error> {
        ctx.note(|a| a.message_sha256 = Some(hex::encode(Sha256::digest(message))));
        let key = self.signing_key(ctx, key_id, deadline).await?;
        let digest = key.algorithm.hash().digest(message);
        self.sign_digest(&key, digest, deadline).await
    }

    /// Signs a precomputed digest, which must be exactly the key's digest length: the token
    /// would sign any length without complaint.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a wrong length, and as [`Signer::sign`].
    pub async fn sign_hash(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        hash: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, Error> {
        ctx.note(|a| a.digest_sha256 = Some(hex::encode(Sha256::digest(hash))));
        let key = self.signing_key(ctx, key_id, deadline).await?;
        let want = key.algorithm.hash();
        if hash.len() != want.digest_len() {
            return Err(Error::InvalidArgument(format!(
                "hash is {} bytes, but key {key_id} ({}) signs {} digests of exactly {} bytes",
                hash.len(),
                key.algorithm,
                want.name(),
                want.digest_len()
            )));
        }
        self.sign_digest(&key, hash.to_vec(), deadline).await
    }

    /// The key's public key as PEM SPKI, from the cache; a known key never touches the HSM.
    ///
    /// INACTIVE keys still publish their public key: verifiers need it for signatures made
    /// while the key was active.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn public_key_pem(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<String, Error> {
        Ok(self
            .key(ctx, Action::GetPublicKey, key_id, deadline)
            .await?
            .public_key
            .pem()
            .to_string())
    }

    async fn sign_digest(
        &self,
        key: &KeyEntry,
        digest: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, Error> {
        let algorithm = key.algorithm;
        let raw = self
            .hsm
            .sign(&key.id, algorithm, digest.clone(), deadline)
            .await?;
        let signature = match algorithm.key_kind() {
            KeyKind::Ec(curve) => ecdsa_der::raw_to_der(curve, &raw)
                .map_err(|e| Error::internal("the HSM returned a malformed signature", e))?,
            KeyKind::Rsa { .. } => raw,
        };
        if algorithm.is_rsa() || self.verify_ecdsa {
            if let Err(e) = key
                .public_key
                .verify_prehash(algorithm, &digest, &signature)
            {
                self.verify_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    key_id = %key.id,
                    %algorithm,
                    "verify-after-sign FAILED: the token produced a signature that does not verify under the key's public key; it was withheld"
                );
                return Err(Error::internal(
                    "the HSM produced an invalid signature; it was withheld",
                    e,
                ));
            }
        }
        Ok(signature)
    }
}
