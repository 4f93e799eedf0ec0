//! The one path every change to a key takes: read the key's objects, merge, check, write the
//! merge with the change, tell the other replicas, update the registry.

use super::{detached, not_found, note_operation, KeyManager};
use crate::auth::RequestContext;
use crate::crypto::PublicKey;
use crate::error::{Error, Precondition};
use crate::hsm::{metadata_label, HsmError, NonceChange, StoredVersion};
use crate::keys::doc::{KeyDoc, KeyState, Writer};
use crate::keys::ops::{Kind, Operation};
use crate::keys::{legacy, KeyEntry, Status};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a change waits for a document that is briefly invisible (see
/// `key_material_exists`) before giving up with UNAVAILABLE.
const MISSING_DOCUMENT_WAIT: Duration = Duration::from_secs(5);
/// After a write, this replica touches the token (see [`crate::hsm::Hsm::touch_token`]) this
/// long after the write, and then this long after its last write, so that other processes on a
/// SoftHSM-like token catch up, also while writes keep coming.
const FIRST_TOUCH: Duration = Duration::from_millis(300);
const LATER_TOUCHES: [Duration; 2] = [Duration::from_millis(1500), Duration::from_millis(5000)];
/// How long after writing a document object the touches store it again: until the last touch
/// after it (5 s and up to 0.4 s of jitter).
const STORE_AGAIN_FOR: Duration = Duration::from_millis(6000);
/// Most document objects remembered for the touches (a bulk create writes many).
const MAX_RECENT_WRITES: usize = 256;

/// Parses one stored key object: this schema or the schema-1 document of older versions.
pub(super) fn parse_object(bytes: &[u8], retention: Duration) -> Result<KeyDoc, String> {
    if legacy::is_legacy(bytes) {
        legacy::parse(bytes, retention)
    } else {
        KeyDoc::parse(bytes)
    }
}

/// The public keys already resolved for a key's versions, by version id.
pub(super) fn resolved_keys(entry: Option<&KeyEntry>) -> BTreeMap<String, PublicKey> {
    entry
        .map(|e| {
            e.versions
                .iter()
                .filter_map(|v| Some((v.id.clone(), v.public_key.clone()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// What a change function is given: the writer and the key's effective state as read.
pub(super) type Change =
    dyn Fn(&mut Writer, &KeyState, SystemTime) -> Result<(), Error> + Send + Sync;

impl KeyManager {
    /// The key's documents as the token holds them now, merged, with the objects they came
    /// from (what a write replaces). Objects that cannot be read are left out (and left alone).
    ///
    /// # Errors
    /// FAILED_PRECONDITION when objects exist but none can be read; HSM failures.
    pub(super) async fn read_doc(
        &self,
        key_id: &str,
    ) -> Result<Option<(KeyDoc, Vec<StoredVersion>)>, Error> {
        let stored = self.hsm.read_data_objects(&metadata_label(key_id)).await?;
        let retention = self.settings.deletion_retention();
        let mut docs = Vec::new();
        let mut readable = Vec::new();
        let mut first_error = None;
        for v in stored {
            match parse_object(&v.value, retention) {
                Ok(d) if d.key_id == key_id => {
                    docs.push(d);
                    readable.push(v);
                }
                Ok(d) => {
                    first_error.get_or_insert(format!("a document names key {}", d.key_id));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (KeyDoc::merged(&docs), first_error) {
            (Some(doc), _) => Ok(Some((doc, readable))),
            (None, None) => Ok(None),
            (None, Some(e)) => Err(Error::precondition(
                Precondition::State,
                format!(
                    "key {key_id}: its metadata on the token cannot be read ({e}); an operator must repair it"
                ),
            )),
        }
    }

    /// Like [`KeyManager::read_doc`], waiting a moment for a document that is briefly
    /// invisible while its key material is there. `None` when the key is gone.
    async fn read_doc_of_live_key(
        &self,
        key_id: &str,
    ) -> Result<Option<(KeyDoc, Vec<StoredVersion>)>, Error> {
        let give_up = Instant::now() + MISSING_DOCUMENT_WAIT;
        loop {
            if let Some(found) = self.read_doc(key_id).await? {
                return Ok(Some(found));
            }
            if !self.key_material_exists(key_id).await? {
                return Ok(None);
            }
            if Instant::now() >= give_up {
                return Err(Error::Unavailable {
                    message: format!(
                        "the metadata of key {key_id} is being rewritten by another replica; retry"
                    ),
                    source: None,
                });
            }
            // Polled, not awaited on a signal: the change that makes it visible again happens
            // in another process.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Applies `change` to a key as a task of its own (a client going away cannot stop it
    /// half-way), records an operation of `kind` and notes it for the audit record.
    pub(super) async fn change(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        kind: Kind,
        deadline: Option<Instant>,
        change: Box<Change>,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let actor = ctx.actor();
        let this = Arc::clone(self);
        let key_id = key_id.to_string();
        let (entry, op) = detached(deadline, async move {
            this.mutate(&key_id, Some(kind), &actor, &*change, BTreeMap::new())
                .await
        })
        .await?;
        let op = op.expect("an operation was requested");
        note_operation(ctx, &op);
        Ok((entry, op))
    }

    /// Reads the key's documents from the token, applies `change` to the merge, records an
    /// operation of `kind` (if any) and writes the result over the documents read. `extra` adds
    /// public keys resolved for new versions.
    pub(super) async fn mutate(
        &self,
        key_id: &str,
        kind: Option<Kind>,
        actor: &str,
        change: &Change,
        extra: BTreeMap<String, PublicKey>,
    ) -> Result<(Arc<KeyEntry>, Option<Operation>), Error> {
        let started = SystemTime::now();
        let _guard = self.mutation.lock().await;
        let Some((mut doc, objects)) = self.read_doc_of_live_key(key_id).await? else {
            self.forget(key_id);
            return Err(not_found(key_id));
        };
        // A token read can miss objects another process wrote (SoftHSM's stale object list and
        // torn reads, see `Hsm::touch_token`). Had the change been made on such a read alone,
        // its writes would not supersede what this replica had already read and served, and a
        // conflict rule could then undo an acknowledged change (issue 11: an ACTIVE set after
        // an INACTIVE this replica was showing came out as a "concurrent" INACTIVE). What the
        // registry holds was on the token and a key's state only grows by merging, so the change
        // is made on top of both; the objects replaced are still only those read.
        if let Some(known) = self.registry.get_any(key_id).and_then(|e| e.doc.clone()) {
            doc.merge(&known);
        }
        if !doc.writable() {
            return Err(Error::precondition(
                Precondition::State,
                format!(
                    "key {key_id} was written by a newer p11kms (metadata schema {}); change it with that version",
                    doc.schema
                ),
            ));
        }
        let Some(state) = doc.state() else {
            return Err(Error::precondition(
                Precondition::Creating,
                format!("key {key_id} is still being created"),
            ));
        };
        if state.status == Status::Creating {
            return Err(Error::precondition(
                Precondition::Creating,
                format!("key {key_id} is still being created"),
            ));
        }
        let mut writer = Writer::new(doc, &self.replica);
        change(&mut writer, &state, started)?;
        let mut resolved = resolved_keys(self.registry.get_any(key_id).as_deref());
        resolved.extend(extra);
        let op = kind.map(|kind| {
            let after = KeyEntry::from_doc(Arc::new(writer.current.clone()), &resolved)
                .expect("the document has a genesis");
            let op = Operation::completed(kind, started, actor, after.snapshot());
            writer.operation(op.clone());
            op
        });
        let entry = self.store(writer.current, objects, &resolved).await?;
        tracing::info!(%key_id, ?kind, "key changed");
        Ok((entry, op))
    }

    /// Writes `doc` (which includes what `objects` held) over `objects`, tells the other
    /// replicas, and puts the result in the registry.
    pub(super) async fn store(
        &self,
        doc: KeyDoc,
        objects: Vec<StoredVersion>,
        resolved: &BTreeMap<String, PublicKey>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let epoch = self.hsm.stats().epoch;
        let (written, announced) = self
            .hsm
            .replace_data_objects(&metadata_label(&doc.key_id), objects, doc.to_json())
            .await?;
        self.note_written(written);
        match announced {
            Ok(change) => self.announced(epoch, change),
            Err(e) => self.announce_failed(&e),
        }
        let entry = KeyEntry::from_doc(Arc::new(doc), resolved).ok_or_else(|| Error::Internal {
            message: "a key document without a genesis was written".into(),
            source: None,
        })?;
        Ok(self.registry.insert(entry))
    }

    /// Replaces the state nonce after a change. The change itself is already on the token, so a
    /// failure here does not fail the request: the refresher keeps trying.
    pub(super) async fn announce(&self) {
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
    pub(super) fn announced(&self, epoch: u64, change: NonceChange) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == Some((epoch, change.before)) {
            *seen = Some((epoch, Some(change.after)));
        }
    }

    pub(super) fn announce_failed(&self, e: &HsmError) {
        self.nonce_dirty.store(true, Ordering::Release);
        tracing::warn!(error = %e, "could not replace the state nonce; other replicas see this change once it succeeds");
    }

    /// Drops a key from the registry and the HSM layer (its material is gone).
    pub(super) fn forget(&self, key_id: &str) {
        if let Some(entry) = self.registry.remove(key_id) {
            for v in &entry.versions {
                self.hsm.forget_key(&v.label);
            }
        }
    }

    pub(super) fn note_write(&self) {
        *self.last_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.wrote.notify_one();
    }

    /// [`KeyManager::note_write`] for a document object this replica just wrote, which the
    /// next touches store again (see [`crate::hsm::Hsm::touch_token`]).
    pub(super) fn note_written(&self, object: StoredVersion) {
        {
            let mut recent = self.written.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() >= MAX_RECENT_WRITES {
                recent.remove(0);
            }
            recent.push((Instant::now(), object));
        }
        self.note_write();
    }

    /// The document objects written recently enough to be stored again by a touch.
    fn recently_written(&self) -> Vec<StoredVersion> {
        let mut recent = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        recent.retain(|(at, _)| now.duration_since(*at) < STORE_AGAIN_FOR);
        recent.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Whether the first key pair of a key is still on the token. A document that cannot be
    /// found while its key material is there is being rewritten (or is hidden from this process
    /// for a moment, see [`crate::hsm::Hsm::touch_token`]), not gone: keys are dropped only once
    /// their key material is destroyed, which the purge does before it removes the documents.
    pub(super) async fn key_material_exists(&self, key_id: &str) -> Result<bool, Error> {
        Ok(self
            .hsm
            .key_objects_exist(key_id.as_bytes(), &metadata_label(key_id))
            .await?)
    }

    /// After this replica's writes, touches the token a few times (SoftHSM-like tokens only):
    /// [`FIRST_TOUCH`] after each burst of writes, then [`LATER_TOUCHES`] after the last write.
    /// A write during the later waits starts a new burst, so that it gets its first touch just
    /// as soon: under steady writes (several keys changing at once), waiting for a pause first
    /// left a write untouched for up to 5 s, and a replica that had read it torn missed it for
    /// that long, or for good once the window of [`STORE_AGAIN_FOR`] had passed
    /// (`tests/replica_races.rs`, lanes of concurrent trials).
    pub(super) async fn touch_loop(&self, stop: CancellationToken) {
        // Jitter: replicas that stopped writing together must not touch together, or each
        // touch can hide the other's (the very problem touches solve).
        let jitter = || Duration::from_millis(rand::random_range(0..400));
        loop {
            tokio::select! {
                () = self.wrote.notified() => {}
                () = stop.cancelled() => return,
            }
            'burst: loop {
                let first = Instant::now() + FIRST_TOUCH + jitter();
                tokio::select! {
                    () = tokio::time::sleep_until(first) => {}
                    () = stop.cancelled() => return,
                }
                if !self.touch().await {
                    break 'burst;
                }
                for after in LATER_TOUCHES {
                    // Later touches follow the last write, so the final one comes after a burst.
                    let last = *self.last_write.lock().unwrap_or_else(|p| p.into_inner());
                    let when = last.map_or(first, |l| l + after + jitter());
                    tokio::select! {
                        () = tokio::time::sleep_until(when) => {}
                        () = self.wrote.notified() => continue 'burst,
                        () = stop.cancelled() => return,
                    }
                    if !self.touch().await {
                        break 'burst;
                    }
                }
                break 'burst;
            }
        }
    }

    /// One touch; false on tokens that need none.
    async fn touch(&self) -> bool {
        if !self.hsm.replaces_data_objects() {
            return false;
        }
        let epoch = self.hsm.stats().epoch;
        match self.hsm.touch_token(self.recently_written()).await {
            Ok(Some(change)) => self.announced(epoch, change),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "token touch failed"),
        }
        true
    }
}
