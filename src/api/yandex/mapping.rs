//! The core's domain types as Yandex wire messages: keys, their status, and key operations
//! (`yandex.cloud.operation.Operation`, whose metadata and response are packed `Any`s).

use super::grpc::pb::kms::{asymmetric_signature_key, AsymmetricSignatureKey};
use super::grpc::pb::operation::{operation, Operation as PbOperation};
use crate::keys::ops::{Kind, Operation};
use crate::keys::{KeyEntry, KeySnapshot, Status};
use prost_types::Any;

/// Full message names packed into `Any` (type URL `type.googleapis.com/<name>`).
pub mod type_names {
    /// The key resource.
    pub const KEY: &str = "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKey";
    /// Create's metadata.
    pub const CREATE_METADATA: &str =
        "yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata";
    /// Update's metadata.
    pub const UPDATE_METADATA: &str =
        "yandex.cloud.kms.v1.asymmetricsignature.UpdateAsymmetricSignatureKeyMetadata";
    /// Delete's metadata.
    pub const DELETE_METADATA: &str =
        "yandex.cloud.kms.v1.asymmetricsignature.DeleteAsymmetricSignatureKeyMetadata";
    /// Undelete's metadata (p11kms's own API).
    pub const UNDELETE_METADATA: &str = "p11kms.v1.UndeleteKeyMetadata";
    /// SetAccessBindings's metadata.
    pub const SET_ACCESS_BINDINGS_METADATA: &str = "yandex.cloud.access.SetAccessBindingsMetadata";
    /// UpdateAccessBindings's metadata.
    pub const UPDATE_ACCESS_BINDINGS_METADATA: &str =
        "yandex.cloud.access.UpdateAccessBindingsMetadata";
    /// The response of the access-binding changes.
    pub const EMPTY: &str = "google.protobuf.Empty";
}

/// The `Any` type URL of a message name.
pub fn type_url(full_name: &str) -> String {
    format!("type.googleapis.com/{full_name}")
}

/// Packs `message` as an `Any` of type `full_name`.
pub fn pack<M: prost::Message>(full_name: &str, message: &M) -> Any {
    Any {
        type_url: type_url(full_name),
        value: message.encode_to_vec(),
    }
}

/// The wire enum value of a status.
pub fn status(s: Status) -> asymmetric_signature_key::Status {
    match s {
        Status::Creating => asymmetric_signature_key::Status::Creating,
        Status::Active => asymmetric_signature_key::Status::Active,
        Status::Inactive => asymmetric_signature_key::Status::Inactive,
    }
}

/// A key as the API resource.
pub fn key(k: &KeyEntry) -> AsymmetricSignatureKey {
    AsymmetricSignatureKey {
        id: k.id.clone(),
        folder_id: k.folder_id.clone(),
        created_at: k.created_at.map(Into::into),
        name: k.name.clone(),
        description: k.description.clone(),
        labels: k
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        status: status(k.status) as i32,
        signature_algorithm: k.algorithm.to_proto(),
        deletion_protection: k.deletion_protection,
    }
}

/// A key snapshot (an operation's response) as the API resource.
pub fn snapshot(k: &KeySnapshot) -> AsymmetricSignatureKey {
    AsymmetricSignatureKey {
        id: k.id.clone(),
        folder_id: k.folder_id.clone(),
        created_at: Some(k.created_at.into()),
        name: k.name.clone(),
        description: k.description.clone(),
        labels: k
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        status: status(k.status) as i32,
        signature_algorithm: k.algorithm.to_proto(),
        deletion_protection: k.deletion_protection,
    }
}

fn description(kind: Kind) -> &'static str {
    match kind {
        Kind::Create => "Create asymmetric signature key",
        Kind::Update => "Update asymmetric signature key",
        Kind::Delete => "Delete asymmetric signature key",
        Kind::Undelete => "Undelete asymmetric signature key",
        Kind::SetAccessBindings => "Set access bindings of asymmetric signature key",
        Kind::UpdateAccessBindings => "Update access bindings of asymmetric signature key",
        Kind::CreateVersion => "Create a version of asymmetric signature key",
    }
}

fn metadata_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Create => type_names::CREATE_METADATA,
        // A new version changes the key as an update does; Yandex has no versions.
        Kind::Update | Kind::CreateVersion => type_names::UPDATE_METADATA,
        Kind::Delete => type_names::DELETE_METADATA,
        Kind::Undelete => type_names::UNDELETE_METADATA,
        Kind::SetAccessBindings => type_names::SET_ACCESS_BINDINGS_METADATA,
        Kind::UpdateAccessBindings => type_names::UPDATE_ACCESS_BINDINGS_METADATA,
    }
}

/// Every `*Metadata` message of a key operation is `{ string key_id = 1; }` (the access-binding
/// ones call it `resource_id`, with the same number).
#[derive(Clone, PartialEq, prost::Message)]
struct KeyIdMetadata {
    #[prost(string, tag = "1")]
    key_id: String,
}

/// A completed key operation: its response is the key (or `Empty`, for access-binding changes,
/// as Yandex answers them).
pub fn operation(op: &Operation) -> PbOperation {
    let empty = matches!(
        op.kind,
        Kind::SetAccessBindings | Kind::UpdateAccessBindings
    );
    PbOperation {
        id: op.id.clone(),
        description: description(op.kind).to_string(),
        created_at: Some(op.created_at.into()),
        created_by: op.created_by.clone(),
        modified_at: Some(op.modified_at.into()),
        done: true,
        metadata: Some(pack(
            metadata_type(op.kind),
            &KeyIdMetadata {
                key_id: op.key_id().to_string(),
            },
        )),
        result: Some(operation::Result::Response(if empty {
            pack(type_names::EMPTY, &())
        } else {
            pack(type_names::KEY, &snapshot(&op.key))
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::yandex::grpc::pb::kms::CreateAsymmetricSignatureKeyMetadata;
    use crate::crypto::Algorithm;
    use prost::Message as _;
    use std::time::SystemTime;

    #[test]
    fn metadata_decodes_as_the_yandex_messages() {
        let op = Operation::completed(
            Kind::Create,
            SystemTime::now(),
            "",
            KeySnapshot {
                id: "abc".into(),
                folder_id: "f".into(),
                created_at: SystemTime::now(),
                name: String::new(),
                description: String::new(),
                labels: Default::default(),
                status: Status::Active,
                algorithm: Algorithm::EcdsaP256Sha256,
                deletion_protection: false,
            },
        );
        let pb = operation(&op);
        let any = pb.metadata.expect("metadata");
        assert_eq!(
            any.type_url,
            "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata"
        );
        let meta = CreateAsymmetricSignatureKeyMetadata::decode(any.value.as_slice()).unwrap();
        assert_eq!(meta.key_id, "abc");
        assert!(pb.done);
    }
}
