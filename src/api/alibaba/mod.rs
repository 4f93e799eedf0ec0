//! The Alibaba Cloud KMS fronts (contract: `shared/reference/alibaba-kms-api.md`).
//! [`openapi`] is the shared-gateway OpenAPI (KMS 2016-01-20, RPC style, JSON replies, AccessKey
//! signatures) that `alibabacloud-kms20160120`, `aliyun-python-sdk-kms` and
//! `@alicloud/kms20160120` speak; [`instance`] is the KMS instance API (protobuf over `POST /`,
//! client-key signatures) of `alibabacloud-dkms-gcs`. Each front maps Alibaba's wire types and
//! error codes at its edge; below it there are only the core's domain types.

pub mod instance;
pub mod names;
pub mod openapi;

use crate::auth::client_keys::ClientKeyStore;
use crate::auth::Identity;
use crate::config::AlibabaConfig;
use crate::keys::KeyManager;
use crate::signer::Signer;
use std::sync::Arc;

/// The routers of both Alibaba fronts (OpenAPI, instance API) over the shared core.
pub fn routes(
    signer: Arc<Signer>,
    manager: Arc<KeyManager>,
    identity: Arc<Identity>,
    config: &AlibabaConfig,
) -> (axum::Router, axum::Router) {
    let openapi = openapi::service::OpenApiService::new(
        Arc::new(openapi::OpenApiAuth::from_config(config)),
        openapi::actions::Actions::new(Arc::clone(&signer), manager),
        Arc::clone(&identity),
    );
    let instance = instance::service::InstanceService::new(
        Arc::new(ClientKeyStore::from_config(config)),
        instance::handlers::Handlers::new(signer, instance::body::Limits::from_config(config)),
        identity,
    );
    let openapi = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let front = openapi.clone();
        async move { front.handle(request).await }
    });
    let instance = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let front = instance.clone();
        async move { front.handle(request).await }
    });
    (openapi, instance)
}
