//! `AsymmetricSignatureKeyService`: key CRUD, operations and access bindings, over the shared
//! [`KeyManager`].

use super::deadline;
use super::pb::kms::asymmetric_signature_key_service_server::AsymmetricSignatureKeyService;
use super::pb::kms::{
    AsymmetricSignatureKey, CreateAsymmetricSignatureKeyRequest,
    DeleteAsymmetricSignatureKeyRequest, GetAsymmetricSignatureKeyRequest,
    ListAsymmetricSignatureKeyOperationsRequest, ListAsymmetricSignatureKeyOperationsResponse,
    ListAsymmetricSignatureKeysRequest, ListAsymmetricSignatureKeysResponse,
    UpdateAsymmetricSignatureKeyRequest,
};
use super::pb::operation::Operation;
use super::pb::yandex::cloud::access::{
    AccessBinding, ListAccessBindingsRequest, ListAccessBindingsResponse, SetAccessBindingsRequest,
    Subject, UpdateAccessBindingsRequest,
};
use crate::api::{key_fields, validate};
use crate::error::Error;
use crate::keys::{KeyChanges, KeyManager, NewKey};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Who made a change; the authenticated subject once authentication exists.
const ANONYMOUS: &str = "";

/// The key service over the shared [`KeyManager`].
#[derive(Debug, Clone)]
pub struct KeyService {
    manager: Arc<KeyManager>,
}

impl KeyService {
    /// A service managing keys through `manager`.
    pub fn new(manager: Arc<KeyManager>) -> Self {
        Self { manager }
    }
}

/// The update mask paths Update accepts.
const MASK_PATHS: &[&str] = &[
    "name",
    "description",
    "labels",
    "status",
    "deletion_protection",
];

/// Turns Update's mask and fields into the changes to make, validating only masked fields.
fn changes(req: &UpdateAsymmetricSignatureKeyRequest) -> Result<KeyChanges, Error> {
    let paths = req
        .update_mask
        .as_ref()
        .map(|m| m.paths.as_slice())
        .unwrap_or(&[]);
    if paths.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "update_mask is required: name the fields to change, from {}",
            MASK_PATHS.join(", ")
        )));
    }
    let mut out = KeyChanges::default();
    for path in paths {
        // REST clients send the JSON (camelCase) spelling.
        match path.as_str() {
            "name" => {
                key_fields::name(&req.name)?;
                out.name = Some(req.name.clone());
            }
            "description" => {
                key_fields::description(&req.description)?;
                out.description = Some(req.description.clone());
            }
            "labels" => out.labels = Some(key_fields::labels(&req.labels)?),
            "status" => out.status = Some(key_fields::settable_status(req.status)?),
            "deletion_protection" | "deletionProtection" => {
                out.deletion_protection = Some(req.deletion_protection);
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "update_mask: unknown path {other:?}; the paths are {}",
                    MASK_PATHS.join(", ")
                )))
            }
        }
    }
    Ok(out)
}

fn binding_to_proto(b: &crate::keys::record::AccessBindingRecord) -> AccessBinding {
    AccessBinding {
        role_id: b.role_id.clone(),
        subject: Some(Subject {
            id: b.subject_id.clone(),
            r#type: b.subject_type.clone(),
        }),
    }
}

#[tonic::async_trait]
impl AsymmetricSignatureKeyService for KeyService {
    #[tracing::instrument(name = "CreateKey", skip_all, fields(folder_id))]
    async fn create(
        &self,
        request: Request<CreateAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("folder_id", req.folder_id.as_str());
        key_fields::folder_id(&req.folder_id)?;
        key_fields::name(&req.name)?;
        key_fields::description(&req.description)?;
        let labels = key_fields::labels(&req.labels)?;
        let algorithm = key_fields::signature_algorithm(req.signature_algorithm)?;
        let new = NewKey {
            folder_id: req.folder_id,
            name: req.name,
            description: req.description,
            labels,
            algorithm,
            deletion_protection: req.deletion_protection,
        };
        let op = self.manager.create(new, ANONYMOUS.into(), deadline).await?;
        Ok(Response::new(op))
    }

    #[tracing::instrument(name = "GetKey", skip_all, fields(key_id))]
    async fn get(
        &self,
        request: Request<GetAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<AsymmetricSignatureKey>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let key = self.manager.get(&req.key_id, deadline).await?;
        Ok(Response::new(key.to_proto()))
    }

    #[tracing::instrument(name = "ListKeys", skip_all, fields(folder_id))]
    async fn list(
        &self,
        request: Request<ListAsymmetricSignatureKeysRequest>,
    ) -> Result<Response<ListAsymmetricSignatureKeysResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("folder_id", req.folder_id.as_str());
        key_fields::folder_id(&req.folder_id)?;
        let size = key_fields::page_size(req.page_size)?;
        let after = key_fields::parse_page_token(&req.page_token, key_fields::MAX_LIST_TOKEN_LEN)?;
        let (keys, more) = self.manager.list(&req.folder_id, after.as_deref(), size);
        let next_page_token = match (more, keys.last()) {
            (true, Some(last)) => key_fields::page_token(&last.id),
            _ => String::new(),
        };
        Ok(Response::new(ListAsymmetricSignatureKeysResponse {
            keys: keys.iter().map(|k| k.to_proto()).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "UpdateKey", skip_all, fields(key_id))]
    async fn update(
        &self,
        request: Request<UpdateAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let changes = changes(&req)?;
        let op = self
            .manager
            .update(&req.key_id, changes, ANONYMOUS.into(), deadline)
            .await?;
        Ok(Response::new(op))
    }

    #[tracing::instrument(name = "DeleteKey", skip_all, fields(key_id))]
    async fn delete(
        &self,
        request: Request<DeleteAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let op = self
            .manager
            .delete(&req.key_id, ANONYMOUS.into(), deadline)
            .await?;
        Ok(Response::new(op))
    }

    #[tracing::instrument(name = "ListKeyOperations", skip_all, fields(key_id))]
    async fn list_operations(
        &self,
        request: Request<ListAsymmetricSignatureKeyOperationsRequest>,
    ) -> Result<Response<ListAsymmetricSignatureKeyOperationsResponse>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let size = key_fields::page_size(req.page_size)?;
        let after = key_fields::parse_page_token(&req.page_token, key_fields::MAX_SHORT_TOKEN_LEN)?;
        let ops = self.manager.operations(&req.key_id, deadline).await?;
        // Newest first. Only the newest are kept, so an operation named by a token can only
        // have been dropped when everything older went too: the next page is then empty.
        let start = match &after {
            None => 0,
            Some(id) => ops
                .iter()
                .position(|op| &op.id == id)
                .map_or(ops.len(), |i| i + 1),
        };
        let page: Vec<Operation> = ops.iter().skip(start).take(size).cloned().collect();
        let next_page_token = match page.last() {
            Some(last) if start + page.len() < ops.len() => key_fields::page_token(&last.id),
            _ => String::new(),
        };
        Ok(Response::new(
            ListAsymmetricSignatureKeyOperationsResponse {
                operations: page,
                next_page_token,
            },
        ))
    }

    #[tracing::instrument(name = "ListAccessBindings", skip_all, fields(key_id))]
    async fn list_access_bindings(
        &self,
        request: Request<ListAccessBindingsRequest>,
    ) -> Result<Response<ListAccessBindingsResponse>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.resource_id.as_str());
        key_fields::required(
            "resource_id",
            &req.resource_id,
            key_fields::MAX_RESOURCE_ID_LEN,
        )?;
        let size = key_fields::page_size(req.page_size)?;
        let after = key_fields::parse_page_token(&req.page_token, key_fields::MAX_SHORT_TOKEN_LEN)?;
        let bindings = self
            .manager
            .access_bindings(&req.resource_id, deadline)
            .await?;
        // Bindings have no id; the token carries the index of the next one.
        let start = after
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(0)
            .min(bindings.len());
        let end = (start + size).min(bindings.len());
        Ok(Response::new(ListAccessBindingsResponse {
            access_bindings: bindings[start..end].iter().map(binding_to_proto).collect(),
            next_page_token: if end < bindings.len() {
                key_fields::page_token(&end.to_string())
            } else {
                String::new()
            },
        }))
    }

    #[tracing::instrument(name = "SetAccessBindings", skip_all, fields(key_id))]
    async fn set_access_bindings(
        &self,
        request: Request<SetAccessBindingsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.resource_id.as_str());
        key_fields::required(
            "resource_id",
            &req.resource_id,
            key_fields::MAX_RESOURCE_ID_LEN,
        )?;
        self.manager
            .check_changeable(&req.resource_id, deadline)
            .await?;
        Err(bindings_unsupported().into())
    }

    #[tracing::instrument(name = "UpdateAccessBindings", skip_all, fields(key_id))]
    async fn update_access_bindings(
        &self,
        request: Request<UpdateAccessBindingsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.resource_id.as_str());
        key_fields::required(
            "resource_id",
            &req.resource_id,
            key_fields::MAX_RESOURCE_ID_LEN,
        )?;
        self.manager
            .check_changeable(&req.resource_id, deadline)
            .await?;
        Err(bindings_unsupported().into())
    }
}

/// Accepting bindings that nothing enforces would make keys look protected when they are not.
fn bindings_unsupported() -> Error {
    Error::Unimplemented(
        "this p11kms version does not enforce per-key access bindings, so it does not accept them"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(paths: &[&str]) -> UpdateAsymmetricSignatureKeyRequest {
        UpdateAsymmetricSignatureKeyRequest {
            key_id: "k".into(),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            status: 2,
            ..Default::default()
        }
    }

    #[test]
    fn masks() {
        assert!(changes(&UpdateAsymmetricSignatureKeyRequest::default()).is_err());
        assert!(changes(&masked(&[])).is_err());
        let err = changes(&masked(&["name", "folder_id"])).unwrap_err();
        assert!(err.to_string().contains("folder_id"), "{err}");
        let c = changes(&masked(&["status", "deletion_protection"])).unwrap();
        assert_eq!(c.status, Some(crate::keys::Status::Active));
        assert_eq!(c.deletion_protection, Some(false));
        assert!(c.name.is_none());
        let mut creating = masked(&["status"]);
        creating.status = 1;
        assert!(changes(&creating).is_err());
    }
}
