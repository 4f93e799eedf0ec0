//! Direct token access for `p11kms bench`: the baseline the gateway is measured against, and
//! the bulk key generation of its scale runs.
//!
//! Nothing here is on the gateway's request path. It still lives in `hsm` because every
//! PKCS#11 call does, and it signs exactly as the gateway does: the same module initialisation
//! (`CKF_OS_LOCKING_OK`), one logged-in anchor session, one session per thread, and the same
//! mechanism ([`mechanism::sign_mechanism`](super::mechanism::sign_mechanism)) through the same
//! cryptoki call.

use super::error::{Context as _, HsmError};
use super::inventory::Inventory;
use super::{mechanism, token, Pkcs11Module};
use crate::config::{ObjectSelector, TokenSelector};
use crate::crypto::{Algorithm, Curve};
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use der::Encode as _;
use secrecy::SecretString;
use std::collections::HashSet;
use std::sync::Mutex;

/// A logged-in token, shared by the threads of a direct run.
pub struct DirectToken {
    pkcs11: Pkcs11,
    slot: Slot,
    /// Keeps the login alive while worker sessions come and go; closed last.
    anchor: Mutex<Option<Session>>,
}

impl std::fmt::Debug for DirectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectToken")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// A private key found on the token, with the public key published for it.
#[derive(Clone, Debug)]
pub struct DirectKey {
    handle: ObjectHandle,
    algorithm: Algorithm,
    spki_der: Vec<u8>,
}

impl DirectKey {
    /// The algorithm it signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo of its public key, as read off the token.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// One session, used by one thread at a time.
pub struct DirectSession {
    session: Session,
}

impl std::fmt::Debug for DirectSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectSession").finish_non_exhaustive()
    }
}

impl DirectSession {
    /// `C_SignInit` + `C_Sign` over `digest`, as the gateway's `Hsm::sign` does. Returns the
    /// token's raw output: PSS bytes or ECDSA `r‖s`.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub fn sign(&self, key: &DirectKey, digest: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mechanism = mechanism::sign_mechanism(key.algorithm.scheme());
        self.session
            .sign(&mechanism, key.handle, digest)
            .context("C_Sign")
    }
}

impl DirectToken {
    /// Initialises `module` (already loaded, see [`super::load`]), finds the token with
    /// `label` and logs in. Blocking.
    ///
    /// # Errors
    /// Token selection and login failures.
    pub fn open(module: &Pkcs11Module, label: &str, pin: &SecretString) -> Result<Self, HsmError> {
        let pkcs11 = module.0.clone();
        let (slot, _) = token::find_token(&pkcs11, &TokenSelector::Label(label.to_string()))?;
        let anchor = token::open_anchor(&pkcs11, slot, pin)?;
        Ok(Self {
            pkcs11,
            slot,
            anchor: Mutex::new(Some(anchor)),
        })
    }

    fn with_anchor<R>(
        &self,
        f: impl FnOnce(&Session) -> Result<R, HsmError>,
    ) -> Result<R, HsmError> {
        let anchor = self.anchor.lock().unwrap_or_else(|p| p.into_inner());
        match anchor.as_ref() {
            Some(session) => f(session),
            None => Err(HsmError::ShuttingDown),
        }
    }

    /// Finds the key pair with `CKA_ID` = `ck_id` and checks it as the gateway does at start-up
    /// (exactly one private key, fit for `algorithm`, sensitive, non-extractable).
    ///
    /// # Errors
    /// When the key is missing, ambiguous or unfit, and PKCS#11 failures.
    pub fn key(&self, ck_id: &[u8], algorithm: Algorithm) -> Result<DirectKey, HsmError> {
        let selector = ObjectSelector::Id(ck_id.to_vec());
        self.with_anchor(|session| {
            let inventory = Inventory::scan_selected(session, &[&selector])?;
            let key_id = String::from_utf8_lossy(ck_id).into_owned();
            let resolved = inventory.index().resolve(&key_id, &selector, algorithm)?;
            Ok(DirectKey {
                handle: resolved.private,
                algorithm,
                spki_der: resolved.public_key.spki_der().to_vec(),
            })
        })
    }

    /// The module's own description (`C_GetInfo`), e.g. `SoftHSM 2.6 (SoftHSM)`.
    pub fn library(&self) -> String {
        match self.pkcs11.get_library_info() {
            Ok(info) => format!(
                "{} {} ({})",
                info.library_description().trim_end(),
                info.library_version(),
                info.manufacturer_id().trim_end()
            ),
            Err(e) => format!("unknown ({e})"),
        }
    }

    /// Finds many key pairs by `CKA_ID` with one scan of the token, as the gateway's start-up
    /// does. Each is checked like [`DirectToken::key`].
    ///
    /// # Errors
    /// When a key is missing, ambiguous or unfit, and PKCS#11 failures.
    pub fn keys(
        &self,
        ck_ids: &[Vec<u8>],
        algorithm: Algorithm,
    ) -> Result<Vec<DirectKey>, HsmError> {
        self.with_anchor(|session| {
            let inventory = Inventory::scan(session)?;
            let index = inventory.index();
            ck_ids
                .iter()
                .map(|id| {
                    let key_id = String::from_utf8_lossy(id).into_owned();
                    let selector = ObjectSelector::Id(id.clone());
                    let resolved = index.resolve(&key_id, &selector, algorithm)?;
                    Ok(DirectKey {
                        handle: resolved.private,
                        algorithm,
                        spki_der: resolved.public_key.spki_der().to_vec(),
                    })
                })
                .collect()
        })
    }

    /// Opens a new read-write session of the logged-in user.
    ///
    /// # Errors
    /// PKCS#11 failures.
    pub fn session(&self) -> Result<DirectSession, HsmError> {
        let session = self
            .pkcs11
            .open_rw_session(self.slot)
            .context("C_OpenSession")?;
        Ok(DirectSession { session })
    }

    /// The `CKA_ID`s of every private key on the token.
    ///
    /// # Errors
    /// PKCS#11 failures.
    pub fn private_key_ids(&self) -> Result<HashSet<Vec<u8>>, HsmError> {
        self.with_anchor(|session| {
            let handles = session
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                .context("C_FindObjects")?;
            let mut ids = HashSet::with_capacity(handles.len());
            for h in handles {
                for a in session
                    .get_attributes(h, &[AttributeType::Id])
                    .context("C_GetAttributeValue")?
                {
                    if let Attribute::Id(id) = a {
                        ids.insert(id);
                    }
                }
            }
            Ok(ids)
        })
    }

    /// Generates a P-256 key pair on `session` with the attributes the gateway's own key
    /// generation uses (token objects; the private key sensitive, non-extractable, sign-only),
    /// `CKA_ID` = `ck_id` and `CKA_LABEL` = `label`.
    ///
    /// # Errors
    /// PKCS#11 failures.
    pub fn generate_p256(
        session: &DirectSession,
        ck_id: &[u8],
        label: &str,
    ) -> Result<(), HsmError> {
        let common = |extra: Vec<Attribute>| {
            let mut t = vec![
                Attribute::Token(true),
                Attribute::Id(ck_id.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            t.extend(extra);
            t
        };
        let params = Curve::P256
            .oid()
            .to_der()
            .expect("a curve OID always encodes");
        let public = common(vec![
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(params),
        ]);
        let private = common(vec![
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
        ]);
        session
            .session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .context("C_GenerateKeyPair")
            .map(drop)
    }

    /// Closes the anchor (logging out) and finalises the module. Call once, after every
    /// [`DirectSession`] is dropped.
    pub fn close(self) {
        drop(self.anchor.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Err(e) = self.pkcs11.finalize() {
            tracing::warn!(error = %e, "C_Finalize failed");
        }
    }
}
