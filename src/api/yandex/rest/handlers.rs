//! One REST request: route it, decode it into the generated request message, call the same
//! transport-neutral handler gRPC calls, and answer in JSON.

use super::route::Route;
use super::{decode, messages, response};
use crate::api::context;
use crate::api::yandex::grpc::crypto::CryptoService;
use crate::api::yandex::grpc::endpoints::EndpointService;
use crate::api::yandex::grpc::keys::KeyService;
use crate::api::yandex::grpc::operations::OperationsService;
use crate::api::yandex::grpc::pb::kms::{
    AsymmetricGetPublicKeyRequest, DeleteAsymmetricSignatureKeyRequest,
    GetAsymmetricSignatureKeyRequest,
};
use crate::api::yandex::grpc::pb::operation::{CancelOperationRequest, GetOperationRequest};
use crate::api::yandex::grpc::pb::yandex::cloud::endpoint::GetApiEndpointRequest;
use crate::api::yandex::json;
use crate::auth::RequestContext;
use crate::error::Error;
use axum::body::Body;
use axum::extract::State;
use http::request::Parts;
use http::{Request, Response};
use serde_json::Value;
use std::sync::Arc;

/// The services REST calls: the same handlers the gRPC services are.
#[derive(Debug)]
pub struct Services {
    pub(super) crypto: CryptoService,
    pub(super) keys: KeyService,
    pub(super) operations: OperationsService,
    pub(super) endpoints: EndpointService,
}

/// Answers one REST request (the router's only handler).
pub async fn serve(
    State(services): State<Arc<Services>>,
    request: Request<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let ctx = match context::from_extensions(&parts.extensions) {
        Ok(ctx) => ctx,
        Err(e) => return response::error(&e, ""),
    };
    let route = match Route::parse(&parts.method, parts.uri.path()) {
        Ok(route) => route,
        Err(why) => {
            return response::unrouted(why, &parts.method, parts.uri.path(), ctx.request_id())
        }
    };
    ctx.note(|a| a.rpc = Some(route.rpc()));
    match services.call(&ctx, route, &parts, body).await {
        Ok(value) => response::ok(&value),
        Err(e) => response::error(&e, ctx.request_id()),
    }
}

impl Services {
    /// Decodes and runs `route`. Bindings with a body take no query parameters, and bodiless
    /// ones only their own. REST has no deadline header (gRPC's is `grpc-timeout`): the
    /// core's own limits, such as the HSM pool wait, bound every call.
    async fn call(
        &self,
        ctx: &RequestContext,
        route: Route,
        parts: &Parts,
        body: Body,
    ) -> Result<Value, Error> {
        if !route.takes_query() {
            decode::query::<messages::Nothing>(parts)?;
        }
        let deadline = None;
        let (crypto, keys) = (&self.crypto, &self.keys);
        Ok(match route {
            Route::Sign(key_id) => {
                let req = decode::body::<messages::Sign>(parts, body).await?;
                let r = crypto.handle_sign(ctx, req.into_request(key_id), deadline);
                json::sign_response(&r.await?)
            }
            Route::SignHash(key_id) => {
                let req = decode::body::<messages::SignHash>(parts, body).await?;
                let r = crypto.handle_sign_hash(ctx, req.into_request(key_id), deadline);
                json::sign_hash_response(&r.await?)
            }
            Route::GetPublicKey(key_id) => {
                let req = AsymmetricGetPublicKeyRequest { key_id };
                let r = crypto.handle_get_public_key(ctx, req, deadline);
                json::public_key_response(&r.await?)
            }
            Route::CreateKey => {
                let req = decode::body::<messages::CreateKey>(parts, body).await?;
                json::operation(&keys.handle_create(ctx, req.into(), deadline).await?)
            }
            Route::GetKey(key_id) => {
                let req = GetAsymmetricSignatureKeyRequest { key_id };
                json::key(&keys.handle_get(ctx, req, deadline).await?)
            }
            Route::ListKeys => {
                let req = decode::query::<messages::ListKeys>(parts)?;
                json::key_list(&keys.handle_list(ctx, req.into())?)
            }
            Route::UpdateKey(key_id) => {
                let req = decode::body::<messages::UpdateKey>(parts, body).await?;
                let op = keys.handle_update(ctx, req.into_request(key_id), deadline);
                json::operation(&op.await?)
            }
            Route::DeleteKey(key_id) => {
                let req = DeleteAsymmetricSignatureKeyRequest { key_id };
                json::operation(&keys.handle_delete(ctx, req, deadline).await?)
            }
            Route::ListKeyOperations(key_id) => {
                let req = decode::query::<messages::Page>(parts)?.key_operations(key_id);
                json::operation_list(&keys.handle_list_operations(ctx, req, deadline).await?)
            }
            Route::ListAccessBindings(resource_id) => {
                let req = decode::query::<messages::Page>(parts)?.access_bindings(resource_id);
                let list = keys.handle_list_access_bindings(ctx, req, deadline);
                json::access_binding_list(&list.await?)
            }
            Route::SetAccessBindings(resource_id) => {
                let req = decode::body::<messages::SetAccessBindings>(parts, body).await?;
                let req = req.into_request(resource_id);
                json::operation(&keys.handle_set_access_bindings(ctx, req, deadline).await?)
            }
            Route::UpdateAccessBindings(resource_id) => {
                let req = decode::body::<messages::UpdateAccessBindings>(parts, body).await?;
                let req = req.into_request(resource_id);
                let op = keys.handle_update_access_bindings(ctx, req, deadline);
                json::operation(&op.await?)
            }
            Route::GetOperation(operation_id) => {
                let req = GetOperationRequest { operation_id };
                json::operation(&self.operations.handle_get(ctx, req, deadline).await?)
            }
            Route::CancelOperation(operation_id) => {
                let req = CancelOperationRequest { operation_id };
                json::operation(&self.operations.handle_cancel(ctx, req, deadline).await?)
            }
            Route::ListEndpoints => {
                let req = decode::query::<messages::Page>(parts)?.endpoints();
                json::endpoint_list(&self.endpoints.handle_list(req))
            }
            Route::GetEndpoint(api_endpoint_id) => {
                let req = GetApiEndpointRequest { api_endpoint_id };
                json::endpoint(&self.endpoints.handle_get(req)?)
            }
        })
    }
}
