//! The key registry: KMS key id → algorithm, status, public key and the metadata the key service
//! publishes, for keys declared in the config file and keys created through the API.
//!
//! Lookups are O(1) and never touch the HSM: the token is the source of truth, and this is its
//! in-memory image. Private-key handles are not kept here: they belong to the HSM's current
//! epoch (see [`crate::hsm`]). API keys are written to the token first and then mirrored here;
//! changes by other replicas arrive through the refresher in [`manager`]. A lookup that misses
//! may ask for one immediate re-scan ([`KeyRegistry::lookup`]), so a key created through another
//! replica a moment ago is found at once rather than after the refresh interval.
//!
//! Deleted keys stay in the registry (hidden from [`KeyRegistry::get`], listing and signing)
//! until their key material is destroyed, so that they can be restored and their operations
//! still answered.

pub mod ids;
pub mod manager;
pub mod ops;
pub mod record;
mod refresh;

pub use manager::{BindingDelta, KeyChanges, KeyManager, NewKey};

use crate::api::yandex::grpc::pb::kms::{asymmetric_signature_key, AsymmetricSignatureKey};
use crate::api::yandex::grpc::pb::operation::Operation;
use crate::config::{KeyConfig, KeyStatus};
use crate::crypto::{Algorithm, PublicKey};
use record::Record;
use refresh::Rescan;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::SystemTime;
use tokio::time::Instant;

/// Label every config-declared key carries, so API clients can tell them apart.
pub const CONFIG_SOURCE_LABEL: (&str, &str) = ("p11kms-source", "config");

/// Where a key's definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Declared in the config file; read-only through the API.
    Config,
    /// Created through the key service; its metadata lives in a data object on the token.
    Api,
}

/// A key's lifecycle status (the API's `AsymmetricSignatureKey.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Being generated; never signs. Not published until generation has finished.
    #[serde(rename = "CREATING")]
    Creating,
    /// Signs.
    #[serde(rename = "ACTIVE")]
    Active,
    /// Signing is refused with FAILED_PRECONDITION.
    #[serde(rename = "INACTIVE")]
    Inactive,
}

impl Status {
    /// The wire enum value.
    pub fn to_proto(self) -> asymmetric_signature_key::Status {
        match self {
            Status::Creating => asymmetric_signature_key::Status::Creating,
            Status::Active => asymmetric_signature_key::Status::Active,
            Status::Inactive => asymmetric_signature_key::Status::Inactive,
        }
    }

    /// The proto enum name.
    pub fn name(self) -> &'static str {
        self.to_proto().as_str_name()
    }
}

impl From<KeyStatus> for Status {
    fn from(s: KeyStatus) -> Self {
        match s {
            KeyStatus::Active => Status::Active,
            KeyStatus::Inactive => Status::Inactive,
        }
    }
}

/// A key the gateway serves.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// The KMS key id.
    pub id: String,
    /// Its signature algorithm.
    pub algorithm: Algorithm,
    /// CREATING, ACTIVE or INACTIVE.
    pub status: Status,
    /// The public key, read and checked when the key was resolved.
    pub public_key: PublicKey,
    /// Where it is defined.
    pub source: KeySource,
    /// The folder it is listed under.
    pub folder_id: String,
    /// Name (may be empty).
    pub name: String,
    /// Description (may be empty).
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created (unknown for config-declared keys).
    pub created_at: Option<SystemTime>,
    /// Whether Delete is refused.
    pub deletion_protection: bool,
    /// When it was deleted; a deleted key is hidden until restored or destroyed.
    pub deleted_at: Option<SystemTime>,
    /// Its most recent operations, oldest first.
    pub operations: Vec<Operation>,
    /// The document stored on the token (API keys only).
    pub(crate) record: Option<Arc<Record>>,
    /// Registry sequence number of the insert that put this version here.
    stamp: u64,
}

impl KeyEntry {
    /// A key declared in the config file and resolved on the token.
    pub fn from_config(key: &KeyConfig, public_key: PublicKey) -> Self {
        let (k, v) = CONFIG_SOURCE_LABEL;
        Self {
            id: key.id.clone(),
            algorithm: key.algorithm(),
            status: key.status.into(),
            public_key,
            source: KeySource::Config,
            folder_id: key.folder_id().to_string(),
            name: String::new(),
            description: String::new(),
            labels: BTreeMap::from([(k.to_string(), v.to_string())]),
            created_at: None,
            deletion_protection: false,
            deleted_at: None,
            operations: Vec::new(),
            record: None,
            stamp: 0,
        }
    }

    /// A key created through the API, from its document on the token.
    pub(crate) fn from_record(record: Arc<Record>, public_key: PublicKey) -> Self {
        Self {
            id: record.key_id.clone(),
            algorithm: record.algorithm,
            status: record.status,
            public_key,
            source: KeySource::Api,
            folder_id: record.folder_id.clone(),
            name: record.name.clone(),
            description: record.description.clone(),
            labels: record.labels.clone(),
            created_at: Some(record.created_at),
            deletion_protection: record.deletion_protection,
            deleted_at: record.deleted_at,
            operations: record.decoded_operations(),
            record: Some(record),
            stamp: 0,
        }
    }

    /// Whether the key is visible to Get, List and signing.
    pub fn is_visible(&self) -> bool {
        self.deleted_at.is_none() && self.status != Status::Creating
    }

    /// The API resource.
    pub fn to_proto(&self) -> AsymmetricSignatureKey {
        AsymmetricSignatureKey {
            id: self.id.clone(),
            folder_id: self.folder_id.clone(),
            created_at: self.created_at.map(Into::into),
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            status: self.status.to_proto() as i32,
            signature_algorithm: self.algorithm.to_proto(),
            deletion_protection: self.deletion_protection,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Arc<KeyEntry>>,
    /// Folder → key ids in id order: List pages through this with keyset pagination.
    by_folder: HashMap<String, BTreeSet<String>>,
    /// Operation id → key id, for `OperationService.Get`.
    ops: HashMap<String, String>,
}

impl Inner {
    fn unindex(&mut self, entry: &KeyEntry) {
        if let Some(ids) = self.by_folder.get_mut(&entry.folder_id) {
            ids.remove(&entry.id);
            if ids.is_empty() {
                self.by_folder.remove(&entry.folder_id);
            }
        }
        for op in &entry.operations {
            if self.ops.get(&op.id) == Some(&entry.id) {
                self.ops.remove(&op.id);
            }
        }
    }

    fn index(&mut self, entry: &KeyEntry) {
        self.by_folder
            .entry(entry.folder_id.clone())
            .or_default()
            .insert(entry.id.clone());
        for op in &entry.operations {
            self.ops.insert(op.id.clone(), entry.id.clone());
        }
    }
}

/// All keys, by id, with a per-folder ordered index and an operation index.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    inner: RwLock<Inner>,
    /// Bumped on every insert; a scan that started before an insert must not undo it.
    seq: AtomicU64,
    /// Set when a refresher runs: misses then ask it for an immediate re-scan.
    rescan: OnceLock<Arc<Rescan>>,
}

impl KeyRegistry {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks a visible (not deleted) key up. O(1); never touches the HSM.
    pub fn get(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.read()
            .by_id
            .get(id)
            .filter(|e| e.is_visible())
            .cloned()
    }

    /// Looks any key up, deleted ones included.
    pub fn get_any(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.read().by_id.get(id).cloned()
    }

    /// Like [`KeyRegistry::get`]; on a miss, asks the refresher for one immediate re-scan of the
    /// token (shared with concurrent misses, rate-limited) and looks again. The wait ends at
    /// `deadline` or after a few seconds, whichever is first.
    pub async fn lookup(&self, id: &str, deadline: Option<Instant>) -> Option<Arc<KeyEntry>> {
        if let Some(entry) = self.get(id) {
            return Some(entry);
        }
        self.rescan_once(deadline).await;
        self.get(id)
    }

    /// Like [`KeyRegistry::get_any`], with a re-scan on a miss.
    pub async fn lookup_any(&self, id: &str, deadline: Option<Instant>) -> Option<Arc<KeyEntry>> {
        if let Some(entry) = self.get_any(id) {
            return Some(entry);
        }
        self.rescan_once(deadline).await;
        self.get_any(id)
    }

    /// The operation with `op_id` and its key (deleted keys included), re-scanning on a miss.
    pub async fn lookup_operation(
        &self,
        op_id: &str,
        deadline: Option<Instant>,
    ) -> Option<Operation> {
        if let Some(op) = self.operation(op_id) {
            return Some(op);
        }
        self.rescan_once(deadline).await;
        self.operation(op_id)
    }

    fn operation(&self, op_id: &str) -> Option<Operation> {
        self.operation_entry(op_id).map(|(op, _)| op)
    }

    /// The operation with `op_id` and the key it belongs to (deleted keys included), without a
    /// re-scan.
    pub fn operation_entry(&self, op_id: &str) -> Option<(Operation, Arc<KeyEntry>)> {
        let inner = self.read();
        let key_id = inner.ops.get(op_id)?;
        let entry = inner.by_id.get(key_id)?;
        let op = entry.operations.iter().find(|op| op.id == op_id)?.clone();
        Some((op, Arc::clone(entry)))
    }

    /// Asks the refresher for one immediate re-scan of the token (shared with concurrent
    /// requests, rate-limited) and waits for it, until `deadline` or a few seconds. Callers
    /// decide who may cause one (see [`crate::auth::authz`]).
    pub(crate) async fn rescan_once(&self, deadline: Option<Instant>) {
        if let Some(rescan) = self.rescan.get() {
            rescan.request_and_wait(deadline).await;
        }
    }

    pub(crate) fn set_rescan(&self, rescan: Arc<Rescan>) {
        let _ = self.rescan.set(rescan);
    }

    /// The current insert sequence number; entries inserted from now on have a larger stamp.
    pub(crate) fn stamp_now(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Adds or replaces a key.
    pub fn insert(&self, mut entry: KeyEntry) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // Stamped under the write lock, so stamps follow the order of inserts.
        entry.stamp = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(old) = inner.by_id.get(&entry.id).cloned() {
            inner.unindex(&old);
        }
        inner.index(&entry);
        inner.by_id.insert(entry.id.clone(), Arc::new(entry));
    }

    /// Removes a key.
    pub fn remove(&self, id: &str) -> Option<Arc<KeyEntry>> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let old = inner.by_id.remove(id)?;
        inner.unindex(&old);
        Some(old)
    }

    /// Up to `limit` visible keys of `folder_id` with ids greater than `after`, in id order, and
    /// whether more follow. Keyset pagination: keys created meanwhile never shift a page.
    pub fn page(
        &self,
        folder_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<KeyEntry>>, bool) {
        self.page_where(folder_id, after, limit, |_| true)
    }

    /// Like [`KeyRegistry::page`], counting only the keys `keep` accepts.
    pub fn page_where(
        &self,
        folder_id: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&KeyEntry) -> bool,
    ) -> (Vec<Arc<KeyEntry>>, bool) {
        use std::ops::Bound;
        let inner = self.read();
        let Some(ids) = inner.by_folder.get(folder_id) else {
            return (Vec::new(), false);
        };
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        let mut visible = ids
            .range::<String, _>((start, Bound::Unbounded))
            .filter_map(|id| inner.by_id.get(id))
            .filter(|e| e.is_visible() && keep(e));
        let page: Vec<_> = visible.by_ref().take(limit).cloned().collect();
        let more = visible.next().is_some();
        (page, more)
    }

    /// Every visible key, sorted by id.
    pub fn all(&self) -> Vec<Arc<KeyEntry>> {
        let mut keys: Vec<_> = self
            .read()
            .by_id
            .values()
            .filter(|e| e.is_visible())
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// Every key created through the API, deleted ones included.
    pub(crate) fn api_keys(&self) -> Vec<Arc<KeyEntry>> {
        self.read()
            .by_id
            .values()
            .filter(|e| e.source == KeySource::Api)
            .cloned()
            .collect()
    }

    /// Number of keys, deleted ones included.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when no key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
