//! `yandex.cloud.operation.OperationService`. Every operation p11kms hands out is complete when
//! it is returned, so Get answers from the key's stored operations (any replica can, since they
//! live on the token) and Cancel returns the operation unchanged. The `handle_*` methods are
//! the transport-neutral handlers, called by the tonic trait below and by the REST API.

use super::pb::operation::operation_service_server::OperationService;
use super::pb::operation::{CancelOperationRequest, GetOperationRequest, Operation};
use crate::api::yandex::key_fields;
use crate::auth::RequestContext;
use crate::error::Error;
use crate::keys::KeyManager;
use std::sync::Arc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The operation service over the shared [`KeyManager`].
#[derive(Debug, Clone)]
pub struct OperationsService {
    manager: Arc<KeyManager>,
}

impl OperationsService {
    /// A service answering for `manager`'s operations.
    pub fn new(manager: Arc<KeyManager>) -> Self {
        Self { manager }
    }

    async fn operation(
        &self,
        ctx: &RequestContext,
        operation_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        tracing::Span::current().record("operation_id", operation_id);
        key_fields::required(
            "operation_id",
            operation_id,
            key_fields::MAX_OPERATION_ID_LEN,
        )?;
        let op = self.manager.operation(ctx, operation_id, deadline).await?;
        Ok(crate::api::yandex::mapping::operation(&op))
    }

    /// `Get`, for every transport.
    ///
    /// # Errors
    /// Validation, authorisation and unknown operations.
    #[tracing::instrument(name = "GetOperation", skip_all, fields(operation_id))]
    pub async fn handle_get(
        &self,
        ctx: &RequestContext,
        req: GetOperationRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        self.operation(ctx, &req.operation_id, deadline).await
    }

    /// `Cancel`, for every transport: nothing is ever in progress to cancel, so this is the
    /// operation as it is (done).
    ///
    /// # Errors
    /// As [`OperationsService::handle_get`].
    #[tracing::instrument(name = "CancelOperation", skip_all, fields(operation_id))]
    pub async fn handle_cancel(
        &self,
        ctx: &RequestContext,
        req: CancelOperationRequest,
        deadline: Option<Instant>,
    ) -> Result<Operation, Error> {
        self.operation(ctx, &req.operation_id, deadline).await
    }
}

#[tonic::async_trait]
impl OperationService for OperationsService {
    async fn get(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(self.handle_get(&ctx, req, deadline).await?))
    }

    async fn cancel(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (ctx, deadline, req) = super::parts(request)?;
        Ok(Response::new(
            self.handle_cancel(&ctx, req, deadline).await?,
        ))
    }
}
