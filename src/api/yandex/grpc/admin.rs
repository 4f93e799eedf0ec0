//! `p11kms.v1.KeyAdminService`: p11kms's own administrative calls, outside the Yandex contract.

use super::deadline;
use super::pb::operation::Operation;
use super::pb::p11kms::v1::key_admin_service_server::KeyAdminService;
use super::pb::p11kms::v1::UndeleteKeyRequest;
use crate::api::context;
use crate::api::yandex::validate;
use crate::auth::Action;
use crate::keys::KeyManager;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The admin service over the shared [`KeyManager`].
#[derive(Debug, Clone)]
pub struct AdminService {
    manager: Arc<KeyManager>,
}

impl AdminService {
    /// A service administering `manager`'s keys.
    pub fn new(manager: Arc<KeyManager>) -> Self {
        Self { manager }
    }
}

#[tonic::async_trait]
impl KeyAdminService for AdminService {
    #[tracing::instrument(name = "UndeleteKey", skip_all, fields(key_id))]
    async fn undelete(
        &self,
        request: Request<UndeleteKeyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let ctx = context::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("key_id", req.key_id.as_str());
        validate::key_id("key_id", &req.key_id)?;
        let (_, op) = self
            .manager
            .restore(&ctx, &req.key_id, Action::Undelete, false, deadline)
            .await?;
        Ok(Response::new(crate::api::yandex::mapping::operation(&op)))
    }
}
