//! Every Create, Update and List field limit of the contract at its boundary (INVALID_ARGUMENT
//! naming the field one past it), and the read-only keys declared in the config file.

mod common;
mod key_service_support;

use common::{assert_status, dev_key_id, Daemon};
use key_service_support::{managed_token, Clients};
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_key::Status as KeyStatus;
use p11kms::api::yandex::grpc::pb::kms::{
    CreateAsymmetricSignatureKeyRequest, DeleteAsymmetricSignatureKeyRequest,
    GetAsymmetricSignatureKeyRequest, ListAsymmetricSignatureKeyOperationsRequest,
    UpdateAsymmetricSignatureKeyRequest,
};
use p11kms::api::yandex::grpc::pb::operation::GetOperationRequest;
use p11kms::api::yandex::grpc::pb::p11kms::v1::UndeleteKeyRequest;
use p11kms::api::yandex::grpc::pb::yandex::cloud::access::{
    AccessBinding, AccessBindingAction, AccessBindingDelta, ListAccessBindingsRequest,
    SetAccessBindingsRequest, Subject, UpdateAccessBindingsRequest,
};
use p11kms::crypto::Algorithm;
use std::collections::HashMap;
use tonic::Code;

/// A named way to break a request: the field the error must name, and the change.
type CreateCase = (
    &'static str,
    Box<dyn Fn(&mut CreateAsymmetricSignatureKeyRequest)>,
);
/// The same for Update, with the mask paths to send.
type UpdateCase = (
    &'static str,
    &'static [&'static str],
    Box<dyn Fn(&mut UpdateAsymmetricSignatureKeyRequest)>,
);

/// 64 labels, each key and value exactly 63 characters and matching the patterns.
fn max_labels() -> HashMap<String, String> {
    (0..64)
        .map(|i| {
            let key = format!("k{i:02}{}", "-_a9".repeat(15));
            let value = format!("{i:02}{}", "_-z0".repeat(15)) + "v";
            assert_eq!((key.len(), value.len()), (63, 63));
            (key, value)
        })
        .collect()
}

fn create_req() -> CreateAsymmetricSignatureKeyRequest {
    CreateAsymmetricSignatureKeyRequest {
        folder_id: "f".into(),
        signature_algorithm: Algorithm::EcdsaP256Sha256.to_proto(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_fields_at_their_limits() {
    let token = managed_token(&[]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;

    // Everything at its maximum at once is accepted and stored as sent.
    let full = CreateAsymmetricSignatureKeyRequest {
        folder_id: "f".repeat(50),
        name: "я".repeat(100), // lengths are characters, not bytes
        description: "d".repeat(1024),
        labels: max_labels(),
        signature_algorithm: Algorithm::EcdsaP256Sha256.to_proto(),
        deletion_protection: false,
    };
    let key = c
        .create(full.clone())
        .await
        .expect("every field at its limit");
    assert_eq!(key.folder_id, full.folder_id);
    assert_eq!(key.name, full.name);
    assert_eq!(key.description, full.description);
    assert_eq!(key.labels, full.labels.into_iter().collect());
    assert_eq!(c.get(&key.id).await.unwrap(), key);

    let cases: Vec<CreateCase> = vec![
        ("folder_id", Box::new(|r| r.folder_id.clear())),
        ("folder_id", Box::new(|r| r.folder_id = "f".repeat(51))),
        ("name", Box::new(|r| r.name = "я".repeat(101))),
        (
            "description",
            Box::new(|r| r.description = "d".repeat(1025)),
        ),
        (
            "labels",
            Box::new(|r| {
                r.labels = max_labels();
                r.labels.insert("one-more".into(), String::new());
            }),
        ),
        (
            "labels",
            Box::new(|r| {
                r.labels = HashMap::from([("k".repeat(64), String::new())]);
            }),
        ),
        (
            "labels",
            Box::new(|r| {
                r.labels = HashMap::from([("k".into(), "v".repeat(64))]);
            }),
        ),
        (
            "labels",
            Box::new(|r| r.labels = HashMap::from([(String::new(), "v".into())])),
        ),
        (
            "labels",
            Box::new(|r| r.labels = HashMap::from([("0key".into(), "v".into())])),
        ),
        (
            "labels",
            Box::new(|r| r.labels = HashMap::from([("Key".into(), "v".into())])),
        ),
        (
            "labels",
            Box::new(|r| r.labels = HashMap::from([("a.b".into(), "v".into())])),
        ),
        (
            "labels",
            Box::new(|r| r.labels = HashMap::from([("k".into(), "V".into())])),
        ),
        (
            "labels",
            Box::new(|r| r.labels = HashMap::from([("k".into(), "a b".into())])),
        ),
        (
            "signature_algorithm",
            Box::new(|r| r.signature_algorithm = 0),
        ),
        (
            "signature_algorithm",
            Box::new(|r| r.signature_algorithm = 14),
        ),
    ];
    for (field, break_it) in cases {
        let mut req = create_req();
        break_it(&mut req);
        let status = assert_status(c.create(req).await, Code::InvalidArgument, &[field]);
        println!("{field}: {}", status.message());
    }
    // Edge cases that are valid: empty name, description and label value; a one-letter key.
    let mut ok = create_req();
    ok.labels = HashMap::from([("a".into(), String::new())]);
    c.create(ok).await.expect("minimal labels");
    // Nothing invalid was created.
    assert_eq!(c.list_all("f", 1000).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_list_and_id_fields_at_their_limits() {
    let token = managed_token(&[]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let key = c.create_key("f", Algorithm::EcdsaP256Sha256).await;
    let id = key.id.clone();

    // Update: every masked field at its limit at once.
    let updated = c
        .update(
            &id,
            &["name", "description", "labels", "deletion_protection"],
            |r| {
                r.name = "n".repeat(100);
                r.description = "d".repeat(1024);
                r.labels = max_labels();
                r.deletion_protection = true;
            },
        )
        .await
        .expect("every field at its limit");
    assert_eq!(updated.name.len(), 100);
    assert_eq!(updated.labels, max_labels().into_iter().collect());
    assert!(updated.deletion_protection);
    // Fields outside the mask are ignored, even invalid ones.
    let same = c
        .update(&id, &["description"], |r| {
            r.name = "x".repeat(500);
            r.description = "new".into();
            r.status = 99;
        })
        .await
        .expect("unmasked fields are not looked at");
    assert_eq!(same.name, updated.name);
    assert_eq!(same.description, "new");
    // Empty labels under the mask clear them.
    let cleared = c.update(&id, &["labels"], |_| {}).await.unwrap();
    assert!(cleared.labels.is_empty());

    let cases: Vec<UpdateCase> = vec![
        ("update_mask", &[], Box::new(|_| {})),
        // A key's folder cannot be changed: the path is unknown.
        ("folder_id", &["folder_id"], Box::new(|_| {})),
        (
            "signature_algorithm",
            &["signature_algorithm"],
            Box::new(|_| {}),
        ),
        ("bogus", &["name", "bogus"], Box::new(|_| {})),
        ("name", &["name"], Box::new(|r| r.name = "n".repeat(101))),
        (
            "description",
            &["description"],
            Box::new(|r| r.description = "d".repeat(1025)),
        ),
        (
            "labels",
            &["labels"],
            Box::new(|r| {
                r.labels = max_labels();
                r.labels.insert("more".into(), String::new());
            }),
        ),
        (
            "labels",
            &["labels"],
            Box::new(|r| r.labels = HashMap::from([("-x".into(), String::new())])),
        ),
        (
            "status",
            &["status"],
            Box::new(|r| r.status = KeyStatus::Creating as i32),
        ),
        (
            "status",
            &["status"],
            Box::new(|r| r.status = KeyStatus::Unspecified as i32),
        ),
        ("status", &["status"], Box::new(|r| r.status = 7)),
    ];
    for (needle, paths, fill) in cases {
        let status = assert_status(
            c.update(&id, paths, fill).await,
            Code::InvalidArgument,
            &[needle],
        );
        println!("{paths:?}: {}", status.message());
    }
    // A request without any mask at all.
    assert_status(
        c.keys
            .update(UpdateAsymmetricSignatureKeyRequest {
                key_id: id.clone(),
                name: "x".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["update_mask"],
    );

    // key_id: required, at most 50 characters (50 is a valid length that does not exist).
    for (value, code, needles) in [
        (String::new(), Code::InvalidArgument, &["key_id"][..]),
        ("k".repeat(51), Code::InvalidArgument, &["key_id"][..]),
        ("k".repeat(50), Code::NotFound, &[][..]),
    ] {
        assert_status(c.get(&value).await, code, needles);
        assert_status(c.delete(&value).await, code, &[]);
        assert_status(c.set_status(&value, KeyStatus::Active).await, code, &[]);
        assert_status(c.undelete(&value).await, code, &[]);
        assert_status(
            c.keys
                .list_operations(ListAsymmetricSignatureKeyOperationsRequest {
                    key_id: value.clone(),
                    ..Default::default()
                })
                .await,
            code,
            &[],
        );
    }

    // List: folder_id required and <= 50; page_size 0..=1000; page_token <= 256 and ours.
    assert_status(
        c.list_page("", 0, "").await,
        Code::InvalidArgument,
        &["folder_id"],
    );
    assert_status(
        c.list_page(&"f".repeat(51), 0, "").await,
        Code::InvalidArgument,
        &["folder_id"],
    );
    assert!(c
        .list_page(&"f".repeat(50), 0, "")
        .await
        .unwrap()
        .keys
        .is_empty());
    assert_status(
        c.list_page("f", 1001, "").await,
        Code::InvalidArgument,
        &["page_size"],
    );
    assert_status(
        c.list_page("f", -1, "").await,
        Code::InvalidArgument,
        &["page_size"],
    );
    assert_eq!(c.list_page("f", 1000, "").await.unwrap().keys.len(), 1);
    assert_eq!(c.list_page("f", 0, "").await.unwrap().keys.len(), 1);
    assert_status(
        c.list_page("f", 0, &"A".repeat(257)).await,
        Code::InvalidArgument,
        &["page_token"],
    );
    assert_status(
        c.list_page("f", 0, "not a token!").await,
        Code::InvalidArgument,
        &["page_token"],
    );
    // A 256-character token is within the limit (it is then refused as not ours).
    assert_status(
        c.list_page("f", 0, &"A".repeat(256)).await,
        Code::InvalidArgument,
        &["not a token"],
    );

    // ListOperations: page_size 0..=1000, page_token <= 100.
    let list_ops = |size: i64, token: String| ListAsymmetricSignatureKeyOperationsRequest {
        key_id: id.clone(),
        page_size: size,
        page_token: token,
    };
    assert_status(
        c.keys.list_operations(list_ops(1001, String::new())).await,
        Code::InvalidArgument,
        &["page_size"],
    );
    assert_status(
        c.keys.list_operations(list_ops(0, "A".repeat(101))).await,
        Code::InvalidArgument,
        &["page_token"],
    );
    let ops = c
        .keys
        .list_operations(list_ops(1000, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ops.operations.len(), 4);
    assert!(ops.next_page_token.is_empty());

    // OperationService: operation_id required.
    assert_status(
        c.ops
            .get(GetOperationRequest {
                operation_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
        &["operation_id"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_keys_are_listed_and_read_only() {
    let token = managed_token(&[]);
    let moved = dev_key_id(Algorithm::Rsa2048PssSha256);
    token.set_key_field(&moved, "folder_id", "cfg-folder");
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;
    let id = dev_key_id(Algorithm::EcdsaP256Sha256);

    let key = c.get(&id).await.expect("config keys are visible to Get");
    assert_eq!(
        key.folder_id, "p11kms-config",
        "the documented default folder"
    );
    assert_eq!(key.labels["p11kms-source"], "config");
    assert_eq!(key.status, KeyStatus::Active as i32);
    assert_eq!(
        key.signature_algorithm,
        Algorithm::EcdsaP256Sha256.to_proto()
    );
    let listed = c.list_all("p11kms-config", 5).await;
    assert_eq!(listed.len(), 12, "13 dev keys, one moved to its own folder");
    let mut ids: Vec<_> = listed.iter().map(|k| k.id.clone()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted, "List is ordered by key id");
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert_eq!(
        c.list_all("cfg-folder", 100)
            .await
            .iter()
            .map(|k| &k.id)
            .collect::<Vec<_>>(),
        [&moved]
    );
    assert!(c.operations(&id).await.unwrap().is_empty());

    let managed = ["managed by the config file"];
    assert_status(
        c.set_status(&id, KeyStatus::Inactive).await,
        Code::FailedPrecondition,
        &managed,
    );
    assert_status(
        c.update(&id, &["name"], |r| r.name = "x".into()).await,
        Code::FailedPrecondition,
        &managed,
    );
    assert_status(
        c.keys
            .delete(DeleteAsymmetricSignatureKeyRequest { key_id: id.clone() })
            .await,
        Code::FailedPrecondition,
        &managed,
    );
    assert_status(
        c.admin
            .undelete(UndeleteKeyRequest { key_id: id.clone() })
            .await,
        Code::FailedPrecondition,
        &managed,
    );
    let binding = AccessBinding {
        role_id: "kms.asymmetricSignatureKeys.signer".into(),
        subject: Some(Subject {
            id: "u1".into(),
            r#type: "userAccount".into(),
        }),
    };
    assert_status(
        c.keys
            .set_access_bindings(SetAccessBindingsRequest {
                resource_id: id.clone(),
                access_bindings: vec![binding.clone()],
            })
            .await,
        Code::FailedPrecondition,
        &managed,
    );
    assert_status(
        c.keys
            .update_access_bindings(UpdateAccessBindingsRequest {
                resource_id: id.clone(),
                access_binding_deltas: vec![AccessBindingDelta {
                    action: AccessBindingAction::Add as i32,
                    access_binding: Some(binding.clone()),
                }],
            })
            .await,
        Code::FailedPrecondition,
        &managed,
    );
    let bindings = c
        .keys
        .list_access_bindings(ListAccessBindingsRequest {
            resource_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(bindings.access_bindings.is_empty());
    // Still signs, unchanged.
    c.sign_verified(&key).await.unwrap();
    assert_eq!(c.get(&id).await.unwrap(), key);

    // API keys take bindings (enforced: see tests/auth.rs), stored with the key.
    let api = c.create_key("f", Algorithm::EcdsaP256Sha256).await;
    c.keys
        .set_access_bindings(SetAccessBindingsRequest {
            resource_id: api.id.clone(),
            access_bindings: vec![binding.clone()],
        })
        .await
        .unwrap();
    assert_eq!(
        c.keys
            .list_access_bindings(ListAccessBindingsRequest {
                resource_id: api.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .access_bindings,
        [binding]
    );
    assert_status(
        c.keys
            .get(GetAsymmetricSignatureKeyRequest {
                key_id: "dev-no-such-key".into(),
            })
            .await,
        Code::NotFound,
        &["dev-no-such-key"],
    );
}

#[test]
fn managed_keys_settings_are_checked_at_start_up() {
    for (setting, value, needle) in [
        (
            "refresh_interval_ms",
            toml::Value::from(50),
            "managed_keys.refresh_interval_ms",
        ),
        (
            "purge_interval_ms",
            toml::Value::from(0),
            "managed_keys.purge_interval_ms",
        ),
        (
            "deletion_retention_hours",
            toml::Value::from(-1.0),
            "managed_keys.deletion_retention_hours",
        ),
        (
            "max_concurrent_generations",
            toml::Value::from(0),
            "managed_keys.max_concurrent_generations",
        ),
        ("no_such_setting", toml::Value::from(1), "no_such_setting"),
    ] {
        let token = managed_token(&[(setting, value)]);
        Daemon::serve_expecting_failure(&token, &[])
            .assert_failed()
            .assert_stderr_has(&[needle]);
    }
    let token = managed_token(&[]);
    token.set_key_field(
        &dev_key_id(Algorithm::EcdsaP256Sha256),
        "folder_id",
        "f".repeat(51),
    );
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&["folder_id", "1 to 50 characters"]);
}
