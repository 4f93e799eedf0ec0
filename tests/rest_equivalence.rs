//! REST and gRPC are one API (issue 6): the same request gives the same result and the same
//! error, on both transports. Table-driven over every row of the design's error table:
//!
//! | code | conditions covered here |
//! |---|---|
//! | INVALID_ARGUMENT | malformed fields, key_id empty or > 50, message/hash too long, wrong digest length, bad key-service fields |
//! | OUT_OF_RANGE | a request over the transport's size limit |
//! | NOT_FOUND | unknown key, deleted key, unknown operation |
//! | FAILED_PRECONDITION | key INACTIVE, deletion protection on, key material changed on the token |
//! | UNAUTHENTICATED | no credentials, invalid credentials |
//! | PERMISSION_DENIED | no role for the key (same answer whether it exists or not) |
//! | RESOURCE_EXHAUSTED | the rate limit, no HSM session within the pool wait |
//! | UNAVAILABLE | the HSM unreachable (device removed) |
//! | INTERNAL | a token failure, a signature that fails verification |
//!
//! Each row sends the request over gRPC and over REST, and checks that REST answers with the
//! same code, the HTTP status of the contract's table, the Yandex error body, and (wherever
//! the core produced it) the very same message. Successful answers are compared as proto3 JSON.

mod common;
mod key_service_support;
mod rest_support;

use common::faultshim::Shim;
use common::pkcs11::{self, KeyGen, PrivateAttrs};
use common::{dev_ck_id, dev_key_id, load, Daemon, Launch, ServingStatus, TestToken};
use cryptoki::object::ObjectClass;
use key_service_support::Clients;
use p11kms::api::yandex::grpc::pb::kms::{
    CreateAsymmetricSignatureKeyRequest, ListAsymmetricSignatureKeysRequest,
    UpdateAsymmetricSignatureKeyRequest,
};
use p11kms::api::yandex::grpc::pb::operation::GetOperationRequest;
use p11kms::api::yandex::grpc::pb::yandex::cloud::access::{
    AccessBinding, SetAccessBindingsRequest, Subject, UpdateAccessBindingsRequest,
};
use p11kms::api::yandex::grpc::pb::yandex::cloud::endpoint::api_endpoint_service_client::ApiEndpointServiceClient;
use p11kms::api::yandex::grpc::pb::yandex::cloud::endpoint::ListApiEndpointsRequest;
use p11kms::api::yandex::json;
use p11kms::crypto::Algorithm;
use rest_support::{b64, key_path, Reply, Rest};
use serde_json::json;
use std::fmt::Debug;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const P384: Algorithm = Algorithm::EcdsaP384Sha384;
const RSA: Algorithm = Algorithm::Rsa2048PssSha256;
const KEYS: &str = "/kms/v1/asymmetricSignatureKeys";
const SA: &str = "serviceAccount";

/// How the two messages must relate.
#[derive(Clone, Copy, Debug)]
enum Message {
    /// Made by the shared core: identical.
    Same,
    /// Made by each transport's decoder (sizes): each says what is wrong in its own terms.
    Own,
}

/// One row of the table: gRPC's answer and REST's answer to the same request.
#[track_caller]
fn same<T: Debug>(row: &str, want: Code, grpc: Result<T, Status>, rest: &Reply, message: Message) {
    let status = match grpc {
        Ok(v) => panic!("{row}: gRPC answered OK: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), want, "{row}: gRPC answered {status:?}");
    assert_eq!(
        (rest.status, rest.code()),
        (rest_support::http_status(want), want),
        "{row}: REST answered {}",
        rest.text
    );
    let rest_message = rest.error(want, &[]);
    if let Message::Same = message {
        assert_eq!(rest_message, status.message(), "{row}: messages differ");
    }
    eprintln!("{row:<48} {want:?} / HTTP {}: {rest_message}", rest.status);
}

fn binding(role: &str, id: &str) -> AccessBinding {
    AccessBinding {
        role_id: role.into(),
        subject: Some(Subject {
            id: id.into(),
            r#type: SA.into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_and_results_are_the_same_over_rest_and_grpc() {
    let token = TestToken::dev();
    let inactive = dev_key_id(P384);
    token.set_key_field(&inactive, "status", "INACTIVE");
    let nobody_token = format!("tok-nobody-{}", hex::encode(rand::random::<[u8; 16]>()));
    token.add_api_token(&nobody_token, "nobody", SA);
    let daemon = Daemon::serve(&token, &[]);
    let rest = Rest::new(&daemon);
    let mut g = Clients::connect(&daemon).await;
    let mut nobody_g = Clients::connect_as(&daemon, Some(&nobody_token)).await;
    let nobody = rest.with_token(Some(&nobody_token));
    let mut anonymous_g = daemon.kms_as(None).await;
    let anonymous = rest.with_token(None);
    let mut wrong_g = daemon.kms_as(Some("wrong-token")).await;
    let wrong = rest.with_token(Some("wrong-token"));
    let p256 = dev_key_id(P256);
    let long = "k".repeat(51);
    let missing = "nosuchkey00000000000";

    // Keys made for the rows: one protected, one deleted.
    let protected = g.create_key("f-eq", P256).await.id;
    g.set_protection(&protected, true).await.unwrap();
    let deleted = g.create_key("f-eq", P256).await.id;
    g.delete(&deleted).await.unwrap();

    use Code::*;
    use Message::*;

    // ---- INVALID_ARGUMENT: the shared validation, word for word.
    same(
        "Sign, empty key_id",
        InvalidArgument,
        g.kms.sign("", b"m").await,
        &rest
            .post(&key_path("", ":sign"), &json!({ "message": b64(b"m") }))
            .await,
        Same,
    );
    same(
        "Sign, 51-character key_id",
        InvalidArgument,
        g.kms.sign(&long, b"m").await,
        &rest.sign(&long, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "Sign, empty message",
        InvalidArgument,
        g.kms.sign(&p256, b"").await,
        &rest.sign(&p256, b"").await.unwrap_err(),
        Same,
    );
    same(
        "Sign, 32769-byte message",
        InvalidArgument,
        g.kms.sign(&p256, &[1; 32769]).await,
        &rest.sign(&p256, &[1; 32769]).await.unwrap_err(),
        Same,
    );
    same(
        "Sign, 60000-byte message (under both size limits)",
        InvalidArgument,
        g.kms.sign(&p256, &[1; 60_000]).await,
        &rest.sign(&p256, &[1; 60_000]).await.unwrap_err(),
        Same,
    );
    same(
        "SignHash, empty hash",
        InvalidArgument,
        g.kms.sign_hash(&p256, b"").await,
        &rest.sign_hash(&p256, b"").await.unwrap_err(),
        Same,
    );
    same(
        "SignHash, 4097-byte hash",
        InvalidArgument,
        g.kms.sign_hash(&p256, &[1; 4097]).await,
        &rest.sign_hash(&p256, &[1; 4097]).await.unwrap_err(),
        Same,
    );
    same(
        "SignHash, wrong digest length",
        InvalidArgument,
        g.kms.sign_hash(&p256, &[1; 48]).await,
        &rest.sign_hash(&p256, &[1; 48]).await.unwrap_err(),
        Same,
    );
    same(
        "GetPublicKey, 51-character key_id",
        InvalidArgument,
        g.kms.public_key(&long).await,
        &rest.public_key(&long).await.unwrap_err(),
        Same,
    );
    let create =
        |folder: &str, labels: &[(&str, &str)], alg: i32| CreateAsymmetricSignatureKeyRequest {
            folder_id: folder.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            signature_algorithm: alg,
            ..Default::default()
        };
    same(
        "Create, no folder_id",
        InvalidArgument,
        g.keys.create(create("", &[], 10)).await,
        &rest.post(KEYS, &json!({ "signatureAlgorithm": 10 })).await,
        Same,
    );
    same(
        "Create, bad label key",
        InvalidArgument,
        g.keys.create(create("f", &[("Bad", "x")], 10)).await,
        &rest
            .post(
                KEYS,
                &json!({ "folderId": "f", "labels": { "Bad": "x" }, "signatureAlgorithm": 10 }),
            )
            .await,
        Same,
    );
    same(
        "Create, no algorithm",
        InvalidArgument,
        g.keys.create(create("f", &[], 0)).await,
        &rest.post(KEYS, &json!({ "folderId": "f" })).await,
        Same,
    );
    let update = |paths: &[&str], status: i32| UpdateAsymmetricSignatureKeyRequest {
        key_id: protected.clone(),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).into()).collect(),
        }),
        status,
        ..Default::default()
    };
    same(
        "Update, no mask",
        InvalidArgument,
        g.keys.update(update(&[], 0)).await,
        &rest
            .patch(
                &key_path(&protected, ""),
                &json!({ "updateMask": "", "name": "x" }),
            )
            .await,
        Same,
    );
    same(
        "Update, unknown mask path",
        InvalidArgument,
        g.keys.update(update(&["folder_id"], 0)).await,
        &rest
            .patch(
                &key_path(&protected, ""),
                &json!({ "updateMask": "folderId" }),
            )
            .await,
        Same,
    );
    same(
        "Update, status CREATING",
        InvalidArgument,
        g.keys.update(update(&["status"], 1)).await,
        &rest
            .patch(
                &key_path(&protected, ""),
                &json!({ "updateMask": "status", "status": "CREATING" }),
            )
            .await,
        Same,
    );
    same(
        "List, page_size 1001",
        InvalidArgument,
        g.keys
            .list(ListAsymmetricSignatureKeysRequest {
                folder_id: "f".into(),
                page_size: 1001,
                page_token: String::new(),
            })
            .await,
        &rest.get(&format!("{KEYS}?folderId=f&pageSize=1001")).await,
        Same,
    );
    same(
        "List, foreign page_token",
        InvalidArgument,
        g.list_page("f", 0, "!!").await,
        &rest.get(&format!("{KEYS}?folderId=f&pageToken=!!")).await,
        Same,
    );
    same(
        "SetAccessBindings, unknown role",
        InvalidArgument,
        g.keys
            .set_access_bindings(SetAccessBindingsRequest {
                resource_id: protected.clone(),
                access_bindings: vec![binding("kms.superuser", "x")],
            })
            .await,
        &rest
            .post(
                &key_path(&protected, ":setAccessBindings"),
                &json!({ "accessBindings": [{ "roleId": "kms.superuser",
                    "subject": { "id": "x", "type": SA } }] }),
            )
            .await,
        Same,
    );
    same(
        "UpdateAccessBindings, no deltas",
        InvalidArgument,
        g.keys
            .update_access_bindings(UpdateAccessBindingsRequest {
                resource_id: protected.clone(),
                access_binding_deltas: vec![],
            })
            .await,
        &rest
            .post(&key_path(&protected, ":updateAccessBindings"), &json!({}))
            .await,
        Same,
    );
    same(
        "GetOperation, 51-character id",
        InvalidArgument,
        g.ops
            .get(GetOperationRequest {
                operation_id: long.clone(),
            })
            .await,
        &rest.get(&format!("/operations/{long}")).await,
        Same,
    );

    // ---- OUT_OF_RANGE: over each transport's size limit, refused before it is decoded.
    same(
        "Sign, 1 MiB request",
        OutOfRange,
        g.kms.sign(&p256, &vec![0; 1 << 20]).await,
        &rest.sign(&p256, &vec![0; 1 << 20]).await.unwrap_err(),
        Own,
    );

    // ---- NOT_FOUND.
    same(
        "Sign, unknown key",
        NotFound,
        g.kms.sign(missing, b"m").await,
        &rest.sign(missing, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "SignHash, unknown key",
        NotFound,
        g.kms.sign_hash(missing, &[0; 32]).await,
        &rest.sign_hash(missing, &[0; 32]).await.unwrap_err(),
        Same,
    );
    same(
        "GetPublicKey, unknown key",
        NotFound,
        g.kms.public_key(missing).await,
        &rest.public_key(missing).await.unwrap_err(),
        Same,
    );
    same(
        "Sign, deleted key",
        NotFound,
        g.kms.sign(&deleted, b"m").await,
        &rest.sign(&deleted, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "Get, deleted key",
        NotFound,
        g.get(&deleted).await,
        &rest.get(&key_path(&deleted, "")).await,
        Same,
    );
    same(
        "GetOperation, unknown",
        NotFound,
        g.ops
            .get(GetOperationRequest {
                operation_id: "nosuchoperation00000".into(),
            })
            .await,
        &rest.get("/operations/nosuchoperation00000").await,
        Same,
    );

    // ---- FAILED_PRECONDITION (key material changed: see hsm_faults_are_the_same).
    same(
        "Sign, INACTIVE key",
        FailedPrecondition,
        g.kms.sign(&inactive, b"m").await,
        &rest.sign(&inactive, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "SignHash, INACTIVE key",
        FailedPrecondition,
        g.kms.sign_hash(&inactive, &[0; 48]).await,
        &rest.sign_hash(&inactive, &[0; 48]).await.unwrap_err(),
        Same,
    );
    same(
        "Delete, deletion protection on",
        FailedPrecondition,
        g.delete(&protected).await,
        &rest.delete(&key_path(&protected, "")).await,
        Same,
    );

    // ---- UNAUTHENTICATED.
    same(
        "Sign, no credentials",
        Unauthenticated,
        anonymous_g.sign(&p256, b"m").await,
        &anonymous.sign(&p256, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "Sign, invalid credentials",
        Unauthenticated,
        wrong_g.sign(&p256, b"m").await,
        &wrong.sign(&p256, b"m").await.unwrap_err(),
        Same,
    );

    // ---- PERMISSION_DENIED, the same whether the key exists or not.
    same(
        "Sign, no role, existing key",
        PermissionDenied,
        nobody_g.kms.sign(&p256, b"m").await,
        &nobody.sign(&p256, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "Sign, no role, missing key",
        PermissionDenied,
        nobody_g.kms.sign(missing, b"m").await,
        &nobody.sign(missing, b"m").await.unwrap_err(),
        Same,
    );
    same(
        "Create, no role in the folder",
        PermissionDenied,
        nobody_g.keys.create(create("f-eq", &[], 10)).await,
        &nobody
            .post(
                KEYS,
                &json!({ "folderId": "f-eq", "signatureAlgorithm": "ECDSA_NIST_P256_SHA_256" }),
            )
            .await,
        Same,
    );

    // ---- Success: the same results, as proto3 JSON.
    for alg in Algorithm::ALL {
        let id = dev_key_id(alg);
        assert_eq!(
            rest.public_key(&id).await.unwrap(),
            g.kms.public_key(&id).await.unwrap(),
            "{id}"
        );
    }
    let key = g.get(&protected).await.unwrap();
    assert_eq!(
        rest.get(&key_path(&protected, "")).await.ok(),
        json::key(&key)
    );
    let list = g.list_page("f-eq", 0, "").await.unwrap();
    assert_eq!(
        rest.get(&format!("{KEYS}?folderId=f-eq")).await.ok(),
        json::key_list(&list)
    );
    let ops = g.operations(&protected).await.unwrap();
    for op in &ops {
        let got = rest.get(&format!("/operations/{}", op.id)).await.ok();
        assert_eq!(got, json::operation(op));
    }
    let mut endpoints = ApiEndpointServiceClient::new(daemon.channel().await);
    let listed = endpoints
        .list(ListApiEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        anonymous.get("/endpoints").await.ok(),
        json::endpoint_list(&listed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_the_same_over_rest_and_grpc() {
    let token = TestToken::dev();
    // One request per subject, then nothing for 1000 s.
    token.set_config("rate_limit", "per_subject_rps", 0.001);
    token.set_config("rate_limit", "burst", 1);
    let secret = format!("tok-slow-{}", hex::encode(rand::random::<[u8; 16]>()));
    token.add_api_token(&secret, "slow", SA);
    token.add_binding("kms.asymmetricSignatureKeys.signer", "slow", SA, "*");
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms_as(Some(&secret)).await;
    let rest = Rest::new(&daemon).with_token(Some(&secret));
    let p256 = dev_key_id(P256);

    // The bucket is per subject, not per transport: REST's request is the one allowed...
    assert!(rest.sign(&p256, b"the one").await.is_ok());
    // ... and both transports are refused after it (the messages name the time to wait).
    let grpc = kms.sign(&p256, b"m").await;
    let refused = rest.sign(&p256, b"m").await.unwrap_err();
    refused.error(
        Code::ResourceExhausted,
        &["rate limit exceeded", "back off"],
    );
    same(
        "Sign, rate limit",
        Code::ResourceExhausted,
        grpc,
        &refused,
        Message::Own,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_exhaustion_is_the_same_over_rest_and_grpc() {
    let token = TestToken::dev();
    token.set_hsm("pool_size", 1);
    token.set_hsm("pool_wait_ms", 200);
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let rest = Rest::new(&daemon);
    let mut kms = daemon.kms().await;
    let p256 = dev_key_id(P256);
    kms.sign(&p256, b"warm").await.unwrap();

    // One Sign holds the only session, stalled in C_Sign until the delay is lifted.
    shim.set_control("delay_ms.C_Sign = 60000");
    shim.wait_applied_async().await;
    let inits = shim.stat("calls.C_SignInit");
    let holder = {
        let mut kms = daemon.kms().await;
        let p256 = p256.clone();
        tokio::spawn(async move { kms.sign(&p256, b"holds the session").await })
    };
    shim.wait_stat("calls.C_SignInit", inits + 1).await;
    same(
        "Sign, no session within the pool wait",
        Code::ResourceExhausted,
        kms.sign(&p256, b"m").await,
        &rest.sign(&p256, b"m").await.unwrap_err(),
        Message::Same,
    );
    shim.set_control("");
    shim.wait_applied_async().await;
    holder.await.unwrap().expect("the stalled Sign completes");
}

#[tokio::test(flavor = "multi_thread")]
async fn hsm_faults_are_the_same_over_rest_and_grpc() {
    let token = TestToken::dev();
    token.retain_keys(|id| id == dev_key_id(P256) || id == dev_key_id(RSA));
    token.set_hsm("probe_interval_ms", 100);
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let rest = Rest::new(&daemon);
    let mut kms = daemon.kms().await;
    let p256 = dev_key_id(P256);
    let rsa = dev_key_id(RSA);

    // INTERNAL: every signature comes back corrupted and fails verification (never sent).
    shim.set_control("corrupt_every = 1");
    shim.wait_applied_async().await;
    for id in [&p256, &rsa] {
        same(
            &format!("Sign {id}, signature fails verification"),
            Code::Internal,
            kms.sign(id, b"m").await,
            &rest.sign(id, b"m").await.unwrap_err(),
            Message::Same,
        );
    }

    // INTERNAL: the token refuses an input the gateway accepted.
    shim.set_control("fault.C_Sign = CKR_DATA_LEN_RANGE");
    shim.wait_applied_async().await;
    same(
        "Sign, token failure",
        Code::Internal,
        kms.sign(&rsa, b"m").await,
        &rest.sign(&rsa, b"m").await.unwrap_err(),
        Message::Same,
    );

    // UNAVAILABLE: the device is gone (each request fails, or finds the HSM recovering).
    shim.set_control("fault.C_Sign = CKR_DEVICE_REMOVED");
    shim.wait_applied_async().await;
    same(
        "Sign, device removed",
        Code::Unavailable,
        kms.sign(&rsa, b"m").await,
        &rest.sign(&rsa, b"m").await.unwrap_err(),
        Message::Own,
    );
    shim.set_control("");
    shim.wait_applied_async().await;
    load::wait_health(&daemon, ServingStatus::Serving, Duration::from_secs(30)).await;
    eventually_ok(&mut kms, &rsa).await;
    assert!(rest.sign(&rsa, b"back").await.is_ok());

    // FAILED_PRECONDITION: the P-256 key pair is replaced on the token under the same id and
    // label; after the next re-initialisation the daemon finds a different public key and
    // refuses the key.
    let ck_id = dev_ck_id(P256);
    let label = token
        .list_public_keys()
        .into_iter()
        .find(|k| k.id == ck_id)
        .expect("the P-256 public key")
        .label;
    pkcs11::with_user_session(&token, |s| {
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            for object in pkcs11::find(s, class, &ck_id) {
                pkcs11::destroy(s, object);
            }
        }
        pkcs11::generate_key_pair(
            s,
            KeyGen::Ec("1.2.840.10045.3.1.7"),
            &ck_id,
            &label,
            PrivateAttrs::default(),
        );
    });
    shim.set_control("fault.C_Sign = CKR_DEVICE_REMOVED\nnth.C_Sign = 1");
    shim.wait_applied_async().await;
    let started = Instant::now();
    let refused = loop {
        match kms.sign(&p256, b"m").await {
            Err(s) if s.code() == Code::FailedPrecondition => break s,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the replaced key was never refused; last: {other:?}\n{}",
                    daemon.describe()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    same(
        "Sign, key material changed",
        Code::FailedPrecondition,
        Err::<(), _>(refused),
        &rest.sign(&p256, b"m").await.unwrap_err(),
        Message::Same,
    );
    // The other key is unaffected.
    assert!(rest.sign(&rsa, b"still fine").await.is_ok());
}

/// Polls Sign until it succeeds (after a recovery), for up to 30 s.
async fn eventually_ok(kms: &mut common::Kms, id: &str) {
    let started = Instant::now();
    while let Err(s) = kms.sign(id, b"probe").await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no recovery: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
