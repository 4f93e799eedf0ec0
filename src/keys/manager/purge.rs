//! Destroying what is due: deleted keys whose window has passed, creates and versions left
//! pending by a crash, and aliases of destroyed keys. The purge works from what the token holds,
//! not from the registry, so a key that cannot be served (its key material half destroyed by an
//! interrupted purge) is finished by whichever replica sees it next.
//!
//! Order matters for an interrupted purge: key pairs first, then the key's documents, those that
//! do not say the key is due before those that do. A document holds the merged state its writer
//! read plus its change (see `write.rs`), but a change that raced the deletion, or a crash
//! before the deletion replaced an older document, leaves documents without the deletion next to
//! one with it. As long as one document is left, it says the key is due and which key pairs it
//! had, so the next purge, on any replica, finishes (`tests/purge_kills.rs`).

use super::write::parse_object;
use super::{KeyManager, CREATING_TIMEOUT};
use crate::error::Error;
use crate::hsm::{alias_label, metadata_label, ALIAS_LABEL_PREFIX, KEY_LABEL_PREFIX};
use crate::keys::alias::AliasDoc;
use crate::keys::doc::{KeyDoc, KeyState, VersionState, Writer};
use crate::keys::Status;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// What is due for one key.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Destroy the whole key.
    Key,
    /// Destroy these pending versions (by id).
    Versions(Vec<String>),
}

/// What is due for a key in `state` at `now`.
fn due(state: &KeyState, now: SystemTime) -> Option<Due> {
    let expired = state.deletion.as_ref().is_some_and(|d| d.destroy_at <= now);
    let crashed_create =
        state.status == Status::Creating && state.genesis.created_at + CREATING_TIMEOUT <= now;
    if expired || crashed_create {
        return Some(Due::Key);
    }
    let stale: Vec<String> = state
        .versions
        .iter()
        .filter(|(_, v)| v.state == VersionState::Pending && v.created_at + CREATING_TIMEOUT <= now)
        .map(|(id, _)| id.clone())
        .collect();
    (!stale.is_empty()).then_some(Due::Versions(stale))
}

impl KeyManager {
    pub(super) async fn purge_loop(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.purge_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.purge_due().await {
                tracing::warn!(error = %crate::error::chain(&e), "the purge could not read the token; retrying later");
            }
        }
    }

    /// Reads every p11kms object and destroys what is due.
    async fn purge_due(&self) -> Result<(), Error> {
        let now = SystemTime::now();
        let retention = self.settings.deletion_retention();
        let objects = self.hsm.scan_metadata_objects().await?;
        let mut keys: HashMap<String, Vec<KeyDoc>> = HashMap::new();
        let mut aliases: BTreeMap<String, AliasDoc> = BTreeMap::new();
        for o in objects {
            if let Some(id) = o.label.strip_prefix(KEY_LABEL_PREFIX) {
                if let Ok(doc) = parse_object(&o.value, retention) {
                    keys.entry(id.to_string()).or_default().push(doc);
                }
            } else if let Some(name) = o.label.strip_prefix(ALIAS_LABEL_PREFIX) {
                if let Ok(doc) = AliasDoc::parse(&o.value) {
                    aliases
                        .entry(name.to_string())
                        .or_insert_with(|| AliasDoc {
                            alias: name.to_string(),
                            ..AliasDoc::default()
                        })
                        .merge(&doc);
                }
            }
        }
        let mut destroyed = HashSet::new();
        for (key_id, docs) in &keys {
            let Some(state) = KeyDoc::merged(docs).and_then(|d| d.state()) else {
                continue;
            };
            let Some(due) = due(&state, now) else {
                continue;
            };
            let outcome = match due {
                Due::Key => self.purge_key(key_id, now).await.map(|done| {
                    if done {
                        destroyed.insert(key_id.clone());
                    }
                }),
                Due::Versions(ids) => self.purge_versions(key_id, ids, now).await,
            };
            if let Err(e) = outcome {
                tracing::warn!(%key_id, error = %crate::error::chain(&e), "could not destroy what is due; retrying later");
            }
        }
        // Aliases of keys that are gone.
        for (name, doc) in aliases {
            let Some(target) = doc.target() else {
                continue;
            };
            if destroyed.contains(target) || !keys.contains_key(target) {
                let _guard = self.mutation.lock().await;
                if let Err(e) = self
                    .hsm
                    .destroy_data_objects(&alias_label(&name), |_| false)
                    .await
                {
                    tracing::warn!(alias = %name, error = %e, "could not remove the alias of a destroyed key; retrying later");
                    continue;
                }
                self.registry.set_alias(&name, None);
                tracing::info!(alias = %name, key_id = %target, "alias of a destroyed key removed");
            }
        }
        Ok(())
    }

    /// Destroys a key whose deletion window has passed (or whose create crashed), if its fresh
    /// state still says so. Returns whether it did.
    async fn purge_key(&self, key_id: &str, now: SystemTime) -> Result<bool, Error> {
        let _guard = self.mutation.lock().await;
        let Some((doc, _)) = self.read_doc(key_id).await? else {
            self.forget(key_id);
            return Ok(false); // another replica finished first
        };
        let Some(state) = doc.state() else {
            return Ok(false);
        };
        if due(&state, now) != Some(Due::Key) {
            return Ok(false); // restored meanwhile; the refresher picks the change up
        }
        for (_, v) in &state.versions {
            let ck_id = hex::decode(&v.ck_id).unwrap_or_default();
            self.hsm.destroy_key_pair(&ck_id, &v.label).await?;
        }
        // Documents that do not say the key is due go first (see the module docs): had the due
        // ones gone first, a purge stopped in between would leave a live key without its key
        // material, for good.
        let retention = self.settings.deletion_retention();
        self.hsm
            .destroy_data_objects(&metadata_label(key_id), move |value| {
                parse_object(value, retention)
                    .ok()
                    .and_then(|d| d.state())
                    .is_some_and(|s| due(&s, now) == Some(Due::Key))
            })
            .await?;
        self.hsm
            .destroy_data_objects(&metadata_label(key_id), |_| false)
            .await?;
        self.forget(key_id);
        tracing::info!(%key_id, "key material and metadata destroyed on the token");
        Ok(true)
    }

    /// Destroys versions left pending by a crashed CreateKeyVersion and records them abandoned.
    async fn purge_versions(
        &self,
        key_id: &str,
        ids: Vec<String>,
        now: SystemTime,
    ) -> Result<(), Error> {
        let Some((doc, _)) = self.read_doc(key_id).await? else {
            return Ok(());
        };
        for id in &ids {
            if let Some(v) = doc.versions.get(id) {
                if v.state == VersionState::Pending && v.created_at + CREATING_TIMEOUT <= now {
                    let ck_id = hex::decode(&v.ck_id).unwrap_or_default();
                    self.hsm.destroy_key_pair(&ck_id, &v.label).await?;
                }
            }
        }
        let abandon = move |w: &mut Writer, _: &KeyState, _: SystemTime| {
            for id in &ids {
                if let Some(mut v) = w.current.versions.get(id).cloned() {
                    if v.state == VersionState::Pending {
                        v.state = VersionState::Abandoned;
                        w.version(id, v);
                    }
                }
            }
            Ok(())
        };
        self.mutate(key_id, None, "", &abandon, BTreeMap::new())
            .await?;
        tracing::info!(%key_id, "versions left pending by a crash destroyed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::keys::doc::{Genesis, VersionDoc};
    use std::time::Duration;

    fn key(created_ago: Duration, ready: bool) -> (KeyDoc, SystemTime) {
        let now = SystemTime::now();
        let mut w = Writer::new(KeyDoc::change("k"), "r");
        w.genesis(Genesis {
            algorithm: Algorithm::EcdsaP256Sha256,
            folder_id: "f".into(),
            created_at: now - created_ago,
            created_by: String::new(),
        });
        w.status(Status::Active);
        let stamp = w.version_stamp();
        w.version(
            "v1",
            VersionDoc {
                created_at: now - created_ago,
                ck_id: "6b".into(),
                label: "k".into(),
                created: stamp,
                state: if ready {
                    VersionState::Ready {
                        spki_sha256: "00".repeat(32),
                    }
                } else {
                    VersionState::Pending
                },
            },
        );
        (w.current, now)
    }

    #[test]
    fn what_is_due() {
        let hour = Duration::from_secs(3600);
        let (fresh, now) = key(Duration::ZERO, false);
        assert_eq!(
            due(&fresh.state().unwrap(), now),
            None,
            "a create in progress"
        );
        let (crashed, now) = key(hour * 2, false);
        assert_eq!(due(&crashed.state().unwrap(), now), Some(Due::Key));
        let (live, now) = key(hour * 2, true);
        assert_eq!(due(&live.state().unwrap(), now), None);
        let mut w = Writer::new(live, "r");
        w.deletion(Some((now - hour, now + hour)));
        let deleted = w.current;
        assert_eq!(
            due(&deleted.state().unwrap(), now),
            None,
            "within the window"
        );
        assert_eq!(
            due(&deleted.state().unwrap(), now + hour * 2),
            Some(Due::Key)
        );
    }
}
