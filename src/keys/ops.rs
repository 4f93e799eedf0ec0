//! Key operations: the record of one completed change to a key, kept with the key on the token
//! so that every replica can answer for it (the Yandex fronts publish them through the
//! operation service; ListOperations lists a key's last [`MAX_OPERATIONS`]).
//!
//! Every change completes before the call returns, so an operation is always done, with the key
//! as it was right after the change.

use super::{ids, Status};
use crate::crypto::Algorithm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Operations kept per key.
pub const MAX_OPERATIONS: usize = 20;

/// What a key operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The key was created.
    Create,
    /// Name, description, labels, status or deletion protection changed.
    Update,
    /// The key was deleted (scheduled for destruction).
    Delete,
    /// A deleted key was restored.
    Undelete,
    /// The access bindings were replaced.
    SetAccessBindings,
    /// Access bindings were added or removed.
    UpdateAccessBindings,
    /// A new key version was made primary.
    CreateVersion,
}

/// A key's public fields at one moment (what a key operation's response shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySnapshot {
    /// Key id.
    pub id: String,
    /// Folder.
    pub folder_id: String,
    /// Creation time.
    #[serde(with = "super::doc::time")]
    pub created_at: SystemTime,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Status.
    pub status: Status,
    /// Algorithm (spec and default scheme).
    #[serde(with = "super::doc::algorithm")]
    pub algorithm: Algorithm,
    /// Deletion protection.
    pub deletion_protection: bool,
}

/// One completed operation on a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Operation id (the same shape as key ids).
    pub id: String,
    /// What it did.
    pub kind: Kind,
    /// When it started.
    #[serde(with = "super::doc::time")]
    pub created_at: SystemTime,
    /// When it finished.
    #[serde(with = "super::doc::time")]
    pub modified_at: SystemTime,
    /// Who asked for it (the caller's subject id).
    pub created_by: String,
    /// The key right after the change.
    pub key: KeySnapshot,
}

impl Operation {
    /// A completed operation of `kind` that started at `started`, by `actor`, leaving `key`.
    pub fn completed(kind: Kind, started: SystemTime, actor: &str, key: KeySnapshot) -> Self {
        Self {
            id: ids::generate(),
            kind,
            created_at: started,
            modified_at: SystemTime::now(),
            created_by: actor.to_string(),
            key,
        }
    }

    /// The id of the key it changed.
    pub fn key_id(&self) -> &str {
        &self.key.id
    }
}
