//! The metadata document of a key created through the API, stored as `CKA_VALUE` of its
//! `CKO_DATA` object (`CKA_LABEL = "p11kms/key/<key id>"`, see [`crate::hsm::metadata_label`]).
//!
//! It is JSON so that an operator can read it with any PKCS#11 tool, and versioned by `schema`.
//! Fields this version does not know are kept and written back unchanged, so an older replica
//! does not erase what a newer one added; a document with a newer schema is served but not
//! changed. Example (schema 1):
//!
//! ```json
//! {"schema":1,"key_id":"e3tsq0mjc1l6jfn2h8vb","ck_id":"6533…","folder_id":"b1g…","name":"",
//!  "description":"","labels":{},"status":"ACTIVE","algorithm":"ECDSA_NIST_P256_SHA_256",
//!  "created_at":"2026-05-01T10:00:00.123Z","deletion_protection":false,"deleted_at":null,
//!  "created_by":"","revision":2,"spki_sha256":"9f86…",
//!  "operations":["<base64 of a yandex.cloud.operation.Operation>"],"access_bindings":[]}
//! ```
//!
//! `ck_id` is the hex `CKA_ID` of the key pair objects (the key id's bytes; their `CKA_LABEL` is
//! the key id). `revision` goes up on every write. `operations` keeps the last
//! [`MAX_OPERATIONS`], oldest first. `spki_sha256` pins the public key across restarts and
//! replicas. `access_bindings` is stored for the access-control work; nothing writes it yet.
//!
//! # Several versions
//! PKCS#11 has no compare-and-swap, so two replicas changing one key at the same moment can
//! each leave a version on the token (see `hsm/objects.rs`). Versions are therefore *merged*
//! ([`Record::merge`]), never chosen between: `stamps` records, per changeable field, when it
//! was last changed (microseconds, always above every stamp the writer read, so a change made
//! after seeing another one wins); the merge takes each field from the version with the highest
//! stamp, and the union of the operations. Concurrent changes to different fields both survive;
//! to the same field, one wins on every replica alike.

use super::Status;
use crate::api::yandex::grpc::pb::operation::Operation;
use crate::config::ObjectSelector;
use crate::crypto::Algorithm;
use crate::hsm::KeySpec;
use base64::Engine as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The document version this build writes.
pub const SCHEMA: u32 = 1;
/// Operations kept per key.
pub const MAX_OPERATIONS: usize = 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One stored access binding (`yandex.cloud.access.AccessBinding`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessBindingRecord {
    /// `role_id`.
    pub role_id: String,
    /// `subject.id`.
    pub subject_id: String,
    /// `subject.type`.
    pub subject_type: String,
}

/// On-token JSON shape; [`Record`] is the checked, typed form.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Doc {
    schema: u32,
    key_id: String,
    ck_id: String,
    folder_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    status: Status,
    algorithm: String,
    created_at: String,
    #[serde(default)]
    deletion_protection: bool,
    #[serde(default)]
    deleted_at: Option<String>,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    revision: u64,
    #[serde(default)]
    spki_sha256: Option<String>,
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    access_bindings: Vec<AccessBindingRecord>,
    #[serde(default)]
    stamps: BTreeMap<String, u64>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The fields a change can touch, by their document names; each has a stamp.
const STAMPED: &[&str] = &[
    "name",
    "description",
    "labels",
    "status",
    "deletion_protection",
    "deleted_at",
    "access_bindings",
    "spki_sha256",
];

/// A key's metadata document.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Document version.
    pub schema: u32,
    /// The KMS key id.
    pub key_id: String,
    /// `CKA_ID` of the key pair objects.
    pub ck_id: Vec<u8>,
    /// Folder.
    pub folder_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Lifecycle status.
    pub status: Status,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Creation time.
    pub created_at: SystemTime,
    /// Whether Delete is refused.
    pub deletion_protection: bool,
    /// Deletion time, while deleted.
    pub deleted_at: Option<SystemTime>,
    /// Who created it.
    pub created_by: String,
    /// Write counter.
    pub revision: u64,
    /// SHA-256 of the public key's DER SPKI, once generated.
    pub spki_sha256: Option<[u8; 32]>,
    /// Encoded `Operation`s, oldest first.
    pub operations: Vec<Vec<u8>>,
    /// Access bindings.
    pub access_bindings: Vec<AccessBindingRecord>,
    /// Per changeable field, when it last changed (see the module docs).
    pub stamps: BTreeMap<String, u64>,
    extra: serde_json::Map<String, serde_json::Value>,
}

fn timestamp(t: SystemTime) -> String {
    prost_types::Timestamp::from(t).to_string()
}

fn parse_timestamp(field: &str, text: &str) -> Result<SystemTime, String> {
    let ts: prost_types::Timestamp = text
        .parse()
        .map_err(|e| format!("{field} {text:?} is not an RFC 3339 time: {e}"))?;
    SystemTime::try_from(ts).map_err(|e| format!("{field} {text:?}: {e}"))
}

impl Record {
    /// A new key's document, status CREATING, revision 1.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key_id: String,
        folder_id: String,
        name: String,
        description: String,
        labels: BTreeMap<String, String>,
        algorithm: Algorithm,
        deletion_protection: bool,
        created_at: SystemTime,
        created_by: String,
    ) -> Self {
        let mut record = Self {
            schema: SCHEMA,
            ck_id: key_id.as_bytes().to_vec(),
            key_id,
            folder_id,
            name,
            description,
            labels,
            status: Status::Creating,
            algorithm,
            created_at,
            deletion_protection,
            deleted_at: None,
            created_by,
            revision: 1,
            spki_sha256: None,
            operations: Vec::new(),
            access_bindings: Vec::new(),
            stamps: BTreeMap::new(),
            extra: serde_json::Map::new(),
        };
        let stamp = record.next_stamp();
        for field in STAMPED {
            record.stamps.insert((*field).to_string(), stamp);
        }
        record
    }

    /// Parses and checks a stored document.
    ///
    /// # Errors
    /// What is wrong with it, for the log.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let doc: Doc = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let algorithm = Algorithm::from_name(&doc.algorithm)
            .ok_or_else(|| format!("unknown algorithm {:?}", doc.algorithm))?;
        let ck_id =
            hex::decode(&doc.ck_id).map_err(|_| format!("ck_id {:?} is not hex", doc.ck_id))?;
        if ck_id.is_empty() {
            return Err("ck_id is empty".into());
        }
        let spki_sha256 = match &doc.spki_sha256 {
            None => None,
            Some(h) => {
                let mut pin = [0u8; 32];
                hex::decode_to_slice(h, &mut pin)
                    .map_err(|_| format!("spki_sha256 {h:?} is not 64 hex digits"))?;
                Some(pin)
            }
        };
        let operations = doc
            .operations
            .iter()
            .map(|b| {
                B64.decode(b)
                    .map_err(|e| format!("an operation is not base64: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            schema: doc.schema,
            key_id: doc.key_id,
            ck_id,
            folder_id: doc.folder_id,
            name: doc.name,
            description: doc.description,
            labels: doc.labels,
            status: doc.status,
            algorithm,
            created_at: parse_timestamp("created_at", &doc.created_at)?,
            deletion_protection: doc.deletion_protection,
            deleted_at: doc
                .deleted_at
                .as_deref()
                .map(|t| parse_timestamp("deleted_at", t))
                .transpose()?,
            created_by: doc.created_by,
            revision: doc.revision,
            spki_sha256,
            operations,
            access_bindings: doc.access_bindings,
            stamps: doc.stamps,
            extra: doc.extra,
        })
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = Doc {
            schema: self.schema,
            key_id: self.key_id.clone(),
            ck_id: hex::encode(&self.ck_id),
            folder_id: self.folder_id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self.labels.clone(),
            status: self.status,
            algorithm: self.algorithm.name().to_string(),
            created_at: timestamp(self.created_at),
            deletion_protection: self.deletion_protection,
            deleted_at: self.deleted_at.map(timestamp),
            created_by: self.created_by.clone(),
            revision: self.revision,
            spki_sha256: self.spki_sha256.map(hex::encode),
            operations: self.operations.iter().map(|o| B64.encode(o)).collect(),
            access_bindings: self.access_bindings.clone(),
            stamps: self.stamps.clone(),
            extra: self.extra.clone(),
        };
        serde_json::to_vec(&doc).expect("a metadata document always serialises")
    }

    /// A stamp for a change made now by a writer that read this document: the current time in
    /// microseconds, but always above every stamp already in it.
    pub fn next_stamp(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let seen = self.stamps.values().copied().max().unwrap_or(0);
        now.max(seen + 1)
    }

    /// Stamps every field that differs from `before` (the document as read) as changed now.
    pub fn stamp_changes(&mut self, before: &Record) {
        let stamp = before.next_stamp();
        let (a, b) = (self.field_values(), before.field_values());
        for (field, (new, old)) in STAMPED.iter().zip(a.iter().zip(&b)) {
            if new != old {
                self.stamps.insert((*field).to_string(), stamp);
            }
        }
    }

    /// The changeable fields' values as JSON, in [`STAMPED`] order.
    fn field_values(&self) -> Vec<serde_json::Value> {
        use serde_json::json;
        vec![
            json!(self.name),
            json!(self.description),
            json!(self.labels),
            json!(self.status),
            json!(self.deletion_protection),
            json!(self.deleted_at.map(timestamp)),
            json!(self.access_bindings),
            json!(self.spki_sha256.map(hex::encode)),
        ]
    }

    /// Merges the versions of one document (see the module docs); `None` for no versions.
    pub fn merge(mut versions: Vec<Record>) -> Option<Record> {
        // The base (immutable fields, unknown fields) is the highest revision, ties broken by
        // content, so every replica builds the same result.
        versions.sort_by_cached_key(|v| (v.revision, v.to_json()));
        let mut merged = versions.last()?.clone();
        if versions.len() == 1 {
            return Some(merged);
        }
        let values: Vec<Vec<serde_json::Value>> =
            versions.iter().map(Record::field_values).collect();
        for (i, field) in STAMPED.iter().enumerate() {
            let (winner, _) = versions
                .iter()
                .enumerate()
                .max_by_key(|(v, r)| {
                    (
                        r.stamps.get(*field).copied().unwrap_or(0),
                        values[*v][i].to_string(),
                    )
                })
                .expect("at least one version");
            let from = &versions[winner];
            match *field {
                "name" => merged.name.clone_from(&from.name),
                "description" => merged.description.clone_from(&from.description),
                "labels" => merged.labels.clone_from(&from.labels),
                "status" => merged.status = from.status,
                "deletion_protection" => merged.deletion_protection = from.deletion_protection,
                "deleted_at" => merged.deleted_at = from.deleted_at,
                "access_bindings" => merged.access_bindings.clone_from(&from.access_bindings),
                "spki_sha256" => merged.spki_sha256 = from.spki_sha256,
                other => unreachable!("unstamped field {other}"),
            }
            if let Some(stamp) = from.stamps.get(*field) {
                merged.stamps.insert((*field).to_string(), *stamp);
            }
        }
        // Every operation any version recorded, in time order, the newest kept.
        let mut ops: Vec<(prost_types::Timestamp, String, Vec<u8>)> = Vec::new();
        for v in &versions {
            for bytes in &v.operations {
                let Ok(op) = Operation::decode(bytes.as_slice()) else {
                    continue;
                };
                if !ops.iter().any(|(_, id, _)| *id == op.id) {
                    ops.push((op.created_at.unwrap_or_default(), op.id, bytes.clone()));
                }
            }
        }
        ops.sort_by(|a, b| (a.0.seconds, a.0.nanos, &a.1).cmp(&(b.0.seconds, b.0.nanos, &b.1)));
        let excess = ops.len().saturating_sub(MAX_OPERATIONS);
        merged.operations = ops.into_iter().skip(excess).map(|(_, _, b)| b).collect();
        merged.revision = versions.iter().map(|v| v.revision).max().unwrap_or(0);
        Some(merged)
    }

    /// Appends an operation, keeping the last [`MAX_OPERATIONS`].
    pub fn push_operation(&mut self, op: &Operation) {
        self.operations.push(op.encode_to_vec());
        let excess = self.operations.len().saturating_sub(MAX_OPERATIONS);
        self.operations.drain(..excess);
    }

    /// The stored operations, oldest first; undecodable ones are skipped.
    pub fn decoded_operations(&self) -> Vec<Operation> {
        self.operations
            .iter()
            .filter_map(|b| Operation::decode(b.as_slice()).ok())
            .collect()
    }

    /// How the HSM finds and checks the key pair in every epoch.
    pub fn spec(&self) -> KeySpec {
        KeySpec {
            key_id: self.key_id.clone(),
            selector: ObjectSelector::Id(self.ck_id.clone()),
            algorithm: self.algorithm,
            pin_sha256: self.spki_sha256,
        }
    }

    /// The `CKA_LABEL` of the key pair objects.
    pub fn key_label(&self) -> &str {
        &self.key_id
    }

    /// Parses and merges the versions stored under one label (normally one; more after two
    /// replicas wrote at once or a replace was interrupted). Unreadable versions are skipped.
    ///
    /// # Errors
    /// When versions exist but none can be read, with the first reason.
    pub fn merged(values: &[Vec<u8>]) -> Result<Option<Self>, String> {
        let mut records = Vec::new();
        let mut first_error = None;
        for v in values {
            match Record::parse(v) {
                Ok(r) => records.push(r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (Record::merge(records), first_error) {
            (Some(r), _) => Ok(Some(r)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    /// Whether this build may change the document.
    pub fn writable(&self) -> bool {
        self.schema == SCHEMA
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::new(
            "e3tsq0mjc1l6jfn2h8vb".into(),
            "folder".into(),
            "name".into(),
            "desc".into(),
            BTreeMap::from([("a".into(), "b".into())]),
            Algorithm::EcdsaP256Sha256,
            true,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            "someone".into(),
        )
    }

    #[test]
    fn round_trips() {
        let mut r = sample();
        r.spki_sha256 = Some([7; 32]);
        r.deleted_at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000));
        r.push_operation(&Operation {
            id: "op".into(),
            ..Default::default()
        });
        let parsed = Record::parse(&r.to_json()).unwrap();
        assert_eq!(parsed, r);
        assert_eq!(parsed.decoded_operations()[0].id, "op");
    }

    #[test]
    fn keeps_unknown_fields_and_the_last_operations() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        json["future_field"] = serde_json::json!({"x": 1});
        let mut r = Record::parse(&serde_json::to_vec(&json).unwrap()).unwrap();
        for i in 0..25 {
            r.push_operation(&Operation {
                id: format!("op{i}"),
                ..Default::default()
            });
        }
        let again: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(again["future_field"]["x"], 1);
        let ops = r.decoded_operations();
        assert_eq!(ops.len(), MAX_OPERATIONS);
        assert_eq!(ops[0].id, "op5");
        assert_eq!(ops[19].id, "op24");
    }

    #[test]
    fn concurrent_versions_merge_field_by_field() {
        let base = sample();
        let mut a = base.clone();
        a.name = "from-a".into();
        a.revision += 1;
        a.stamp_changes(&base);
        a.push_operation(&Operation {
            id: "op-a".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        });
        let mut b = base.clone();
        b.description = "from-b".into();
        b.deleted_at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5));
        b.revision += 1;
        b.stamp_changes(&base);
        b.push_operation(&Operation {
            id: "op-b".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 9,
                nanos: 0,
            }),
            ..Default::default()
        });
        let ab = Record::merge(vec![a.clone(), b.clone()]).unwrap();
        let ba = Record::merge(vec![b.clone(), a.clone()]).unwrap();
        assert_eq!(ab, ba, "the merge does not depend on order");
        assert_eq!(ab.name, "from-a");
        assert_eq!(ab.description, "from-b");
        assert!(ab.deleted_at.is_some());
        let ids: Vec<_> = ab.decoded_operations().into_iter().map(|o| o.id).collect();
        assert_eq!(ids, ["op-b", "op-a"]);
        // A later change to the same field wins over both.
        let mut c = ab.clone();
        c.name = "later".into();
        c.stamp_changes(&ab);
        assert_eq!(Record::merge(vec![a, b, c]).unwrap().name, "later");
    }

    #[test]
    fn rejects_broken_documents() {
        assert!(Record::parse(b"{").is_err());
        let mut json: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        json["algorithm"] = "RSA_1024".into();
        assert!(Record::parse(&serde_json::to_vec(&json).unwrap()).is_err());
    }
}
