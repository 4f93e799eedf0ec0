//! The key registry: KMS key id → algorithm, status and the public key read from the token.
//!
//! Lookups are O(1) and never touch the HSM. Private-key handles are not kept here: they belong
//! to the HSM's current epoch (see [`crate::hsm`]).

use crate::config::KeyStatus;
use crate::crypto::{Algorithm, PublicKey};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Where a key's definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Declared in the config file; read-only through the API.
    Config,
}

/// A key the gateway serves.
#[derive(Debug)]
pub struct KeyEntry {
    /// The KMS key id.
    pub id: String,
    /// Its signature algorithm.
    pub algorithm: Algorithm,
    /// ACTIVE or INACTIVE.
    pub status: KeyStatus,
    /// The public key, read and checked when the key was resolved.
    pub public_key: PublicKey,
    /// Where it is defined.
    pub source: KeySource,
}

/// All keys, by id.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
}

impl KeyRegistry {
    /// Looks a key up.
    pub fn get(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Adds or replaces a key.
    pub fn insert(&self, entry: KeyEntry) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.id.clone(), Arc::new(entry));
    }

    /// Every key, sorted by id.
    pub fn all(&self) -> Vec<Arc<KeyEntry>> {
        let mut keys: Vec<_> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no key is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
