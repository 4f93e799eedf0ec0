//! p11kms's own objects on the token: the `CKO_DATA` objects holding the state of keys created
//! through an API and of aliases (several per key: one per change until compacted, see
//! `keys/doc.rs`), and one state nonce that every writer replaces after a change.
//!
//! The token is the only shared state between replicas, so these objects are how replicas see
//! each other's changes: a replica reads the nonce on every refresh and scans the metadata
//! objects only when it changed. All of them are `CKA_TOKEN`, `CKA_PRIVATE` (visible only after
//! login) and carry `CKA_APPLICATION = "p11kms"`, so a search finds exactly ours.
//!
//! Objects can vanish between a search and the next call when another replica destroys them.
//! On SoftHSM that surfaces as `CKR_OBJECT_HANDLE_INVALID`, which the classifier treats as a
//! lost login; here it only means "gone", so it is handled before it can start a recovery.
//!
//! # Writing
//! Documents are immutable objects. A change writes a new object holding the merge of what the
//! writer read and its change (see `keys/doc.rs`), then destroys exactly the objects it read
//! ([`Hsm::replace_data_objects`]); objects another replica wrote meanwhile are left alone and
//! merged by every reader, so no write can undo another. A crash in between, or two replicas
//! writing at once, leaves more objects than needed, never less state; the next write folds
//! them. (Changing `CKA_VALUE` in place would not be safe: two writers could each overwrite the
//! other's merge. SoftHSMv2 refuses it for data objects anyway, `CKR_ATTRIBUTE_READ_ONLY`.)
//!
//! # Searching
//! `C_FindObjects` costs O(objects on the token); on SoftHSMv2 it re-reads every object's file
//! (about 7,500 of them with 2,500 keys). So a write never searches: it works on the versions
//! its caller read ([`StoredVersion`], handles valid in one epoch), and the nonce's handles are
//! remembered between bumps. Searches happen when reading a document, on refresh (the nonce),
//! and when a replica scans all documents after a change.

use super::error::{Context as _, HsmError};
use super::{Hsm, Retry};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

/// `CKA_APPLICATION` of every data object p11kms owns.
pub const APPLICATION: &str = "p11kms";
/// `CKA_LABEL` of the state nonce.
pub const NONCE_LABEL: &str = "p11kms/state-nonce";
/// `CKA_LABEL` prefix of key metadata objects; the key id follows.
pub const KEY_LABEL_PREFIX: &str = "p11kms/key/";
/// `CKA_LABEL` prefix of alias objects; the alias name (`alias/…`) follows.
pub const ALIAS_LABEL_PREFIX: &str = "p11kms/alias/";
/// `CKA_LABEL` prefix of the objects recording when a config-declared key was first served;
/// the key id follows (see `keys/manager/adopt.rs`).
pub const ADOPTED_LABEL_PREFIX: &str = "p11kms/adopted/";

/// `CKA_LABEL` of the short-lived object [`Hsm::touch_token`] creates.
const TOUCH_LABEL: &str = "p11kms/touch";

/// Bytes of randomness in a state nonce.
const NONCE_LEN: usize = 16;

/// The `CKA_LABEL` of a key's metadata objects.
pub fn metadata_label(key_id: &str) -> String {
    format!("{KEY_LABEL_PREFIX}{key_id}")
}

/// The `CKA_LABEL` of an alias's objects.
pub fn alias_label(alias: &str) -> String {
    format!("{ALIAS_LABEL_PREFIX}{alias}")
}

/// What a nonce bump changed (see [`Hsm::bump_state_nonce`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceChange {
    /// The nonce as read just before.
    pub before: Option<Vec<u8>>,
    /// The nonce as it reads now, unless someone else wrote meanwhile.
    pub after: Vec<u8>,
}

/// One stored version of a document: the value it had when read or written, and where it is.
/// The handle is only used in the epoch it belongs to, and only after checking that the object
/// still carries the same label and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    epoch: u64,
    handle: ObjectHandle,
    /// `CKA_VALUE`.
    pub value: Vec<u8>,
}

/// One p11kms data object as read from the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataObject {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_VALUE`.
    pub value: Vec<u8>,
}

/// The search template of p11kms data objects, optionally with one label.
fn ours(label: Option<&str>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Application(APPLICATION.as_bytes().to_vec()),
    ];
    if let Some(label) = label {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    t
}

/// True when `e` says the object is gone (destroyed by another process since it was found).
fn vanished(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
    )
}

/// An object another process is storing at this moment, read half-written: SoftHSMv2 (2.6)
/// answers CKR_ATTRIBUTE_VALUE_INVALID for it (see [`Hsm::touch_token`]). Its writer stores it
/// again, or a later change replaces it; until then it is left out of what was read, as if not
/// yet written (a write then leaves it in place, and a scan merges it later). Failing the call
/// instead failed a client's change for another replica's write (issue 11, replica races).
fn torn(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::AttributeValueInvalid, _))
}

/// Reads `CKA_LABEL` and `CKA_VALUE`; `None` when the object vanished meanwhile, or cannot be
/// read right now (see [`torn`]).
fn read_object(session: &Session, handle: ObjectHandle) -> Result<Option<DataObject>, HsmError> {
    let attrs = match session.get_attributes(handle, &[AttributeType::Label, AttributeType::Value])
    {
        Ok(a) => a,
        Err(e) if vanished(&e) => return Ok(None),
        Err(e) if torn(&e) => {
            tracing::debug!(error = %e, "an object being stored by another process; left out of this read");
            return Ok(None);
        }
        Err(e) => return Err(HsmError::call("C_GetAttributeValue", e)),
    };
    let mut object = DataObject {
        label: String::new(),
        value: Vec::new(),
    };
    for a in attrs {
        match a {
            Attribute::Label(l) => object.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Value(v) => object.value = v,
            _ => {}
        }
    }
    Ok(Some(object))
}

/// The handles and values of the p11kms data objects labelled `label`.
fn read_labelled(session: &Session, label: &str) -> Result<Vec<(ObjectHandle, Vec<u8>)>, HsmError> {
    let mut out = Vec::new();
    for h in find(session, &ours(Some(label)))? {
        if let Some(o) = read_object(session, h)? {
            out.push((h, o.value));
        }
    }
    Ok(out)
}

/// Creates a p11kms data object.
fn create(session: &Session, label: &str, value: Vec<u8>) -> Result<ObjectHandle, HsmError> {
    let mut t = ours(Some(label));
    t.extend([
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Value(value),
    ]);
    session.create_object(&t).context("C_CreateObject")
}

/// Stores the document `v` again, unchanged, if it is still there (see [`Hsm::touch_token`]).
/// Returns whether it did; objects destroyed meanwhile, and tokens that refuse the change,
/// are skipped.
fn store_again(session: &Session, v: &StoredVersion) -> Result<bool, HsmError> {
    let Some(o) = read_object(session, v.handle)? else {
        return Ok(false);
    };
    let ours = [KEY_LABEL_PREFIX, ALIAS_LABEL_PREFIX, ADOPTED_LABEL_PREFIX]
        .iter()
        .any(|p| o.label.starts_with(p));
    if !ours || o.value != v.value {
        return Ok(false);
    }
    match session.update_attributes(v.handle, &[Attribute::Label(o.label.into_bytes())]) {
        Ok(()) => Ok(true),
        Err(e) if vanished(&e) => Ok(false),
        Err(CkError::Pkcs11(RvError::AttributeReadOnly | RvError::ActionProhibited, _)) => {
            Ok(false)
        }
        Err(e) => Err(HsmError::call("C_SetAttributeValue", e)),
    }
}

/// How p11kms writes its objects on this token.
#[derive(Debug, Default)]
pub(crate) struct WriteMode {
    /// Set once the token refused `C_SetAttributeValue(CKA_VALUE)`; replace from then on.
    replace: std::sync::atomic::AtomicBool,
    /// Taken, before a session, by p11kms's object management: exclusively by every call that
    /// creates or destroys objects (key pairs included), shared by every object search.
    /// SoftHSMv2 fails object creation at random with `CKR_GENERAL_ERROR` when another thread
    /// of the process creates objects or searches the token at the same time (a search reads
    /// the half-written object; softhsm/SoftHSMv2#573), and that error means a recovery.
    /// Key management is a rare control-plane activity, so it takes turns; signing never
    /// searches or creates objects and does not take part. Waiting holds no session, so it
    /// never takes sessions from signing.
    turn: tokio::sync::RwLock<()>,
    /// The nonce objects' handles as last seen, with their epoch (saves a search per bump).
    nonce: std::sync::Mutex<Option<(u64, Vec<ObjectHandle>)>>,
}

impl WriteMode {
    /// Waits for this process's turn to create or destroy objects.
    pub(crate) async fn turn(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.turn.write().await
    }

    /// Waits until no object is being created or destroyed by this process.
    pub(crate) async fn search_turn(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.turn.read().await
    }

    fn replacing(&self) -> bool {
        self.replace.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn nonce_handles(&self, epoch: u64) -> Option<Vec<ObjectHandle>> {
        match &*self.nonce.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((e, handles)) if *e == epoch && !handles.is_empty() => Some(handles.clone()),
            _ => None,
        }
    }

    fn remember_nonce(&self, epoch: u64, handles: Vec<ObjectHandle>) {
        *self.nonce.lock().unwrap_or_else(|p| p.into_inner()) = Some((epoch, handles));
    }

    /// Sets `CKA_VALUE` in place: `Some(true)` when done, `Some(false)` when the token does not
    /// allow it (remembered from then on), `None` when the object vanished.
    fn set_value(
        &self,
        session: &Session,
        handle: ObjectHandle,
        value: &[u8],
    ) -> Result<Option<bool>, HsmError> {
        match session.update_attributes(handle, &[Attribute::Value(value.to_vec())]) {
            Ok(()) => Ok(Some(true)),
            Err(e) if vanished(&e) => Ok(None),
            Err(CkError::Pkcs11(RvError::AttributeReadOnly | RvError::ActionProhibited, _)) => {
                tracing::info!(
                    "the token does not let data object values change in place; replacing objects instead"
                );
                self.replace
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(false))
            }
            Err(e) => Err(HsmError::call("C_SetAttributeValue", e)),
        }
    }
}

fn find(session: &Session, template: &[Attribute]) -> Result<Vec<ObjectHandle>, HsmError> {
    session.find_objects(template).context("C_FindObjects")
}

/// Destroys `handle`; an object another replica destroyed first counts as destroyed.
///
/// SoftHSMv2 reports that case as `CKR_FUNCTION_FAILED` (it cannot remove a file that is
/// already gone), which would otherwise look like a device fault and start a recovery. So a
/// failure is followed by a look at the handle: if the object is gone, the call did its job.
fn destroy(session: &Session, handle: ObjectHandle) -> Result<(), HsmError> {
    match session.destroy_object(handle) {
        Ok(()) => Ok(()),
        Err(e) if vanished(&e) => Ok(()),
        Err(e) => match session.get_attributes(handle, &[AttributeType::Class]) {
            Err(probe) if vanished(&probe) => Ok(()),
            _ => Err(HsmError::call("C_DestroyObject", e)),
        },
    }
}

/// The nonce objects with their values: the remembered handles when they are all still nonce
/// objects, otherwise a search.
fn nonce_objects(
    session: &Session,
    writes: &WriteMode,
    epoch: u64,
) -> Result<Vec<(ObjectHandle, Vec<u8>)>, HsmError> {
    if let Some(handles) = writes.nonce_handles(epoch) {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            match read_object(session, h)? {
                Some(o) if o.label == NONCE_LABEL => out.push((h, o.value)),
                _ => return read_labelled(session, NONCE_LABEL),
            }
        }
        return Ok(out);
    }
    read_labelled(session, NONCE_LABEL)
}

/// Replaces the nonce objects `old` (as read) with `nonce`.
fn bump(
    session: &Session,
    writes: &WriteMode,
    epoch: u64,
    old: Vec<(ObjectHandle, Vec<u8>)>,
    nonce: &[u8],
) -> Result<NonceChange, HsmError> {
    let before = nonce_reading(&old.iter().map(|(_, v)| v).collect::<Vec<_>>());
    if !writes.replacing() {
        let mut all_set = !old.is_empty();
        for (h, _) in &old {
            if writes.set_value(session, *h, nonce)? != Some(true) {
                all_set = false;
                break;
            }
        }
        if all_set {
            return Ok(NonceChange {
                before,
                after: nonce.repeat(old.len()),
            });
        }
    }
    // Only the objects seen before ours was created are destroyed: two replicas bumping at
    // once leave both fresh nonces, never none.
    let new = create(session, NONCE_LABEL, nonce.to_vec())?;
    for (h, _) in old {
        destroy(session, h)?;
    }
    writes.remember_nonce(epoch, vec![new]);
    Ok(NonceChange {
        before,
        after: nonce.to_vec(),
    })
}

/// The sorted concatenation of nonce values: what readers compare.
fn nonce_reading(values: &[&Vec<u8>]) -> Option<Vec<u8>> {
    let mut sorted = values.to_vec();
    sorted.sort();
    (!sorted.is_empty()).then(|| sorted.into_iter().flatten().copied().collect())
}

impl Hsm {
    /// Whether data objects are replaced rather than changed in place on this token (known
    /// after the first change was attempted).
    pub fn replaces_data_objects(&self) -> bool {
        self.shared.writes.replacing()
    }

    /// Makes every other process using this token re-read its object list, and re-stores the
    /// document objects in `written` (what this replica wrote a moment ago) so that a process
    /// that read one of them while it was being written reads it again. Returns the nonce
    /// change when something was re-stored (the others then scan), `None` otherwise.
    ///
    /// Two SoftHSMv2 (2.6) file-store behaviours make this necessary:
    /// * It notices objects created or destroyed by another process through a shared generation
    ///   counter; a process that writes just after another one bumps the counter past the
    ///   other's change without reading it, and then misses that change until some process
    ///   writes again. Creating and destroying a scratch object right after a search (which
    ///   re-reads the object list when the counter moved) is such a write.
    /// * It writes an object file through a stdio buffer and releases the file lock before the
    ///   buffer is flushed. A process that reads a file larger than the buffer (a key document
    ///   with its operations is ~10 KB) in between gets a truncated copy, records the file's
    ///   generation and takes the object for invalid until that generation changes: the object
    ///   stays invisible to that process for good (issue 11: a replica missed a concurrent
    ///   change for as long as the test watched). Setting the label of such an object to itself
    ///   stores the object again under a new generation, so such a reader reads it afresh.
    ///
    /// Writers call this a few times after their last change, so that every replica catches up.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn touch_token(
        &self,
        written: Vec<StoredVersion>,
    ) -> Result<Option<NonceChange>, HsmError> {
        let _turn = self.shared.writes.turn().await;
        let shared = std::sync::Arc::clone(&self.shared);
        let mut nonce = vec![0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        self.call(Retry::Never, move |session, epoch| {
            let nonces = read_labelled(session, NONCE_LABEL)?;
            let mut stored_again = 0usize;
            for v in written.iter().filter(|v| v.epoch == epoch.number) {
                if store_again(session, v)? {
                    stored_again += 1;
                }
            }
            let scratch = create(session, TOUCH_LABEL, Vec::new())?;
            destroy(session, scratch)?;
            if stored_again == 0 {
                shared
                    .writes
                    .remember_nonce(epoch.number, nonces.iter().map(|(h, _)| *h).collect());
                return Ok(None);
            }
            bump(session, &shared.writes, epoch.number, nonces, &nonce).map(Some)
        })
        .await
    }

    /// The state nonce, or `None` before any replica wrote one. Several nonce objects (two
    /// replicas created one at the same moment) read as their values in a fixed order. Always
    /// a search, so that nonce objects created by other replicas are seen.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn read_state_nonce(&self) -> Result<Option<Vec<u8>>, HsmError> {
        let _turn = self.shared.writes.search_turn().await;
        let shared = std::sync::Arc::clone(&self.shared);
        self.call(Retry::Once, move |session, epoch| {
            let found = read_labelled(session, NONCE_LABEL)?;
            shared
                .writes
                .remember_nonce(epoch.number, found.iter().map(|(h, _)| *h).collect());
            Ok(nonce_reading(
                &found.iter().map(|(_, v)| v).collect::<Vec<_>>(),
            ))
        })
        .await
    }

    /// Replaces the state nonce with fresh random bytes (creating it on first use), telling
    /// every replica that p11kms objects changed. Returns what [`Hsm::read_state_nonce`] read
    /// just before and would read just after, had nobody else written meanwhile: a writer
    /// whose last scan saw `before` has missed nothing and need not scan for its own change.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn bump_state_nonce(&self) -> Result<NonceChange, HsmError> {
        let _turn = self.shared.writes.turn().await;
        let mut nonce = vec![0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let shared = std::sync::Arc::clone(&self.shared);
        // Repeating after a session failure at worst leaves a second nonce object, which
        // readers tolerate; a missed bump would hide a change from the other replicas.
        self.call(Retry::Once, move |session, epoch| {
            let old = nonce_objects(session, &shared.writes, epoch.number)?;
            bump(session, &shared.writes, epoch.number, old, &nonce)
        })
        .await
    }

    /// Every p11kms key, alias and adoption object on the token (the nonce is not included).
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn scan_metadata_objects(&self) -> Result<Vec<DataObject>, HsmError> {
        let _turn = self.shared.writes.search_turn().await;
        self.call(Retry::Once, |session, _| {
            let mut out = Vec::new();
            for h in find(session, &ours(None))? {
                if let Some(o) = read_object(session, h)? {
                    if o.label.starts_with(KEY_LABEL_PREFIX)
                        || o.label.starts_with(ALIAS_LABEL_PREFIX)
                        || o.label.starts_with(ADOPTED_LABEL_PREFIX)
                    {
                        out.push(o);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The versions of the p11kms data object labelled `label` (normally zero or one).
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn read_data_objects(&self, label: &str) -> Result<Vec<StoredVersion>, HsmError> {
        let _turn = self.shared.writes.search_turn().await;
        let label = label.to_string();
        self.call(Retry::Once, move |session, epoch| {
            Ok(read_labelled(session, &label)?
                .into_iter()
                .map(|(handle, value)| StoredVersion {
                    epoch: epoch.number,
                    handle,
                    value,
                })
                .collect())
        })
        .await
    }

    /// Creates a p11kms data object. Never repeated: a repeat after a half-successful call
    /// could leave two objects with one label.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn create_data_object(
        &self,
        label: &str,
        value: Vec<u8>,
    ) -> Result<StoredVersion, HsmError> {
        let _turn = self.shared.writes.turn().await;
        let label = label.to_string();
        self.call(Retry::Never, move |session, epoch| {
            let handle = create(session, &label, value.clone())?;
            Ok(StoredVersion {
                epoch: epoch.number,
                handle,
                value: value.clone(),
            })
        })
        .await
    }

    /// Writes `value` as a new p11kms data object labelled `label` and destroys those of the
    /// objects in `old` (what the caller read) that are still there; then, in the same call,
    /// replaces the state nonce (as [`Hsm::bump_state_nonce`]): one call, so that SoftHSM
    /// re-reads its object list once for both. The caller's `value` must include what `old`
    /// held (a merge, see `keys/doc.rs`): objects are immutable, so destroying exactly those
    /// read loses nothing, and objects written meanwhile by other replicas are left alone.
    /// Returns the new object and the nonce change, or why the nonce could not be replaced
    /// (the object is written either way).
    ///
    /// Never repeated after a session failure: a repeat could find its own half-written state.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn replace_data_objects(
        &self,
        label: &str,
        old: Vec<StoredVersion>,
        value: Vec<u8>,
    ) -> Result<(StoredVersion, Result<NonceChange, HsmError>), HsmError> {
        let _turn = self.shared.writes.turn().await;
        let label = label.to_string();
        let shared = std::sync::Arc::clone(&self.shared);
        let mut nonce = vec![0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        self.call(Retry::Never, move |session, epoch| {
            // Read first: this is where SoftHSM catches up with other processes' changes.
            let nonces = nonce_objects(session, &shared.writes, epoch.number)?;
            // The objects read that are still there. Handles of an older epoch mean nothing
            // now: then they are looked for by label and value.
            let mut stale: Vec<ObjectHandle> = Vec::new();
            if old.iter().all(|v| v.epoch == epoch.number) {
                for v in &old {
                    if let Some(o) = read_object(session, v.handle)? {
                        if o.label == label && o.value == v.value {
                            stale.push(v.handle);
                        }
                    }
                }
            } else {
                for (h, found) in read_labelled(session, &label)? {
                    if old.iter().any(|v| v.value == found) {
                        stale.push(h);
                    }
                }
            }
            let new = create(session, &label, value.clone())?;
            for h in stale {
                destroy(session, h)?;
            }
            let announced = bump(session, &shared.writes, epoch.number, nonces, &nonce);
            Ok((
                StoredVersion {
                    epoch: epoch.number,
                    handle: new,
                    value: value.clone(),
                },
                announced,
            ))
        })
        .await
    }

    /// Whether any object on the token already uses `ck_id` as its `CKA_ID`, or a p11kms data
    /// object is labelled `label`. Two searches: not for hot paths.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn key_objects_exist(&self, ck_id: &[u8], label: &str) -> Result<bool, HsmError> {
        let _turn = self.shared.writes.search_turn().await;
        let (ck_id, label) = (ck_id.to_vec(), label.to_string());
        self.call(Retry::Once, move |session, _| {
            Ok(!find(session, &[Attribute::Id(ck_id.clone())])?.is_empty()
                || !find(session, &ours(Some(&label)))?.is_empty())
        })
        .await
    }

    /// Destroys one key pair: its private and public key objects (`CKA_ID` = `ck_id` and
    /// `CKA_LABEL` = `label`, as generated), and stops resolving it under `label`. Objects
    /// already gone (another replica purged first) are not an error.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn destroy_key_pair(&self, ck_id: &[u8], label: &str) -> Result<(), HsmError> {
        let _turn = self.shared.writes.turn().await;
        let (ck_id, key_label) = (ck_id.to_vec(), label.to_string());
        self.call(Retry::Once, move |session, _| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let template = [
                    Attribute::Class(class),
                    Attribute::Token(true),
                    Attribute::Id(ck_id.clone()),
                    Attribute::Label(key_label.as_bytes().to_vec()),
                ];
                for h in find(session, &template)? {
                    destroy(session, h)?;
                }
            }
            Ok(())
        })
        .await?;
        self.forget_key(label);
        Ok(())
    }

    /// Destroys every p11kms data object labelled `label` whose value `keep` rejects (all of
    /// them with `|_| false`), and tells the other replicas.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn destroy_data_objects(
        &self,
        label: &str,
        keep: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
    ) -> Result<(), HsmError> {
        let _turn = self.shared.writes.turn().await;
        let label = label.to_string();
        let shared = std::sync::Arc::clone(&self.shared);
        let mut nonce = vec![0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        self.call(Retry::Once, move |session, epoch| {
            let nonces = nonce_objects(session, &shared.writes, epoch.number)?;
            for (h, value) in read_labelled(session, &label)? {
                if !keep(&value) {
                    destroy(session, h)?;
                }
            }
            bump(session, &shared.writes, epoch.number, nonces, &nonce).map(|_| ())
        })
        .await
    }
}
