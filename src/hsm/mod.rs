//! Everything PKCS#11. No other module calls cryptoki.
//!
//! One [`Hsm`] per process owns the loaded module (initialised with OS locking), the session
//! pool, and the current *epoch*: one token login with the key handles valid in it. Two rules
//! keep handles from ever pointing at the wrong key:
//!
//! * every PKCS#11 call runs under the shared side of the library *gate*; re-initialisation and
//!   re-login hold it exclusively, so no call is in flight while handles change;
//! * under the gate, a call first checks that its epoch is still current, so a handle from an
//!   older epoch is never used.
//!
//! Every key's public key is pinned when it is first resolved; a re-resolved key whose public
//! key differs is refused, never signed with. Faults are classified once ([`classify`]) and
//! drive single-flight recovery (see `recovery.rs`).
//!
//! Keys created through the API are generated here (`provision.rs`) and registered for every
//! epoch like configured keys; their metadata documents and the replicas' state nonce are
//! p11kms data objects (`objects.rs`). Every call that touches them runs through the same
//! pool, gate and fault handling as signing.

pub mod bench;
mod error;
mod inventory;
mod mechanism;
mod objects;
mod pool;
mod provision;
mod random;
mod recovery;
mod token;

pub use error::{classify, ErrorClass, HsmError};
pub use objects::{
    alias_label, metadata_label, DataObject, NonceChange, StoredVersion, ALIAS_LABEL_PREFIX,
    APPLICATION, KEY_LABEL_PREFIX, NONCE_LABEL,
};
pub use provision::{init_token, GeneratedKey};
pub use random::MAX_RANDOM_BYTES;
pub use recovery::HsmStats;
pub use token::TokenIdentity;

use crate::config::{HsmConfig, ObjectSelector, TokenSelector};
use crate::crypto::{Algorithm, PublicKey, Scheme};
use cryptoki::context::Pkcs11;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use error::Context as _;
use pool::SessionPool;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::time::Instant;

/// A key to find on the token in every epoch.
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// The KMS key id.
    pub key_id: String,
    /// How its objects are found.
    pub selector: ObjectSelector,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Expected SHA-256 of the SPKI, pinned up front by the operator.
    pub pin_sha256: Option<[u8; 32]>,
}

impl KeySpec {
    /// A `[[keys]]` entry of the config.
    pub fn from_config(key: &crate::config::KeyConfig) -> Self {
        Self {
            key_id: key.id.clone(),
            selector: key.selector(),
            algorithm: key.algorithm(),
            pin_sha256: key.pin(),
        }
    }
}

/// A key id and its public key, or why the key cannot be used.
pub type KeyResolution = (String, Result<PublicKey, HsmError>);

/// A key's standing in one epoch.
#[derive(Clone, Debug)]
enum KeyState {
    Ready(ObjectHandle),
    /// Refused, with the reason; never signed with in this epoch.
    Refused {
        missing: bool,
        reason: String,
    },
}

/// One login generation: the slot, the anchor session and the key handles valid in it.
pub(crate) struct Epoch {
    pub(crate) number: u64,
    /// The library generation (one per `C_Initialize`) this epoch's sessions belong to.
    generation: u64,
    slot: Slot,
    token: TokenIdentity,
    /// Never used for signing; it keeps the login alive while pooled sessions come and go.
    /// Taken out (and forgotten) when the library is finalised under it.
    anchor: Mutex<Option<Session>>,
    keys: RwLock<HashMap<String, KeyState>>,
}

impl Epoch {
    fn key(&self, key_id: &str) -> Option<KeyState> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
    }

    fn set_key(&self, key_id: String, state: KeyState) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id, state);
    }

    fn remove_key(&self, key_id: &str) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key_id);
    }

    fn with_anchor<R>(
        &self,
        f: impl FnOnce(&Session) -> Result<R, HsmError>,
    ) -> Result<R, HsmError> {
        let anchor = self.anchor.lock().unwrap_or_else(|p| p.into_inner());
        match anchor.as_ref() {
            Some(session) => f(session),
            None => Err(HsmError::Recovering),
        }
    }
}

/// Whether a failed call may be repeated on a fresh session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Idempotent (reads, signing, attribute writes): once, after a session-class failure.
    Once,
    /// Creates objects: a repeat could leave two objects where the first call half-succeeded.
    Never,
}

/// The gateway's connection to one token.
#[derive(Clone)]
pub struct Hsm {
    shared: Arc<Shared>,
}

struct Shared {
    pkcs11: Pkcs11,
    selector: TokenSelector,
    pin: SecretString,
    /// Shared by every PKCS#11 call; exclusive while the library or the login is rebuilt.
    gate: RwLock<()>,
    epoch: RwLock<Arc<Epoch>>,
    /// False while recovering: requests fail fast instead of piling up.
    up: AtomicBool,
    pool: SessionPool,
    /// Every key to resolve in each epoch.
    specs: RwLock<Vec<KeySpec>>,
    /// Key id → the SPKI (DER) seen when the key was first resolved.
    pins: RwLock<HashMap<String, Vec<u8>>>,
    recovery: recovery::Control,
    /// How p11kms data objects are changed on this token.
    writes: objects::WriteMode,
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

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl Hsm {
    /// Loads the module, finds the token, logs in and sizes the pool. Blocking.
    ///
    /// # Errors
    /// Module, token-selection and login failures; a refused PIN is a `Credential` error.
    pub fn connect(cfg: &HsmConfig) -> Result<Self, HsmError> {
        let module = load(&cfg.module)?;
        Self::attach(module.clone(), cfg).inspect_err(|_| {
            // Leave nothing open on the token when start-up fails (network HSMs keep sessions).
            let _ = module.0.finalize();
        })
    }

    /// Like [`Hsm::connect`] on an already loaded module. Blocking.
    ///
    /// # Errors
    /// As [`Hsm::connect`].
    pub fn attach(module: Pkcs11Module, cfg: &HsmConfig) -> Result<Self, HsmError> {
        let pin = cfg
            .pin
            .clone()
            .ok_or_else(|| HsmError::Credential("no user PIN configured".into()))?;
        let pkcs11 = module.0;
        let selector = cfg.token();
        let epoch = open_epoch(&pkcs11, &selector, &pin, 1, 1)?;
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
                selector,
                pin,
                gate: RwLock::new(()),
                epoch: RwLock::new(Arc::new(epoch)),
                up: AtomicBool::new(true),
                pool: SessionPool::new(capacity, cfg.pool_wait(), 1),
                specs: RwLock::new(Vec::new()),
                pins: RwLock::new(HashMap::new()),
                recovery: recovery::Control::new(Duration::from_millis(cfg.probe_interval_ms)),
                writes: objects::WriteMode::default(),
            }),
        })
    }

    /// The current epoch, unless the token is being recovered.
    fn current(&self) -> Result<Arc<Epoch>, HsmError> {
        if !self.shared.up.load(Ordering::Acquire) {
            return Err(if self.shared.recovery.credential_failed() {
                HsmError::Credential("the token refused the PIN; an operator must fix it".into())
            } else {
                HsmError::Recovering
            });
        }
        Ok(Arc::clone(&read(&self.shared.epoch)))
    }

    /// The token in use.
    pub fn token(&self) -> TokenIdentity {
        read(&self.shared.epoch).token.clone()
    }

    /// The number of pooled sessions.
    pub fn pool_capacity(&self) -> usize {
        self.shared.pool.capacity()
    }

    /// Counters for health checks, tests and metrics.
    pub fn stats(&self) -> HsmStats {
        HsmStats {
            epoch: read(&self.shared.epoch).number,
            up: self.shared.up.load(Ordering::Acquire),
            sessions_in_use: self.shared.pool.in_use(),
            sessions_idle: self.shared.pool.idle(),
            ..self.shared.recovery.counters()
        }
    }

    /// Runs `op` on a pooled session of `epoch`, on a session thread, under the shared gate.
    ///
    /// Waiting for a session is bounded by the pool wait and by `deadline`; the call itself
    /// cannot be cancelled, so past `deadline` the caller gets `DeadlineExceeded` while the
    /// session stays out of the pool until the call returns.
    async fn run<R, F>(
        &self,
        epoch: Arc<Epoch>,
        deadline: Option<Instant>,
        op: F,
    ) -> Result<R, HsmError>
    where
        R: Send + 'static,
        F: FnOnce(&Session, &Epoch) -> Result<R, HsmError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let span = tracing::Span::current();
        let work = move || {
            let _entered = span.enter();
            let _gate = read(&shared.gate);
            if !shared.is_current(&epoch) {
                return Err(HsmError::Recovering);
            }
            let session = match shared.pool.checkout(epoch.generation) {
                Some(s) => s,
                None => shared
                    .pkcs11
                    .open_rw_session(epoch.slot)
                    .context("C_OpenSession")?,
            };
            let result = op(&session, &epoch);
            match &result {
                Err(e) if e.class().is_some_and(ErrorClass::poisons_session) => {
                    tracing::debug!(error = %e, "discarding the session");
                    shared.pool.discard(epoch.generation, session);
                }
                _ => shared.pool.checkin(epoch.generation, session),
            }
            result
        };
        self.shared.pool.execute(deadline, work).await?
    }

    /// Signs `digest` with the key's private key and returns the token's raw output: PSS bytes
    /// or ECDSA `r‖s`. The caller has checked the digest length.
    ///
    /// A session-class failure is retried once on a fresh session; login- and device-class
    /// failures start recovery and fail this request with UNAVAILABLE.
    ///
    /// # Errors
    /// Pool exhaustion, deadline, refused keys, and classified PKCS#11 failures.
    pub async fn sign(
        &self,
        key_id: &str,
        scheme: Scheme,
        digest: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, HsmError> {
        let input = mechanism::sign_input(scheme, &digest);
        let mut retried = false;
        loop {
            let epoch = self.current()?;
            let handle = match epoch.key(key_id) {
                Some(KeyState::Ready(h)) => h,
                Some(KeyState::Refused { missing, reason }) => {
                    return Err(refusal(key_id, missing, reason))
                }
                None => return Err(HsmError::KeyNotResolved(key_id.to_string())),
            };
            let number = epoch.number;
            let input = input.clone();
            let outcome = self
                .run(epoch, deadline, move |session, _| {
                    // Built on the worker: cryptoki mechanisms hold raw pointers and are not Send.
                    let mechanism = mechanism::sign_mechanism(scheme);
                    session.sign(&mechanism, handle, &input).context("C_Sign")
                })
                .await;
            let Err(e) = outcome else { return outcome };
            if !self.after_failure(&e, number, Retry::Once, &mut retried) {
                return Err(e);
            }
        }
    }

    /// Runs `op` on a pooled session of the current epoch with the fault handling of
    /// [`Hsm::sign`]: login- and device-class failures start recovery and fail the call; a
    /// session-class failure is retried once on a fresh session when `retry` allows it.
    async fn call<R, F>(&self, retry: Retry, op: F) -> Result<R, HsmError>
    where
        R: Send + 'static,
        F: Fn(&Session, &Epoch) -> Result<R, HsmError> + Send + Sync + 'static,
    {
        let op = Arc::new(op);
        let mut retried = false;
        loop {
            let epoch = self.current()?;
            let number = epoch.number;
            let op = Arc::clone(&op);
            let outcome = self.run(epoch, None, move |s, e| op(s, e)).await;
            let Err(e) = outcome else { return outcome };
            if !self.after_failure(&e, number, retry, &mut retried) {
                return Err(e);
            }
        }
    }

    /// What a failed call in epoch `epoch` means. Returns true when the caller should try once
    /// more on a fresh session; otherwise recovery has been requested where the class needs it.
    fn after_failure(&self, e: &HsmError, epoch: u64, retry: Retry, retried: &mut bool) -> bool {
        match e.class() {
            Some(ErrorClass::Session) if retry == Retry::Once && !*retried => {
                tracing::info!(error = %e, "session failed; retrying once on a fresh session");
                *retried = true;
                true
            }
            Some(ErrorClass::Login) => {
                self.request_recovery(recovery::Need::Relogin, epoch, e);
                false
            }
            Some(ErrorClass::Device) => {
                self.request_recovery(recovery::Need::Reinit, epoch, e);
                false
            }
            // GENERAL_ERROR/FUNCTION_FAILED: a probe decides whether the token needs recovery;
            // the call itself (its session discarded) gets the one retry a session failure gets.
            Some(ErrorClass::Ambiguous) => {
                self.confirm_fault(epoch, e);
                let again = retry == Retry::Once && !*retried;
                *retried = true;
                again
            }
            _ => false,
        }
    }

    /// Registers `keys` for every epoch and resolves them now with one scan of the token.
    /// Public keys are pinned at their first resolution. Blocking.
    ///
    /// # Errors
    /// When the token cannot be scanned at all.
    pub fn resolve_keys(&self, keys: &[KeySpec]) -> Result<Vec<KeyResolution>, HsmError> {
        self.shared.add_specs(keys);
        let _gate = read(&self.shared.gate);
        let epoch = self.current()?;
        self.shared.resolve_into(&epoch, keys)
    }

    /// Registers keys for every epoch and resolves them now, like [`Hsm::resolve_keys`], but on
    /// a pooled session with the usual fault handling, and by looking up only these keys'
    /// objects when there are few of them (a full scan of a large token costs far more).
    ///
    /// # Errors
    /// When the token cannot be searched; per-key problems are in the result.
    pub async fn resolve_more(&self, keys: Vec<KeySpec>) -> Result<Vec<KeyResolution>, HsmError> {
        /// Above this many keys one scan of every key object is cheaper than a search per key.
        const TARGETED_LIMIT: usize = 64;
        let _turn = self.shared.writes.search_turn().await;
        let shared = Arc::clone(&self.shared);
        self.call(Retry::Once, move |session, epoch| {
            // Registered under the gate, so a recovery re-resolves them whatever happens next.
            shared.add_specs(&keys);
            let inventory = if keys.len() > TARGETED_LIMIT {
                inventory::Inventory::scan(session)?
            } else {
                let selectors: Vec<&ObjectSelector> = keys.iter().map(|k| &k.selector).collect();
                inventory::Inventory::scan_selected(session, &selectors)?
            };
            shared.resolve_from(epoch, &keys, &inventory, session)
        })
        .await
    }

    /// Stops resolving `key_id` in later epochs and drops its handle and pin (its objects are
    /// gone from the token).
    pub fn forget_key(&self, key_id: &str) {
        self.shared
            .specs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.key_id != key_id);
        self.shared
            .pins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key_id);
        read(&self.shared.epoch).remove_key(key_id);
    }

    /// Closes every session and finalises the module. Blocking; call once, at exit.
    pub fn shutdown(&self) {
        self.shared.pool.close();
        self.shared.up.store(false, Ordering::Release);
        let _gate = self.shared.gate.write().unwrap_or_else(|p| p.into_inner());
        self.shared.pool.close_idle();
        let anchor = read(&self.shared.epoch)
            .anchor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(anchor); // closing the last session logs out
        if let Err(e) = self.shared.pkcs11.clone().finalize() {
            tracing::warn!(error = %e, "C_Finalize failed at shutdown");
        }
    }
}

fn refusal(key_id: &str, missing: bool, reason: String) -> HsmError {
    if missing {
        HsmError::KeyMissing {
            key_id: key_id.to_string(),
            selector: reason,
        }
    } else {
        HsmError::Key {
            key_id: key_id.to_string(),
            reason,
        }
    }
}

impl Shared {
    /// Adds a key to resolve in every epoch, pinned to `spki`.
    fn register(&self, spec: KeySpec, spki: Vec<u8>) {
        self.pins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.key_id.clone(), spki);
        self.add_specs(std::slice::from_ref(&spec));
    }

    /// Adds (or replaces) keys to resolve in every epoch.
    fn add_specs(&self, keys: &[KeySpec]) {
        let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
        let ids: std::collections::HashSet<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
        specs.retain(|s| !ids.contains(s.key_id.as_str()));
        specs.extend(keys.iter().cloned());
    }

    fn is_current(&self, epoch: &Epoch) -> bool {
        self.up.load(Ordering::Acquire) && read(&self.epoch).number == epoch.number
    }

    /// Scans the token once and resolves `keys` into `epoch`, checking pins. Call under the gate.
    fn resolve_into(
        &self,
        epoch: &Epoch,
        keys: &[KeySpec],
    ) -> Result<Vec<KeyResolution>, HsmError> {
        epoch.with_anchor(|anchor| {
            let inventory = inventory::Inventory::scan(anchor)?;
            self.resolve_from(epoch, keys, &inventory, anchor)
        })
    }

    /// Resolves `keys` into `epoch` from an inventory taken in it, checking pins. Call under the
    /// gate.
    ///
    /// A failure of the session, the login or the token while checking a key says nothing about
    /// the key: it fails the whole resolution (recovery tries again; a pooled session is
    /// discarded) instead of refusing the key for the rest of the epoch.
    fn resolve_from(
        &self,
        epoch: &Epoch,
        keys: &[KeySpec],
        inventory: &inventory::Inventory,
        session: &Session,
    ) -> Result<Vec<KeyResolution>, HsmError> {
        let index = inventory.index();
        let mut pins = self.pins.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(keys.len());
        for spec in keys {
            let outcome = index
                .resolve(&spec.key_id, &spec.selector, spec.algorithm)
                .and_then(|r| {
                    inventory::check_pair(session, spec, &r)?;
                    check_pin(spec, &r.public_key, pins.get(&spec.key_id))?;
                    Ok(r)
                });
            match outcome {
                Ok(r) => {
                    pins.entry(spec.key_id.clone())
                        .or_insert_with(|| r.public_key.spki_der().to_vec());
                    epoch.set_key(spec.key_id.clone(), KeyState::Ready(r.private));
                    out.push((spec.key_id.clone(), Ok(r.public_key)));
                }
                Err(e)
                    if e.class().is_some_and(|c| {
                        !matches!(c, ErrorClass::Request | ErrorClass::KeyConfig)
                    }) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    let state = match &e {
                        HsmError::KeyMissing { selector, .. } => KeyState::Refused {
                            missing: true,
                            reason: selector.clone(),
                        },
                        HsmError::Key { reason, .. } => KeyState::Refused {
                            missing: false,
                            reason: reason.clone(),
                        },
                        other => KeyState::Refused {
                            missing: false,
                            reason: other.to_string(),
                        },
                    };
                    epoch.set_key(spec.key_id.clone(), state);
                    out.push((spec.key_id.clone(), Err(e)));
                }
            }
        }
        Ok(out)
    }
}

/// Refuses a key whose public key differs from the operator's pin or from the one first seen.
fn check_pin(spec: &KeySpec, key: &PublicKey, pinned: Option<&Vec<u8>>) -> Result<(), HsmError> {
    let refuse = |reason: String| {
        tracing::error!(
            key_id = %spec.key_id,
            fingerprint = %key.fingerprint(),
            "PUBLIC KEY PIN MISMATCH: {reason}; the key is refused and will not sign"
        );
        Err(HsmError::Key {
            key_id: spec.key_id.clone(),
            reason,
        })
    };
    if let Some(expected) = &spec.pin_sha256 {
        if Sha256::digest(key.spki_der())[..] != expected[..] {
            return refuse(format!(
                "the token's public key has SHA-256 {}, but pin_sha256 is {}",
                key.fingerprint(),
                hex::encode(expected)
            ));
        }
    }
    match pinned {
        Some(spki) if spki.as_slice() != key.spki_der() => refuse(
            "the token now holds a different key under this id than the one pinned when the key was first resolved".into(),
        ),
        _ => Ok(()),
    }
}

fn open_epoch(
    pkcs11: &Pkcs11,
    selector: &TokenSelector,
    pin: &SecretString,
    number: u64,
    generation: u64,
) -> Result<Epoch, HsmError> {
    let (slot, token) = token::find_token(pkcs11, selector)?;
    let anchor = token::open_anchor(pkcs11, slot, pin)?;
    Ok(Epoch {
        number,
        generation,
        slot,
        token,
        anchor: Mutex::new(Some(anchor)),
        keys: RwLock::new(HashMap::new()),
    })
}
