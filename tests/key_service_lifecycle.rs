//! Key service lifecycle against a real daemon on a real SoftHSM token: keys generated on the
//! token for every algorithm (attributes checked independently with cryptoki in this process),
//! status, deletion protection, delete, undelete, restart, and the purge after retention.

mod common;
mod key_service_support;

use common::{assert_status, pkcs11, Daemon};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use key_service_support::{eventually, key_of, managed_token, Clients, DELETE_META};
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_key::Status as KeyStatus;
use p11kms::api::yandex::grpc::pb::kms::{
    CreateAsymmetricSignatureKeyRequest, ListAsymmetricSignatureKeyOperationsRequest,
};
use p11kms::api::yandex::grpc::pb::operation::{CancelOperationRequest, GetOperationRequest};
use p11kms::crypto::Algorithm;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::Code;

/// What the token says about a key created through the API, read in this process.
#[derive(Debug)]
struct OnToken {
    private: Vec<Attribute>,
    public: Vec<Attribute>,
    metadata: Vec<Attribute>,
}

fn read_objects(token: &common::TestToken, key_id: &str) -> Option<OnToken> {
    pkcs11::with_user_session(token, |s| {
        let one = |template: Vec<Attribute>, wanted: &[AttributeType]| {
            let found = s.find_objects(&template).expect("C_FindObjects");
            assert!(
                found.len() <= 1,
                "{} objects match {template:?}",
                found.len()
            );
            found
                .first()
                .map(|h| s.get_attributes(*h, wanted).expect("C_GetAttributeValue"))
        };
        let id = Attribute::Id(key_id.as_bytes().to_vec());
        let private = one(
            vec![Attribute::Class(ObjectClass::PRIVATE_KEY), id.clone()],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Local,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Sign,
                AttributeType::Label,
            ],
        )?;
        let public = one(
            vec![Attribute::Class(ObjectClass::PUBLIC_KEY), id],
            &[
                AttributeType::Token,
                AttributeType::Verify,
                AttributeType::Label,
            ],
        )?;
        let metadata = one(
            vec![
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(format!("p11kms/key/{key_id}").into_bytes()),
            ],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Application,
                AttributeType::Value,
            ],
        )?;
        Some(OnToken {
            private,
            public,
            metadata,
        })
    })
}

/// Whether any object of the key (key pair by `CKA_ID`, metadata by label) is on the token.
fn any_object_left(token: &common::TestToken, key_id: &str) -> bool {
    pkcs11::with_user_session(token, |s| {
        !s.find_objects(&[Attribute::Id(key_id.as_bytes().to_vec())])
            .expect("C_FindObjects")
            .is_empty()
            || !s
                .find_objects(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Label(format!("p11kms/key/{key_id}").into_bytes()),
                ])
                .expect("C_FindObjects")
                .is_empty()
    })
}

fn flag(attrs: &[Attribute], t: AttributeType) -> bool {
    attrs
        .iter()
        .find_map(|a| match (a, t) {
            (Attribute::Token(v), AttributeType::Token)
            | (Attribute::Private(v), AttributeType::Private)
            | (Attribute::Sensitive(v), AttributeType::Sensitive)
            | (Attribute::Extractable(v), AttributeType::Extractable)
            | (Attribute::Local(v), AttributeType::Local)
            | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable)
            | (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive)
            | (Attribute::Sign(v), AttributeType::Sign)
            | (Attribute::Verify(v), AttributeType::Verify) => Some(*v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{t:?} not read: {attrs:?}"))
}

fn bytes(attrs: &[Attribute], t: AttributeType) -> Vec<u8> {
    attrs
        .iter()
        .find_map(|a| match (a, t) {
            (Attribute::Label(v), AttributeType::Label)
            | (Attribute::Application(v), AttributeType::Application)
            | (Attribute::Value(v), AttributeType::Value) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{t:?} not read: {attrs:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_is_generated_on_the_token_sensitive_and_signs() {
    let token = managed_token(&[]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let mut timings = Vec::new();
    for algorithm in Algorithm::ALL {
        let started = Instant::now();
        let key = c.create_key("folder-every-alg", algorithm).await;
        let took = started.elapsed();
        timings.push((algorithm, took));
        assert_eq!(key.id.len(), 20, "key id {:?}", key.id);
        assert!(key.id.starts_with(|c: char| c.is_ascii_lowercase()));
        assert!(key
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        c.sign_verified(&key).await.expect("sign");

        // GetPublicKey publishes exactly the public key object on the token (pkcs11-tool).
        let pem = c.kms.public_key(&key.id).await.expect("GetPublicKey");
        let parsed = common::verify::parse_public_key(&pem, algorithm).expect("public key");
        assert_eq!(parsed.spki_der, token.public_key_der(key.id.as_bytes()));

        let on = read_objects(&token, &key.id).expect("the key's objects are on the token");
        for (attr, want) in [
            (AttributeType::Token, true),
            (AttributeType::Private, true),
            (AttributeType::Sensitive, true),
            (AttributeType::Extractable, false),
            (AttributeType::Local, true),
            (AttributeType::NeverExtractable, true),
            (AttributeType::AlwaysSensitive, true),
            (AttributeType::Sign, true),
        ] {
            assert_eq!(
                flag(&on.private, attr),
                want,
                "{algorithm} private {attr:?}"
            );
        }
        assert!(flag(&on.public, AttributeType::Token));
        assert!(flag(&on.public, AttributeType::Verify));
        assert_eq!(bytes(&on.private, AttributeType::Label), key.id.as_bytes());
        assert_eq!(bytes(&on.public, AttributeType::Label), key.id.as_bytes());

        assert!(flag(&on.metadata, AttributeType::Token));
        assert!(flag(&on.metadata, AttributeType::Private));
        assert_eq!(bytes(&on.metadata, AttributeType::Application), b"p11kms");
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes(&on.metadata, AttributeType::Value))
                .expect("the metadata is JSON");
        // The change-based document (schema 2, see src/keys/doc.rs): one object after the
        // create, holding the genesis, one register per field and one ready version.
        assert_eq!(doc["schema"], 2);
        assert_eq!(doc["key_id"], key.id.as_str());
        assert_eq!(doc["genesis"]["folder_id"], "folder-every-alg");
        assert_eq!(doc["genesis"]["algorithm"], algorithm.name());
        let status = doc["status"].as_array().expect("the status register");
        assert_eq!(status.len(), 1);
        assert_eq!(status[0]["v"], "ACTIVE");
        assert!(doc.get("deletion").is_none_or(|d| d[0]["v"].is_null()));
        assert_eq!(doc["operations"].as_object().map(|o| o.len()), Some(1));
        let versions = doc["versions"].as_object().expect("the versions");
        assert_eq!(versions.len(), 1);
        let version = versions.values().next().unwrap();
        assert_eq!(version["ck_id"], hex::encode(key.id.as_bytes()));
        assert_eq!(version["label"], key.id.as_str());
        assert_eq!(version["state"], "ready");
        assert_eq!(
            version["spki_sha256"],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&parsed.spki_der))
        );
    }
    println!("create time per key (one key per algorithm, SoftHSMv2, debug build):");
    for (algorithm, took) in &timings {
        println!(
            "  {:<28} {:>8.1} ms",
            algorithm.name(),
            took.as_secs_f64() * 1e3
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_protection_delete_and_undelete() {
    let token = managed_token(&[]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let created = c
        .create(CreateAsymmetricSignatureKeyRequest {
            folder_id: "f1".into(),
            name: "signer".into(),
            description: "release signing".into(),
            labels: HashMap::from([("env".into(), "prod".into())]),
            signature_algorithm: Algorithm::EcdsaP256Sha256.to_proto(),
            deletion_protection: true,
        })
        .await
        .expect("create");
    let id = created.id.clone();
    let got = c.get(&id).await.expect("get");
    assert_eq!(got, created);
    assert_eq!(got.name, "signer");
    assert_eq!(got.description, "release signing");
    assert_eq!(got.labels["env"], "prod");
    assert!(got.deletion_protection);
    assert!(got.created_at.is_some());
    c.sign_verified(&got).await.expect("signs while ACTIVE");

    let inactive = c
        .set_status(&id, KeyStatus::Inactive)
        .await
        .expect("deactivate");
    assert_eq!(inactive.status, KeyStatus::Inactive as i32);
    assert_status(
        c.kms.sign(&id, b"x").await,
        Code::FailedPrecondition,
        &["INACTIVE"],
    );
    c.kms
        .public_key(&id)
        .await
        .expect("an INACTIVE key still publishes its public key");
    c.set_status(&id, KeyStatus::Active)
        .await
        .expect("reactivate");
    c.sign_verified(&got).await.expect("signs again");

    assert_status(
        c.delete(&id).await,
        Code::FailedPrecondition,
        &["deletion protection"],
    );
    c.sign_verified(&got)
        .await
        .expect("a refused delete changes nothing");
    c.set_protection(&id, false).await.expect("unprotect");
    let deleted = c.delete(&id).await.expect("delete");
    assert_eq!(deleted.id, id);
    assert_status(c.get(&id).await, Code::NotFound, &[&id]);
    assert_status(c.kms.sign(&id, b"x").await, Code::NotFound, &[&id]);
    assert_status(c.kms.public_key(&id).await, Code::NotFound, &[&id]);
    assert_status(c.delete(&id).await, Code::NotFound, &[&id]);
    assert_status(
        c.set_status(&id, KeyStatus::Inactive).await,
        Code::NotFound,
        &[&id],
    );
    assert!(c.list_all("f1", 100).await.is_empty());
    assert_status(
        c.keys
            .list_operations(ListAsymmetricSignatureKeyOperationsRequest {
                key_id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[&id],
    );

    let restored = c.undelete(&id).await.expect("undelete");
    assert_eq!(restored.id, id);
    c.sign_verified(&restored)
        .await
        .expect("signs after undelete");
    assert_eq!(c.list_all("f1", 100).await, vec![c.get(&id).await.unwrap()]);
    assert_status(
        c.undelete(&id).await,
        Code::FailedPrecondition,
        &["not deleted"],
    );

    // Newest first: undelete, delete, 3 updates (the refused delete recorded nothing), create.
    let ops = c.operations(&id).await.expect("operations");
    let descriptions: Vec<_> = ops.iter().map(|o| o.description.as_str()).collect();
    assert_eq!(
        descriptions,
        [
            "Undelete asymmetric signature key",
            "Delete asymmetric signature key",
            "Update asymmetric signature key",
            "Update asymmetric signature key",
            "Update asymmetric signature key",
            "Create asymmetric signature key",
        ]
    );
    // Any operation is answerable by id, and Cancel returns it unchanged.
    let delete_op = &ops[1];
    assert_eq!(key_of(delete_op, DELETE_META).id, id);
    let got = c
        .ops
        .get(GetOperationRequest {
            operation_id: delete_op.id.clone(),
        })
        .await
        .expect("Get")
        .into_inner();
    assert_eq!(&got, delete_op);
    let cancelled = c
        .ops
        .cancel(CancelOperationRequest {
            operation_id: delete_op.id.clone(),
        })
        .await
        .expect("Cancel")
        .into_inner();
    assert_eq!(&cancelled, delete_op);
    assert_status(
        c.ops
            .get(GetOperationRequest {
                operation_id: "nosuchoperation00000".into(),
            })
            .await,
        Code::NotFound,
        &["nosuchoperation00000"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_their_state_survive_a_restart() {
    let token = managed_token(&[]);
    let mut daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let key = c.create_key("f-restart", Algorithm::Rsa2048PssSha256).await;
    let other = c.create_key("f-restart", Algorithm::EcdsaP384Sha384).await;
    c.set_status(&other.id, KeyStatus::Inactive).await.unwrap();
    let deleted = c.create_key("f-restart", Algorithm::EcdsaP256Sha256).await;
    c.delete(&deleted.id).await.unwrap();
    let pem_before = c.kms.public_key(&key.id).await.unwrap();
    let ops_before = c.operations(&key.id).await.unwrap();
    assert!(daemon.sigterm().await.success());

    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    assert_eq!(c.get(&key.id).await.unwrap(), key);
    assert_eq!(c.kms.public_key(&key.id).await.unwrap(), pem_before);
    c.sign_verified(&key).await.expect("signs after a restart");
    assert_eq!(
        c.get(&other.id).await.unwrap().status,
        KeyStatus::Inactive as i32
    );
    assert_status(c.get(&deleted.id).await, Code::NotFound, &[]);
    assert_eq!(c.operations(&key.id).await.unwrap(), ops_before);
    let restored = c.undelete(&deleted.id).await.expect("still restorable");
    c.sign_verified(&restored).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_purge_destroys_deleted_keys_after_the_retention_window() {
    // 0.0005 h = 1.8 s; the purge looks every 100 ms.
    let token = managed_token(&[
        ("deletion_retention_hours", 0.0005.into()),
        ("purge_interval_ms", 100.into()),
    ]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let doomed = c.create_key("f-purge", Algorithm::EcdsaP256Sha256).await;
    let kept = c.create_key("f-purge", Algorithm::EcdsaP256Sha256).await;
    assert!(read_objects(&token, &doomed.id).is_some());
    let deleted_at = Instant::now();
    c.delete(&doomed.id).await.unwrap();
    assert!(
        any_object_left(&token, &doomed.id),
        "deleted keys stay on the token during the retention window"
    );
    let ((), took) = eventually(
        "the purge destroys the key's objects",
        Duration::from_secs(60),
        || {
            let left = any_object_left(&token, &doomed.id);
            async move { (!left).then_some(()) }
        },
    )
    .await;
    let since_delete = deleted_at.elapsed();
    println!("purged {since_delete:?} after Delete (waited {took:?})");
    assert!(
        since_delete >= Duration::from_millis(1800),
        "purged before the retention window ended ({since_delete:?})"
    );
    assert_status(c.undelete(&doomed.id).await, Code::NotFound, &[&doomed.id]);
    assert_status(c.get(&doomed.id).await, Code::NotFound, &[]);
    assert_status(c.kms.sign(&doomed.id, b"x").await, Code::NotFound, &[]);
    // The other key is untouched.
    assert!(read_objects(&token, &kept.id).is_some());
    c.sign_verified(&kept).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn undelete_after_the_window_is_not_found_even_before_the_purge() {
    // A 0.36 s window; the purge never runs here (an hour apart), so the window alone decides.
    let token = managed_token(&[
        ("deletion_retention_hours", 0.0001.into()),
        ("purge_interval_ms", 3_600_000.into()),
    ]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let key = c.create_key("f-window", Algorithm::EcdsaP256Sha256).await;
    c.delete(&key.id).await.unwrap();
    // Not a readiness wait: the point is that this much time has passed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_status(
        c.undelete(&key.id).await,
        Code::NotFound,
        &[&key.id, "cannot be restored"],
    );
    assert!(
        any_object_left(&token, &key.id),
        "only the purge destroys key material"
    );
}

/// A create that crashed between its CREATING document and ACTIVE leaves objects behind; the
/// purge removes them once the document is older than an hour. Garbage documents are ignored.
#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_a_crashed_create_are_purged_and_garbage_is_ignored() {
    let token = managed_token(&[("purge_interval_ms", 100.into())]);
    let crashed = "crashedcreate0000000";
    let fresh = "freshcreate000000000";
    pkcs11::with_user_session(&token, |s| {
        for (id, created_at) in [
            (crashed, "2020-01-01T00:00:00Z"),
            (fresh, "2099-01-01T00:00:00Z"),
        ] {
            pkcs11::generate_key_pair(
                s,
                pkcs11::KeyGen::Ec("1.2.840.10045.3.1.7"),
                id.as_bytes(),
                id,
                pkcs11::PrivateAttrs::default(),
            );
            let doc = serde_json::json!({
                "schema": 1, "key_id": id, "ck_id": hex::encode(id), "folder_id": "f",
                "status": "CREATING", "algorithm": "ECDSA_NIST_P256_SHA_256",
                "created_at": created_at, "revision": 1,
            });
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Application(b"p11kms".to_vec()),
                Attribute::Label(format!("p11kms/key/{id}").into_bytes()),
                Attribute::Value(serde_json::to_vec(&doc).unwrap()),
            ])
            .expect("C_CreateObject");
        }
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Application(b"p11kms".to_vec()),
            Attribute::Label(b"p11kms/key/garbage".to_vec()),
            Attribute::Value(b"not json".to_vec()),
        ])
        .expect("C_CreateObject");
    });
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    assert_status(c.get(crashed).await, Code::NotFound, &[]);
    assert_status(c.get(fresh).await, Code::NotFound, &[]);
    eventually(
        "the crashed create is cleaned up",
        Duration::from_secs(60),
        || {
            let left = any_object_left(&token, crashed);
            async move { (!left).then_some(()) }
        },
    )
    .await;
    // A CREATING document younger than the timeout may belong to a create in progress.
    assert!(any_object_left(&token, fresh));
    // The service works normally next to the garbage.
    let key = c.create_key("f", Algorithm::EcdsaP256Sha256).await;
    c.sign_verified(&key).await.unwrap();
    assert!(
        daemon.stderr().contains("unreadable key metadata"),
        "{}",
        daemon.describe()
    );
}
