//! Request bodies and query strings of the REST bindings, in proto3 JSON: lowerCamelCase names
//! (the proto names are accepted too, as the JSON mapping requires), every other convention
//! through [`super::proto_json`], and unknown fields refused. Each turns into the generated
//! request message, which the transport-neutral handlers take; a value bound in the path wins
//! over the same field in the body.

use super::proto_json::{bytes, enumeration, field_mask, int64, nullable, Object};
use crate::api::yandex::grpc::pb::kms::{
    asymmetric_signature_key, AsymmetricSignHashRequest, AsymmetricSignRequest,
    AsymmetricSignatureAlgorithm, CreateAsymmetricSignatureKeyRequest,
    ListAsymmetricSignatureKeyOperationsRequest, ListAsymmetricSignatureKeysRequest,
    UpdateAsymmetricSignatureKeyRequest,
};
use crate::api::yandex::grpc::pb::yandex::cloud::access::{
    AccessBinding, AccessBindingAction, AccessBindingDelta, ListAccessBindingsRequest,
    SetAccessBindingsRequest, Subject, UpdateAccessBindingsRequest,
};
use crate::api::yandex::grpc::pb::yandex::cloud::endpoint::ListApiEndpointsRequest;
use serde::Deserialize;
use std::collections::HashMap;

/// No fields: what a binding without a body or query takes (anything sent is refused).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "no parameters")]
pub struct Nothing {}

/// `:sign`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: AsymmetricSignRequest {\"message\": base64}"
)]
pub struct Sign {
    /// Accepted, and overridden by the path.
    #[serde(rename = "keyId", alias = "key_id", deserialize_with = "nullable")]
    _key_id: String,
    #[serde(deserialize_with = "bytes")]
    message: Vec<u8>,
}

impl Sign {
    /// The request for the key in the path.
    pub fn into_request(self, key_id: String) -> AsymmetricSignRequest {
        AsymmetricSignRequest {
            key_id,
            message: self.message,
        }
    }
}

/// `:signHash`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: AsymmetricSignHashRequest {\"hash\": base64 digest}"
)]
pub struct SignHash {
    /// Accepted, and overridden by the path.
    #[serde(rename = "keyId", alias = "key_id", deserialize_with = "nullable")]
    _key_id: String,
    #[serde(deserialize_with = "bytes")]
    hash: Vec<u8>,
}

impl SignHash {
    /// The request for the key in the path.
    pub fn into_request(self, key_id: String) -> AsymmetricSignHashRequest {
        AsymmetricSignHashRequest {
            key_id,
            hash: self.hash,
        }
    }
}

/// `POST /kms/v1/asymmetricSignatureKeys`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: CreateAsymmetricSignatureKeyRequest"
)]
pub struct CreateKey {
    #[serde(alias = "folder_id", deserialize_with = "nullable")]
    folder_id: String,
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    description: String,
    #[serde(deserialize_with = "nullable")]
    labels: HashMap<String, String>,
    #[serde(
        alias = "signature_algorithm",
        deserialize_with = "enumeration::<AsymmetricSignatureAlgorithm, _>"
    )]
    signature_algorithm: i32,
    #[serde(alias = "deletion_protection", deserialize_with = "nullable")]
    deletion_protection: bool,
}

impl From<CreateKey> for CreateAsymmetricSignatureKeyRequest {
    fn from(b: CreateKey) -> Self {
        Self {
            folder_id: b.folder_id,
            name: b.name,
            description: b.description,
            labels: b.labels,
            signature_algorithm: b.signature_algorithm,
            deletion_protection: b.deletion_protection,
        }
    }
}

/// `PATCH /kms/v1/asymmetricSignatureKeys/{key_id}`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: UpdateAsymmetricSignatureKeyRequest"
)]
pub struct UpdateKey {
    /// Accepted, and overridden by the path.
    #[serde(rename = "keyId", alias = "key_id", deserialize_with = "nullable")]
    _key_id: String,
    #[serde(alias = "update_mask", deserialize_with = "field_mask")]
    update_mask: Option<prost_types::FieldMask>,
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    description: String,
    #[serde(deserialize_with = "enumeration::<asymmetric_signature_key::Status, _>")]
    status: i32,
    #[serde(deserialize_with = "nullable")]
    labels: HashMap<String, String>,
    #[serde(alias = "deletion_protection", deserialize_with = "nullable")]
    deletion_protection: bool,
}

impl UpdateKey {
    /// The request for the key in the path.
    pub fn into_request(self, key_id: String) -> UpdateAsymmetricSignatureKeyRequest {
        // Contract §3: a REST update without a mask overwrites every field, and a field left
        // out of the body is reset to its default. (`"updateMask": ""` is an empty mask:
        // INVALID_ARGUMENT, as over gRPC.)
        let update_mask = self.update_mask.unwrap_or_else(|| prost_types::FieldMask {
            paths: crate::api::yandex::grpc::keys::MASK_PATHS
                .iter()
                .map(|p| (*p).to_string())
                .collect(),
        });
        UpdateAsymmetricSignatureKeyRequest {
            key_id,
            update_mask: Some(update_mask),
            name: self.name,
            description: self.description,
            status: self.status,
            labels: self.labels,
            deletion_protection: self.deletion_protection,
        }
    }
}

/// `yandex.cloud.access.Subject`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a JSON object: Subject {\"id\", \"type\"}"
)]
struct SubjectJson {
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(rename = "type", deserialize_with = "nullable")]
    kind: String,
}

/// `yandex.cloud.access.AccessBinding`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: AccessBinding {\"roleId\", \"subject\"}"
)]
struct AccessBindingJson {
    #[serde(alias = "role_id", deserialize_with = "nullable")]
    role_id: String,
    #[serde(deserialize_with = "nullable")]
    subject: Option<Object<SubjectJson>>,
}

impl From<AccessBindingJson> for AccessBinding {
    fn from(b: AccessBindingJson) -> Self {
        Self {
            role_id: b.role_id,
            subject: b.subject.map(|Object(s)| Subject {
                id: s.id,
                r#type: s.kind,
            }),
        }
    }
}

/// `yandex.cloud.access.AccessBindingDelta`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: AccessBindingDelta {\"action\", \"accessBinding\"}"
)]
struct AccessBindingDeltaJson {
    #[serde(deserialize_with = "enumeration::<AccessBindingAction, _>")]
    action: i32,
    #[serde(alias = "access_binding", deserialize_with = "nullable")]
    access_binding: Option<Object<AccessBindingJson>>,
}

/// `:setAccessBindings`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: SetAccessBindingsRequest {\"accessBindings\": [...]}"
)]
pub struct SetAccessBindings {
    /// Accepted, and overridden by the path.
    #[serde(
        rename = "resourceId",
        alias = "resource_id",
        deserialize_with = "nullable"
    )]
    _resource_id: String,
    #[serde(alias = "access_bindings", deserialize_with = "nullable")]
    access_bindings: Vec<Object<AccessBindingJson>>,
}

impl SetAccessBindings {
    /// The request for the key in the path.
    pub fn into_request(self, resource_id: String) -> SetAccessBindingsRequest {
        SetAccessBindingsRequest {
            resource_id,
            access_bindings: self
                .access_bindings
                .into_iter()
                .map(|Object(b)| b.into())
                .collect(),
        }
    }
}

/// `:updateAccessBindings`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "a JSON object: UpdateAccessBindingsRequest {\"accessBindingDeltas\": [...]}"
)]
pub struct UpdateAccessBindings {
    /// Accepted, and overridden by the path.
    #[serde(
        rename = "resourceId",
        alias = "resource_id",
        deserialize_with = "nullable"
    )]
    _resource_id: String,
    #[serde(alias = "access_binding_deltas", deserialize_with = "nullable")]
    access_binding_deltas: Vec<Object<AccessBindingDeltaJson>>,
}

impl UpdateAccessBindings {
    /// The request for the key in the path.
    pub fn into_request(self, resource_id: String) -> UpdateAccessBindingsRequest {
        UpdateAccessBindingsRequest {
            resource_id,
            access_binding_deltas: self
                .access_binding_deltas
                .into_iter()
                .map(|Object(d)| AccessBindingDelta {
                    action: d.action,
                    access_binding: d.access_binding.map(|Object(b)| b.into()),
                })
                .collect(),
        }
    }
}

/// The query of `GET /kms/v1/asymmetricSignatureKeys`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "query parameters folderId, pageSize, pageToken"
)]
pub struct ListKeys {
    #[serde(alias = "folder_id", deserialize_with = "nullable")]
    folder_id: String,
    #[serde(alias = "page_size", deserialize_with = "int64")]
    page_size: i64,
    #[serde(alias = "page_token", deserialize_with = "nullable")]
    page_token: String,
}

impl From<ListKeys> for ListAsymmetricSignatureKeysRequest {
    fn from(q: ListKeys) -> Self {
        Self {
            folder_id: q.folder_id,
            page_size: q.page_size,
            page_token: q.page_token,
        }
    }
}

/// The query of the other list bindings: `pageSize`, `pageToken`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    rename_all = "camelCase",
    expecting = "query parameters pageSize, pageToken"
)]
pub struct Page {
    #[serde(alias = "page_size", deserialize_with = "int64")]
    page_size: i64,
    #[serde(alias = "page_token", deserialize_with = "nullable")]
    page_token: String,
}

impl Page {
    /// `ListOperations` of the key in the path.
    pub fn key_operations(self, key_id: String) -> ListAsymmetricSignatureKeyOperationsRequest {
        ListAsymmetricSignatureKeyOperationsRequest {
            key_id,
            page_size: self.page_size,
            page_token: self.page_token,
        }
    }

    /// `ApiEndpointService.List` (both fields are deprecated upstream, and ignored).
    pub fn endpoints(self) -> ListApiEndpointsRequest {
        ListApiEndpointsRequest {
            page_size: self.page_size,
            page_token: self.page_token,
        }
    }

    /// `ListAccessBindings` of the key in the path.
    pub fn access_bindings(self, resource_id: String) -> ListAccessBindingsRequest {
        ListAccessBindingsRequest {
            resource_id,
            page_size: self.page_size,
            page_token: self.page_token,
        }
    }
}
