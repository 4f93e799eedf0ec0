//! Canonical proto3 JSON for every message the API returns (lowerCamelCase names, enums by
//! name, bytes as standard padded base64, RFC 3339 timestamps, `Any` as the embedded message
//! plus `@type`), as `google.protobuf.json_format` writes them. The REST API answers with it,
//! and the `keys` CLI's `--json` output uses it.
//!
//! Fields with default values are written too (proto3 JSON's "emit defaults" form), so that a
//! key's `deletionProtection: false` or empty `labels` are visible rather than implied.

use crate::api::yandex::grpc::pb::google::rpc;
use crate::api::yandex::grpc::pb::kms::{
    asymmetric_signature_key, AsymmetricGetPublicKeyResponse, AsymmetricSignHashResponse,
    AsymmetricSignResponse, AsymmetricSignatureAlgorithm, AsymmetricSignatureKey,
    ListAsymmetricSignatureKeyOperationsResponse, ListAsymmetricSignatureKeysResponse,
};
use crate::api::yandex::grpc::pb::operation::{operation, Operation};
use crate::api::yandex::grpc::pb::yandex::cloud::access::{
    ListAccessBindingsResponse, SetAccessBindingsMetadata,
};
use crate::api::yandex::grpc::pb::yandex::cloud::endpoint::{
    ApiEndpoint, ListApiEndpointsResponse,
};
use crate::api::yandex::mapping::type_names;
use base64::Engine as _;
use prost::Message as _;
use serde_json::{json, Map, Value};

/// `bytes`: standard base64 with padding.
pub fn bytes(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

/// An `AsymmetricSignResponse`.
pub fn sign_response(r: &AsymmetricSignResponse) -> Value {
    json!({ "keyId": r.key_id, "signature": bytes(&r.signature) })
}

/// An `AsymmetricSignHashResponse`.
pub fn sign_hash_response(r: &AsymmetricSignHashResponse) -> Value {
    json!({ "keyId": r.key_id, "signature": bytes(&r.signature) })
}

/// An `AsymmetricGetPublicKeyResponse`.
pub fn public_key_response(r: &AsymmetricGetPublicKeyResponse) -> Value {
    json!({ "keyId": r.key_id, "publicKey": r.public_key })
}

/// A `ListAsymmetricSignatureKeyOperationsResponse`.
pub fn operation_list(list: &ListAsymmetricSignatureKeyOperationsResponse) -> Value {
    json!({
        "operations": list.operations.iter().map(operation).collect::<Vec<_>>(),
        "nextPageToken": list.next_page_token,
    })
}

/// A `yandex.cloud.access.ListAccessBindingsResponse`.
pub fn access_binding_list(list: &ListAccessBindingsResponse) -> Value {
    let bindings: Vec<Value> = list
        .access_bindings
        .iter()
        .map(|b| {
            let mut out = Map::new();
            out.insert("roleId".into(), json!(b.role_id));
            if let Some(s) = &b.subject {
                out.insert("subject".into(), json!({ "id": s.id, "type": s.r#type }));
            }
            Value::Object(out)
        })
        .collect();
    json!({ "accessBindings": bindings, "nextPageToken": list.next_page_token })
}

/// A `yandex.cloud.endpoint.ApiEndpoint`.
pub fn endpoint(e: &ApiEndpoint) -> Value {
    json!({ "id": e.id, "address": e.address })
}

/// A `yandex.cloud.endpoint.ListApiEndpointsResponse`.
pub fn endpoint_list(list: &ListApiEndpointsResponse) -> Value {
    json!({
        "endpoints": list.endpoints.iter().map(endpoint).collect::<Vec<_>>(),
        "nextPageToken": list.next_page_token,
    })
}

/// A timestamp as RFC 3339 text.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// An `AsymmetricSignatureKey`.
pub fn key(k: &AsymmetricSignatureKey) -> Value {
    let status = asymmetric_signature_key::Status::try_from(k.status)
        .map_or_else(|_| json!(k.status), |s| json!(s.as_str_name()));
    let algorithm = AsymmetricSignatureAlgorithm::try_from(k.signature_algorithm)
        .map_or_else(|_| json!(k.signature_algorithm), |a| json!(a.as_str_name()));
    let labels: Map<String, Value> = {
        let mut sorted: Vec<_> = k.labels.iter().collect();
        sorted.sort();
        sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    };
    let mut out = Map::new();
    out.insert("id".into(), json!(k.id));
    out.insert("folderId".into(), json!(k.folder_id));
    if k.created_at.is_some() {
        out.insert("createdAt".into(), timestamp(k.created_at.as_ref()));
    }
    out.insert("name".into(), json!(k.name));
    out.insert("description".into(), json!(k.description));
    out.insert("labels".into(), Value::Object(labels));
    out.insert("status".into(), status);
    out.insert("signatureAlgorithm".into(), algorithm);
    out.insert("deletionProtection".into(), json!(k.deletion_protection));
    Value::Object(out)
}

/// A `ListAsymmetricSignatureKeysResponse`.
pub fn key_list(list: &ListAsymmetricSignatureKeysResponse) -> Value {
    json!({
        "keys": list.keys.iter().map(key).collect::<Vec<_>>(),
        "nextPageToken": list.next_page_token,
    })
}

/// An `Any`: the messages the API packs are expanded, others kept as base64.
pub fn any(a: &prost_types::Any) -> Value {
    let name = a.type_url.rsplit('/').next().unwrap_or_default();
    let mut out = match name {
        type_names::KEY => AsymmetricSignatureKey::decode(a.value.as_slice())
            .map(|k| key(&k))
            .unwrap_or(Value::Null),
        type_names::CREATE_METADATA
        | type_names::UPDATE_METADATA
        | type_names::DELETE_METADATA
        | type_names::UNDELETE_METADATA => {
            // All four are `{ string key_id = 1; }`.
            crate::api::yandex::grpc::pb::kms::CreateAsymmetricSignatureKeyMetadata::decode(
                a.value.as_slice(),
            )
            .map(|m| json!({ "keyId": m.key_id }))
            .unwrap_or(Value::Null)
        }
        type_names::SET_ACCESS_BINDINGS_METADATA | type_names::UPDATE_ACCESS_BINDINGS_METADATA => {
            // Both are `{ string resource_id = 1; }`.
            SetAccessBindingsMetadata::decode(a.value.as_slice())
                .map(|m| json!({ "resourceId": m.resource_id }))
                .unwrap_or(Value::Null)
        }
        type_names::EMPTY => json!({}),
        _ => json!({ "value": bytes(&a.value) }),
    };
    if let Value::Object(map) = &mut out {
        let mut with_type = Map::new();
        with_type.insert("@type".into(), json!(a.type_url));
        with_type.append(map);
        return Value::Object(with_type);
    }
    json!({ "@type": a.type_url })
}

fn status(s: &rpc::Status) -> Value {
    json!({
        "code": s.code,
        "message": s.message,
        "details": s.details.iter().map(any).collect::<Vec<_>>(),
    })
}

/// An `Operation`.
pub fn operation(op: &Operation) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(op.id));
    out.insert("description".into(), json!(op.description));
    out.insert("createdAt".into(), timestamp(op.created_at.as_ref()));
    out.insert("createdBy".into(), json!(op.created_by));
    out.insert("modifiedAt".into(), timestamp(op.modified_at.as_ref()));
    out.insert("done".into(), json!(op.done));
    if let Some(m) = &op.metadata {
        out.insert("metadata".into(), any(m));
    }
    match &op.result {
        Some(operation::Result::Error(e)) => {
            out.insert("error".into(), status(e));
        }
        Some(operation::Result::Response(r)) => {
            out.insert("response".into(), any(r));
        }
        None => {}
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_proto3_json_names() {
        let k = AsymmetricSignatureKey {
            id: "k1".into(),
            folder_id: "f".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            status: 2,
            signature_algorithm: 10,
            deletion_protection: true,
            ..Default::default()
        };
        let v = key(&k);
        assert_eq!(v["folderId"], "f");
        assert_eq!(v["status"], "ACTIVE");
        assert_eq!(v["signatureAlgorithm"], "ECDSA_NIST_P256_SHA_256");
        assert_eq!(v["deletionProtection"], true);
        assert_eq!(v["createdAt"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn operations_expand_their_any_fields() {
        let op = crate::keys::Operation::completed(
            crate::keys::OperationKind::Delete,
            std::time::SystemTime::now(),
            "",
            crate::keys::KeySnapshot {
                id: "k1".into(),
                folder_id: "f".into(),
                created_at: std::time::SystemTime::now(),
                name: String::new(),
                description: String::new(),
                labels: Default::default(),
                status: crate::keys::Status::Active,
                algorithm: crate::crypto::Algorithm::EcdsaP256Sha256,
                deletion_protection: false,
            },
        );
        let v = operation(&crate::api::yandex::mapping::operation(&op));
        assert_eq!(
            v["metadata"]["@type"],
            "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.DeleteAsymmetricSignatureKeyMetadata"
        );
        assert_eq!(v["metadata"]["keyId"], "k1");
        assert_eq!(v["response"]["id"], "k1");
        assert_eq!(v["done"], true);
    }

    #[test]
    fn access_binding_operations_expand_metadata_and_empty() {
        use crate::api::yandex::mapping::{pack, type_names};
        let meta = pack(
            type_names::UPDATE_ACCESS_BINDINGS_METADATA,
            &SetAccessBindingsMetadata {
                resource_id: "k1".into(),
            },
        );
        assert_eq!(
            any(&meta),
            json!({
                "@type": "type.googleapis.com/yandex.cloud.access.UpdateAccessBindingsMetadata",
                "resourceId": "k1",
            })
        );
        assert_eq!(
            any(&pack(type_names::EMPTY, &())),
            json!({ "@type": "type.googleapis.com/google.protobuf.Empty" })
        );
    }

    #[test]
    fn bytes_are_standard_padded_base64() {
        let r = AsymmetricSignResponse {
            key_id: "k".into(),
            signature: vec![0xfb, 0xff, 0xbf, 0x01],
        };
        assert_eq!(
            sign_response(&r),
            json!({ "keyId": "k", "signature": "+/+/AQ==" })
        );
    }
}
