//! Keeping the registry in step with the token: the refresher, and the reconciliation of one
//! scan of every p11kms object.

use super::write::{parse_object, resolved_keys};
use super::KeyManager;
use crate::config::ObjectSelector;
use crate::error::Error;
use crate::hsm::{DataObject, KeySpec, ADOPTED_LABEL_PREFIX, ALIAS_LABEL_PREFIX, KEY_LABEL_PREFIX};
use crate::keys::alias::{AliasDoc, AliasEntry};
use crate::keys::doc::{KeyDoc, VersionState};
use crate::keys::refresh::MIN_FORCED_SPACING;
use crate::keys::{KeyEntry, KeySource, Status};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Every this many refresh intervals the token is scanned even if the nonce did not change: a
/// safety net that bounds how long any missed change can stay unseen, and when keys that could
/// not be resolved are tried again.
const FULL_SCAN_EVERY: u32 = 12;

/// The key pair objects of each ready version of `doc` that has no resolved public key yet.
fn unresolved_specs(
    doc: &KeyDoc,
    resolved: &BTreeMap<String, crate::crypto::PublicKey>,
) -> Vec<(String, KeySpec)> {
    let Some(genesis) = &doc.genesis else {
        return Vec::new();
    };
    doc.versions
        .iter()
        .filter(|(id, _)| !resolved.contains_key(*id))
        .filter_map(|(id, v)| {
            let VersionState::Ready { spki_sha256 } = &v.state else {
                return None;
            };
            let mut pin = [0u8; 32];
            hex::decode_to_slice(spki_sha256, &mut pin).ok()?;
            Some((
                id.clone(),
                KeySpec {
                    key_id: v.label.clone(),
                    selector: ObjectSelector::Id(hex::decode(&v.ck_id).ok()?),
                    algorithm: genesis.algorithm,
                    pin_sha256: Some(pin),
                },
            ))
        })
        .collect()
}

impl KeyManager {
    pub(super) async fn refresh_loop(&self, stop: CancellationToken) {
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
            let result = match self.refresh(full).await {
                // A miss may be a key whose key pair this process could not see yet.
                Ok(false) if forced => self.retry_unresolvable().await,
                other => other.map(|_| ()),
            };
            if let Err(e) = result {
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
    pub(super) async fn refresh(&self, full: bool) -> Result<bool, Error> {
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
        self.reconcile(objects, stamp).await?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(true)
    }

    /// Tries again to resolve keys that could not be (their key pair was not visible).
    async fn retry_unresolvable(&self) -> Result<(), Error> {
        let pending: Vec<String> = self
            .unresolvable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let stamp = self.registry.stamp_now();
        let mut docs = Vec::new();
        for key_id in pending {
            if let Some((doc, _)) = self.read_doc(&key_id).await? {
                docs.push(doc);
            }
        }
        self.publish(docs, stamp).await
    }

    /// Brings the registry in line with the objects read by a scan that began at `stamp`.
    async fn reconcile(&self, objects: Vec<DataObject>, stamp: u64) -> Result<(), Error> {
        let retention = self.settings.deletion_retention();
        let mut keys: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        let mut aliases: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        let mut adopted: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for object in objects {
            if let Some(id) = object.label.strip_prefix(KEY_LABEL_PREFIX) {
                keys.entry(id.to_string()).or_default().push(object.value);
            } else if let Some(name) = object.label.strip_prefix(ALIAS_LABEL_PREFIX) {
                aliases
                    .entry(name.to_string())
                    .or_default()
                    .push(object.value);
            } else if let Some(id) = object.label.strip_prefix(ADOPTED_LABEL_PREFIX) {
                adopted
                    .entry(id.to_string())
                    .or_default()
                    .push(object.value);
            }
        }
        self.apply_adoptions(&adopted);
        let mut present = HashSet::new();
        let mut docs = Vec::new();
        for (id, values) in keys {
            present.insert(id.clone());
            let mut parsed = Vec::new();
            for v in &values {
                match parse_object(v, retention) {
                    Ok(d) if d.key_id == id => parsed.push(d),
                    Ok(d) => {
                        tracing::warn!(label = %format!("{KEY_LABEL_PREFIX}{id}"), key_id = %d.key_id, "a metadata object names another key; ignored");
                    }
                    Err(e) => {
                        tracing::warn!(label = %format!("{KEY_LABEL_PREFIX}{id}"), error = %e, "unreadable key metadata on the token; ignored");
                    }
                }
            }
            if let Some(doc) = KeyDoc::merged(&parsed) {
                docs.push(doc);
            }
        }
        self.known_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&present);
        // Keys no longer on the token are not tried again (each try reads the token).
        self.unresolvable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| present.contains(id));
        self.publish(docs, stamp).await?;

        let mut scanned = BTreeMap::new();
        for (name, values) in aliases {
            let mut doc = AliasDoc::default();
            for v in &values {
                match AliasDoc::parse(v) {
                    Ok(d) if d.alias == name => doc.merge(&d),
                    _ => {
                        tracing::warn!(alias = %name, "unreadable alias document on the token; ignored")
                    }
                }
            }
            if let Some(key_id) = doc.target() {
                scanned.insert(
                    name.clone(),
                    AliasEntry {
                        name,
                        key_id: key_id.to_string(),
                    },
                );
            }
        }
        self.registry.set_aliases(scanned, stamp);

        for entry in self.registry.api_keys() {
            if !present.contains(&entry.id)
                && entry.stamp <= stamp
                && !self.key_material_exists(&entry.id).await?
            {
                tracing::info!(key_id = %entry.id, "key destroyed by another replica");
                self.forget(&entry.id);
            }
        }
        Ok(())
    }

    /// Puts keys read from the token into the registry, resolving their new versions.
    async fn publish(&self, docs: Vec<KeyDoc>, stamp: u64) -> Result<(), Error> {
        let mut todo: Vec<(KeyDoc, BTreeMap<String, crate::crypto::PublicKey>)> = Vec::new();
        for scanned in docs {
            let existing = self.registry.get_any(&scanned.key_id);
            // A read can miss objects another process wrote a moment ago (SoftHSM's stale object
            // list, see `Hsm::touch_token`) while the objects this replica knew were already
            // folded into them and destroyed: it returns an older state. What the registry holds
            // was on the token, and a key's state only grows by merging, so it never goes back.
            let doc = match existing.as_deref().and_then(|e| e.doc.as_deref()) {
                Some(known) => {
                    let mut joined = known.clone();
                    joined.merge(&scanned);
                    joined
                }
                None => scanned,
            };
            let Some(state) = doc.state() else {
                continue; // changes without their create: the purge decides
            };
            if state.status == Status::Creating {
                continue; // published by no replica until generated
            }
            match existing {
                Some(e) if e.source == KeySource::Config => {
                    tracing::warn!(key_id = %doc.key_id, "the token holds API metadata for a key id the config declares; the config wins");
                }
                // Written by this replica after the scan began: the scan may be older.
                Some(e) if e.stamp > stamp => {}
                Some(e) if e.doc.as_deref() == Some(&doc) => {}
                existing => {
                    let resolved = resolved_keys(existing.as_deref());
                    todo.push((doc, resolved));
                }
            }
        }
        let mut specs = Vec::new();
        let mut owners = Vec::new();
        for (i, (doc, resolved)) in todo.iter().enumerate() {
            for (version_id, spec) in unresolved_specs(doc, resolved) {
                specs.push(spec);
                owners.push((i, version_id));
            }
        }
        let outcomes = if specs.is_empty() {
            Vec::new()
        } else {
            self.hsm.resolve_more(specs).await?
        };
        let mut failed: HashMap<usize, String> = HashMap::new();
        for ((i, version_id), (_, outcome)) in owners.into_iter().zip(outcomes) {
            match outcome {
                Ok(public_key) => {
                    todo[i].1.insert(version_id, public_key);
                }
                Err(e) => {
                    failed.entry(i).or_insert_with(|| e.to_string());
                }
            }
        }
        let mut unresolvable = self.unresolvable.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (doc, resolved)) in todo.into_iter().enumerate() {
            let key_id = doc.key_id.clone();
            let clock = doc.clock();
            if let Some(reason) = failed.get(&i) {
                if unresolvable.insert(key_id.clone(), clock) != Some(clock) {
                    tracing::error!(%key_id, error = %reason, "a version of a key created through the API cannot be served");
                }
            } else {
                unresolvable.remove(&key_id);
            }
            // A key none of whose versions resolves is not served; one with some is, and its
            // unresolved versions refuse to sign.
            if resolved.is_empty() {
                continue;
            }
            if let Some(entry) = KeyEntry::from_doc(Arc::new(doc), &resolved) {
                self.registry.insert(entry);
            }
        }
        Ok(())
    }
}
