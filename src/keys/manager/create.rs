//! Creating keys and key versions: each is a key pair generated on the token, recorded first as
//! pending and then as ready with its public key pinned.

use super::{detached, note_operation, KeyManager, NewKey, MAX_VERSIONS};
use crate::auth::authz::Want;
use crate::auth::{Action, RequestContext};
use crate::crypto::{Algorithm, PublicKey};
use crate::error::{Error, Precondition};
use crate::hsm::{metadata_label, ErrorClass, HsmError, StoredVersion};
use crate::keys::doc::{Genesis, KeyDoc, VersionDoc, VersionState, Writer};
use crate::keys::ops::{Kind, Operation};
use crate::keys::{ids, KeyEntry, Status, Version};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// A key or version still pending after this long was left by a crashed create and is
/// destroyed.
pub const CREATING_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a create waits for the generation budget when the request has no earlier deadline.
const GENERATION_WAIT: Duration = Duration::from_secs(60);
/// Attempts at drawing an unused key id before giving up (one collision is already absurd).
const ID_ATTEMPTS: usize = 8;

/// A generation failure the token will repeat is the caller's problem, not a retryable fault.
fn generation_error(algorithm: Algorithm, e: HsmError) -> Error {
    match e.class() {
        Some(ErrorClass::Request | ErrorClass::KeyConfig) => Error::precondition(
            Precondition::Unusable,
            format!(
                "the HSM cannot generate a {algorithm} key pair ({e}); choose another algorithm"
            ),
        ),
        _ => e.into(),
    }
}

/// The pin of a public key: SHA-256 of its DER SPKI, hex.
fn pin_of(key: &PublicKey) -> String {
    hex::encode(Sha256::digest(key.spki_der()))
}

impl KeyManager {
    /// Waits for a place in the generation budget, until `deadline` or a minute.
    async fn generation_permit(
        &self,
        deadline: Option<Instant>,
    ) -> Result<OwnedSemaphorePermit, Error> {
        let wait = Instant::now() + GENERATION_WAIT;
        let limit = deadline.map_or(wait, |d| d.min(wait));
        match tokio::time::timeout_at(limit, Arc::clone(&self.generation).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(Error::Unavailable {
                message: "the gateway is shutting down; retry on another replica".into(),
                source: None,
            }),
            Err(_) if deadline.is_some_and(|d| d <= wait) => Err(Error::DeadlineExceeded(
                "the request deadline passed while waiting for other key generations to finish"
                    .into(),
            )),
            Err(_) => Err(Error::ResourceExhausted(format!(
                "{} key generation(s) are already running; retry later or raise managed_keys.max_concurrent_generations",
                self.generation_budget
            ))),
        }
    }

    /// Creates a key: generates its key pair on the token and stores its state there. The
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
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        ctx.note(|a| {
            a.folder_id = Some(new.folder_id.clone());
            a.algorithm = Some(new.algorithm.name());
        });
        self.policy
            .authorize_folder(ctx, Action::Create, &new.folder_id)?;
        let actor = ctx.actor();
        let permit = self.generation_permit(deadline).await?;
        let this = Arc::clone(self);
        let (entry, op) = detached(deadline, async move {
            let _permit = permit;
            this.create_now(new, actor).await
        })
        .await?;
        ctx.note(|a| a.key_id = Some(entry.id.clone()));
        note_operation(ctx, &op);
        Ok((entry, op))
    }

    async fn create_now(
        &self,
        new: NewKey,
        actor: String,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let started = SystemTime::now();
        let key_id = self.fresh_key_id()?;
        let version_id = ids::first_version_id(&key_id);
        let mut w = Writer::new(KeyDoc::change(&key_id), &self.replica);
        w.genesis(Genesis {
            algorithm: new.algorithm,
            folder_id: new.folder_id.clone(),
            created_at: started,
            created_by: actor.clone(),
        });
        w.name(new.name);
        w.description(new.description);
        w.labels(&new.labels);
        w.status(Status::Active);
        w.protection(new.deletion_protection);
        let version = VersionDoc {
            created_at: started,
            ck_id: hex::encode(key_id.as_bytes()),
            label: key_id.clone(),
            created: w.version_stamp(),
            state: VersionState::Pending,
        };
        w.version(&version_id, version.clone());
        // Not announced: a key being created is published by no replica.
        let creating = self
            .hsm
            .create_data_object(&metadata_label(&key_id), w.current.to_json())
            .await?;
        self.note_write();
        match self
            .finish_create(w.current, creating, &version_id, version, &actor, started)
            .await
        {
            Ok(done) => {
                tracing::info!(%key_id, algorithm = %new.algorithm, folder_id = %new.folder_id, "key created");
                Ok(done)
            }
            Err(e) => {
                self.abandon_key(&key_id).await;
                Err(e)
            }
        }
    }

    async fn finish_create(
        &self,
        doc: KeyDoc,
        creating: StoredVersion,
        version_id: &str,
        mut version: VersionDoc,
        actor: &str,
        started: SystemTime,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let algorithm = doc
            .genesis
            .as_ref()
            .expect("a new key has a genesis")
            .algorithm;
        let generated = self
            .hsm
            .generate_key_pair(
                &version.label,
                algorithm,
                doc.key_id.as_bytes().to_vec(),
                version.label.clone(),
            )
            .await
            .map_err(|e| generation_error(algorithm, e))?;
        let mut w = Writer::new(doc, &self.replica);
        version.state = VersionState::Ready {
            spki_sha256: pin_of(&generated.public_key),
        };
        w.version(version_id, version);
        let resolved = BTreeMap::from([(version_id.to_string(), generated.public_key)]);
        let after = KeyEntry::from_doc(Arc::new(w.current.clone()), &resolved)
            .expect("a new key has a genesis");
        let op = Operation::completed(Kind::Create, started, actor, after.snapshot());
        w.operation(op.clone());
        let entry = self.store(w.current, vec![creating], &resolved).await?;
        Ok((entry, op))
    }

    /// Removes what a failed create left on the token; the purge finishes the job if this fails.
    async fn abandon_key(&self, key_id: &str) {
        self.registry.remove(key_id);
        self.note_write();
        let result = async {
            self.hsm.destroy_key_pair(key_id.as_bytes(), key_id).await?;
            self.hsm
                .destroy_data_objects(&metadata_label(key_id), |_| false)
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(
                %key_id,
                error = %e,
                "could not remove the objects of a failed create; the purge removes them after {CREATING_TIMEOUT:?}"
            );
        }
    }

    /// A random key id no known key uses. The registry and `known_ids` mirror every p11kms
    /// document on the token as of the last scan (deleted and crashed-create leftovers
    /// included) and every config key; searching the token itself for the id would cost two
    /// searches of every object per create (seconds at thousands of keys on SoftHSM) to rule
    /// out a collision of 103 random bits with an object made outside p11kms. Such a collision
    /// would not go unnoticed: the next resolution would find two private keys with one
    /// `CKA_ID` and refuse the key, loudly.
    fn fresh_key_id(&self) -> Result<String, Error> {
        for _ in 0..ID_ATTEMPTS {
            let id = ids::generate();
            let known = self
                .known_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id);
            if self.registry.get_any(&id).is_some() || known {
                continue;
            }
            return Ok(id);
        }
        Err(Error::Internal {
            message: "could not draw an unused key id".into(),
            source: None,
        })
    }

    /// Makes a new key pair for a key and, once generated, its primary version. The key must
    /// be ACTIVE and not deleted, have fewer than [`MAX_VERSIONS`] versions, and its primary
    /// must be at least the configured minimum interval old.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (state, limits,
    /// config keys), RESOURCE_EXHAUSTED, HSM failures.
    pub async fn create_version(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_ref: &str,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, Version), Error> {
        let entry = self
            .check_changeable(ctx, Action::Update, key_ref, Want::Any, deadline)
            .await?;
        let actor = ctx.actor();
        let permit = self.generation_permit(deadline).await?;
        let this = Arc::clone(self);
        let key_id = entry.id.clone();
        let (entry, op, version) = detached(deadline, async move {
            let _permit = permit;
            this.create_version_now(&key_id, &actor).await
        })
        .await?;
        note_operation(ctx, &op);
        Ok((entry, version))
    }

    async fn create_version_now(
        &self,
        key_id: &str,
        actor: &str,
    ) -> Result<(Arc<KeyEntry>, Operation, Version), Error> {
        let started = SystemTime::now();
        let version_id = ids::generate_version_id();
        let label = format!("{key_id}/{version_id}");
        let rules = self.rules.clone();
        let pending = {
            let (version_id, label) = (version_id.clone(), label.clone());
            move |w: &mut Writer, state: &crate::keys::doc::KeyState, now: SystemTime| {
                super::edit::usable_for_versions(key_id_of(w), state)?;
                let versions = state
                    .versions
                    .iter()
                    .filter(|(_, v)| v.state != VersionState::Abandoned)
                    .count();
                if versions >= MAX_VERSIONS {
                    return Err(Error::precondition(
                        Precondition::Limit,
                        format!(
                            "key {} has {versions} versions, the most a key may have",
                            key_id_of(w)
                        ),
                    ));
                }
                let newest = state
                    .versions
                    .iter()
                    .filter(|(_, v)| matches!(v.state, VersionState::Ready { .. }))
                    .map(|(_, v)| v.created_at)
                    .max();
                if let Some(newest) = newest {
                    let age = now.duration_since(newest).unwrap_or_default();
                    if age < rules.min_version_interval {
                        return Err(Error::precondition(
                            Precondition::Limit,
                            format!(
                                "the newest version of key {} is {} s old; a new version may be created {} s after the last one ([alibaba] min_key_version_interval_secs)",
                                key_id_of(w),
                                age.as_secs(),
                                rules.min_version_interval.as_secs()
                            ),
                        ));
                    }
                }
                let stamp = w.version_stamp();
                w.version(
                    &version_id,
                    VersionDoc {
                        created_at: now,
                        ck_id: hex::encode(label.as_bytes()),
                        label: label.clone(),
                        created: stamp,
                        state: VersionState::Pending,
                    },
                );
                Ok(())
            }
        };
        let (entry, _) = self
            .mutate(key_id, None, actor, &pending, BTreeMap::new())
            .await?;
        let generated = match self
            .hsm
            .generate_key_pair(
                &label,
                entry.algorithm,
                label.as_bytes().to_vec(),
                label.clone(),
            )
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.abandon_version(key_id, &version_id, &label).await;
                return Err(generation_error(entry.algorithm, e));
            }
        };
        let pin = pin_of(&generated.public_key);
        let ready = {
            let version_id = version_id.clone();
            move |w: &mut Writer, _: &crate::keys::doc::KeyState, _: SystemTime| {
                let mut v = w.current.versions[&version_id].clone();
                v.state = VersionState::Ready {
                    spki_sha256: pin.clone(),
                };
                w.version(&version_id, v);
                Ok(())
            }
        };
        let extra = BTreeMap::from([(version_id.clone(), generated.public_key)]);
        let (entry, op) = self
            .mutate(key_id, Some(Kind::CreateVersion), actor, &ready, extra)
            .await?;
        let version = entry
            .version(&version_id)
            .cloned()
            .expect("the new version is in the key");
        tracing::info!(%key_id, %version_id, "key version created");
        let _ = started;
        Ok((entry, op.expect("an operation was requested"), version))
    }

    /// Records a version whose generation failed as abandoned and removes its objects; the
    /// purge finishes the job if this fails.
    async fn abandon_version(&self, key_id: &str, version_id: &str, label: &str) {
        let _ = self.hsm.destroy_key_pair(label.as_bytes(), label).await;
        let version_id = version_id.to_string();
        let abandon = move |w: &mut Writer, _: &crate::keys::doc::KeyState, _: SystemTime| {
            if let Some(mut v) = w.current.versions.get(&version_id).cloned() {
                v.state = VersionState::Abandoned;
                w.version(&version_id, v);
            }
            Ok(())
        };
        if let Err(e) = self
            .mutate(key_id, None, "", &abandon, BTreeMap::new())
            .await
        {
            tracing::warn!(%key_id, error = %e, "could not record a failed key version; the purge cleans it up");
        }
    }
}

fn key_id_of(w: &Writer) -> &str {
    &w.current.key_id
}
