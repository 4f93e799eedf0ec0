//! `yandex.cloud.endpoint.ApiEndpointService`: endpoint discovery, pointing every service an
//! SDK needs for KMS back at this gateway.
//!
//! The Python SDK (`yandexcloud.SDK(endpoint=...)`) calls `List` on its `endpoint` before it
//! uses any service, then opens TLS channels to the addresses it got for `kms` (the key and
//! asymmetric crypto services), `operation` (the operation waiter) and `iam` (token exchange).
//! `kms-crypto` is the SDK's id for the symmetric crypto service; it is advertised too so that
//! no lookup lands on Yandex's hosts.
//!
//! **Unauthenticated by design.** The SDK calls `List` before it has credentials: its auth
//! plugin deliberately sends no `authorization` header to
//! `/yandex.cloud.endpoint.ApiEndpointService/*` (yandexcloud `_auth_plugin.py`). The
//! authentication layer must let [`SERVICE_NAME`] through without a token; it reveals nothing
//! but this gateway's own address.

use super::pb::yandex::cloud::endpoint::api_endpoint_service_server::ApiEndpointService;
use super::pb::yandex::cloud::endpoint::{
    ApiEndpoint, GetApiEndpointRequest, ListApiEndpointsRequest, ListApiEndpointsResponse,
};
use crate::error::Error;
use tonic::{Request, Response, Status};

/// The service's full name (the path prefix the authentication layer exempts).
pub const SERVICE_NAME: &str = "yandex.cloud.endpoint.ApiEndpointService";

/// The endpoint ids advertised, all at the gateway's own address.
pub const ADVERTISED_IDS: [&str; 4] = ["kms", "kms-crypto", "operation", "iam"];

/// Serves the advertised endpoints from memory.
#[derive(Clone, Debug)]
pub struct EndpointService {
    endpoints: Vec<ApiEndpoint>,
}

impl EndpointService {
    /// Advertises `address` (`host:port`, the name clients must use to match the certificate)
    /// under every id in [`ADVERTISED_IDS`].
    pub fn new(address: &str) -> Self {
        Self {
            endpoints: ADVERTISED_IDS
                .iter()
                .map(|id| ApiEndpoint {
                    id: (*id).to_string(),
                    address: address.to_string(),
                })
                .collect(),
        }
    }
}

impl EndpointService {
    /// `Get`, for every transport.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an empty id, NOT_FOUND for an id this gateway does not advertise.
    pub fn handle_get(&self, req: GetApiEndpointRequest) -> Result<ApiEndpoint, Error> {
        let id = req.api_endpoint_id;
        if id.is_empty() {
            return Err(Error::InvalidArgument("api_endpoint_id is required".into()));
        }
        self.endpoints
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .ok_or_else(|| {
                // The id is echoed only when short and printable: it is caller input.
                let shown = if id.len() <= 64 && id.chars().all(|c| c.is_ascii_graphic()) {
                    format!(" {id:?}")
                } else {
                    String::new()
                };
                Error::not_found(
                    crate::error::Missing::Other,
                    format!(
                        "API endpoint{shown} not found; this gateway serves {}",
                        ADVERTISED_IDS.join(", ")
                    ),
                )
            })
    }

    /// `List`, for every transport. `page_size` and `page_token` are deprecated upstream; four
    /// entries fit on any page.
    pub fn handle_list(&self, _req: ListApiEndpointsRequest) -> ListApiEndpointsResponse {
        ListApiEndpointsResponse {
            endpoints: self.endpoints.clone(),
            next_page_token: String::new(),
        }
    }
}

#[tonic::async_trait]
impl ApiEndpointService for EndpointService {
    async fn get(
        &self,
        request: Request<GetApiEndpointRequest>,
    ) -> Result<Response<ApiEndpoint>, Status> {
        Ok(Response::new(self.handle_get(request.into_inner())?))
    }

    async fn list(
        &self,
        request: Request<ListApiEndpointsRequest>,
    ) -> Result<Response<ListApiEndpointsResponse>, Status> {
        Ok(Response::new(self.handle_list(request.into_inner())))
    }
}
