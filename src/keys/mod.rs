//! Keys in the core's own terms, for every front: a key has an id, an algorithm (its spec and
//! default scheme), a status, one or more versions (each its own key pair on the token, with its
//! own pinned public key; the newest ready one is primary), aliases, a folder (tenant), name,
//! description, labels (Alibaba's tags), a creation time, deletion protection, a deletion
//! schedule, access bindings and its last operations.
//!
//! [`KeyRegistry`] is the in-memory image of the token that the signer reads: lookups are O(1)
//! and never touch the HSM. [`KeyManager`] writes keys, versions and aliases to the token (see
//! [`doc`] for how concurrent writes by several replicas compose) and keeps the registry in step.
//! Private-key handles are not kept here: they belong to the HSM's current epoch (see
//! [`crate::hsm`]), which knows each version by its label.
//!
//! Deleted keys stay in the registry (hidden from the Yandex fronts' Get, List and signing;
//! shown as PendingDeletion to Alibaba callers) until their key material is destroyed, so that
//! they can be restored and their operations still answered.

pub mod alias;
pub mod crdt;
pub mod doc;
pub mod ids;
mod legacy;
pub mod manager;
pub mod ops;
mod refresh;
mod registry;

pub use alias::AliasEntry;
pub use doc::{Binding, Deletion};
pub use manager::{BindingDelta, KeyChanges, KeyManager, NewKey};
pub use ops::{KeySnapshot, Kind as OperationKind, Operation};
pub use registry::KeyRegistry;

use crate::config::{KeyConfig, KeyStatus};
use crate::crypto::{Algorithm, PublicKey};
use doc::{KeyDoc, VersionState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Label every config-declared key carries, so API clients can tell them apart.
pub const CONFIG_SOURCE_LABEL: (&str, &str) = ("p11kms-source", "config");

/// Where a key's definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Declared in the config file; read-only through the APIs.
    Config,
    /// Created through an API; its state lives in data objects on the token.
    Api,
}

/// A key's lifecycle status (deletion is separate: see [`KeyEntry::deletion`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Being generated; never signs. Not published until generation has finished.
    #[serde(rename = "CREATING")]
    Creating,
    /// Signs (Alibaba: Enabled).
    #[serde(rename = "ACTIVE")]
    Active,
    /// Signing is refused (Alibaba: Disabled).
    #[serde(rename = "INACTIVE")]
    Inactive,
}

impl Status {
    /// The upper-case name (`ACTIVE`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "CREATING",
            Status::Active => "ACTIVE",
            Status::Inactive => "INACTIVE",
        }
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

/// Where a version is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionStatus {
    /// Its key pair is being generated.
    Pending,
    /// Usable.
    Ready,
    /// Its generation failed; its objects are destroyed.
    Abandoned,
}

/// One key version: a key pair on the token.
#[derive(Clone, Debug)]
pub struct Version {
    /// The version id (a GUID).
    pub id: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// The `CKA_LABEL` of its objects, which is also its name in the HSM layer.
    pub label: String,
    /// The `CKA_ID` of its objects.
    pub ck_id: Vec<u8>,
    /// Its lifecycle.
    pub status: VersionStatus,
    /// Its public key, once resolved on the token and checked against the pin; `None` for a
    /// ready version whose key pair cannot be resolved (it never signs).
    pub public_key: Option<PublicKey>,
}

/// A key the gateway serves.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// The key id.
    pub id: String,
    /// Its spec and default scheme.
    pub algorithm: Algorithm,
    /// CREATING, ACTIVE or INACTIVE.
    pub status: Status,
    /// Where it is defined.
    pub source: KeySource,
    /// The folder (tenant) it belongs to.
    pub folder_id: String,
    /// Name (may be empty).
    pub name: String,
    /// Description (may be empty).
    pub description: String,
    /// Labels (tags).
    pub labels: BTreeMap<String, String>,
    /// When it was created; for config-declared keys, when p11kms first served them (see
    /// `manager/adopt.rs`), `None` only before start-up has read it.
    pub created_at: Option<SystemTime>,
    /// Who created it (empty for config-declared keys).
    pub created_by: String,
    /// Whether deletion is refused.
    pub deletion_protection: bool,
    /// The scheduled deletion; a deleted key is hidden from the Yandex fronts.
    pub deletion: Option<Deletion>,
    /// The key's own access bindings (config keys have none: their roles come from the config).
    pub bindings: Vec<Binding>,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// Its most recent operations, oldest first.
    pub operations: Vec<Operation>,
    /// The merged document on the token (API keys only).
    pub(crate) doc: Option<Arc<KeyDoc>>,
    /// Registry sequence number of the insert that put this entry here.
    pub(crate) stamp: u64,
}

impl KeyEntry {
    /// A key declared in the config file and resolved on the token: one version.
    pub fn from_config(key: &KeyConfig, public_key: PublicKey) -> Self {
        let (k, v) = CONFIG_SOURCE_LABEL;
        Self {
            id: key.id.clone(),
            algorithm: key.algorithm(),
            status: key.status.into(),
            source: KeySource::Config,
            folder_id: key.folder_id().to_string(),
            name: key.name.clone().unwrap_or_else(|| key.id.clone()),
            description: String::new(),
            labels: BTreeMap::from([(k.to_string(), v.to_string())]),
            // Until the key manager has read (or recorded) its adoption time on the token.
            created_at: None,
            created_by: String::new(),
            deletion_protection: false,
            deletion: None,
            bindings: Vec::new(),
            versions: vec![Version {
                id: ids::first_version_id(&key.id),
                created_at: SystemTime::UNIX_EPOCH,
                label: key.id.clone(),
                ck_id: Vec::new(),
                status: VersionStatus::Ready,
                public_key: Some(public_key),
            }],
            operations: Vec::new(),
            doc: None,
            stamp: 0,
        }
    }

    /// A key created through an API, from its merged document and the public keys resolved for
    /// its ready versions (by version id). `None` without a genesis.
    pub(crate) fn from_doc(
        doc: Arc<KeyDoc>,
        resolved: &BTreeMap<String, PublicKey>,
    ) -> Option<Self> {
        let state = doc.state()?;
        let versions = state
            .versions
            .iter()
            .map(|(id, v)| Version {
                id: id.clone(),
                created_at: v.created_at,
                label: v.label.clone(),
                ck_id: hex::decode(&v.ck_id).unwrap_or_default(),
                status: match v.state {
                    VersionState::Pending => VersionStatus::Pending,
                    VersionState::Ready { .. } => VersionStatus::Ready,
                    VersionState::Abandoned => VersionStatus::Abandoned,
                },
                public_key: resolved.get(id).cloned(),
            })
            .collect();
        Some(Self {
            id: doc.key_id.clone(),
            algorithm: state.genesis.algorithm,
            status: state.status,
            source: KeySource::Api,
            folder_id: state.genesis.folder_id,
            name: state.name,
            description: state.description,
            labels: state.labels,
            created_at: Some(state.genesis.created_at),
            created_by: state.genesis.created_by,
            deletion_protection: state.deletion_protection,
            deletion: state.deletion,
            bindings: state.bindings,
            versions,
            operations: state.operations,
            doc: Some(doc),
            stamp: 0,
        })
    }

    /// Whether the Yandex fronts show and sign with it: not deleted, not being created.
    pub fn is_visible(&self) -> bool {
        self.deletion.is_none() && self.status != Status::Creating
    }

    /// When it was deleted.
    pub fn deleted_at(&self) -> Option<SystemTime> {
        self.deletion.as_ref().map(|d| d.at)
    }

    /// The ready versions, oldest first.
    pub fn ready_versions(&self) -> impl Iterator<Item = &Version> {
        self.versions
            .iter()
            .filter(|v| v.status == VersionStatus::Ready)
    }

    /// The primary version: the ready version created last.
    pub fn primary(&self) -> Option<&Version> {
        self.ready_versions().last()
    }

    /// The version with this id.
    pub fn version(&self, id: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The primary version's public key, if it is resolved.
    pub fn public_key(&self) -> Option<&PublicKey> {
        self.primary().and_then(|v| v.public_key.as_ref())
    }

    /// The public fields now.
    pub fn snapshot(&self) -> KeySnapshot {
        KeySnapshot {
            id: self.id.clone(),
            folder_id: self.folder_id.clone(),
            created_at: self.created_at.unwrap_or(SystemTime::UNIX_EPOCH),
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self.labels.clone(),
            status: self.status,
            algorithm: self.algorithm,
            deletion_protection: self.deletion_protection,
        }
    }

    /// Whether this key's own bindings name `binding`.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.bindings.contains(binding)
    }
}
