//! The key service's core, shared by every front: create, change, delete and restore keys, their
//! versions and aliases, whose state lives on the token; keep the registry in step with the
//! token; and destroy deleted keys once their deletion window has passed.
//!
//! # Writes (`write.rs`)
//! Every change reads the key's objects from the token, merges them, checks its preconditions
//! on the merged state, and writes one new object holding the merge plus its change, destroying
//! the objects it read (see `hsm/objects.rs`); then the state nonce is replaced and the registry
//! updated. Writes by other replicas at the same moment are never overwritten: their objects
//! survive and merge (see [`super::doc`] for how concurrent changes compose). Within a process,
//! changes to one key are serialised. Changes run as their own tasks: a client that disconnects
//! mid-way cannot leave a key half-created or a document half-changed.
//!
//! # Create (`create.rs`)
//! The key's first object is written with a pending version (status CREATING, published by no
//! replica), the key pair is generated on the token (private key sensitive, never extractable;
//! see `hsm/provision.rs`), then the version is recorded as ready with the public key's SHA-256
//! pinned. A create left behind by a crash is destroyed by the purge after
//! [`CREATING_TIMEOUT`]. New versions of a key follow the same steps. Generation holds a pooled
//! session for up to seconds (RSA-4096); object creation takes turns within the process, so
//! creates never occupy more than one session and cannot starve signing;
//! `managed_keys.max_concurrent_generations` bounds how many may wait.
//!
//! # Refresh (`scan.rs`)
//! Every `managed_keys.refresh_interval_ms`, and at once when a lookup misses, the refresher
//! reads the state nonce. Only when it (or the HSM epoch) changed does it read every p11kms
//! object and reconcile: new keys and versions are resolved on the token and pinned, changed
//! documents are joined with their entries, vanished keys are dropped. A scan never undoes an
//! entry this replica wrote after the scan began, and never takes a key back to an older state:
//! a read can miss objects another process is writing (see [`crate::hsm::Hsm::touch_token`]),
//! so what it returns is merged with what the registry held, never put in its place.
//!
//! After its writes, a replica touches the token a few times (SoftHSM-like tokens only) and
//! stores the documents it wrote again, so that other replicas see them (`write.rs`).
//!
//! Config-declared keys get their creation time from the token as well: when p11kms first
//! served them (`adopt.rs`).
//!
//! # Delete and purge (`purge.rs`)
//! A deletion hides the key from signing at once on this replica and within one refresh interval
//! on the others, and schedules the destruction of its key material: after
//! `managed_keys.deletion_retention_hours` for the Yandex fronts' Delete, after the requested
//! window for Alibaba's ScheduleKeyDeletion. Until then it can be restored. The purge works from
//! what the token holds, not from the registry, so whichever replica sees a key that is due (or
//! the leftovers of an interrupted purge or create) finishes the job.

mod adopt;
mod aliases;
mod create;
mod edit;
mod purge;
mod scan;
mod write;

use super::doc::Binding;
use super::ops::Operation;
use super::refresh::Rescan;
use super::{KeyEntry, KeyRegistry, KeySource, Status};
use crate::auth::authz::Want;
use crate::auth::{Action, Policy, RequestContext};
use crate::config::ManagedKeysConfig;
use crate::crypto::Algorithm;
use crate::error::{Error, Missing, Precondition};
use crate::hsm::Hsm;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use create::CREATING_TIMEOUT;

/// Most versions one key may have (Alibaba's limit).
pub const MAX_VERSIONS: usize = 50;

/// A key to create; fields are validated by the front.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Folder.
    pub folder_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Whether deletion is refused.
    pub deletion_protection: bool,
}

/// Fields to change; `None` leaves a field as it is. Validated by the front.
#[derive(Clone, Debug, Default)]
pub struct KeyChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New labels (replacing all).
    pub labels: Option<BTreeMap<String, String>>,
    /// Labels to set, keeping the others (Alibaba's TagResource).
    pub put_labels: BTreeMap<String, String>,
    /// Labels to remove (Alibaba's UntagResource).
    pub remove_labels: Vec<String>,
    /// ACTIVE or INACTIVE.
    pub status: Option<Status>,
    /// New deletion protection.
    pub deletion_protection: Option<bool>,
}

/// One change of `UpdateAccessBindings`; validated by the front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingDelta {
    /// Add the binding (if absent).
    Add(Binding),
    /// Remove the binding (if present).
    Remove(Binding),
}

/// Rules for keys that come from the config of the fronts.
#[derive(Clone, Debug)]
pub struct KeyRules {
    /// Shortest time between two versions of one key.
    pub min_version_interval: Duration,
}

impl Default for KeyRules {
    fn default() -> Self {
        Self {
            min_version_interval: Duration::from_secs(
                crate::config::alibaba::DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS,
            ),
        }
    }
}

/// Owns the keys created through the APIs.
#[derive(Debug)]
pub struct KeyManager {
    registry: Arc<KeyRegistry>,
    policy: Arc<Policy>,
    hsm: Hsm,
    settings: ManagedKeysConfig,
    rules: KeyRules,
    /// This process's replica id: the tie-break of concurrent writes (see `doc.rs`).
    replica: String,
    generation: Arc<Semaphore>,
    generation_budget: usize,
    /// Serialises read-modify-write of documents within this process.
    mutation: tokio::sync::Mutex<()>,
    rescan: Arc<Rescan>,
    /// The (HSM epoch, nonce) of the last completed scan.
    seen: Mutex<Option<(u64, Option<Vec<u8>>)>>,
    /// A change was written but the nonce could not be replaced; the refresher retries.
    nonce_dirty: AtomicBool,
    /// Keys (and versions) whose key pair could not be resolved, with the document clock
    /// already logged.
    unresolvable: Mutex<HashMap<String, u64>>,
    /// Ids of keys on the token, including those not served (being created, unresolvable,
    /// unreadable): never reused for a new key.
    known_ids: Mutex<std::collections::HashSet<String>>,
    /// When this replica last created or changed an object on the token.
    last_write: Mutex<Option<Instant>>,
    /// Document objects this replica wrote lately, with when (see `note_written`).
    written: Mutex<Vec<(Instant, crate::hsm::StoredVersion)>>,
    wrote: tokio::sync::Notify,
}

fn not_found(key_id: &str) -> Error {
    Error::not_found(
        Missing::Key,
        format!("asymmetric signature key {key_id} not found"),
    )
}

fn config_managed(key_id: &str) -> Error {
    Error::precondition(
        Precondition::State,
        format!(
            "key {key_id} is managed by the config file (a [[keys]] entry of the p11kms config); change it there, not through the API"
        ),
    )
}

fn note_operation(ctx: &RequestContext, op: &Operation) {
    ctx.note(|a| a.operation_id = Some(op.id.clone()));
}

/// Runs `work` as its own task, so that a client going away cannot stop it half-way; the caller
/// waits for it until `deadline`.
async fn detached<T: Send + 'static>(
    deadline: Option<Instant>,
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    let task = tokio::spawn(work);
    let joined = match deadline {
        Some(d) => tokio::time::timeout_at(d, task).await.map_err(|_| {
            Error::DeadlineExceeded(
                "the request deadline passed; the change continues and its operation will be listed by ListOperations".into(),
            )
        })?,
        None => task.await,
    };
    joined.map_err(|e| Error::internal("a key-management task failed", e))?
}

impl KeyManager {
    /// A manager of `registry`'s API keys on `hsm`, authorising with `policy`; lookups in
    /// `registry` that miss now trigger re-scans once [`KeyManager::spawn_background`] runs.
    pub fn new(
        registry: Arc<KeyRegistry>,
        hsm: Hsm,
        settings: &ManagedKeysConfig,
        rules: KeyRules,
        pool_size: usize,
        policy: Arc<Policy>,
    ) -> Arc<Self> {
        let rescan = Arc::new(Rescan::new());
        registry.set_rescan(Arc::clone(&rescan));
        let budget = settings.generation_budget(pool_size);
        let replica = hex::encode(rand::random::<[u8; 4]>());
        tracing::debug!(%replica, "key manager replica id");
        Arc::new(Self {
            registry,
            policy,
            hsm,
            settings: settings.clone(),
            rules,
            replica,
            generation: Arc::new(Semaphore::new(budget)),
            generation_budget: budget,
            mutation: tokio::sync::Mutex::new(()),
            rescan,
            seen: Mutex::new(None),
            nonce_dirty: AtomicBool::new(false),
            unresolvable: Mutex::new(HashMap::new()),
            known_ids: Mutex::new(std::collections::HashSet::new()),
            last_write: Mutex::new(None),
            written: Mutex::new(Vec::new()),
            wrote: tokio::sync::Notify::new(),
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<KeyRegistry> {
        &self.registry
    }

    /// The authorisation policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Reads every key created through the API from the token (start-up), and records the
    /// adoption time of config-declared keys served for the first time. Returns how many API
    /// keys are served; keys that cannot be resolved are logged and left out.
    ///
    /// # Errors
    /// When the token cannot be read or written.
    pub async fn load(&self) -> Result<usize, Error> {
        self.refresh(true).await?;
        self.adopt_config_keys().await?;
        Ok(self.registry.api_keys().len())
    }

    /// Runs the refresher and the purge until `stop` is cancelled.
    pub fn spawn_background(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::join!(
                this.refresh_loop(stop.clone()),
                this.purge_loop(stop.clone()),
                this.touch_loop(stop)
            );
        })
    }

    // ---------------------------------------------------------------------------------------
    // Reads
    // ---------------------------------------------------------------------------------------

    /// The key `key_ref` (a key id, or an alias) if the context's caller may do `action` with
    /// it; see [`crate::auth::authz`]. `want` says whether deleted keys count.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn key(
        &self,
        ctx: &RequestContext,
        action: Action,
        key_ref: &str,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let key_id = self.resolve_ref(ctx, key_ref, deadline).await?;
        ctx.note(|a| a.key_id = Some(crate::auth::audit::bounded(&key_id)));
        self.policy
            .authorize_key(&self.registry, ctx, action, &key_id, want, deadline)
            .await
    }

    /// The key id `key_ref` names: itself, or the target of an alias (`alias/…`).
    ///
    /// # Errors
    /// NOT_FOUND (alias) for an unknown alias.
    pub async fn resolve_ref(
        &self,
        ctx: &RequestContext,
        key_ref: &str,
        deadline: Option<Instant>,
    ) -> Result<String, Error> {
        if !key_ref.starts_with(super::alias::PREFIX) {
            return Ok(key_ref.to_string());
        }
        ctx.note(|a| a.alias = Some(crate::auth::audit::bounded(key_ref)));
        if let Some(a) = self.registry.alias(key_ref) {
            return Ok(a.key_id);
        }
        // Created a moment ago on another replica? Only callers with a role somewhere may cause
        // the token to be read, as for keys.
        if let Some(c) = ctx
            .caller()
            .ok()
            .filter(|c| self.policy.allowed_somewhere(c, Action::Get))
        {
            self.policy.rescan_for(&self.registry, c, deadline).await;
            if let Some(a) = self.registry.alias(key_ref) {
                return Ok(a.key_id);
            }
        }
        Err(Error::not_found(
            Missing::Alias,
            format!("alias {key_ref} not found"),
        ))
    }

    /// A visible key (`Get`).
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn get(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        self.key(ctx, Action::Get, key_id, Want::Visible, deadline)
            .await
    }

    /// Up to `limit` visible keys of a folder after key id `after`, and whether more follow.
    /// A caller with a List role on the folder (or everywhere) sees every key; anyone else only
    /// the keys whose own bindings let it list them.
    ///
    /// # Errors
    /// UNAUTHENTICATED.
    pub fn list(
        &self,
        ctx: &RequestContext,
        folder_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Arc<KeyEntry>>, bool), Error> {
        ctx.note(|a| a.folder_id = Some(crate::auth::audit::bounded(folder_id)));
        let caller = ctx.caller()?;
        if self
            .policy
            .allowed_in_folder(caller, Action::List, folder_id)
        {
            return Ok(self.registry.page(folder_id, after, limit));
        }
        Ok(self.registry.page_where(folder_id, after, limit, |key| {
            self.policy
                .allowed_by_key_bindings(caller, Action::List, key)
        }))
    }

    /// Every key (deleted ones included, being-created ones not) the caller may list, in any
    /// folder, sorted by id: the Alibaba fronts have no folders.
    ///
    /// # Errors
    /// UNAUTHENTICATED.
    pub fn list_everywhere(&self, ctx: &RequestContext) -> Result<Vec<Arc<KeyEntry>>, Error> {
        let caller = ctx.caller()?;
        Ok(self
            .registry
            .all_any()
            .into_iter()
            .filter(|k| k.status != Status::Creating)
            .filter(|k| self.policy.allowed_on_key(caller, Action::List, k))
            .collect())
    }

    /// A visible key's operations, newest first.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn operations(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Vec<Operation>, Error> {
        let entry = self
            .key(ctx, Action::ListOperations, key_id, Want::Visible, deadline)
            .await?;
        let mut ops = entry.operations.clone();
        ops.reverse();
        Ok(ops)
    }

    /// Any operation of any key this gateway's token holds, deleted keys included, if the
    /// caller may view that key. The same rules as for keys decide who may cause a re-scan and
    /// who learns NOT_FOUND (see [`crate::auth::authz`]).
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn operation(
        &self,
        ctx: &RequestContext,
        op_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        let caller = ctx.caller()?;
        let action = Action::GetOperation;
        ctx.note(|a| a.operation_id = Some(crate::auth::audit::bounded(op_id)));
        let mut found = self.registry.operation_entry(op_id);
        if found.is_none() && self.policy.allowed_somewhere(caller, action) {
            self.policy
                .rescan_for(&self.registry, caller, deadline)
                .await;
            found = self.registry.operation_entry(op_id);
        }
        match found {
            Some((op, key)) if self.policy.allowed_on_key(caller, action, &key) => {
                ctx.note(|a| {
                    a.key_id = Some(key.id.clone());
                    a.folder_id = Some(key.folder_id.clone());
                });
                Ok(op)
            }
            None if self.policy.allowed_globally(caller, action) => Err(Error::not_found(
                Missing::Other,
                format!("operation {op_id} not found"),
            )),
            _ => Err(Error::PermissionDenied(format!(
                "permission denied: {} on this operation needs a role the caller does not have \
                 on its key, or the operation does not exist",
                action.name()
            ))),
        }
    }

    /// A visible key's stored access bindings (keys declared in the config have none of their
    /// own: their roles come from the config's folder and global bindings).
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
    pub async fn access_bindings(
        &self,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Vec<Binding>, Error> {
        let entry = self
            .key(
                ctx,
                Action::ListAccessBindings,
                key_id,
                Want::Visible,
                deadline,
            )
            .await?;
        Ok(entry.bindings.clone())
    }

    /// A key the caller may change with `action`, if it may be changed through the API at all.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, or FAILED_PRECONDITION for
    /// config-declared keys.
    pub async fn check_changeable(
        &self,
        ctx: &RequestContext,
        action: Action,
        key_ref: &str,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let entry = self.key(ctx, action, key_ref, want, deadline).await?;
        if entry.source == KeySource::Config {
            return Err(config_managed(&entry.id));
        }
        Ok(entry)
    }
}
