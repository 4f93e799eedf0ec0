//! Shared by the `key_service*` tests: gRPC clients of the key, operation and admin services on
//! a [`Daemon`], with the checks every caller wants (operations are done, typed and answerable
//! by `OperationService.Get`), and a token copy with `[managed_keys]` settings.
//!
//! Include next to `mod common;`: `mod key_service_support;`.
#![allow(dead_code, unreachable_pub)]

use crate::common::{verify, AuthChannel, Daemon, Kms, TestToken};
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_key::Status as KeyStatus;
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_key_service_client::AsymmetricSignatureKeyServiceClient;
use p11kms::api::yandex::grpc::pb::kms::{
    AsymmetricSignatureKey, CreateAsymmetricSignatureKeyRequest,
    DeleteAsymmetricSignatureKeyRequest, GetAsymmetricSignatureKeyRequest,
    ListAsymmetricSignatureKeyOperationsRequest, ListAsymmetricSignatureKeysRequest,
    ListAsymmetricSignatureKeysResponse, UpdateAsymmetricSignatureKeyRequest,
};
use p11kms::api::yandex::grpc::pb::operation::operation_service_client::OperationServiceClient;
use p11kms::api::yandex::grpc::pb::operation::{operation, GetOperationRequest, Operation};
use p11kms::api::yandex::grpc::pb::p11kms::v1::key_admin_service_client::KeyAdminServiceClient;
use p11kms::api::yandex::grpc::pb::p11kms::v1::UndeleteKeyRequest;
use p11kms::crypto::Algorithm;
use prost::Message as _;
use std::time::{Duration, Instant};
use tonic::Status;

/// `type.googleapis.com/` + name.
pub fn type_url(name: &str) -> String {
    format!("type.googleapis.com/{name}")
}

/// Full names of the `Any` payloads.
pub const KEY_TYPE: &str = "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKey";
pub const CREATE_META: &str =
    "yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata";
pub const UPDATE_META: &str =
    "yandex.cloud.kms.v1.asymmetricsignature.UpdateAsymmetricSignatureKeyMetadata";
pub const DELETE_META: &str =
    "yandex.cloud.kms.v1.asymmetricsignature.DeleteAsymmetricSignatureKeyMetadata";
pub const UNDELETE_META: &str = "p11kms.v1.UndeleteKeyMetadata";

/// A dev token copy with `[managed_keys]` settings (e.g. `("refresh_interval_ms", 500)`).
pub fn managed_token(settings: &[(&str, toml::Value)]) -> TestToken {
    let token = TestToken::dev();
    token.edit_config(|t| {
        let section = t
            .entry("managed_keys")
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .expect("[managed_keys] is a table");
        for (k, v) in settings {
            section.insert((*k).to_string(), v.clone());
        }
    });
    token
}

/// Clients of every service on one connection.
#[derive(Clone, Debug)]
pub struct Clients {
    pub keys: AsymmetricSignatureKeyServiceClient<AuthChannel>,
    pub ops: OperationServiceClient<AuthChannel>,
    pub admin: KeyAdminServiceClient<AuthChannel>,
    pub kms: Kms,
}

/// Checks that `op` is done, carries `{key_id}` metadata of type `meta`, and has a key in its
/// response; returns the key.
#[track_caller]
pub fn key_of(op: &Operation, meta: &str) -> AsymmetricSignatureKey {
    assert!(op.done, "operation {} is not done", op.id);
    assert_eq!(op.id.len(), 20, "operation id {:?}", op.id);
    let metadata = op.metadata.as_ref().expect("operation metadata");
    assert_eq!(metadata.type_url, type_url(meta));
    // Every *Metadata message is `{ string key_id = 1; }`.
    let key_id = p11kms::api::yandex::grpc::pb::kms::CreateAsymmetricSignatureKeyMetadata::decode(
        metadata.value.as_slice(),
    )
    .expect("metadata decodes")
    .key_id;
    let Some(operation::Result::Response(any)) = &op.result else {
        panic!("operation {} has no response: {op:?}", op.id);
    };
    assert_eq!(any.type_url, type_url(KEY_TYPE));
    let key = AsymmetricSignatureKey::decode(any.value.as_slice()).expect("response decodes");
    assert_eq!(key.id, key_id, "metadata and response name different keys");
    key
}

impl Clients {
    /// Connects to `daemon` with its admin token.
    pub async fn connect(daemon: &Daemon) -> Self {
        Self::connect_as(daemon, Some(daemon.admin_token())).await
    }

    /// Connects to `daemon` sending `token` (or no credentials).
    pub async fn connect_as(daemon: &Daemon, token: Option<&str>) -> Self {
        let channel = daemon.auth_channel_as(token).await;
        Self {
            keys: AsymmetricSignatureKeyServiceClient::new(channel.clone()),
            ops: OperationServiceClient::new(channel.clone()),
            admin: KeyAdminServiceClient::new(channel),
            kms: daemon.kms_as(token).await,
        }
    }

    /// Polls `OperationService.Get` for `op` (as the SDK waiters do) and checks it matches.
    pub async fn wait(&mut self, op: Operation) -> Operation {
        let got = self
            .ops
            .get(GetOperationRequest {
                operation_id: op.id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("OperationService.Get({}): {s}", op.id))
            .into_inner();
        assert_eq!(
            got, op,
            "OperationService.Get returns the operation as created"
        );
        got
    }

    /// Create, then the operation's key.
    pub async fn create(
        &mut self,
        req: CreateAsymmetricSignatureKeyRequest,
    ) -> Result<AsymmetricSignatureKey, Status> {
        let op = self.keys.create(req).await?.into_inner();
        let op = self.wait(op).await;
        Ok(key_of(&op, CREATE_META))
    }

    /// Creates a key of `algorithm` in `folder`; panics on failure.
    pub async fn create_key(
        &mut self,
        folder: &str,
        algorithm: Algorithm,
    ) -> AsymmetricSignatureKey {
        let key = self
            .create(CreateAsymmetricSignatureKeyRequest {
                folder_id: folder.into(),
                signature_algorithm: algorithm.to_proto(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("Create {algorithm}: {s}"));
        assert_eq!(key.status, KeyStatus::Active as i32);
        assert_eq!(key.signature_algorithm, algorithm.to_proto());
        assert_eq!(key.folder_id, folder);
        key
    }

    /// Get.
    pub async fn get(&mut self, key_id: &str) -> Result<AsymmetricSignatureKey, Status> {
        Ok(self
            .keys
            .get(GetAsymmetricSignatureKeyRequest {
                key_id: key_id.into(),
            })
            .await?
            .into_inner())
    }

    /// Update with `paths`, the fields set by `fill`; the operation's key.
    pub async fn update(
        &mut self,
        key_id: &str,
        paths: &[&str],
        fill: impl FnOnce(&mut UpdateAsymmetricSignatureKeyRequest),
    ) -> Result<AsymmetricSignatureKey, Status> {
        let mut req = UpdateAsymmetricSignatureKeyRequest {
            key_id: key_id.into(),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        };
        fill(&mut req);
        let op = self.keys.update(req).await?.into_inner();
        let op = self.wait(op).await;
        Ok(key_of(&op, UPDATE_META))
    }

    /// Sets the status.
    pub async fn set_status(
        &mut self,
        key_id: &str,
        status: KeyStatus,
    ) -> Result<AsymmetricSignatureKey, Status> {
        self.update(key_id, &["status"], |r| r.status = status as i32)
            .await
    }

    /// Sets deletion protection.
    pub async fn set_protection(
        &mut self,
        key_id: &str,
        on: bool,
    ) -> Result<AsymmetricSignatureKey, Status> {
        self.update(key_id, &["deletion_protection"], |r| {
            r.deletion_protection = on;
        })
        .await
    }

    /// Delete; the operation's key.
    pub async fn delete(&mut self, key_id: &str) -> Result<AsymmetricSignatureKey, Status> {
        let op = self
            .keys
            .delete(DeleteAsymmetricSignatureKeyRequest {
                key_id: key_id.into(),
            })
            .await?
            .into_inner();
        let op = self.wait(op).await;
        Ok(key_of(&op, DELETE_META))
    }

    /// Undelete (admin API); the operation's key.
    pub async fn undelete(&mut self, key_id: &str) -> Result<AsymmetricSignatureKey, Status> {
        let op = self
            .admin
            .undelete(UndeleteKeyRequest {
                key_id: key_id.into(),
            })
            .await?
            .into_inner();
        let op = self.wait(op).await;
        Ok(key_of(&op, UNDELETE_META))
    }

    /// One List page.
    pub async fn list_page(
        &mut self,
        folder: &str,
        page_size: i64,
        page_token: &str,
    ) -> Result<ListAsymmetricSignatureKeysResponse, Status> {
        Ok(self
            .keys
            .list(ListAsymmetricSignatureKeysRequest {
                folder_id: folder.into(),
                page_size,
                page_token: page_token.into(),
            })
            .await?
            .into_inner())
    }

    /// Every key of a folder, page by page.
    pub async fn list_all(&mut self, folder: &str, page_size: i64) -> Vec<AsymmetricSignatureKey> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .list_page(folder, page_size, &token)
                .await
                .unwrap_or_else(|s| panic!("List: {s}"));
            out.extend(page.keys);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// A key's operations (newest first), all pages.
    pub async fn operations(&mut self, key_id: &str) -> Result<Vec<Operation>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .keys
                .list_operations(ListAsymmetricSignatureKeyOperationsRequest {
                    key_id: key_id.into(),
                    page_size: 2,
                    page_token: token,
                })
                .await?
                .into_inner();
            out.extend(page.operations);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// Signs with the key and verifies the signature independently (RustCrypto) against the
    /// public key the gateway publishes.
    pub async fn sign_verified(&mut self, key: &AsymmetricSignatureKey) -> Result<(), Status> {
        let algorithm = Algorithm::from_proto(key.signature_algorithm).expect("known algorithm");
        let message = format!("signed by {}", key.id).into_bytes();
        let signature = self.kms.sign(&key.id, &message).await?;
        let pem = self.kms.public_key(&key.id).await?;
        let public = verify::parse_public_key(&pem, algorithm)
            .unwrap_or_else(|e| panic!("public key of {}: {e}", key.id));
        public
            .verify_message(algorithm, &message, &signature)
            .unwrap_or_else(|e| {
                panic!("signature of {} ({algorithm}) does not verify: {e}", key.id)
            });
        Ok(())
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`; panics with `what`
/// after that. For state that another process changes on its own schedule (a refresh interval,
/// the purge): the condition is checked, never assumed after a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not true within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
