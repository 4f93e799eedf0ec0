//! Identity: who is calling ([`authn`]; Alibaba AccessKey pairs in [`access_keys`] and client
//! keys in [`client_keys`]), what they may do ([`authz`]), the audit trail ([`audit`]) and
//! per-subject rate limits ([`rate_limit`]).
//!
//! The request-context layer (`crate::api::context`) runs in front of every service, for every
//! transport: it gives each request an id, authenticates it into a [`Caller`] (or leaves it
//! anonymous), applies the rate limit, and hands the services a [`RequestContext`]. The core
//! ([`crate::signer`], [`crate::keys::KeyManager`]) authorises with the context's caller
//! before it touches the HSM and notes what the audit record needs ([`AuditFields`]); the layer
//! writes the record when the response is ready, before it leaves the process.

pub mod access_keys;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod client_keys;
pub mod failures;
pub mod rate_limit;

pub use audit::{AuditFields, AuditLog};
pub use authn::{AuthMethod, Authenticator, Caller};
pub use authz::{Action, Policy, Role};
pub use rate_limit::RateLimiter;

use crate::error::Error;
use std::sync::{Arc, Mutex, OnceLock};

/// What one request carries through the core: its id, its caller, and its audit slot. Built by
/// the request-context layer and put in the request's extensions; clones share the slot.
///
/// The caller is known when the context is built, except for the fronts that authenticate
/// requests themselves (Alibaba's signatures cover the body): they set it once, through
/// [`RequestContext::authenticated`], before anything else reads it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    request_id: Arc<str>,
    caller: Arc<OnceLock<Caller>>,
    audit: Arc<Mutex<AuditFields>>,
}

impl RequestContext {
    /// A context for a request with `request_id`, authenticated as `caller` (or anonymous).
    pub fn new(request_id: impl Into<Arc<str>>, caller: Option<Caller>) -> Self {
        let cell = OnceLock::new();
        if let Some(c) = caller {
            let _ = cell.set(c);
        }
        Self {
            request_id: request_id.into(),
            caller: Arc::new(cell),
            audit: Arc::default(),
        }
    }

    /// Records the caller a front authenticated itself. A context that already has a caller
    /// keeps it (and this returns false): a caller never changes mid-request.
    pub fn authenticated(&self, caller: Caller) -> bool {
        self.caller.set(caller).is_ok()
    }

    /// The request id (`x-request-id`).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The authenticated caller, if any.
    pub fn caller_opt(&self) -> Option<&Caller> {
        self.caller.get()
    }

    /// The authenticated caller.
    ///
    /// # Errors
    /// UNAUTHENTICATED for an anonymous request (the layer already refuses those for every
    /// protected method; this is the core's own check).
    pub fn caller(&self) -> Result<&Caller, Error> {
        self.caller
            .get()
            .ok_or_else(|| Error::Unauthenticated(authn::MISSING_CREDENTIALS.to_string()))
    }

    /// Who made a change, for `Operation.created_by`: the caller's subject id.
    pub fn actor(&self) -> String {
        self.caller
            .get()
            .map(|c| c.subject_id.clone())
            .unwrap_or_default()
    }

    /// Notes something for the request's audit record.
    pub fn note(&self, f: impl FnOnce(&mut AuditFields)) {
        f(&mut self.audit.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// What has been noted so far.
    pub fn audit_fields(&self) -> AuditFields {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything the request-context layer and the core need to know about callers, built once
/// from the config.
#[derive(Debug)]
pub struct Identity {
    /// Credentials → callers.
    pub authn: Authenticator,
    /// Role bindings of the config file.
    pub policy: Arc<Policy>,
    /// The audit trail.
    pub audit: AuditLog,
    /// Per-subject rate limits.
    pub rate: RateLimiter,
}

/// How often idle rate-limit buckets are forgotten.
const RATE_HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(60);

impl Identity {
    /// From `[auth]`, `[audit]` and `[rate_limit]`.
    ///
    /// # Errors
    /// A JWKS that cannot be read, or a required audit file that cannot be opened.
    pub fn from_config(config: &crate::Config) -> Result<Arc<Self>, String> {
        let authn = Authenticator::from_config(&config.auth)?;
        let audit = AuditLog::start(&config.audit)?;
        let identity = Self {
            authn,
            policy: Arc::new(Policy::from_config(&config.auth)?),
            audit,
            rate: RateLimiter::from_config(&config.rate_limit),
        };
        if config.auth.tokens.is_empty() && config.auth.mtls.is_empty() && config.auth.jwt.is_none()
        {
            tracing::warn!("no credentials are configured ([auth] tokens, mtls, jwt): every request to the KMS services will be refused with UNAUTHENTICATED");
        } else if config.auth.bindings.is_empty() {
            tracing::info!("no roles are bound in the config ([[auth.bindings]]): only per-key access bindings grant access");
        }
        Ok(Arc::new(identity))
    }

    /// Reloads what can change at run time on every change of `reload` (SIGHUP): reopens the
    /// audit file and re-reads the JWKS; also re-reads the JWKS when its file changes, and
    /// forgets idle rate-limit buckets. Runs until `stop`.
    pub fn spawn_background(
        self: &Arc<Self>,
        mut reload: tokio::sync::watch::Receiver<u64>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let jwks_every = this
                .authn
                .jwt()
                .and_then(authn::JwtValidator::reload_interval);
            let mut jwks_tick = tokio::time::interval(jwks_every.unwrap_or(RATE_HOUSEKEEPING));
            jwks_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut housekeeping = tokio::time::interval(RATE_HOUSEKEEPING);
            housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            reload.borrow_and_update();
            let mut reload_open = true;
            loop {
                tokio::select! {
                    changed = reload.changed(), if reload_open => {
                        if changed.is_err() {
                            reload_open = false;
                            continue;
                        }
                        this.audit.reopen();
                        this.reload_jwks(true).await;
                    }
                    _ = jwks_tick.tick(), if jwks_every.is_some() => this.reload_jwks(false).await,
                    _ = housekeeping.tick() => this.rate.housekeeping(),
                    () = stop.cancelled() => return,
                }
            }
        })
    }

    async fn reload_jwks(self: &Arc<Self>, force: bool) {
        if self.authn.jwt().is_none() {
            return;
        }
        let this = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(jwt) = this.authn.jwt() {
                jwt.reload(force);
            }
        })
        .await;
    }
}
