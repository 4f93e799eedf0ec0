//! Reading the metadata documents of p11kms before the change-based state (schema 1: one
//! mutable JSON document per key, see the git history of `keys/record.rs`), so that keys created
//! by an older version keep working. A schema-1 document becomes a [`KeyDoc`] whose writes all
//! carry the document's revision as their clock; the first change written by this version
//! supersedes them, and compaction then replaces the old document.
//!
//! What schema 1 cannot carry over: its stored operations (they were encoded Yandex wire
//! messages, which the core no longer reads), so a migrated key starts with an empty operation
//! history.

use super::crdt::{Register, Stamp};
use super::doc::{time, Deletion, Genesis, KeyDoc, VersionDoc, VersionState, SCHEMA};
use super::{ids, Status};
use crate::crypto::Algorithm;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// The schema-1 shape (only what is migrated).
#[derive(Deserialize)]
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
    access_bindings: Vec<Binding1>,
}

#[derive(Deserialize)]
struct Binding1 {
    role_id: String,
    subject_id: String,
    subject_type: String,
}

/// Whether `bytes` look like a schema-1 document (so its errors are reported as such).
pub(super) fn is_legacy(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        schema: u32,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.schema == 1)
}

/// A schema-1 document as a key document. A deleted key is destroyed `retention` after its
/// deletion, as schema 1 decided at purge time.
///
/// # Errors
/// What is wrong with the document.
pub(super) fn parse(bytes: &[u8], retention: Duration) -> Result<KeyDoc, String> {
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON (schema 1): {e}"))?;
    if doc.schema != 1 {
        return Err(format!("schema {} is not schema 1", doc.schema));
    }
    let algorithm = Algorithm::from_name(&doc.algorithm)
        .ok_or_else(|| format!("unknown algorithm {:?}", doc.algorithm))?;
    let ck_id = hex::decode(&doc.ck_id).map_err(|_| format!("ck_id {:?} is not hex", doc.ck_id))?;
    if ck_id.is_empty() {
        return Err("ck_id is empty".into());
    }
    let created_at = time::parse(&doc.created_at).map_err(|e| format!("created_at {e}"))?;
    // One stamp for every write of this revision; the id is the document's hash, so that two
    // different documents of one revision (two replicas wrote at once) still order.
    let stamp = Stamp(
        doc.revision,
        "schema1".into(),
        hex::encode(&Sha256::digest(bytes)[..8]),
    );
    let reg = |v| Register::written(v, stamp.clone(), None);
    let mut out = KeyDoc::change(&doc.key_id);
    out.schema = SCHEMA;
    out.genesis = Some(Genesis {
        algorithm,
        folder_id: doc.folder_id,
        created_at,
        created_by: doc.created_by,
    });
    out.name = reg(doc.name);
    out.description = reg(doc.description);
    out.labels = doc
        .labels
        .into_iter()
        .map(|(k, v)| (k, Register::written(Some(v), stamp.clone(), None)))
        .collect();
    if doc.status != Status::Creating {
        out.status = Register::written(doc.status, stamp.clone(), None);
    }
    out.protection = Register::written(doc.deletion_protection, stamp.clone(), None);
    let deletion = match doc.deleted_at {
        None => None,
        Some(t) => {
            let at = time::parse(&t).map_err(|e| format!("deleted_at {e}"))?;
            Some(Deletion {
                at,
                destroy_at: at + retention,
                seen_protection: Some(stamp.clone()),
            })
        }
    };
    out.deletion = Register::written(deletion, stamp.clone(), None);
    for (i, b) in doc.access_bindings.into_iter().enumerate() {
        let key = super::doc::Binding {
            role_id: b.role_id,
            subject_type: b.subject_type,
            subject_id: b.subject_id,
        }
        .key();
        let order = u32::try_from(i).unwrap_or(u32::MAX);
        out.bindings
            .insert(key, Register::written(Some(order), stamp.clone(), None));
    }
    let state = match (doc.status, doc.spki_sha256) {
        (Status::Creating, _) | (_, None) => VersionState::Pending,
        (_, Some(pin)) => {
            let mut buf = [0u8; 32];
            hex::decode_to_slice(&pin, &mut buf)
                .map_err(|_| format!("spki_sha256 {pin:?} is not 64 hex digits"))?;
            VersionState::Ready { spki_sha256: pin }
        }
    };
    out.versions.insert(
        ids::first_version_id(&doc.key_id),
        VersionDoc {
            created_at,
            ck_id: hex::encode(&ck_id),
            label: doc.key_id.clone(),
            created: Stamp(0, "schema1".into(), String::new()),
            state,
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_1_document_becomes_a_key_document() {
        let json = serde_json::json!({
            "schema": 1, "key_id": "e3tsq0mjc1l6jfn2h8vb", "ck_id": hex::encode("e3tsq0mjc1l6jfn2h8vb"),
            "folder_id": "f", "name": "n", "description": "d", "labels": {"a": "b"},
            "status": "INACTIVE", "algorithm": "ECDSA_NIST_P256_SHA_256",
            "created_at": "2026-05-01T10:00:00.123Z", "deletion_protection": true,
            "deleted_at": null, "created_by": "alice", "revision": 3,
            "spki_sha256": "ab".repeat(32), "operations": [], "stamps": {"name": 5},
            "access_bindings": [{"role_id": "kms.viewer", "subject_id": "bob", "subject_type": "userAccount"}]
        });
        let bytes = serde_json::to_vec(&json).unwrap();
        assert!(is_legacy(&bytes));
        let doc = parse(&bytes, Duration::from_secs(3600)).unwrap();
        let s = doc.state().unwrap();
        assert_eq!(s.status, Status::Inactive);
        assert_eq!(s.name, "n");
        assert_eq!(s.labels["a"], "b");
        assert!(s.deletion_protection);
        assert!(s.deletion.is_none());
        assert_eq!(s.bindings.len(), 1);
        assert_eq!(
            s.versions[0].0,
            ids::first_version_id("e3tsq0mjc1l6jfn2h8vb")
        );
        assert_eq!(s.versions[0].1.label, "e3tsq0mjc1l6jfn2h8vb");
        // A change by this version supersedes the migrated writes.
        let mut w = super::super::doc::Writer::new(doc.clone(), "r");
        w.name("new".into());
        let merged = KeyDoc::merged([&doc, &w.change]).unwrap();
        assert_eq!(merged.state().unwrap().name, "new");
    }

    #[test]
    fn creating_and_broken_documents() {
        let json = serde_json::json!({
            "schema": 1, "key_id": "k", "ck_id": hex::encode("k"), "folder_id": "f",
            "status": "CREATING", "algorithm": "ECDSA_NIST_P256_SHA_256",
            "created_at": "2020-01-01T00:00:00Z", "revision": 1,
        });
        let doc = parse(&serde_json::to_vec(&json).unwrap(), Duration::ZERO).unwrap();
        assert_eq!(doc.state().unwrap().status, Status::Creating);
        assert!(parse(b"{", Duration::ZERO).is_err());
        assert!(!is_legacy(b"not json"));
        let mut bad = json.clone();
        bad["algorithm"] = "RSA_1024".into();
        assert!(parse(&serde_json::to_vec(&bad).unwrap(), Duration::ZERO).is_err());
    }
}
