//! `yandex.cloud.operation.OperationService`. Every operation p11kms hands out is complete when
//! it is returned, so Get answers from the key's stored operations (any replica can, since they
//! live on the token) and Cancel returns the operation unchanged.

use super::deadline;
use super::pb::operation::operation_service_server::OperationService;
use super::pb::operation::{CancelOperationRequest, GetOperationRequest, Operation};
use crate::api::key_fields;
use crate::keys::KeyManager;
use std::sync::Arc;
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
}

#[tonic::async_trait]
impl OperationService for OperationsService {
    #[tracing::instrument(name = "GetOperation", skip_all, fields(operation_id))]
    async fn get(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("operation_id", req.operation_id.as_str());
        key_fields::required(
            "operation_id",
            &req.operation_id,
            key_fields::MAX_OPERATION_ID_LEN,
        )?;
        Ok(Response::new(
            self.manager.operation(&req.operation_id, deadline).await?,
        ))
    }

    #[tracing::instrument(name = "CancelOperation", skip_all, fields(operation_id))]
    async fn cancel(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        tracing::Span::current().record("operation_id", req.operation_id.as_str());
        key_fields::required(
            "operation_id",
            &req.operation_id,
            key_fields::MAX_OPERATION_ID_LEN,
        )?;
        // Nothing is ever in progress to cancel: the operation is already done.
        Ok(Response::new(
            self.manager.operation(&req.operation_id, deadline).await?,
        ))
    }
}
