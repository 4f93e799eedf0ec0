//! The key service's core, shared by every transport: create, change, delete and restore keys
//! whose state lives on the token, keep the registry in step with the token, and destroy deleted
//! keys once their retention window has passed.
//!
//! # Writes
//! Every change is written to the key's metadata object on the token first, then the state
//! nonce is replaced, then the registry is updated: the token is the source of truth, and the
//! nonce tells the other replicas to look. Each change re-reads the document from the token
//! (under a process-wide lock), applies itself, and writes back only if the version it read is
//! still there (see `hsm/objects.rs`); otherwise it reads again. So a replica never overwrites a
//! change made elsewhere that it has not seen. Changes run as their own tasks: a client that
//! disconnects mid-way cannot leave a key half-created or a document half-changed.
//!
//! # Create
//! The document is written with status CREATING, the key pair is generated on the token
//! (private key sensitive, never extractable; see `hsm/provision.rs`), then the document is
//! written again as ACTIVE with the public key's SHA-256 pinned. CREATING documents are not
//! published by any replica (so writing one does not replace the nonce); one left behind by a
//! crash is destroyed by the purge after [`CREATING_TIMEOUT`]. Generation holds a pooled
//! session for up to seconds (RSA-4096). Object creation takes turns within the process (see
//! `hsm/objects.rs`: SoftHSMv2 fails concurrent creation), and a create waits for its turn
//! without a session, so creates never occupy more than one session and cannot starve
//! signing; `managed_keys.max_concurrent_generations` bounds how many may wait.
//!
//! # Refresh
//! Every `managed_keys.refresh_interval_ms`, and at once when a lookup misses (see
//! `refresh.rs`), the refresher reads the state nonce. Only when it (or the HSM epoch) changed
//! does it read every metadata object and reconcile: new keys are resolved on the token and
//! pinned, changed documents replace their entries, vanished ones are dropped. A scan never
//! undoes an entry this replica wrote after the scan began.
//!
//! # Delete and purge
//! Delete sets `deleted_at`; the key disappears from Get, List and signing at once on this
//! replica and within one refresh interval on the others. Within
//! `managed_keys.deletion_retention_hours` it can be restored (`Undelete`); after that the purge
//! task destroys the key pair and then the document. Another replica purging first is fine.

use super::ops::{self, Kind};
use super::record::{AccessBindingRecord, Record};
use super::refresh::{Rescan, MIN_FORCED_SPACING};
use super::{ids, KeyEntry, KeyRegistry, KeySource, Status};
use crate::api::yandex::grpc::pb::operation::Operation;
use crate::auth::authz::Want;
use crate::auth::{Action, Policy, RequestContext};
use crate::config::ManagedKeysConfig;
use crate::crypto::Algorithm;
use crate::error::Error;
use crate::hsm::{metadata_label, ErrorClass, Hsm, HsmError, StoredVersion, KEY_LABEL_PREFIX};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A CREATING document older than this was left by a crashed create and is destroyed.
pub const CREATING_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a create waits for the generation budget when the request has no earlier deadline.
const GENERATION_WAIT: Duration = Duration::from_secs(60);
/// Attempts at drawing an unused key id before giving up (one collision is already absurd).
const ID_ATTEMPTS: usize = 8;
/// Attempts at a change whose document another replica keeps changing underneath.
const WRITE_ATTEMPTS: usize = 4;
/// After a write, this replica touches the token (see [`Hsm::touch_token`]) this long after the
/// write, and then this long after its last write, so that other processes on a SoftHSM-like
/// token catch up, also while writes keep coming.
const FIRST_TOUCH: Duration = Duration::from_millis(300);
const LATER_TOUCHES: [Duration; 2] = [Duration::from_millis(1500), Duration::from_millis(5000)];
/// Every this many refresh intervals the token is scanned even if the nonce did not change: a
/// safety net that bounds how long any missed change can stay unseen.
const FULL_SCAN_EVERY: u32 = 12;
/// How long a change waits for a document that is briefly invisible (see
/// `key_material_exists`) before giving up with UNAVAILABLE.
const MISSING_DOCUMENT_WAIT: Duration = Duration::from_secs(5);

/// A key to create; fields are validated by the transport.
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
    /// Whether Delete is refused.
    pub deletion_protection: bool,
}

/// Fields to change; `None` leaves a field as it is. Validated by the transport.
#[derive(Clone, Debug, Default)]
pub struct KeyChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New labels (replacing all).
    pub labels: Option<BTreeMap<String, String>>,
    /// ACTIVE or INACTIVE.
    pub status: Option<Status>,
    /// New deletion protection.
    pub deletion_protection: Option<bool>,
}

/// Owns the keys created through the API.
#[derive(Debug)]
pub struct KeyManager {
    registry: Arc<KeyRegistry>,
    policy: Arc<Policy>,
    hsm: Hsm,
    settings: ManagedKeysConfig,
    generation: Arc<Semaphore>,
    generation_budget: usize,
    /// Serialises read-modify-write of documents within this process.
    mutation: tokio::sync::Mutex<()>,
    rescan: Arc<Rescan>,
    /// The (HSM epoch, nonce) of the last completed scan.
    seen: Mutex<Option<(u64, Option<Vec<u8>>)>>,
    /// A change was written but the nonce could not be replaced; the refresher retries.
    nonce_dirty: AtomicBool,
    /// CREATING documents older than [`CREATING_TIMEOUT`] seen by the last scan.
    stale_creating: Mutex<Vec<String>>,
    /// Keys whose key pair could not be resolved, with the revision already logged.
    unresolvable: Mutex<HashMap<String, u64>>,
    /// When this replica last created or changed an object on the token.
    last_write: Mutex<Option<Instant>>,
    wrote: tokio::sync::Notify,
}

fn not_found(key_id: &str) -> Error {
    Error::NotFound(format!("asymmetric signature key {key_id} not found"))
}

fn config_managed(key_id: &str) -> Error {
    Error::FailedPrecondition(format!(
        "key {key_id} is managed by the config file (a [[keys]] entry of the p11kms config); change it there, not through the API"
    ))
}

/// One change of `UpdateAccessBindings`; validated by the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingDelta {
    /// Add the binding (if absent).
    Add(AccessBindingRecord),
    /// Remove the binding (if present).
    Remove(AccessBindingRecord),
}

/// Bindings in their first-seen order, each once.
fn dedup(bindings: Vec<AccessBindingRecord>) -> Vec<AccessBindingRecord> {
    let mut out: Vec<AccessBindingRecord> = Vec::with_capacity(bindings.len());
    for b in bindings {
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// Refuses a change to a deleted key: it is gone from the API until undeleted.
fn live(r: &Record) -> Result<(), Error> {
    match r.deleted_at {
        Some(_) => Err(not_found(&r.key_id)),
        None => Ok(()),
    }
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

/// A generation failure the token will repeat is the caller's problem, not a retryable fault.
fn generation_error(algorithm: Algorithm, e: HsmError) -> Error {
    match e.class() {
        Some(ErrorClass::Request | ErrorClass::KeyConfig) => Error::FailedPrecondition(format!(
            "the HSM cannot generate a {algorithm} key pair ({e}); choose another algorithm"
        )),
        _ => e.into(),
    }
}

impl KeyManager {
    /// A manager of `registry`'s API keys on `hsm`, authorising with `policy`; lookups in
    /// `registry` that miss now trigger re-scans once [`KeyManager::spawn_background`] runs.
    pub fn new(
        registry: Arc<KeyRegistry>,
        hsm: Hsm,
        settings: &ManagedKeysConfig,
        pool_size: usize,
        policy: Arc<Policy>,
    ) -> Arc<Self> {
        let rescan = Arc::new(Rescan::new());
        registry.set_rescan(Arc::clone(&rescan));
        let budget = settings.generation_budget(pool_size);
        Arc::new(Self {
            registry,
            policy,
            hsm,
            settings: settings.clone(),
            generation: Arc::new(Semaphore::new(budget)),
            generation_budget: budget,
            mutation: tokio::sync::Mutex::new(()),
            rescan,
            seen: Mutex::new(None),
            nonce_dirty: AtomicBool::new(false),
            stale_creating: Mutex::new(Vec::new()),
            unresolvable: Mutex::new(HashMap::new()),
            last_write: Mutex::new(None),
            wrote: tokio::sync::Notify::new(),
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<KeyRegistry> {
        &self.registry
    }

    /// Reads every key created through the API from the token (start-up). Returns how many are
    /// served; keys that cannot be resolved are logged and left out.
    ///
    /// # Errors
    /// When the token cannot be read.
    pub async fn load(&self) -> Result<usize, Error> {
        self.refresh(true).await?;
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

    /// The key if the context's caller may do `action` with it; see [`crate::auth::authz`].
    async fn authorized(
        &self,
        ctx: &RequestContext,
        action: Action,
        key_id: &str,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        ctx.note(|a| a.key_id = Some(crate::auth::audit::bounded(key_id)));
        self.policy
            .authorize_key(&self.registry, ctx, action, key_id, want, deadline)
            .await
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
        self.authorized(ctx, Action::Get, key_id, Want::Visible, deadline)
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
            .authorized(ctx, Action::ListOperations, key_id, Want::Visible, deadline)
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
            self.registry.rescan_once(deadline).await;
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
            None if self.policy.allowed_globally(caller, action) => {
                Err(Error::NotFound(format!("operation {op_id} not found")))
            }
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
    ) -> Result<Vec<AccessBindingRecord>, Error> {
        let entry = self
            .authorized(
                ctx,
                Action::ListAccessBindings,
                key_id,
                Want::Visible,
                deadline,
            )
            .await?;
        Ok(entry
            .record
            .as_ref()
            .map(|r| r.access_bindings.clone())
            .unwrap_or_default())
    }

    /// A visible key the caller may change with `action`, if it may be changed through the API
    /// at all.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, or FAILED_PRECONDITION for
    /// config-declared keys.
    pub async fn check_changeable(
        &self,
        ctx: &RequestContext,
        action: Action,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let entry = self
            .authorized(ctx, action, key_id, Want::Visible, deadline)
            .await?;
        if entry.source == KeySource::Config {
            return Err(config_managed(key_id));
        }
        Ok(entry)
    }

    // ---------------------------------------------------------------------------------------
    // Writes
    // ---------------------------------------------------------------------------------------

    /// Creates a key: generates its key pair on the token and stores its metadata there. The
    /// caller needs a role that allows Create on the folder.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED when the generation budget stays
    /// busy, FAILED_PRECONDITION when the token cannot generate the algorithm, and HSM failures.
    pub async fn create(
        self: &Arc<Self>,
        ctx: &RequestContext,
        new: NewKey,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        ctx.note(|a| {
            a.folder_id = Some(new.folder_id.clone());
            a.algorithm = Some(new.algorithm.name());
        });
        self.policy
            .authorize_folder(ctx, Action::Create, &new.folder_id)?;
        let actor = ctx.actor();
        let wait = Instant::now() + GENERATION_WAIT;
        let limit = deadline.map_or(wait, |d| d.min(wait));
        let permit =
            match tokio::time::timeout_at(limit, Arc::clone(&self.generation).acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => {
                    return Err(Error::Unavailable {
                        message: "the gateway is shutting down; retry on another replica".into(),
                        source: None,
                    })
                }
                Err(_) if deadline.is_some_and(|d| d <= wait) => {
                    return Err(Error::DeadlineExceeded(
                        "the request deadline passed while waiting for other key generations to finish".into(),
                    ))
                }
                Err(_) => {
                    return Err(Error::ResourceExhausted(format!(
                        "{} key generation(s) are already running; retry later or raise managed_keys.max_concurrent_generations",
                        self.generation_budget
                    )))
                }
            };
        let this = Arc::clone(self);
        let op = detached(deadline, async move {
            let _permit = permit;
            this.create_now(new, actor).await
        })
        .await?;
        note_operation(ctx, &op);
        Ok(op)
    }

    async fn create_now(&self, new: NewKey, actor: String) -> Result<Operation, Error> {
        let started = SystemTime::now();
        let key_id = self.fresh_key_id().await?;
        let mut record = Record::new(
            key_id.clone(),
            new.folder_id,
            new.name,
            new.description,
            new.labels,
            new.algorithm,
            new.deletion_protection,
            started,
            actor.clone(),
        );
        let creating = self
            .hsm
            .create_data_object(&metadata_label(&key_id), record.to_json())
            .await?;
        self.note_write();
        match self
            .finish_create(&mut record, creating, &actor, started)
            .await
        {
            Ok(op) => {
                tracing::info!(%key_id, algorithm = %record.algorithm, folder_id = %record.folder_id, "key created");
                Ok(op)
            }
            Err(e) => {
                self.abandon(&record).await;
                Err(e)
            }
        }
    }

    async fn finish_create(
        &self,
        record: &mut Record,
        creating: StoredVersion,
        actor: &str,
        started: SystemTime,
    ) -> Result<Operation, Error> {
        let generated = self
            .hsm
            .generate_key_pair(
                &record.key_id,
                record.algorithm,
                record.ck_id.clone(),
                record.key_label().to_string(),
            )
            .await
            .map_err(|e| generation_error(record.algorithm, e))?;
        let before = record.clone();
        record.spki_sha256 = Some(Sha256::digest(generated.public_key.spki_der()).into());
        record.status = Status::Active;
        record.stamp_changes(&before);
        record.revision += 1;
        let key = KeyEntry::from_record(Arc::new(record.clone()), generated.public_key.clone());
        let op = ops::completed(
            Kind::Create,
            &record.key_id,
            started,
            actor,
            &key.to_proto(),
        );
        record.push_operation(&op);
        if !self.store(record, vec![creating]).await? {
            return Err(Error::Aborted(format!(
                "the metadata of key {} was removed while the key was being created; create it again",
                record.key_id
            )));
        }
        self.registry.insert(KeyEntry::from_record(
            Arc::new(record.clone()),
            generated.public_key,
        ));
        Ok(op)
    }

    /// Removes what a failed create left on the token; the purge finishes the job if this fails.
    async fn abandon(&self, record: &Record) {
        self.registry.remove(&record.key_id);
        self.note_write();
        if let Err(e) = self
            .hsm
            .destroy_managed_key(&record.key_id, &record.ck_id, record.key_label())
            .await
        {
            tracing::warn!(
                key_id = %record.key_id,
                error = %e,
                "could not remove the objects of a failed create; the purge removes them after {CREATING_TIMEOUT:?}"
            );
        }
    }

    /// A random key id no known key uses. The registry mirrors every p11kms document on the
    /// token as of the last scan (deleted and crashed-create leftovers included) and every
    /// config key; searching the token itself for the id would cost two searches of every
    /// object per create (seconds at thousands of keys on SoftHSM) to rule out a collision of
    /// 103 random bits with an object made outside p11kms. Such a collision would not go
    /// unnoticed: the next resolution would find two private keys with one `CKA_ID` and refuse
    /// the key, loudly.
    async fn fresh_key_id(&self) -> Result<String, Error> {
        for _ in 0..ID_ATTEMPTS {
            let id = ids::generate();
            let leftover = self
                .stale_creating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id);
            if self.registry.get_any(&id).is_some() || leftover {
                continue;
            }
            return Ok(id);
        }
        Err(Error::Internal {
            message: "could not draw an unused key id".into(),
            source: None,
        })
    }

    /// Changes a key's name, description, labels, status or deletion protection.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (config keys), HSM
    /// failures.
    pub async fn update(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        changes: KeyChanges,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        let entry = self
            .check_changeable(ctx, Action::Update, key_id, deadline)
            .await?;
        self.change(ctx, entry, Kind::Update, deadline, move |r, _| {
            live(r)?;
            let KeyChanges {
                name,
                description,
                labels,
                status,
                deletion_protection,
            } = changes.clone();
            if let Some(v) = name {
                r.name = v;
            }
            if let Some(v) = description {
                r.description = v;
            }
            if let Some(v) = labels {
                r.labels = v;
            }
            if let Some(v) = status {
                r.status = v;
            }
            if let Some(v) = deletion_protection {
                r.deletion_protection = v;
            }
            Ok(())
        })
        .await
    }

    /// Deletes a key: hidden at once, restorable until the retention window ends.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (deletion
    /// protection, config keys), HSM failures.
    pub async fn delete(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        let entry = self
            .check_changeable(ctx, Action::Delete, key_id, deadline)
            .await?;
        self.change(ctx, entry, Kind::Delete, deadline, |r, now| {
            live(r)?;
            if r.deletion_protection {
                return Err(Error::FailedPrecondition(format!(
                    "key {} has deletion protection; turn it off first (Update with update_mask \"deletion_protection\")",
                    r.key_id
                )));
            }
            r.deleted_at = Some(now);
            Ok(())
        })
        .await
    }

    /// Restores a deleted key within the retention window.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND (unknown, or past the window),
    /// FAILED_PRECONDITION (not deleted, config keys).
    pub async fn undelete(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        let entry = self
            .authorized(ctx, Action::Undelete, key_id, Want::Any, deadline)
            .await?;
        if entry.source == KeySource::Config {
            return Err(config_managed(key_id));
        }
        let retention = self.settings.deletion_retention();
        let hours = self.settings.deletion_retention_hours;
        self.change(ctx, entry, Kind::Undelete, deadline, move |r, now| {
            let Some(deleted) = r.deleted_at else {
                return Err(Error::FailedPrecondition(format!(
                    "key {} is not deleted",
                    r.key_id
                )));
            };
            if deleted + retention <= now {
                return Err(Error::NotFound(format!(
                    "asymmetric signature key {} was deleted more than {hours} h ago; it cannot be restored",
                    r.key_id
                )));
            }
            r.deleted_at = None;
            Ok(())
        })
        .await
    }

    /// Replaces a key's access bindings (kms.admin on the key). Keys declared in the config
    /// take their roles from the config only.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (config keys), HSM
    /// failures.
    pub async fn set_access_bindings(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        bindings: Vec<AccessBindingRecord>,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        let entry = self
            .check_changeable(ctx, Action::SetAccessBindings, key_id, deadline)
            .await?;
        let bindings = dedup(bindings);
        self.change(
            ctx,
            entry,
            Kind::SetAccessBindings,
            deadline,
            move |r, _| {
                live(r)?;
                r.access_bindings.clone_from(&bindings);
                Ok(())
            },
        )
        .await
    }

    /// Adds and removes access bindings of a key (kms.admin on the key). Adding a binding that
    /// exists and removing one that does not are no-ops.
    ///
    /// # Errors
    /// As [`KeyManager::set_access_bindings`].
    pub async fn update_access_bindings(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        deltas: Vec<BindingDelta>,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        let entry = self
            .check_changeable(ctx, Action::SetAccessBindings, key_id, deadline)
            .await?;
        self.change(
            ctx,
            entry,
            Kind::UpdateAccessBindings,
            deadline,
            move |r, _| {
                live(r)?;
                for delta in &deltas {
                    match delta {
                        BindingDelta::Add(b) => {
                            if !r.access_bindings.contains(b) {
                                r.access_bindings.push(b.clone());
                            }
                        }
                        BindingDelta::Remove(b) => r.access_bindings.retain(|x| x != b),
                    }
                }
                Ok(())
            },
        )
        .await
    }

    /// Applies `change` to an authorised key's document ([`KeyManager::mutate`]) as a task of
    /// its own, so that a client going away cannot stop it half-way, and notes the operation
    /// for the audit record.
    async fn change(
        self: &Arc<Self>,
        ctx: &RequestContext,
        entry: Arc<KeyEntry>,
        kind: Kind,
        deadline: Option<Instant>,
        change: impl Fn(&mut Record, SystemTime) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Result<Operation, Error> {
        let actor = ctx.actor();
        let this = Arc::clone(self);
        let op = detached(deadline, async move {
            this.mutate(&entry, kind, &actor, change).await
        })
        .await?;
        note_operation(ctx, &op);
        Ok(op)
    }

    /// Re-reads `entry`'s document from the token, applies `change`, records an operation of
    /// `kind` and writes it back, reading again if another replica changed it meanwhile.
    async fn mutate(
        &self,
        entry: &KeyEntry,
        kind: Kind,
        actor: &str,
        change: impl Fn(&mut Record, SystemTime) -> Result<(), Error>,
    ) -> Result<Operation, Error> {
        let started = SystemTime::now();
        let _guard = self.mutation.lock().await;
        let give_up = Instant::now() + MISSING_DOCUMENT_WAIT;
        let mut conflicts = 0;
        while conflicts < WRITE_ATTEMPTS {
            let Some((mut record, versions)) = self.fresh_record(&entry.id).await? else {
                if !self.key_material_exists(&entry.id).await? {
                    self.forget(&entry.id);
                    return Err(not_found(&entry.id));
                }
                if Instant::now() >= give_up {
                    return Err(Error::Unavailable {
                        message: format!(
                            "the metadata of key {} is being rewritten by another replica; retry",
                            entry.id
                        ),
                        source: None,
                    });
                }
                // Polled, not awaited on a signal: the change that makes it visible again
                // happens in another process.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if !record.writable() {
                return Err(Error::FailedPrecondition(format!(
                    "key {} was written by a newer p11kms (metadata schema {}); change it with that version",
                    entry.id, record.schema
                )));
            }
            if record.status == Status::Creating {
                return Err(Error::FailedPrecondition(format!(
                    "key {} is still being created",
                    entry.id
                )));
            }
            let before = record.clone();
            change(&mut record, started)?;
            record.stamp_changes(&before);
            record.revision += 1;
            let public_key = entry.public_key.clone();
            let key = KeyEntry::from_record(Arc::new(record.clone()), public_key.clone());
            let op = ops::completed(kind, &record.key_id, started, actor, &key.to_proto());
            record.push_operation(&op);
            if self.store(&record, versions).await? {
                self.registry
                    .insert(KeyEntry::from_record(Arc::new(record), public_key));
                tracing::info!(key_id = %entry.id, ?kind, "key changed");
                return Ok(op);
            }
            conflicts += 1;
            tracing::debug!(key_id = %entry.id, "the key changed on another replica meanwhile; reading it again");
        }
        Err(Error::Aborted(format!(
            "key {} kept changing on other replicas while this change was made; retry",
            entry.id
        )))
    }

    /// The key's document as the token holds it now (the newest version), with every stored
    /// version's bytes (what a write must replace).
    async fn fresh_record(
        &self,
        key_id: &str,
    ) -> Result<Option<(Record, Vec<StoredVersion>)>, Error> {
        let versions = self.hsm.read_data_objects(&metadata_label(key_id)).await?;
        let values: Vec<Vec<u8>> = versions.iter().map(|v| v.value.clone()).collect();
        match Record::merged(&values) {
            Ok(Some(r)) => Ok(Some((r, versions))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::FailedPrecondition(format!(
                "key {key_id}: its metadata on the token cannot be read ({e}); an operator must repair it"
            ))),
        }
    }

    /// Writes a document over the versions `old` and tells the other replicas. False when the
    /// document changed or vanished since `old` was read (nothing was written).
    async fn store(&self, record: &Record, old: Vec<StoredVersion>) -> Result<bool, Error> {
        let epoch = self.hsm.stats().epoch;
        let Some((_, announced)) = self
            .hsm
            .replace_data_object(&metadata_label(&record.key_id), old, record.to_json())
            .await?
        else {
            return Ok(false);
        };
        self.note_write();
        match announced {
            Ok(change) => self.announced(epoch, change),
            Err(e) => self.announce_failed(&e),
        }
        Ok(true)
    }

    /// Replaces the state nonce after a change. The change itself is already on the token, so a
    /// failure here does not fail the request: the refresher keeps trying.
    async fn announce(&self) {
        self.note_write();
        let epoch = self.hsm.stats().epoch;
        match self.hsm.bump_state_nonce().await {
            Ok(change) => self.announced(epoch, change),
            Err(e) => self.announce_failed(&e),
        }
    }

    /// When the nonce was still the one the last scan saw, nobody else has written since: this
    /// replica's registry already holds everything, so its own bump need not cause a scan (a
    /// bulk create would otherwise re-read every key each refresh). A change by anyone else
    /// makes the nonce differ, and is scanned.
    fn announced(&self, epoch: u64, change: crate::hsm::NonceChange) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == Some((epoch, change.before)) {
            *seen = Some((epoch, Some(change.after)));
        }
    }

    fn announce_failed(&self, e: &HsmError) {
        self.nonce_dirty.store(true, Ordering::Release);
        tracing::warn!(error = %e, "could not replace the state nonce; other replicas see this change once it succeeds");
    }

    fn forget(&self, key_id: &str) {
        self.registry.remove(key_id);
        self.hsm.forget_key(key_id);
    }

    fn note_write(&self) {
        *self.last_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.wrote.notify_one();
    }

    /// Whether the key pair of a key is still on the token. A document that cannot be found
    /// while its key material is there is being rewritten (or is hidden from this process for a
    /// moment, see [`Hsm::touch_token`]), not gone: keys are dropped only once their key
    /// material is destroyed, which the purge does before it removes the document.
    async fn key_material_exists(&self, key_id: &str) -> Result<bool, Error> {
        Ok(self
            .hsm
            .key_objects_exist(key_id.as_bytes(), &metadata_label(key_id))
            .await?)
    }

    /// After this replica's writes, touches the token a few times (SoftHSM-like tokens only).
    async fn touch_loop(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.wrote.notified() => {}
                () = stop.cancelled() => return,
            }
            // Jitter: replicas that stopped writing together must not touch together, or each
            // touch can hide the other's (the very problem touches solve).
            let jitter = || Duration::from_millis(rand::random_range(0..400));
            let first = Instant::now() + FIRST_TOUCH + jitter();
            for at in std::iter::once(None).chain(LATER_TOUCHES.into_iter().map(Some)) {
                // Later touches follow the last write, so the final one comes after a burst.
                let when = match at {
                    None => first,
                    Some(after) => {
                        let last = *self.last_write.lock().unwrap_or_else(|p| p.into_inner());
                        last.map_or(first, |l| l + after + jitter())
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep_until(when) => {}
                    () = stop.cancelled() => return,
                }
                if !self.hsm.replaces_data_objects() {
                    break;
                }
                if let Err(e) = self.hsm.touch_token().await {
                    tracing::debug!(error = %e, "token touch failed");
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Refresh
    // ---------------------------------------------------------------------------------------

    async fn refresh_loop(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.refresh_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; start-up has just scanned
        let mut last_start: Option<Instant> = None;
        let mut ticks = 0u32;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = self.rescan.requested() => true,
                () = stop.cancelled() => return,
            };
            let full = !forced && {
                ticks += 1;
                ticks % FULL_SCAN_EVERY == 0
            };
            if forced {
                if let Some(t) = last_start {
                    tokio::select! {
                        () = tokio::time::sleep_until(t + MIN_FORCED_SPACING) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
            let n = self.rescan.begin();
            last_start = Some(Instant::now());
            if let Err(e) = self.refresh(full).await {
                match e {
                    // Recovery logs the cause once; repeating it every interval adds nothing.
                    Error::Unavailable { source: None, .. } => {
                        tracing::debug!(error = %e, "key refresh skipped");
                    }
                    e => tracing::warn!(error = %crate::error::chain(&e), "key refresh failed"),
                }
            }
            self.rescan.end(n);
        }
    }

    /// Reconciles the registry with the token when the nonce or the epoch changed (always when
    /// `full`). Returns whether it scanned.
    async fn refresh(&self, full: bool) -> Result<bool, Error> {
        if self.nonce_dirty.swap(false, Ordering::AcqRel) {
            self.announce().await;
        }
        let stamp = self.registry.stamp_now();
        let epoch = self.hsm.stats().epoch;
        let nonce = self.hsm.read_state_nonce().await?;
        let seen = Some((epoch, nonce));
        if !full && *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == seen {
            return Ok(false);
        }
        let objects = self.hsm.scan_metadata_objects().await?;
        // A key that could not be resolved is tried again on the next refresh.
        if self.reconcile(objects, stamp).await? {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        }
        Ok(true)
    }

    /// Brings the registry in line with the documents read by a scan that began at `stamp`.
    /// Returns false when some key could not be resolved.
    async fn reconcile(
        &self,
        objects: Vec<crate::hsm::DataObject>,
        stamp: u64,
    ) -> Result<bool, Error> {
        let mut complete = true;
        let now = SystemTime::now();
        let mut present = HashSet::new();
        let mut new = Vec::new();
        let mut stale = Vec::new();
        let mut versions: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for object in objects {
            versions.entry(object.label).or_default().push(object.value);
        }
        for (label, values) in versions {
            let Some(id) = label.strip_prefix(KEY_LABEL_PREFIX) else {
                continue;
            };
            let record = match Record::merged(&values) {
                Ok(Some(r)) if r.key_id == id => r,
                Ok(Some(r)) => {
                    tracing::warn!(%label, key_id = %r.key_id, "a metadata object names another key; ignored");
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%label, error = %e, "unreadable key metadata on the token; ignored");
                    continue;
                }
            };
            present.insert(record.key_id.clone());
            if record.status == Status::Creating {
                if record.created_at + CREATING_TIMEOUT <= now {
                    stale.push(record.key_id);
                }
                continue;
            }
            match self.registry.get_any(&record.key_id) {
                Some(e) if e.source == KeySource::Config => {
                    tracing::warn!(key_id = %record.key_id, "the token holds API metadata for a key id the config declares; the config wins");
                }
                Some(e) => {
                    let current = e.record.as_deref();
                    // Written by this replica after the scan began: the scan may be older.
                    let newer_here =
                        e.stamp > stamp || current.is_some_and(|c| c.revision > record.revision);
                    if !newer_here && current != Some(&record) {
                        self.registry.insert(KeyEntry::from_record(
                            Arc::new(record),
                            e.public_key.clone(),
                        ));
                    }
                }
                None => new.push(record),
            }
        }
        *self
            .stale_creating
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = stale;

        if !new.is_empty() {
            let specs = new.iter().map(Record::spec).collect();
            let resolved = self.hsm.resolve_more(specs).await?;
            let mut unresolvable = self.unresolvable.lock().unwrap_or_else(|p| p.into_inner());
            for (record, (_, outcome)) in new.into_iter().zip(resolved) {
                match outcome {
                    Ok(public_key) => {
                        unresolvable.remove(&record.key_id);
                        self.registry
                            .insert(KeyEntry::from_record(Arc::new(record), public_key));
                    }
                    Err(e) => {
                        complete = false;
                        if unresolvable.insert(record.key_id.clone(), record.revision)
                            != Some(record.revision)
                        {
                            tracing::error!(key_id = %record.key_id, error = %e, "a key created through the API cannot be served");
                        }
                    }
                }
            }
        }

        for entry in self.registry.api_keys() {
            if !present.contains(&entry.id)
                && entry.stamp <= stamp
                && !self.key_material_exists(&entry.id).await?
            {
                tracing::info!(key_id = %entry.id, "key destroyed by another replica");
                self.forget(&entry.id);
            }
        }
        Ok(complete)
    }

    // ---------------------------------------------------------------------------------------
    // Purge
    // ---------------------------------------------------------------------------------------

    async fn purge_loop(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.purge_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            self.purge_expired().await;
        }
    }

    /// Destroys every key whose retention window has passed, and CREATING leftovers.
    async fn purge_expired(&self) {
        let now = SystemTime::now();
        let retention = self.settings.deletion_retention();
        let mut due: Vec<String> = self
            .registry
            .api_keys()
            .into_iter()
            .filter(|e| e.deleted_at.is_some_and(|d| d + retention <= now))
            .map(|e| e.id.clone())
            .collect();
        due.extend(
            self.stale_creating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        for key_id in due {
            if let Err(e) = self.purge(&key_id, now, retention).await {
                tracing::warn!(%key_id, error = %crate::error::chain(&e), "could not destroy an expired key; retrying later");
            }
        }
    }

    async fn purge(&self, key_id: &str, now: SystemTime, retention: Duration) -> Result<(), Error> {
        let _guard = self.mutation.lock().await;
        let Some((record, _)) = self.fresh_record(key_id).await? else {
            if !self.key_material_exists(key_id).await? {
                // Another replica destroyed it first.
                self.forget(key_id);
            }
            return Ok(());
        };
        let expired = record.deleted_at.is_some_and(|d| d + retention <= now)
            || (record.status == Status::Creating && record.created_at + CREATING_TIMEOUT <= now);
        if !expired {
            return Ok(()); // restored meanwhile; the refresher picks the change up
        }
        self.hsm
            .destroy_managed_key(key_id, &record.ck_id, record.key_label())
            .await?;
        self.registry.remove(key_id);
        self.stale_creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| id != key_id);
        self.announce().await;
        tracing::info!(%key_id, "key material and metadata destroyed on the token");
        Ok(())
    }
}
