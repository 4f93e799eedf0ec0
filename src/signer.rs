//! The core of every API: sign, sign a digest, and publish a public key.
//!
//! Transports validate fields first; this module looks the key up, checks its status, hashes in
//! software, signs on the token, DER-encodes ECDSA output and verifies the signature against the
//! key's public key before it can leave the process.

use crate::crypto::{ecdsa_der, KeyKind};
use crate::error::Error;
use crate::hsm::Hsm;
use crate::keys::{KeyEntry, KeyRegistry, Status};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Signs with the registry's keys on the token.
#[derive(Debug)]
pub struct Signer {
    keys: Arc<KeyRegistry>,
    hsm: Hsm,
    verify_ecdsa: bool,
    verify_failures: AtomicU64,
}

impl Signer {
    /// A signer over `keys` on `hsm`. RSA signatures are always verified before they are
    /// returned; ECDSA ones when `verify_ecdsa` is set.
    pub fn new(keys: Arc<KeyRegistry>, hsm: Hsm, verify_ecdsa: bool) -> Self {
        Self {
            keys,
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

    /// Looks a key up for any use. An id this replica does not know triggers one re-scan of
    /// the token (shared and rate-limited), since another replica may have just created it.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown or deleted key.
    pub async fn key(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        self.keys
            .lookup(key_id, deadline)
            .await
            .ok_or_else(|| Error::NotFound(format!("asymmetric signature key {key_id} not found")))
    }

    async fn signing_key(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let key = self.key(key_id, deadline).await?;
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
    /// NOT_FOUND, FAILED_PRECONDITION, and HSM failures.
    pub async fn sign(
        &self,
        key_id: &str,
        message: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, Error> {
        let key = self.signing_key(key_id, deadline).await?;
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
        key_id: &str,
        hash: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, Error> {
        let key = self.signing_key(key_id, deadline).await?;
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
    /// NOT_FOUND for an unknown key.
    pub async fn public_key_pem(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<String, Error> {
        Ok(self
            .key(key_id, deadline)
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
