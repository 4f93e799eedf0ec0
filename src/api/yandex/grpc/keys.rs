//! `AsymmetricSignatureKeyService`: key CRUD, operations and access bindings, over the shared
//! [`KeyManager`]. The `handle_*` methods are the transport-neutral handlers, called by the
//! tonic trait below and by the REST API.

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
    AccessBinding, AccessBindingAction, ListAccessBindingsRequest, ListAccessBindingsResponse,
    SetAccessBindingsRequest, Subject, UpdateAccessBindingsRequest,
};
use crate::api::yandex::mapping;
use crate::api::yandex::{key_fields, validate};
use crate::auth::authz::Want;
use crate::auth::RequestContext;
use crate::error::Error;
use crate::keys::Binding;
use crate::keys::{BindingDelta, KeyChanges, KeyManager, NewKey};
use std::sync::Arc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

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
pub(crate) const MASK_PATHS: &[&str] = &[
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

/// Most bindings one request may set or change (as Yandex).
const MAX_BINDINGS: usize = 1000;
/// Subject types a binding may name.
const BINDING_SUBJECT_TYPES: &[&str] =
    &["userAccount", "serviceAccount", "federatedUser", "system"];

/// Checks one binding: a known role, and a subject that can match a caller.
fn binding_from_proto(field: &str, b: &AccessBinding) -> Result<Binding, Error> {
    if crate::auth::Role::parse(&b.role_id).is_none() {
        return Err(Error::InvalidArgument(format!(
            "{field}.role_id: {:?} is not one of {}",
            b.role_id.chars().take(64).collect::<String>(),
            crate::auth::Role::ALL
                .iter()
                .map(|r| r.id())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let Some(subject) = &b.subject else {
        return Err(Error::InvalidArgument(format!(
            "{field}.subject is required"
        )));
    };
    key_fields::required(
        &format!("{field}.subject.id"),
        &subject.id,
        crate::config::MAX_SUBJECT_ID_LEN,
    )?;
    if !BINDING_SUBJECT_TYPES.contains(&subject.r#type.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "{field}.subject.type: {:?} is not one of {}",
            subject.r#type.chars().take(64).collect::<String>(),
            BINDING_SUBJECT_TYPES.join(", ")
        )));
    }
    if subject.r#type == "system" && subject.id != crate::config::ALL_AUTHENTICATED_USERS {
        return Err(Error::InvalidArgument(format!(
            "{field}.subject: the only system subject p11kms accepts is {:?} (anonymous callers are never authorised)",
            crate::config::ALL_AUTHENTICATED_USERS
        )));
    }
    Ok(Binding {
        role_id: b.role_id.clone(),
        subject_id: subject.id.clone(),
        subject_type: subject.r#type.clone(),
    })
}

fn binding_to_proto(b: &Binding) -> AccessBinding {
    AccessBinding {
        role_id: b.role_id.clone(),
        subject: Some(Subject {
            id: b.subject_id.clone(),
            r#type: b.subject_type.clone(),
        }),
    }
}

impl KeyService {
    /// `Create`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and HSM failures.
    #[tracing::instrument(name = "CreateKey", skip_all, fields(folder_id))]
    pub async fn handle_create(
        &self,
        ctx: &RequestContext,
        req: CreateAsymmetricSignatureKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
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
        let (_, op) = self.manager.create(ctx, new, deadline).await?;
        Ok(mapping::operation(&op))
    }

    /// `Get`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and unknown keys.
    #[tracing::instrument(name = "GetKey", skip_all, fields(key_id))]
    pub async fn handle_get(
        &self,
        ctx: &RequestContext,
        req: GetAsymmetricSignatureKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<AsymmetricSignatureKey, Error> {
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let key = self.manager.get(ctx, &req.key_id, deadline).await?;
        Ok(mapping::key(&key))
    }

    /// `List`, for every transport.
    ///
    /// # Errors
    /// Validation and authentication.
    #[tracing::instrument(name = "ListKeys", skip_all, fields(folder_id))]
    pub fn handle_list(
        &self,
        ctx: &RequestContext,
        req: ListAsymmetricSignatureKeysRequest,
    ) -> Result<ListAsymmetricSignatureKeysResponse, Error> {
        tracing::Span::current().record("folder_id", req.folder_id.as_str());
        key_fields::folder_id(&req.folder_id)?;
        let size = key_fields::page_size(req.page_size)?;
        let after = key_fields::parse_page_token(&req.page_token, key_fields::MAX_LIST_TOKEN_LEN)?;
        let (keys, more) = self
            .manager
            .list(ctx, &req.folder_id, after.as_deref(), size)?;
        let next_page_token = match (more, keys.last()) {
            (true, Some(last)) => key_fields::page_token(&last.id),
            _ => String::new(),
        };
        Ok(ListAsymmetricSignatureKeysResponse {
            keys: keys.iter().map(|k| mapping::key(k)).collect(),
            next_page_token,
        })
    }

    /// `Update`, for every transport.
    ///
    /// # Errors
    /// Validation (the mask and the masked fields), authorisation and HSM failures.
    #[tracing::instrument(name = "UpdateKey", skip_all, fields(key_id))]
    pub async fn handle_update(
        &self,
        ctx: &RequestContext,
        req: UpdateAsymmetricSignatureKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let changes = changes(&req)?;
        let (_, op) = self
            .manager
            .update(ctx, &req.key_id, changes, Want::Visible, deadline)
            .await?;
        Ok(mapping::operation(&op))
    }

    /// `Delete`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation, deletion protection and HSM failures.
    #[tracing::instrument(name = "DeleteKey", skip_all, fields(key_id))]
    pub async fn handle_delete(
        &self,
        ctx: &RequestContext,
        req: DeleteAsymmetricSignatureKeyRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let (_, op) = self
            .manager
            .delete(ctx, &req.key_id, None, Want::Visible, deadline)
            .await?;
        Ok(mapping::operation(&op))
    }

    /// `ListOperations`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and unknown keys.
    #[tracing::instrument(name = "ListKeyOperations", skip_all, fields(key_id))]
    pub async fn handle_list_operations(
        &self,
        ctx: &RequestContext,
        req: ListAsymmetricSignatureKeyOperationsRequest,
        deadline: Option<Instant>,
    ) -> Result<ListAsymmetricSignatureKeyOperationsResponse, Error> {
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let size = key_fields::page_size(req.page_size)?;
        let after = key_fields::parse_page_token(&req.page_token, key_fields::MAX_SHORT_TOKEN_LEN)?;
        let ops = self.manager.operations(ctx, &req.key_id, deadline).await?;
        // Newest first. Only the newest are kept, so an operation named by a token can only
        // have been dropped when everything older went too: the next page is then empty.
        let start = match &after {
            None => 0,
            Some(id) => ops
                .iter()
                .position(|op| &op.id == id)
                .map_or(ops.len(), |i| i + 1),
        };
        let page: Vec<Operation> = ops
            .iter()
            .skip(start)
            .take(size)
            .map(mapping::operation)
            .collect();
        let next_page_token = match page.last() {
            Some(last) if start + page.len() < ops.len() => key_fields::page_token(&last.id),
            _ => String::new(),
        };
        Ok(ListAsymmetricSignatureKeyOperationsResponse {
            operations: page,
            next_page_token,
        })
    }

    /// `ListAccessBindings`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and unknown keys.
    #[tracing::instrument(name = "ListAccessBindings", skip_all, fields(key_id))]
    pub async fn handle_list_access_bindings(
        &self,
        ctx: &RequestContext,
        req: ListAccessBindingsRequest,
        deadline: Option<Instant>,
    ) -> Result<ListAccessBindingsResponse, Error> {
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
            .access_bindings(ctx, &req.resource_id, deadline)
            .await?;
        // Bindings have no id; the token carries the index of the next one.
        let start = after
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(0)
            .min(bindings.len());
        let end = (start + size).min(bindings.len());
        Ok(ListAccessBindingsResponse {
            access_bindings: bindings[start..end].iter().map(binding_to_proto).collect(),
            next_page_token: if end < bindings.len() {
                key_fields::page_token(&end.to_string())
            } else {
                String::new()
            },
        })
    }

    /// `SetAccessBindings`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and HSM failures.
    #[tracing::instrument(name = "SetAccessBindings", skip_all, fields(key_id))]
    pub async fn handle_set_access_bindings(
        &self,
        ctx: &RequestContext,
        req: SetAccessBindingsRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        tracing::Span::current().record("key_id", req.resource_id.as_str());
        key_fields::required(
            "resource_id",
            &req.resource_id,
            key_fields::MAX_RESOURCE_ID_LEN,
        )?;
        if req.access_bindings.len() > MAX_BINDINGS {
            return Err(Error::InvalidArgument(format!(
                "access_bindings: at most {MAX_BINDINGS} bindings, not {}",
                req.access_bindings.len()
            )));
        }
        let bindings = req
            .access_bindings
            .iter()
            .enumerate()
            .map(|(i, b)| binding_from_proto(&format!("access_bindings[{i}]"), b))
            .collect::<Result<Vec<_>, _>>()?;
        let (_, op) = self
            .manager
            .set_access_bindings(ctx, &req.resource_id, bindings, deadline)
            .await?;
        Ok(mapping::operation(&op))
    }

    /// `UpdateAccessBindings`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and HSM failures.
    #[tracing::instrument(name = "UpdateAccessBindings", skip_all, fields(key_id))]
    pub async fn handle_update_access_bindings(
        &self,
        ctx: &RequestContext,
        req: UpdateAccessBindingsRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        tracing::Span::current().record("key_id", req.resource_id.as_str());
        key_fields::required(
            "resource_id",
            &req.resource_id,
            key_fields::MAX_RESOURCE_ID_LEN,
        )?;
        if req.access_binding_deltas.is_empty() || req.access_binding_deltas.len() > MAX_BINDINGS {
            return Err(Error::InvalidArgument(format!(
                "access_binding_deltas: 1 to {MAX_BINDINGS} deltas, not {}",
                req.access_binding_deltas.len()
            )));
        }
        let mut deltas = Vec::with_capacity(req.access_binding_deltas.len());
        for (i, d) in req.access_binding_deltas.iter().enumerate() {
            let field = format!("access_binding_deltas[{i}]");
            let Some(binding) = &d.access_binding else {
                return Err(Error::InvalidArgument(format!(
                    "{field}.access_binding is required"
                )));
            };
            let binding = binding_from_proto(&format!("{field}.access_binding"), binding)?;
            deltas.push(match AccessBindingAction::try_from(d.action) {
                Ok(AccessBindingAction::Add) => BindingDelta::Add(binding),
                Ok(AccessBindingAction::Remove) => BindingDelta::Remove(binding),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{field}.action: must be ADD or REMOVE"
                    )))
                }
            });
        }
        let (_, op) = self
            .manager
            .update_access_bindings(ctx, &req.resource_id, deltas, deadline)
            .await?;
        Ok(mapping::operation(&op))
    }
}

#[tonic::async_trait]
impl AsymmetricSignatureKeyService for KeyService {
    async fn create(
        &self,
        request: Request<CreateAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_create(&ctx, req, deadline).await?,
        ))
    }

    async fn get(
        &self,
        request: Request<GetAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<AsymmetricSignatureKey>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(self.handle_get(&ctx, req, deadline).await?))
    }

    async fn list(
        &self,
        request: Request<ListAsymmetricSignatureKeysRequest>,
    ) -> Result<Response<ListAsymmetricSignatureKeysResponse>, Status> {
        let (ctx, _deadline, req) = super::parts(request)?;
        Ok(Response::new(self.handle_list(&ctx, req)?))
    }

    async fn update(
        &self,
        request: Request<UpdateAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_update(&ctx, req, deadline).await?,
        ))
    }

    async fn delete(
        &self,
        request: Request<DeleteAsymmetricSignatureKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_delete(&ctx, req, deadline).await?,
        ))
    }

    async fn list_operations(
        &self,
        request: Request<ListAsymmetricSignatureKeyOperationsRequest>,
    ) -> Result<Response<ListAsymmetricSignatureKeyOperationsResponse>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_list_operations(&ctx, req, deadline).await?,
        ))
    }

    async fn list_access_bindings(
        &self,
        request: Request<ListAccessBindingsRequest>,
    ) -> Result<Response<ListAccessBindingsResponse>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_list_access_bindings(&ctx, req, deadline)
                .await?,
        ))
    }

    async fn set_access_bindings(
        &self,
        request: Request<SetAccessBindingsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_set_access_bindings(&ctx, req, deadline).await?,
        ))
    }

    async fn update_access_bindings(
        &self,
        request: Request<UpdateAccessBindingsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_update_access_bindings(&ctx, req, deadline)
                .await?,
        ))
    }
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
