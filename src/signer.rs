//! The core of every front: sign, verify, and publish public keys, with keys named by id or
//! alias, a version (the primary when none is named) and a scheme (the key's own when none is).
//!
//! Fronts validate their fields first; this module looks the key up, authorises the caller for
//! the key and operation (before anything reaches the HSM: a denied request costs no token
//! call), checks its state, hashes in software (or checks a given digest's exact length), signs
//! on the token, DER-encodes ECDSA output and verifies the signature against the version's
//! pinned public key before it can leave the process. [`Signer::prepare`] stops before the
//! token: Alibaba's DryRun. Verification is in software against the pinned public key: no token
//! call. What the audit record needs (key, version, algorithm, SHA-256 of the message or
//! digest) is noted in the request's context.

use crate::auth::authz::Want;
use crate::auth::{Action, RequestContext};
use crate::crypto::scheme::SM2_UNSUPPORTED;
use crate::crypto::{ecdsa_der, KeyKind, PublicKey, Scheme};
use crate::error::{Error, Missing, Precondition};
use crate::hsm::Hsm;
use crate::keys::{KeyEntry, KeyManager, Status, Version, VersionStatus};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// What is signed or verified.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// A message, hashed here with the scheme's hash.
    Message(&'a [u8]),
    /// A finished digest, exactly the scheme's hash length; the front's name for the field
    /// (for the message when the length is wrong).
    Digest(&'a [u8], &'static str),
}

/// Which key, version and scheme a request names.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    /// A key id, or an alias (`alias/…`).
    pub key: &'a str,
    /// A version id; `None`: the primary version.
    pub version: Option<&'a str>,
    /// `None`: the scheme of the key's algorithm.
    pub scheme: Option<Scheme>,
    /// `Want::Visible` for fronts to which a deleted key does not exist (Yandex: NOT_FOUND);
    /// `Want::Any` for fronts that show it as pending deletion (Alibaba).
    pub want: Want,
}

/// A checked request, ready for the token.
#[derive(Debug)]
pub struct Prepared {
    /// The key.
    pub key: Arc<KeyEntry>,
    /// The version that signs.
    pub version: Version,
    /// The scheme.
    pub scheme: Scheme,
    /// The digest to sign.
    pub digest: Vec<u8>,
}

/// A signature, with the key and version that made it.
#[derive(Debug)]
pub struct Signed {
    /// The key.
    pub key: Arc<KeyEntry>,
    /// The version's id.
    pub version_id: String,
    /// PSS or PKCS#1 v1.5 bytes, or DER ECDSA.
    pub signature: Vec<u8>,
}

/// Signs with the registry's keys on the token.
#[derive(Debug)]
pub struct Signer {
    manager: Arc<KeyManager>,
    hsm: Hsm,
    verify_ecdsa: bool,
    verify_failures: AtomicU64,
}

impl Signer {
    /// A signer over `manager`'s keys on `hsm`. RSA signatures are always verified before they
    /// are returned; ECDSA ones when `verify_ecdsa` is set.
    pub fn new(manager: Arc<KeyManager>, hsm: Hsm, verify_ecdsa: bool) -> Self {
        Self {
            manager,
            hsm,
            verify_ecdsa,
            verify_failures: AtomicU64::new(0),
        }
    }

    /// The key registry.
    pub fn keys(&self) -> &Arc<crate::keys::KeyRegistry> {
        self.manager.registry()
    }

    /// The authorisation policy.
    pub fn policy(&self) -> &Arc<crate::auth::Policy> {
        self.manager.policy()
    }

    /// The HSM.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// Signatures withheld because they did not verify.
    pub fn verify_failures(&self) -> u64 {
        self.verify_failures.load(Ordering::Relaxed)
    }

    /// The key if the caller may do `action` with it (see [`crate::auth::authz`] for unknown
    /// keys and re-scans).
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn key(
        &self,
        ctx: &RequestContext,
        action: Action,
        key: &str,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        self.manager.key(ctx, action, key, want, deadline).await
    }

    /// The version a request names, or the primary.
    fn version(key: &KeyEntry, version: Option<&str>) -> Result<Version, Error> {
        let found = match version {
            None => key.primary(),
            Some(id) => key.version(id).filter(|v| v.status == VersionStatus::Ready),
        };
        found.cloned().ok_or_else(|| match version {
            Some(id) => Error::not_found(
                Missing::Version,
                format!("key {} has no version {id}", key.id),
            ),
            None => Error::precondition(
                Precondition::Creating,
                format!("key {} has no usable version yet", key.id),
            ),
        })
    }

    /// The scheme a request names, checked against the key; the key's own by default.
    fn scheme(key: &KeyEntry, scheme: Option<Scheme>) -> Result<Scheme, Error> {
        let scheme = scheme.unwrap_or_else(|| key.algorithm.scheme());
        if scheme == Scheme::Sm2 {
            return Err(Error::InvalidArgument(SM2_UNSUPPORTED.into()));
        }
        if !scheme.fits(key.algorithm.key_kind()) {
            return Err(Error::InvalidArgument(format!(
                "key {} is a {} key and cannot sign with {scheme}",
                key.id,
                key.algorithm.spec()
            )));
        }
        Ok(scheme)
    }

    /// The digest of `input` under `scheme`.
    fn digest(key: &KeyEntry, scheme: Scheme, input: Input<'_>) -> Result<Vec<u8>, Error> {
        let hash = scheme
            .hash()
            .ok_or_else(|| Error::InvalidArgument(SM2_UNSUPPORTED.into()))?;
        match input {
            Input::Message(m) => Ok(hash.digest(m)),
            Input::Digest(d, _) if d.len() == hash.digest_len() => Ok(d.to_vec()),
            Input::Digest(d, field) => Err(Error::InvalidArgument(format!(
                "{field} is {} bytes, but key {} ({scheme}) signs {} digests of exactly {} bytes",
                d.len(),
                key.id,
                hash.name(),
                hash.digest_len()
            ))),
        }
    }

    /// Checks that a key may sign now: ACTIVE and not deleted.
    fn usable(key: &KeyEntry) -> Result<(), Error> {
        if key.deletion.is_some() {
            return Err(Error::precondition(
                Precondition::PendingDeletion,
                format!("key {} is pending deletion; it cannot sign", key.id),
            ));
        }
        match key.status {
            Status::Active => Ok(()),
            Status::Inactive => Err(Error::precondition(
                Precondition::Disabled,
                format!("key {} is INACTIVE; activate it before signing", key.id),
            )),
            Status::Creating => Err(Error::precondition(
                Precondition::Creating,
                format!("key {} is still being created", key.id),
            )),
        }
    }

    fn note_input(ctx: &RequestContext, input: Input<'_>) {
        match input {
            Input::Message(m) => {
                ctx.note(|a| a.message_sha256 = Some(hex::encode(Sha256::digest(m))));
            }
            Input::Digest(d, _) => {
                ctx.note(|a| a.digest_sha256 = Some(hex::encode(Sha256::digest(d))))
            }
        }
    }

    /// Everything a signature needs short of the token: authentication, authorisation, the
    /// key's state, the version, the scheme and the digest. Alibaba's DryRun stops here.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT.
    pub async fn prepare(
        &self,
        ctx: &RequestContext,
        r: KeyRef<'_>,
        input: Input<'_>,
        deadline: Option<Instant>,
    ) -> Result<Prepared, Error> {
        Self::note_input(ctx, input);
        let key = self.key(ctx, Action::Sign, r.key, r.want, deadline).await?;
        Self::usable(&key)?;
        let version = Self::version(&key, r.version)?;
        ctx.note(|a| a.version_id = Some(version.id.clone()));
        let scheme = Self::scheme(&key, r.scheme)?;
        let digest = Self::digest(&key, scheme, input)?;
        Ok(Prepared {
            key,
            version,
            scheme,
            digest,
        })
    }

    /// Signs `input` with the named key, version and scheme.
    ///
    /// # Errors
    /// As [`Signer::prepare`], and HSM failures.
    pub async fn sign(
        &self,
        ctx: &RequestContext,
        r: KeyRef<'_>,
        input: Input<'_>,
        deadline: Option<Instant>,
    ) -> Result<Signed, Error> {
        let p = self.prepare(ctx, r, input, deadline).await?;
        let signature = self.sign_prepared(&p, deadline).await?;
        Ok(Signed {
            version_id: p.version.id.clone(),
            key: p.key,
            signature,
        })
    }

    /// Verifies `signature` over `input` against the named version's pinned public key, in
    /// software. A signature that does not verify is `Ok(false)`.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (disabled, pending
    /// deletion), INVALID_ARGUMENT.
    pub async fn verify(
        &self,
        ctx: &RequestContext,
        r: KeyRef<'_>,
        input: Input<'_>,
        signature: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, String, bool), Error> {
        Self::note_input(ctx, input);
        let key = self
            .key(ctx, Action::Verify, r.key, r.want, deadline)
            .await?;
        Self::usable(&key)?;
        let version = Self::version(&key, r.version)?;
        ctx.note(|a| a.version_id = Some(version.id.clone()));
        let scheme = Self::scheme(&key, r.scheme)?;
        let digest = Self::digest(&key, scheme, input)?;
        let public_key = Self::public_key_of(&key, &version)?;
        let ok = public_key
            .verify_prehash(scheme, &digest, signature)
            .is_ok();
        Ok((key, version.id, ok))
    }

    /// The public key of the named version (the primary by default), from the cache: a known
    /// key never touches the HSM. Disabled keys still publish their public keys: verifiers need
    /// them for signatures made while the key was enabled.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn public_key(
        &self,
        ctx: &RequestContext,
        r: KeyRef<'_>,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, String, PublicKey), Error> {
        let key = self
            .key(ctx, Action::GetPublicKey, r.key, r.want, deadline)
            .await?;
        let version = Self::version(&key, r.version)?;
        ctx.note(|a| a.version_id = Some(version.id.clone()));
        let public_key = Self::public_key_of(&key, &version)?.clone();
        Ok((key, version.id, public_key))
    }

    fn public_key_of<'k>(key: &KeyEntry, version: &'k Version) -> Result<&'k PublicKey, Error> {
        version.public_key.as_ref().ok_or_else(|| {
            Error::precondition(
                Precondition::Unusable,
                format!(
                    "key {} cannot be used: the key pair of version {} is not on the token",
                    key.id, version.id
                ),
            )
        })
    }

    async fn sign_prepared(
        &self,
        p: &Prepared,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, Error> {
        let public_key = Self::public_key_of(&p.key, &p.version)?;
        let raw = self
            .hsm
            .sign(&p.version.label, p.scheme, p.digest.clone(), deadline)
            .await?;
        let signature = match p.key.algorithm.key_kind() {
            KeyKind::Ec(curve) => ecdsa_der::raw_to_der(curve, &raw)
                .map_err(|e| Error::internal("the HSM returned a malformed signature", e))?,
            KeyKind::Rsa { .. } => raw,
        };
        if p.scheme.is_rsa() || self.verify_ecdsa {
            if let Err(e) = public_key.verify_prehash(p.scheme, &p.digest, &signature) {
                self.verify_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    key_id = %p.key.id,
                    version_id = %p.version.id,
                    scheme = %p.scheme,
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
