//! Everything PKCS#11. No other module calls cryptoki.
//!
//! One [`Hsm`] per process owns the loaded module, initialised once with OS locking, the logged-in
//! anchor session, the session pool, and the key handles of the current *epoch* — one
//! `C_Initialize`+login generation. Handles never outlive their epoch.

mod error;
mod inventory;
mod mechanism;
mod pool;
mod provision;
mod token;

pub use error::{classify, ErrorClass, HsmError};
pub use provision::{init_token, GeneratedKey};
pub use token::TokenIdentity;

use crate::config::{HsmConfig, ObjectSelector, TokenSelector};
use crate::crypto::{Algorithm, PublicKey};
use cryptoki::context::Pkcs11;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use error::Context as _;
use pool::SessionPool;
use secrecy::SecretString;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio::time::Instant;

/// A key to find on the token.
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// The KMS key id.
    pub key_id: String,
    /// How its objects are found.
    pub selector: ObjectSelector,
    /// Its algorithm.
    pub algorithm: Algorithm,
}

/// A key id and its public key, or why the key cannot be used.
pub type KeyResolution = (String, Result<PublicKey, HsmError>);

/// One `C_Initialize` + login generation: the slot, the anchor session and the key handles that
/// are valid in it.
pub(crate) struct Epoch {
    pub(crate) number: u64,
    pkcs11: Pkcs11,
    slot: Slot,
    token: TokenIdentity,
    /// Never used for signing; it exists so that the login survives while pooled sessions come
    /// and go. `Session` is not `Sync`, hence the mutex.
    anchor: Mutex<Session>,
    handles: RwLock<HashMap<String, ObjectHandle>>,
}

impl Epoch {
    fn open_session(&self) -> Result<Session, HsmError> {
        self.pkcs11
            .open_rw_session(self.slot)
            .context("C_OpenSession")
    }

    fn handle(&self, key_id: &str) -> Option<ObjectHandle> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .copied()
    }
}

/// The gateway's connection to one token.
#[derive(Clone)]
pub struct Hsm {
    shared: Arc<Shared>,
}

struct Shared {
    pkcs11: Pkcs11,
    epoch: RwLock<Option<Arc<Epoch>>>,
    pool: SessionPool,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("pool_capacity", &self.shared.pool.capacity())
            .finish_non_exhaustive()
    }
}

/// Loads the module and initialises it with OS locking. Call once per process.
///
/// # Errors
/// When the module cannot be loaded or initialised.
pub fn load(module: &Path) -> Result<Pkcs11Module, HsmError> {
    let pkcs11 = token::load_module(module)?;
    token::initialize(&pkcs11)?;
    Ok(Pkcs11Module(pkcs11))
}

/// A loaded, initialised PKCS#11 module not yet bound to a token.
#[derive(Clone, Debug)]
pub struct Pkcs11Module(Pkcs11);

impl Hsm {
    /// Loads the module, finds the token, logs in and sizes the pool. Blocking.
    ///
    /// # Errors
    /// Module, token-selection and login failures; a refused PIN is a `Credential` error.
    pub fn connect(cfg: &HsmConfig) -> Result<Self, HsmError> {
        Self::attach(load(&cfg.module)?, cfg)
    }

    /// Like [`Hsm::connect`] on an already loaded module. Blocking.
    ///
    /// # Errors
    /// As [`Hsm::connect`].
    pub fn attach(module: Pkcs11Module, cfg: &HsmConfig) -> Result<Self, HsmError> {
        let pin = cfg
            .pin
            .as_ref()
            .ok_or_else(|| HsmError::Credential("no user PIN configured".into()))?;
        let pkcs11 = module.0;
        let epoch = open_epoch(&pkcs11, &cfg.token(), pin, 1)?;
        let capacity = token::pool_capacity(&pkcs11, epoch.slot, cfg.pool_size);
        if capacity < cfg.pool_size {
            tracing::warn!(
                configured = cfg.pool_size,
                capacity,
                "the token allows fewer sessions than hsm.pool_size; using its limit"
            );
        }
        tracing::info!(
            token = %epoch.token.label,
            serial = %epoch.token.serial,
            pool = capacity,
            "logged in to the token"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                pkcs11,
                epoch: RwLock::new(Some(Arc::new(epoch))),
                pool: SessionPool::new(capacity, cfg.pool_wait(), 1),
            }),
        })
    }

    fn current(&self) -> Result<Arc<Epoch>, HsmError> {
        self.shared
            .epoch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(HsmError::Recovering)
    }

    /// The token in use.
    ///
    /// # Errors
    /// While the token is being recovered.
    pub fn token(&self) -> Result<TokenIdentity, HsmError> {
        Ok(self.current()?.token.clone())
    }

    /// The number of pooled sessions.
    pub fn pool_capacity(&self) -> usize {
        self.shared.pool.capacity()
    }

    /// Sessions checked out right now.
    pub fn sessions_in_use(&self) -> usize {
        self.shared.pool.in_use()
    }

    /// Finds every key with one scan of the token, checks it, and records its handle for this
    /// epoch. Returns each key's public key, or why it cannot be used. Blocking.
    ///
    /// # Errors
    /// When the token cannot be scanned at all.
    pub fn resolve_keys(
        &self,
        keys: &[KeySpec],
    ) -> Result<Vec<KeyResolution>, HsmError> {
        let epoch = self.current()?;
        let inventory = {
            let anchor = epoch.anchor.lock().unwrap_or_else(|p| p.into_inner());
            inventory::Inventory::scan(&anchor)?
        };
        let index = inventory.index();
        let mut handles = epoch.handles.write().unwrap_or_else(|p| p.into_inner());
        Ok(keys
            .iter()
            .map(|k| {
                let resolved = index.resolve(&k.key_id, &k.selector, k.algorithm);
                let outcome = resolved.map(|r| {
                    handles.insert(k.key_id.clone(), r.private);
                    r.public_key
                });
                (k.key_id.clone(), outcome)
            })
            .collect())
    }

    /// Signs `digest` with the key's private key. Returns the token's raw output: PSS bytes, or
    /// ECDSA `r‖s`. The caller has checked the digest length.
    ///
    /// # Errors
    /// Pool exhaustion, deadline, and classified PKCS#11 failures.
    pub async fn sign(
        &self,
        key_id: &str,
        algorithm: Algorithm,
        digest: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, HsmError> {
        let epoch = self.current()?;
        let handle = epoch
            .handle(key_id)
            .ok_or_else(|| HsmError::KeyNotResolved(key_id.to_string()))?;
        self.shared
            .pool
            .run(epoch, deadline, move |session, _| {
                // Built on the worker: cryptoki mechanisms hold raw pointers and are not Send.
                let mechanism = mechanism::sign_mechanism(algorithm);
                session.sign(&mechanism, handle, &digest).context("C_Sign")
            })
            .await
    }

    /// Closes every session and finalises the module. Blocking; call once, at exit.
    pub fn shutdown(&self) {
        self.shared.pool.close();
        self.shared.pool.close_idle();
        let epoch = self
            .shared
            .epoch
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(epoch); // closes the anchor session, which logs out
        if let Err(e) = self.shared.pkcs11.clone().finalize() {
            tracing::warn!(error = %e, "C_Finalize failed at shutdown");
        }
    }
}

fn open_epoch(
    pkcs11: &Pkcs11,
    selector: &TokenSelector,
    pin: &SecretString,
    number: u64,
) -> Result<Epoch, HsmError> {
    let (slot, token) = token::find_token(pkcs11, selector)?;
    let anchor = token::open_anchor(pkcs11, slot, pin)?;
    Ok(Epoch {
        number,
        pkcs11: pkcs11.clone(),
        slot,
        token,
        anchor: Mutex::new(anchor),
        handles: RwLock::new(HashMap::new()),
    })
}
