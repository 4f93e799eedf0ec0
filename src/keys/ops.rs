//! `yandex.cloud.operation.Operation` values for key changes. Every change completes before the
//! call returns, so every operation is `done` with its `response` set; the SDK waiters still
//! poll `OperationService.Get` once, which any replica answers from the key's metadata.

use super::ids;
use crate::api::yandex::grpc::pb::operation::{operation, Operation};
use prost_types::Any;
use std::time::SystemTime;

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

/// What a key operation did, for its description and metadata type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `AsymmetricSignatureKeyService.Create`.
    Create,
    /// `AsymmetricSignatureKeyService.Update`.
    Update,
    /// `AsymmetricSignatureKeyService.Delete`.
    Delete,
    /// `p11kms.v1.KeyAdminService.Undelete`.
    Undelete,
    /// `AsymmetricSignatureKeyService.SetAccessBindings`.
    SetAccessBindings,
    /// `AsymmetricSignatureKeyService.UpdateAccessBindings`.
    UpdateAccessBindings,
}

impl Kind {
    fn description(self) -> &'static str {
        match self {
            Kind::Create => "Create asymmetric signature key",
            Kind::Update => "Update asymmetric signature key",
            Kind::Delete => "Delete asymmetric signature key",
            Kind::Undelete => "Undelete asymmetric signature key",
            Kind::SetAccessBindings => "Set access bindings of asymmetric signature key",
            Kind::UpdateAccessBindings => "Update access bindings of asymmetric signature key",
        }
    }

    fn metadata_type(self) -> &'static str {
        match self {
            Kind::Create => type_names::CREATE_METADATA,
            Kind::Update => type_names::UPDATE_METADATA,
            Kind::Delete => type_names::DELETE_METADATA,
            Kind::Undelete => type_names::UNDELETE_METADATA,
            Kind::SetAccessBindings => type_names::SET_ACCESS_BINDINGS_METADATA,
            Kind::UpdateAccessBindings => type_names::UPDATE_ACCESS_BINDINGS_METADATA,
        }
    }

    /// Whether the operation's response is `google.protobuf.Empty` rather than the key.
    fn responds_empty(self) -> bool {
        matches!(self, Kind::SetAccessBindings | Kind::UpdateAccessBindings)
    }
}

/// Every `*Metadata` message of a key operation is `{ string key_id = 1; }` (the access-binding
/// ones call it `resource_id`, with the same number).
#[derive(Clone, PartialEq, prost::Message)]
struct KeyIdMetadata {
    #[prost(string, tag = "1")]
    key_id: String,
}

/// A completed operation on `key_id` whose response is `key` (or `Empty`, for access-binding
/// changes, as Yandex answers them).
pub fn completed(
    kind: Kind,
    key_id: &str,
    started: SystemTime,
    actor: &str,
    key: &crate::api::yandex::grpc::pb::kms::AsymmetricSignatureKey,
) -> Operation {
    Operation {
        id: ids::generate(),
        description: kind.description().to_string(),
        created_at: Some(started.into()),
        created_by: actor.to_string(),
        modified_at: Some(SystemTime::now().into()),
        done: true,
        metadata: Some(pack(
            kind.metadata_type(),
            &KeyIdMetadata {
                key_id: key_id.to_string(),
            },
        )),
        result: Some(operation::Result::Response(if kind.responds_empty() {
            pack(type_names::EMPTY, &())
        } else {
            pack(type_names::KEY, key)
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::yandex::grpc::pb::kms::CreateAsymmetricSignatureKeyMetadata;
    use prost::Message as _;

    #[test]
    fn metadata_decodes_as_the_yandex_messages() {
        let op = completed(
            Kind::Create,
            "abc",
            SystemTime::now(),
            "",
            &Default::default(),
        );
        let any = op.metadata.expect("metadata");
        assert_eq!(
            any.type_url,
            "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata"
        );
        let meta = CreateAsymmetricSignatureKeyMetadata::decode(any.value.as_slice()).unwrap();
        assert_eq!(meta.key_id, "abc");
        assert!(op.done);
    }
}
