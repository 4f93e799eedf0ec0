//! The state of a key created through an API, as p11kms stores it on the token.
//!
//! # Objects
//! Every change to a key is a new, immutable `CKO_DATA` object labelled `p11kms/key/<key id>`
//! (see `hsm/objects.rs`) holding a [`KeyDoc`] with only what the change wrote. The key's state
//! is the merge of all its objects; from time to time a writer replaces them with one object
//! holding the merged state (a *snapshot*, the same type). Objects are JSON, so an operator can
//! read them with any PKCS#11 tool:
//!
//! ```json
//! {"schema":2,"key_id":"e3tsq0mjc1l6jfn2h8vb",
//!  "status":[{"v":"INACTIVE","s":[7,"5f0c9a1e","a1b2c3d4"],"seen":[6,"0d3e…","…"]}]}
//! ```
//!
//! # Merging
//! Each changeable field is a register of [`super::crdt`]: a write supersedes what its writer
//! had seen; writes that did not see each other (two replicas at the same moment) both stay, and
//! the field resolves by a fixed rule, the same on every replica:
//!
//! | field | writes that did not see each other resolve to |
//! |---|---|
//! | name, description, each label | the later write (Lamport clock, then replica id) |
//! | status | INACTIVE (the safer) |
//! | deletion protection | on (the safer) |
//! | deletion | not deleted (the key stays or comes back) |
//! | each access binding | removed (a revocation is never undone by a concurrent grant) |
//!
//! Labels and access bindings are one register per label key and per binding, so concurrent
//! changes to different labels or bindings both survive. A deletion records the deletion
//! protection its writer saw; a deletion that did not see deletion protection being turned on
//! is void (the key stays), and the next writer records that with a compensating write, so that
//! turning protection off later does not bring the void deletion back. The stamp of the latest
//! "protection on" write is also kept on its own (`protected_at`, merged by maximum), so a
//! deletion stays void even when the writer turning protection off had not seen it and so
//! wrote no compensation.
//!
//! Immutable facts (algorithm, folder, creation) are the *genesis*, written once at creation.
//! Versions are a grow-only map: each version is its own key pair, `Pending` while generated,
//! then `Ready` with its public key pinned, or `Abandoned` once a failed generation's objects
//! were destroyed; the primary is the ready version created last. Operations are a grow-only set
//! of which the last [`MAX_OPERATIONS`] are kept.
//!
//! A document whose `schema` is newer than [`SCHEMA`] is read but never written or compacted
//! by this build, so an older replica cannot drop what a newer one added.

use super::crdt::{merge_map, Register, RegisterMap, Stamp};
use super::ops::{Operation, MAX_OPERATIONS};
use super::Status;
use crate::crypto::Algorithm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The document version this build writes.
pub const SCHEMA: u32 = 2;

/// RFC 3339 times (as protobuf's JSON form writes them).
pub mod time {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// `t` as RFC 3339.
    pub fn format(t: SystemTime) -> String {
        prost_types::Timestamp::from(t).to_string()
    }

    /// Parses RFC 3339.
    ///
    /// # Errors
    /// Not an RFC 3339 time, or out of range.
    pub fn parse(text: &str) -> Result<SystemTime, String> {
        let ts: prost_types::Timestamp = text
            .parse()
            .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
        SystemTime::try_from(ts).map_err(|e| format!("{text:?}: {e}"))
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Algorithms by their enum names.
pub mod algorithm {
    use crate::crypto::Algorithm;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(a: &Algorithm, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
        let name = String::deserialize(d)?;
        Algorithm::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown algorithm {name:?}")))
    }
}

/// What never changes after creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// The key's spec and default scheme.
    #[serde(with = "algorithm")]
    pub algorithm: Algorithm,
    /// Folder (tenant).
    pub folder_id: String,
    /// Creation time.
    #[serde(with = "time")]
    pub created_at: SystemTime,
    /// Who created it.
    pub created_by: String,
}

/// A scheduled deletion: the key is gone from signing (and, for Yandex callers, from sight) and
/// its key material is destroyed at `destroy_at` unless the deletion is cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// When it was deleted.
    #[serde(with = "time")]
    pub at: SystemTime,
    /// When its key material is destroyed.
    #[serde(with = "time")]
    pub destroy_at: SystemTime,
    /// The highest deletion-protection write the deleter had seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_protection: Option<Stamp>,
}

/// A version's lifecycle, ordered: a merge keeps the furthest state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    /// Its key pair is being generated.
    Pending,
    /// Generated; the SHA-256 of its public key's DER SPKI, hex.
    Ready {
        /// The pin.
        spki_sha256: String,
    },
    /// Generation failed or was interrupted; its objects were destroyed.
    Abandoned,
}

/// One key version: its own key pair on the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDoc {
    /// When it was created.
    #[serde(with = "time")]
    pub created_at: SystemTime,
    /// `CKA_ID` of its key pair objects, hex.
    pub ck_id: String,
    /// `CKA_LABEL` of its key pair objects (also its name in the HSM layer).
    pub label: String,
    /// The stamp of the write that created it (orders versions).
    pub created: Stamp,
    /// Where it is in its lifecycle.
    #[serde(flatten)]
    pub state: VersionState,
}

impl VersionDoc {
    fn merge(&mut self, other: &VersionDoc) {
        if other.state > self.state {
            self.state = other.state.clone();
        }
    }
}

/// A key's stored state, or one change to it (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDoc {
    /// Document version.
    pub schema: u32,
    /// The key id.
    pub key_id: String,
    /// Immutable facts, written by the create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<Genesis>,
    /// Name.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub name: Register<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub description: Register<String>,
    /// Labels (Alibaba: tags), one register per label key; `None` removes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: RegisterMap<String, Option<String>>,
    /// ACTIVE or INACTIVE.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub status: Register<Status>,
    /// Deletion protection.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub protection: Register<bool>,
    /// Scheduled deletion, or `None` (not deleted / restored).
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub deletion: Register<Option<Deletion>>,
    /// The stamp of the latest write that turned deletion protection on (merged by maximum).
    /// A deletion whose writer had not seen it is void for good: the protection register alone
    /// cannot tell, since a later write turning protection off supersedes the "on" entry, and
    /// a writer that had not seen the void deletion then brought it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_at: Option<Stamp>,
    /// Access bindings by `role|subject type|subject id`: `Some(i)` bound (`i` orders the
    /// bindings of one write), `None` removed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bindings: RegisterMap<String, Option<u32>>,
    /// Versions by version id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, VersionDoc>,
    /// Operations by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, Operation>,
}

/// One stored access binding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binding {
    /// The role id.
    pub role_id: String,
    /// The subject type.
    pub subject_type: String,
    /// The subject id.
    pub subject_id: String,
}

impl Binding {
    /// The register key of this binding.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.role_id, self.subject_type, self.subject_id)
    }

    fn from_key(key: &str) -> Option<Self> {
        let mut parts = key.splitn(3, '|');
        Some(Self {
            role_id: parts.next()?.to_string(),
            subject_type: parts.next()?.to_string(),
            subject_id: parts.next()?.to_string(),
        })
    }
}

/// The effective state of a key, resolved from its merged document.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyState {
    /// Immutable facts.
    pub genesis: Genesis,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// ACTIVE or INACTIVE (CREATING until a version is ready).
    pub status: Status,
    /// Deletion protection.
    pub deletion_protection: bool,
    /// The deletion in effect.
    pub deletion: Option<Deletion>,
    /// Access bindings, in the order they were bound.
    pub bindings: Vec<Binding>,
    /// Versions by creation order (every state).
    pub versions: Vec<(String, VersionDoc)>,
    /// The last operations, oldest first.
    pub operations: Vec<Operation>,
}

impl KeyDoc {
    /// An empty change to `key_id`.
    pub fn change(key_id: &str) -> Self {
        Self {
            schema: SCHEMA,
            key_id: key_id.to_string(),
            ..Self::default()
        }
    }

    /// Parses a stored document.
    ///
    /// # Errors
    /// What is wrong with it, for the log.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a p11kms key document: {e}"))
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key document always serialises")
    }

    /// Adds another document (a change or a snapshot) of the same key.
    pub fn merge(&mut self, other: &KeyDoc) {
        self.schema = self.schema.max(other.schema);
        if self.genesis.is_none() {
            self.genesis.clone_from(&other.genesis);
        }
        self.name.merge(&other.name);
        self.description.merge(&other.description);
        merge_map(&mut self.labels, &other.labels);
        self.status.merge(&other.status);
        self.protection.merge(&other.protection);
        if other.protected_at > self.protected_at {
            self.protected_at.clone_from(&other.protected_at);
        }
        self.deletion.merge(&other.deletion);
        merge_map(&mut self.bindings, &other.bindings);
        for (id, v) in &other.versions {
            self.versions
                .entry(id.clone())
                .and_modify(|mine| mine.merge(v))
                .or_insert_with(|| v.clone());
        }
        for (id, op) in &other.operations {
            self.operations
                .entry(id.clone())
                .or_insert_with(|| op.clone());
        }
        self.cap_operations();
    }

    /// Keeps the last [`MAX_OPERATIONS`] operations (by time, then id: the same everywhere).
    fn cap_operations(&mut self) {
        if self.operations.len() > MAX_OPERATIONS {
            let mut by_time: Vec<(SystemTime, String)> = self
                .operations
                .values()
                .map(|o| (o.created_at, o.id.clone()))
                .collect();
            by_time.sort();
            for (_, id) in &by_time[..by_time.len() - MAX_OPERATIONS] {
                self.operations.remove(id);
            }
        }
    }

    /// Merges the documents of one key; `None` when there are none.
    pub fn merged<'a>(docs: impl IntoIterator<Item = &'a KeyDoc>) -> Option<KeyDoc> {
        let mut docs = docs.into_iter();
        let mut out = docs.next()?.clone();
        for d in docs {
            out.merge(d);
        }
        Some(out)
    }

    /// The highest Lamport clock in the document.
    pub fn clock(&self) -> u64 {
        use super::crdt::max_clock;
        let mut clock = [
            max_clock(&self.name),
            max_clock(&self.description),
            max_clock(&self.status),
            max_clock(&self.protection),
            max_clock(&self.deletion),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        for r in self.labels.values() {
            clock = clock.max(max_clock(r));
        }
        for r in self.bindings.values() {
            clock = clock.max(max_clock(r));
        }
        for v in self.versions.values() {
            clock = clock.max(v.created.clock());
        }
        clock.max(self.protected_at.as_ref().map_or(0, Stamp::clock))
    }

    /// Whether this build may write the document.
    pub fn writable(&self) -> bool {
        self.schema <= SCHEMA
    }

    /// Whether a deletion write is void: deletion protection was turned on by a write its
    /// deleter had not seen.
    fn void(&self, d: &Deletion) -> bool {
        let unseen = |stamp: &Stamp| d.seen_protection.as_ref().is_none_or(|s| stamp > s);
        // Documents written before `protected_at` existed only have the register.
        self.protected_at.as_ref().is_some_and(unseen)
            || self
                .protection
                .entries()
                .iter()
                .any(|e| e.value && unseen(&e.stamp))
    }

    /// The deletion in effect, if any (see the module docs).
    pub fn effective_deletion(&self) -> Option<&Deletion> {
        let live: Vec<&Option<Deletion>> = self
            .deletion
            .entries()
            .iter()
            .filter(|e| e.value.as_ref().is_none_or(|d| !self.void(d)))
            .map(|e| &e.value)
            .collect();
        // Writes that did not see each other: not deleted wins; otherwise the latest.
        if live.iter().any(|v| v.is_none()) {
            return None;
        }
        live.last().and_then(|v| v.as_ref())
    }

    /// True when the deletion register holds a deletion that is void but not yet settled by a
    /// compensating write (see the module docs).
    pub fn needs_compensation(&self) -> bool {
        self.deletion
            .entries()
            .iter()
            .any(|e| e.value.as_ref().is_some_and(|d| self.void(d)))
    }

    /// The effective state; `None` without a genesis (the create's first write is not visible,
    /// or the purge removed it).
    pub fn state(&self) -> Option<KeyState> {
        let genesis = self.genesis.clone()?;
        let labels = self
            .labels
            .iter()
            .filter_map(|(k, r)| r.latest().cloned().flatten().map(|v| (k.clone(), v)))
            .collect();
        // A binding is present when no current write removed it; ordered by its write.
        let mut bound: Vec<(&super::crdt::Stamp, u32, Binding)> = Vec::new();
        for (key, r) in &self.bindings {
            let removed = r.entries().iter().any(|e| e.value.is_none());
            if let (false, Some(e)) = (removed, r.entries().last()) {
                if let (Some(i), Some(b)) = (e.value, Binding::from_key(key)) {
                    bound.push((&e.stamp, i, b));
                }
            }
        }
        bound.sort();
        let mut versions: Vec<(String, VersionDoc)> = self
            .versions
            .iter()
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect();
        versions.sort_by(|a, b| a.1.created.cmp(&b.1.created));
        let ready = versions
            .iter()
            .any(|(_, v)| matches!(v.state, VersionState::Ready { .. }));
        let status = if ready {
            *self
                .status
                .resolve(|a, b| *a == Status::Inactive && *b != Status::Inactive)
                .unwrap_or(&Status::Active)
        } else {
            Status::Creating
        };
        let mut operations: Vec<Operation> = self.operations.values().cloned().collect();
        operations.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Some(KeyState {
            genesis,
            name: self.name.latest().cloned().unwrap_or_default(),
            description: self.description.latest().cloned().unwrap_or_default(),
            labels,
            status,
            deletion_protection: *self.protection.resolve(|a, b| *a && !*b).unwrap_or(&false),
            deletion: self.effective_deletion().cloned(),
            bindings: bound.into_iter().map(|(_, _, b)| b).collect(),
            versions,
            operations,
        })
    }
}

/// Builds the changes to one key: every register it writes is stamped with the next clock of the
/// document it read, and supersedes what that document held.
#[derive(Debug)]
pub struct Writer {
    /// The document as read (merged), with the writes applied so far.
    pub current: KeyDoc,
    /// The change to store.
    pub change: KeyDoc,
    stamp: Stamp,
}

impl Writer {
    /// A writer of a change to `current` (the merged document as read) by `replica`.
    pub fn new(current: KeyDoc, replica: &str) -> Self {
        let stamp = Stamp(
            current.clock() + 1,
            replica.to_string(),
            hex::encode(rand::random::<[u8; 8]>()),
        );
        let change = KeyDoc::change(&current.key_id);
        let mut w = Self {
            current,
            change,
            stamp,
        };
        if w.current.needs_compensation() {
            w.settle_void_deletions();
        }
        w
    }

    /// The stamp of this change.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    fn settle_void_deletions(&mut self) {
        let deleted = self.current.effective_deletion().cloned();
        let w = self.current.deletion.write(deleted, self.stamp.clone());
        self.change.deletion.merge(&w);
    }

    /// Sets the genesis (creates only).
    pub fn genesis(&mut self, g: Genesis) {
        self.current.genesis = Some(g.clone());
        self.change.genesis = Some(g);
    }

    /// Sets the name.
    pub fn name(&mut self, v: String) {
        let w = self.current.name.write(v, self.stamp.clone());
        self.change.name.merge(&w);
    }

    /// Sets the description.
    pub fn description(&mut self, v: String) {
        let w = self.current.description.write(v, self.stamp.clone());
        self.change.description.merge(&w);
    }

    /// Replaces the labels: writes only the label keys whose value changes.
    pub fn labels(&mut self, new: &BTreeMap<String, String>) {
        let old: BTreeMap<String, String> =
            self.current.state().map(|s| s.labels).unwrap_or_default();
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            self.label(k, None);
        }
        for (k, v) in new {
            if old.get(k) != Some(v) {
                self.label(k, Some(v.clone()));
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) one label.
    pub fn label(&mut self, key: &str, value: Option<String>) {
        let w = self
            .current
            .labels
            .entry(key.to_string())
            .or_default()
            .write(value, self.stamp.clone());
        crdt_insert(&mut self.change.labels, key, w);
    }

    /// Sets the status.
    pub fn status(&mut self, v: Status) {
        let w = self.current.status.write(v, self.stamp.clone());
        self.change.status.merge(&w);
    }

    /// Sets deletion protection.
    pub fn protection(&mut self, v: bool) {
        let w = self.current.protection.write(v, self.stamp.clone());
        self.change.protection.merge(&w);
        if v {
            self.current.protected_at = Some(self.stamp.clone());
            self.change.protected_at = Some(self.stamp.clone());
        }
    }

    /// Schedules the deletion (`Some`) or cancels it (`None`).
    pub fn deletion(&mut self, v: Option<(SystemTime, SystemTime)>) {
        let seen_protection = self.current.protection.top().cloned();
        let value = v.map(|(at, destroy_at)| Deletion {
            at,
            destroy_at,
            seen_protection,
        });
        let w = self.current.deletion.write(value, self.stamp.clone());
        self.change.deletion.merge(&w);
    }

    /// Binds (`true`) or unbinds (`false`) one access binding; `order` ranks the bindings of one
    /// write.
    pub fn binding(&mut self, b: &Binding, bound: bool, order: u32) {
        let key = b.key();
        let w = self
            .current
            .bindings
            .entry(key.clone())
            .or_default()
            .write(bound.then_some(order), self.stamp.clone());
        crdt_insert(&mut self.change.bindings, &key, w);
    }

    /// Adds or advances a version.
    pub fn version(&mut self, id: &str, v: VersionDoc) {
        let mut merged = v.clone();
        if let Some(existing) = self.current.versions.get(id) {
            merged.merge(existing);
        }
        self.current.versions.insert(id.to_string(), merged);
        self.change.versions.insert(id.to_string(), v);
    }

    /// Records an operation.
    pub fn operation(&mut self, op: Operation) {
        self.current.operations.insert(op.id.clone(), op.clone());
        self.current.cap_operations();
        self.change.operations.insert(op.id.clone(), op);
    }

    /// The stamp a new version created by this change carries.
    pub fn version_stamp(&self) -> Stamp {
        self.stamp.clone()
    }
}

fn crdt_insert<T: Clone + PartialEq>(map: &mut RegisterMap<String, T>, key: &str, w: Register<T>) {
    map.entry(key.to_string()).or_default().merge(&w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn created() -> KeyDoc {
        let mut w = Writer::new(KeyDoc::change("k1"), "r0");
        w.genesis(Genesis {
            algorithm: Algorithm::EcdsaP256Sha256,
            folder_id: "f".into(),
            created_at: t(0),
            created_by: "alice".into(),
        });
        w.name("n".into());
        w.status(Status::Active);
        w.protection(false);
        w.version(
            "v1",
            VersionDoc {
                created_at: t(0),
                ck_id: hex::encode("k1"),
                label: "k1".into(),
                created: w.version_stamp(),
                state: VersionState::Ready {
                    spki_sha256: "00".repeat(32),
                },
            },
        );
        w.change
    }

    fn binding(id: &str) -> Binding {
        Binding {
            role_id: "kms.asymmetricSignatureKeys.signer".into(),
            subject_type: "userAccount".into(),
            subject_id: id.into(),
        }
    }

    /// Two writers that read `base` and did not see each other; the merge in both orders.
    fn concurrent(
        base: &KeyDoc,
        a: impl FnOnce(&mut Writer),
        b: impl FnOnce(&mut Writer),
    ) -> KeyState {
        let mut wa = Writer::new(base.clone(), "ra");
        a(&mut wa);
        let mut wb = Writer::new(base.clone(), "rb");
        b(&mut wb);
        let one = KeyDoc::merged([base, &wa.change, &wb.change]).unwrap();
        let two = KeyDoc::merged([&wb.change, base, &wa.change]).unwrap();
        assert_eq!(one.state(), two.state(), "the merge depends on the order");
        round_trip(&one).state().unwrap()
    }

    fn round_trip(d: &KeyDoc) -> KeyDoc {
        KeyDoc::parse(&d.to_json()).unwrap()
    }

    #[test]
    fn a_created_key_round_trips() {
        let doc = created();
        assert_eq!(round_trip(&doc), doc);
        let s = doc.state().unwrap();
        assert_eq!(s.status, Status::Active);
        assert_eq!(s.name, "n");
        assert_eq!(s.versions.len(), 1);
    }

    #[test]
    fn concurrent_changes_to_different_bindings_both_survive() {
        let mut base = created();
        let mut w = Writer::new(base.clone(), "r0");
        w.binding(&binding("carol"), true, 0);
        base.merge(&w.change);
        let s = concurrent(
            &base,
            |a| a.binding(&binding("carol"), false, 0),
            |b| b.binding(&binding("bob"), true, 0),
        );
        assert_eq!(s.bindings, vec![binding("bob")]);
    }

    #[test]
    fn a_concurrent_grant_never_undoes_a_revocation_of_the_same_binding() {
        let mut base = created();
        let mut w = Writer::new(base.clone(), "r0");
        w.binding(&binding("carol"), true, 0);
        base.merge(&w.change);
        for (first, second) in [("ra", "rb"), ("rb", "ra")] {
            let s = concurrent(
                &base,
                |a| {
                    a.stamp.1 = first.into();
                    a.binding(&binding("carol"), false, 0);
                },
                |b| {
                    b.stamp.1 = second.into();
                    b.binding(&binding("carol"), true, 0);
                },
            );
            assert!(s.bindings.is_empty(), "{first}/{second}: {:?}", s.bindings);
        }
    }

    #[test]
    fn deletion_protection_wins_over_a_concurrent_delete_and_stays_settled() {
        let base = created();
        let s = concurrent(
            &base,
            |a| a.protection(true),
            |b| b.deletion(Some((t(10), t(20)))),
        );
        assert!(s.deletion.is_none(), "the key stays");
        assert!(s.deletion_protection);
        // Later: protection turned off by a writer who saw everything. The void deletion must
        // not come back.
        let mut wa = Writer::new(base.clone(), "ra");
        wa.protection(true);
        let mut wb = Writer::new(base.clone(), "rb");
        wb.deletion(Some((t(10), t(20))));
        let merged = KeyDoc::merged([&base, &wa.change, &wb.change]).unwrap();
        assert!(merged.needs_compensation());
        let mut wc = Writer::new(merged.clone(), "rc");
        wc.protection(false);
        let after = KeyDoc::merged([&merged, &wc.change]).unwrap();
        let s = after.state().unwrap();
        assert!(!s.deletion_protection);
        assert!(s.deletion.is_none(), "the void deletion came back");
        assert!(!after.needs_compensation());
    }

    #[test]
    fn a_void_deletion_stays_void_when_a_writer_that_never_saw_it_turns_protection_off() {
        let base = created();
        let mut wa = Writer::new(base.clone(), "ra");
        wa.protection(true);
        let mut wb = Writer::new(base.clone(), "rb");
        wb.deletion(Some((t(10), t(20))));
        // C read A's protection but not B's deletion (another object it did not see), and
        // turns protection off: its write supersedes the "on" entry.
        let seen_by_c = KeyDoc::merged([&base, &wa.change]).unwrap();
        let mut wc = Writer::new(seen_by_c, "rc");
        wc.protection(false);
        for order in [
            [&base, &wa.change, &wb.change, &wc.change],
            [&wc.change, &wb.change, &base, &wa.change],
        ] {
            let s = KeyDoc::merged(order).unwrap().state().unwrap();
            assert!(!s.deletion_protection);
            assert!(s.deletion.is_none(), "the void deletion came back");
        }
    }

    #[test]
    fn a_delete_that_saw_protection_off_is_effective() {
        let base = created();
        let mut w = Writer::new(base.clone(), "r1");
        w.deletion(Some((t(10), t(20))));
        let doc = KeyDoc::merged([&base, &w.change]).unwrap();
        assert_eq!(doc.state().unwrap().deletion.unwrap().destroy_at, t(20));
        // Undelete.
        let mut u = Writer::new(doc.clone(), "r2");
        u.deletion(None);
        assert!(KeyDoc::merged([&doc, &u.change])
            .unwrap()
            .state()
            .unwrap()
            .deletion
            .is_none());
    }

    #[test]
    fn concurrent_label_updates_keep_both_and_disable_beats_enable() {
        let base = created();
        let s = concurrent(
            &base,
            |a| {
                a.labels(&BTreeMap::from([("a".into(), "1".into())]));
                a.status(Status::Inactive);
            },
            |b| {
                b.labels(&BTreeMap::from([("b".into(), "2".into())]));
                b.status(Status::Active);
            },
        );
        assert_eq!(
            s.labels,
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(s.status, Status::Inactive);
    }

    #[test]
    fn the_latest_name_wins_and_a_later_write_settles_it() {
        let base = created();
        let mut wa = Writer::new(base.clone(), "ra");
        wa.name("a".into());
        let mut wb = Writer::new(base.clone(), "rb");
        wb.name("b".into());
        let doc = KeyDoc::merged([&base, &wa.change, &wb.change]).unwrap();
        assert_eq!(doc.state().unwrap().name, "b", "rb > ra at the same clock");
        let mut wc = Writer::new(doc.clone(), "r0");
        wc.name("c".into());
        let doc = KeyDoc::merged([&doc, &wc.change]).unwrap();
        assert_eq!(doc.state().unwrap().name, "c");
        assert_eq!(doc.name.entries().len(), 1);
    }

    #[test]
    fn versions_advance_and_operations_are_capped() {
        let mut doc = created();
        let mut w = Writer::new(doc.clone(), "r1");
        let v2 = VersionDoc {
            created_at: t(5),
            ck_id: "00".into(),
            label: "k1/v2".into(),
            created: w.version_stamp(),
            state: VersionState::Pending,
        };
        w.version("v2", v2.clone());
        doc.merge(&w.change);
        assert_eq!(doc.state().unwrap().versions.len(), 2);
        let mut ready = v2.clone();
        ready.state = VersionState::Ready {
            spki_sha256: "11".repeat(32),
        };
        let mut w = Writer::new(doc.clone(), "r1");
        w.version("v2", ready);
        // A stale Pending merged after Ready does not take it back.
        doc.merge(&w.change);
        doc.merge(&{
            let mut c = KeyDoc::change("k1");
            c.versions.insert("v2".into(), v2);
            c
        });
        assert!(matches!(
            doc.versions["v2"].state,
            VersionState::Ready { .. }
        ));
        for i in 0..(MAX_OPERATIONS as u64 + 5) {
            let mut c = KeyDoc::change("k1");
            let op = Operation {
                id: format!("op{i:02}"),
                kind: super::super::ops::Kind::Update,
                created_at: t(100 + i),
                modified_at: t(100 + i),
                created_by: String::new(),
                key: super::super::ops::KeySnapshot {
                    id: "k1".into(),
                    folder_id: "f".into(),
                    created_at: t(0),
                    name: String::new(),
                    description: String::new(),
                    labels: BTreeMap::new(),
                    status: Status::Active,
                    algorithm: Algorithm::EcdsaP256Sha256,
                    deletion_protection: false,
                },
            };
            c.operations.insert(op.id.clone(), op);
            doc.merge(&c);
        }
        let ops = doc.state().unwrap().operations;
        assert_eq!(ops.len(), MAX_OPERATIONS);
        assert_eq!(ops[0].id, "op05");
    }
}
