//! The key lifecycle over REST (issue 6): create, get, list, patch status, delete, poll the
//! operations (`GET /operations/{id}` and `:cancel`), list a key's operations, and the
//! access-binding verbs; every answer in proto3 JSON and equal to what gRPC answers. Then
//! authentication and authorisation over REST (no token → 401, denied → 403, the same answer
//! whether the key exists or not), and one audit record per REST request.

mod common;
mod key_service_support;
mod rest_support;

use common::verify::{self, hash_of};
use common::{dev_key_id, Daemon, TestToken};
use key_service_support::Clients;
use p11kms::api::yandex::json;
use p11kms::crypto::Algorithm;
use rest_support::{key_path, Rest};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr as _;
use tonic::Code;

const KEYS: &str = "/kms/v1/asymmetricSignatureKeys";
const KEY_TYPE: &str =
    "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKey";
const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const SA: &str = "serviceAccount";

/// Checks an operation's JSON: done, typed metadata naming the key, and a response of
/// `response_type`; returns the key id.
#[track_caller]
fn check_operation(op: &Value, metadata: &str, response_type: &str) -> String {
    assert_eq!(op["done"], true, "{op}");
    assert_eq!(op["id"].as_str().map(str::len), Some(20), "{op}");
    for field in ["createdAt", "modifiedAt"] {
        let text = op[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {op}"));
        prost_types::Timestamp::from_str(text)
            .unwrap_or_else(|e| panic!("{field} {text:?} is not RFC 3339: {e}"));
        assert!(text.ends_with('Z'), "{text}");
    }
    assert_eq!(
        op["metadata"]["@type"],
        format!("type.googleapis.com/{metadata}"),
        "{op}"
    );
    assert_eq!(op["response"]["@type"], response_type, "{op}");
    assert!(op.get("error").is_none(), "{op}");
    op["metadata"]["keyId"]
        .as_str()
        .or_else(|| op["metadata"]["resourceId"].as_str())
        .expect("metadata names the key")
        .to_string()
}

/// Polls the operation as the SDK waiters do, over REST, and checks it is unchanged; `:cancel`
/// answers the same (nothing is ever in progress).
async fn poll(rest: &Rest, op: &Value) {
    let id = op["id"].as_str().unwrap();
    assert_eq!(&rest.get(&format!("/operations/{id}")).await.ok(), op);
    assert_eq!(
        &rest.get(&format!("/operations/{id}:cancel")).await.ok(),
        op
    );
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn key_lifecycle_over_rest_matches_grpc() {
    let token = TestToken::dev();
    let audit = token.state_dir().join("audit.jsonl");
    token.set_config("audit", "sink", "file");
    token.set_config("audit", "file", audit.display().to_string());
    let daemon = Daemon::serve(&token, &[]);
    let rest = Rest::new(&daemon);
    let mut grpc = Clients::connect(&daemon).await;
    let mut replies = Vec::new();

    // Create, with the algorithm by name; deletion protection on.
    let r = rest
        .post(
            KEYS,
            &json!({
                "folderId": "f-rest",
                "name": "rest-key",
                "description": "made over REST",
                "labels": { "team": "kms", "env": "test" },
                "signatureAlgorithm": "ECDSA_NIST_P384_SHA_384",
                "deletionProtection": true,
            }),
        )
        .await;
    let create = r.ok();
    replies.push(r);
    let id = check_operation(
        &create,
        "yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata",
        KEY_TYPE,
    );
    let key = &create["response"];
    assert_eq!(key["id"], id.as_str());
    assert_eq!(key["status"], "ACTIVE");
    assert_eq!(key["signatureAlgorithm"], "ECDSA_NIST_P384_SHA_384");
    assert_eq!(key["labels"], json!({ "env": "test", "team": "kms" }));
    assert_eq!(key["deletionProtection"], true);
    poll(&rest, &create).await;

    // A second key, with the algorithm by number (13: secp256k1).
    let r = rest
        .post(
            KEYS,
            &json!({ "folderId": "f-rest", "signatureAlgorithm": 13 }),
        )
        .await;
    let other = r.ok()["metadata"]["keyId"].as_str().unwrap().to_string();
    replies.push(r);

    // Get: exactly the proto3 JSON of what gRPC returns.
    let r = rest.get(&key_path(&id, "")).await;
    assert_eq!(r.ok(), json::key(&grpc.get(&id).await.unwrap()));
    let mut created = create["response"].clone();
    created.as_object_mut().unwrap().remove("@type");
    assert_eq!(r.ok(), created);
    replies.push(r);

    // The new key signs over REST.
    let alg = Algorithm::EcdsaP384Sha384;
    let pem = rest.public_key(&id).await.unwrap();
    let public = verify::parse_public_key(&pem, alg).unwrap();
    let sig = rest.sign(&id, b"made over REST").await.unwrap();
    public.verify_message(alg, b"made over REST", &sig).unwrap();

    // List, one per page, with pageSize as a JSON-style string and as a number.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = rest
            .get(&format!(
                "{KEYS}?folderId=f-rest&pageSize=1&pageToken={page_token}"
            ))
            .await;
        let page = r.ok();
        replies.push(r);
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 1, "{page}");
        seen.extend(keys.iter().map(|k| k["id"].as_str().unwrap().to_string()));
        page_token = page["nextPageToken"].as_str().unwrap().to_string();
        if page_token.is_empty() {
            break;
        }
    }
    seen.sort();
    let mut want = vec![id.clone(), other.clone()];
    want.sort();
    assert_eq!(seen, want);
    let r = rest
        .get(&format!("{KEYS}?folder_id=f-rest&page_size=10"))
        .await;
    assert_eq!(
        r.ok(),
        json::key_list(&grpc.list_page("f-rest", 10, "").await.unwrap())
    );

    // Patch: INACTIVE (status by number), and signing is refused.
    let r = rest
        .patch(
            &key_path(&id, ""),
            &json!({ "updateMask": "status", "status": 3 }),
        )
        .await;
    let update = r.ok();
    replies.push(r);
    check_operation(
        &update,
        "yandex.cloud.kms.v1.asymmetricsignature.UpdateAsymmetricSignatureKeyMetadata",
        KEY_TYPE,
    );
    assert_eq!(update["response"]["status"], "INACTIVE");
    poll(&rest, &update).await;
    rest.sign(&id, b"m")
        .await
        .unwrap_err()
        .error(Code::FailedPrecondition, &[&id, "INACTIVE"]);
    // The public key stays available.
    assert_eq!(rest.public_key(&id).await.unwrap(), pem);

    // Back to ACTIVE, renamed, in one mask; fields outside the mask are kept.
    let r = rest
        .patch(
            &key_path(&id, ""),
            &json!({
                "updateMask": "status,name",
                "status": "ACTIVE",
                "name": "renamed",
                "description": "not in the mask",
            }),
        )
        .await;
    let key = r.ok()["response"].clone();
    assert_eq!(
        (&key["status"], &key["name"], &key["description"]),
        (
            &json!("ACTIVE"),
            &json!("renamed"),
            &json!("made over REST")
        )
    );
    let digest = hash_of(alg).digest(b"active again");
    let sig = rest.sign_hash(&id, &digest).await.unwrap();
    public.verify_digest(alg, &digest, &sig).unwrap();

    // The key's operations, newest first, paged.
    let r = rest.get(&key_path(&id, "/operations?pageSize=2")).await;
    let page = r.ok();
    let ops = page["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2, "{page}");
    assert_eq!(ops[1], update);
    assert!(!page["nextPageToken"].as_str().unwrap().is_empty());
    let next = rest
        .get(&key_path(
            &id,
            &format!(
                "/operations?pageToken={}",
                page["nextPageToken"].as_str().unwrap()
            ),
        ))
        .await
        .ok();
    assert_eq!(next["operations"].as_array().unwrap().last(), Some(&create));
    assert_eq!(
        next,
        json::operation_list(
            &grpc
                .keys
                .list_operations(
                    p11kms::api::yandex::grpc::pb::kms::ListAsymmetricSignatureKeyOperationsRequest {
                        key_id: id.clone(),
                        page_size: 0,
                        page_token: page["nextPageToken"].as_str().unwrap().to_string(),
                    }
                )
                .await
                .unwrap()
                .into_inner()
        )
    );

    // Access bindings: set, list, update (action by name and by number), list.
    let r = rest
        .post(
            &key_path(&id, ":setAccessBindings"),
            &json!({ "accessBindings": [
                { "roleId": SIGNER, "subject": { "id": "alice", "type": SA } },
            ]}),
        )
        .await;
    let set = r.ok();
    replies.push(r);
    check_operation(
        &set,
        "yandex.cloud.access.SetAccessBindingsMetadata",
        "type.googleapis.com/google.protobuf.Empty",
    );
    assert_eq!(set["metadata"]["resourceId"], id.as_str());
    assert_eq!(
        set["response"],
        json!({ "@type": "type.googleapis.com/google.protobuf.Empty" })
    );
    let r = rest
        .post(
            &key_path(&id, ":updateAccessBindings"),
            &json!({ "accessBindingDeltas": [
                { "action": "ADD", "accessBinding": {
                    "roleId": "kms.asymmetricSignatureKeys.publicKeyViewer",
                    "subject": { "id": "pat", "type": SA } } },
                { "action": 2, "accessBinding": {
                    "roleId": SIGNER, "subject": { "id": "alice", "type": SA } } },
            ]}),
        )
        .await;
    check_operation(
        &r.ok(),
        "yandex.cloud.access.UpdateAccessBindingsMetadata",
        "type.googleapis.com/google.protobuf.Empty",
    );
    let list = rest.get(&key_path(&id, ":listAccessBindings")).await.ok();
    assert_eq!(
        list,
        json!({
            "accessBindings": [{
                "roleId": "kms.asymmetricSignatureKeys.publicKeyViewer",
                "subject": { "id": "pat", "type": SA },
            }],
            "nextPageToken": "",
        })
    );

    // Delete: refused while protected, then allowed.
    let r = rest.delete(&key_path(&id, "")).await;
    r.error(Code::FailedPrecondition, &["deletion protection"]);
    replies.push(r);
    rest.patch(
        &key_path(&id, ""),
        &json!({ "updateMask": "deletionProtection", "deletionProtection": false }),
    )
    .await
    .ok();
    let r = rest.delete(&key_path(&id, "")).await;
    let delete = r.ok();
    replies.push(r);
    check_operation(
        &delete,
        "yandex.cloud.kms.v1.asymmetricsignature.DeleteAsymmetricSignatureKeyMetadata",
        KEY_TYPE,
    );
    poll(&rest, &delete).await;
    let r = rest.get(&key_path(&id, "")).await;
    r.error(Code::NotFound, &[&id]);
    replies.push(r);
    rest.sign(&id, b"m")
        .await
        .unwrap_err()
        .error(Code::NotFound, &[&id]);
    let r = rest.delete(&key_path(&other, "")).await;
    r.ok();

    // One audit record per REST request, naming the gRPC method it maps to.
    let records = audit_records(&audit);
    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in &records {
        by_id
            .entry(r["request_id"].as_str().unwrap())
            .or_default()
            .push(r);
    }
    let rpc = |m: &str| {
        format!("/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/{m}")
    };
    let expected = [
        ("Create", "OK"),
        ("Create", "OK"),
        ("Get", "OK"),
        ("List", "OK"),
        ("List", "OK"),
        ("Update", "OK"),
        ("SetAccessBindings", "OK"),
        ("Delete", "FAILED_PRECONDITION"),
        ("Delete", "OK"),
        ("Get", "NOT_FOUND"),
    ];
    assert_eq!(replies.len(), expected.len());
    for (reply, (method, outcome)) in replies.iter().zip(expected) {
        let id = reply.request_id().expect("x-request-id");
        let got = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "request {id} ({method}) has {} records",
            got.len()
        );
        let record = got[0];
        assert_eq!(record["protocol"], "rest", "{record}");
        assert_eq!(record["rpc"], rpc(method), "{record}");
        assert_eq!(record["outcome"], outcome, "{record}");
        assert_eq!(record["subject"]["id"], "dev-admin", "{record}");
    }
    // Every REST request has its record; nothing has two.
    assert!(by_id.values().all(|v| v.len() == 1));
    assert!(records
        .iter()
        .all(|r| r["protocol"] == "rest" || r["protocol"] == "grpc"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_authenticates_and_authorises_like_grpc() {
    let token = TestToken::dev();
    let audit = token.state_dir().join("audit.jsonl");
    token.set_config("audit", "sink", "file");
    token.set_config("audit", "file", audit.display().to_string());
    let nobody = format!("tok-nobody-{}", hex::encode(rand::random::<[u8; 16]>()));
    let alice = format!("tok-alice-{}", hex::encode(rand::random::<[u8; 16]>()));
    token.add_api_token(&nobody, "nobody", SA);
    token.add_api_token(&alice, "alice", SA);
    let daemon = Daemon::serve(&token, &[]);
    let admin = Rest::new(&daemon);
    let anonymous = admin.with_token(None);
    let wrong = admin.with_token(Some("not-a-configured-token"));
    let nobody = admin.with_token(Some(&nobody));
    let alice = admin.with_token(Some(&alice));
    let key = dev_key_id(Algorithm::EcdsaP256Sha256);
    let mut kms = daemon.kms_as(None).await;

    // No credentials: 401 on every protected binding, with gRPC's message.
    let grpc = kms.sign(&key, b"m").await.unwrap_err();
    assert_eq!(grpc.code(), Code::Unauthenticated);
    for r in [
        anonymous.sign(&key, b"m").await.unwrap_err(),
        anonymous.public_key(&key).await.unwrap_err(),
        anonymous.get(KEYS).await,
        anonymous.get("/operations/abcdefghij0123456789").await,
        anonymous.get("/no/such/path").await,
    ] {
        assert_eq!(r.error(Code::Unauthenticated, &["Bearer"]), grpc.message());
    }
    let r = wrong.sign(&key, b"m").await.unwrap_err();
    r.error(Code::Unauthenticated, &["invalid"]);
    // Endpoint discovery is public, as over gRPC.
    let endpoints = anonymous.get("/endpoints").await.ok();
    let ids: Vec<&str> = endpoints["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kms", "kms-crypto", "operation", "iam"]);
    assert_eq!(
        anonymous.get("/endpoints/kms").await.ok(),
        endpoints["endpoints"][0]
    );

    // Valid credentials without a role: 403, the same whether the key exists or not.
    let mut nobody_grpc = daemon.kms_as(nobody.token.as_deref()).await;
    let grpc = nobody_grpc.sign(&key, b"m").await.unwrap_err();
    assert_eq!(grpc.code(), Code::PermissionDenied);
    let existing = nobody.sign(&key, b"m").await.unwrap_err();
    let missing = nobody.sign("nosuchkey00000000000", b"m").await.unwrap_err();
    assert_eq!(existing.error(Code::PermissionDenied, &[]), grpc.message());
    assert_eq!(
        existing.message(),
        missing.error(Code::PermissionDenied, &[]),
        "a denial must not reveal whether the key exists"
    );
    nobody
        .get(&format!("{KEYS}/{key}"))
        .await
        .error(Code::PermissionDenied, &[]);

    // A per-key binding made over REST lets alice sign over REST (and gRPC).
    let created = admin
        .post(
            KEYS,
            &json!({ "folderId": "f1", "signatureAlgorithm": "ECDSA_NIST_P256_SHA_256" }),
        )
        .await
        .ok();
    let k1 = created["metadata"]["keyId"].as_str().unwrap().to_string();
    alice
        .sign(&k1, b"before")
        .await
        .unwrap_err()
        .error(Code::PermissionDenied, &[]);
    admin
        .post(
            &key_path(&k1, ":updateAccessBindings"),
            &json!({ "accessBindingDeltas": [{ "action": "ADD", "accessBinding": {
                "roleId": SIGNER, "subject": { "id": "alice", "type": SA } } }] }),
        )
        .await
        .ok();
    let sig = alice.sign(&k1, b"after").await.unwrap();
    let pem = admin.public_key(&k1).await.unwrap();
    verify::parse_public_key(&pem, Algorithm::EcdsaP256Sha256)
        .unwrap()
        .verify_message(Algorithm::EcdsaP256Sha256, b"after", &sig)
        .unwrap();
    // Signer may not manage the key.
    alice
        .patch(
            &key_path(&k1, ""),
            &json!({ "updateMask": "name", "name": "x" }),
        )
        .await
        .error(Code::PermissionDenied, &[]);

    // The refusals are audited like any request: subject, reason, protocol.
    let records = audit_records(&audit);
    let rest_records: Vec<&Value> = records.iter().filter(|r| r["protocol"] == "rest").collect();
    assert!(rest_records
        .iter()
        .any(|r| r["subject"].is_null() && r["outcome"] == "UNAUTHENTICATED"));
    assert!(rest_records
        .iter()
        .any(|r| r["authentication_failure"].is_string() && r["outcome"] == "UNAUTHENTICATED"));
    assert!(rest_records.iter().any(|r| r["subject"]["id"] == "nobody"
        && r["outcome"] == "PERMISSION_DENIED"
        && r["event"] == "AsymmetricSign"));
    assert!(rest_records.iter().any(|r| r["subject"]["id"] == "alice"
        && r["outcome"] == "OK"
        && r["key_id"] == k1.as_str()));
    // Nothing secret in the trail.
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [
        nobody.token.as_deref().unwrap(),
        alice.token.as_deref().unwrap(),
        daemon.admin_token(),
    ] {
        assert!(!text.contains(secret), "a token is in the audit trail");
    }
}

/// Contract §3: a PATCH without `updateMask` overwrites every field, and a field left out of
/// the body is reset to its default; an empty mask is refused, as over gRPC.
#[tokio::test(flavor = "multi_thread")]
async fn a_patch_without_a_mask_overwrites_every_field() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let rest = Rest::new(&daemon);
    let created = rest
        .post(
            KEYS,
            &json!({
                "folderId": "f-mask",
                "name": "before",
                "description": "to be reset",
                "labels": { "team": "kms" },
                "signatureAlgorithm": "ECDSA_NIST_P256_SHA_256",
                "deletionProtection": true,
            }),
        )
        .await
        .ok();
    let id = created["response"]["id"].as_str().unwrap().to_string();

    // The status is part of "every field": without it, it would be reset to STATUS_UNSPECIFIED.
    rest.patch(&key_path(&id, ""), &json!({ "name": "after" }))
        .await
        .error(Code::InvalidArgument, &["status"]);
    rest.patch(
        &key_path(&id, ""),
        &json!({ "updateMask": "", "status": "ACTIVE" }),
    )
    .await
    .error(Code::InvalidArgument, &["update_mask is required"]);

    let updated = rest
        .patch(
            &key_path(&id, ""),
            &json!({ "name": "after", "status": "INACTIVE" }),
        )
        .await
        .ok();
    let key = &updated["response"];
    assert_eq!(key["name"], "after", "{key}");
    assert_eq!(key["status"], "INACTIVE", "{key}");
    // Left out of the body, so reset to their defaults.
    assert_eq!(key["description"], "", "{key}");
    assert_eq!(key["labels"], json!({}), "{key}");
    assert_eq!(key["deletionProtection"], false, "{key}");
    // Get answers the same key (without the Any's `@type`).
    let mut stored = key.clone();
    stored.as_object_mut().unwrap().remove("@type");
    assert_eq!(rest.get(&key_path(&id, "")).await.ok(), stored);
}
