//! The Alibaba Cloud KMS OpenAPI front of the real daemon against the official SDKs, unmodified
//! (issue 12): `alibabacloud-kms20160120` with its default ACS3 signer, with
//! `signature_algorithm='v2'` and over HTTPS with `Config(ca=)`, the legacy
//! `aliyun-python-sdk-core` + `aliyun-python-sdk-kms` (RPC v1, also over HTTPS with `verify=`),
//! and npm `@alicloud/kms20160120` (RPC v1).
//!
//! * `python_sdks_drive_every_action`: every action of the contract (§1.2) through every
//!   Python client (`tests/interop/alibaba_openapi_sdk.py actions`), which verifies every
//!   signature it gets with `cryptography`; then the keys it made are used through the Yandex
//!   front (gRPC), and a key made through the Yandex key service through the Alibaba one, each
//!   signature verified with RustCrypto.
//! * `refusals_cost_no_hsm_call`: a table of bad parameters for every action, DryRun, and the
//!   security cases (replayed nonce, skewed clock, wrong secret, unknown AccessKeyId, a request
//!   changed after signing, STS), each with its precise code; the fault shim's counters show
//!   that none of them reached the token. Then the npm SDK creates a key, signs and verifies
//!   (Node's crypto), showing the daemon healthy, and the counters move.
//!
//! Needs the interop venv and `npm ci` in tests/interop (./scripts/test does both); without
//! them the tests fail and say what to run.

mod common;
mod key_service_support;

use common::faultshim::Shim;
use common::interop::{node_modules, python, repo};
use common::{dev_key_id, verify, Daemon, Launch, TestToken};
use key_service_support::Clients;
use p11kms::crypto::Algorithm;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

/// The daemon's AccessKey pair (written by dev mode into the template the token copies).
fn access_key(token: &TestToken) -> (String, String) {
    let path = token.state_dir().join("alibaba-access-key.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("the AccessKey file is JSON");
    (
        v["AccessKeyId"].as_str().expect("AccessKeyId").to_string(),
        v["AccessKeySecret"]
            .as_str()
            .expect("AccessKeySecret")
            .to_string(),
    )
}

/// Runs an interop script to completion on a blocking thread, the AccessKey in its
/// environment; returns its last stdout line as JSON.
async fn run_script(mut cmd: Command, (id, secret): &(String, String)) -> Value {
    // Named by program and arguments only: `{cmd:?}` would print the environment, secret too.
    let what = format!(
        "{} {:?}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().collect::<Vec<_>>()
    );
    cmd.env("P11KMS_ALIBABA_AK_ID", id)
        .env("P11KMS_ALIBABA_AK_SECRET", secret);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()),
        "the secret was printed"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: last line {last:?}: {e}"))
}

fn python_script(mode: &str, args: &Value) -> Command {
    let mut py = Command::new(python());
    py.arg(repo().join("tests/interop/alibaba_openapi_sdk.py"))
        .arg(mode)
        .arg(args.to_string())
        .current_dir(repo().join("tests/interop"));
    py
}

/// The token calls that do work (sign, generate, write): none may happen for a refused
/// request. Reads (`C_FindObjects*`, `C_GetAttributeValue`) are left out: the registry may
/// re-read the token on its own schedule.
const HSM_WORK: &[&str] = &[
    "calls.C_SignInit",
    "calls.C_Sign",
    "calls.C_GenerateKeyPair",
    "calls.C_GenerateRandom",
    "calls.C_CreateObject",
    "calls.C_DestroyObject",
    "calls.C_SetAttributeValue",
    "calls.C_CopyObject",
];

/// The work counters once every call made so far is counted: a new control-file generation
/// is applied by the shim's thread, which writes the stats after it, so stats showing it
/// include every call that returned before the control file was written.
async fn hsm_work(shim: &mut Shim) -> BTreeMap<String, u64> {
    shim.set_control("");
    shim.wait_applied_async().await;
    let stats = shim.stats();
    HSM_WORK
        .iter()
        .map(|k| ((*k).to_string(), stats.get(*k).copied().unwrap_or(0)))
        .collect()
}

/// The Yandex algorithm of a key made with an Alibaba spec.
fn algorithm_of(spec: &str) -> Algorithm {
    match spec {
        "RSA_2048" => Algorithm::Rsa2048PssSha256,
        "RSA_3072" => Algorithm::Rsa3072PssSha256,
        "EC_P256" => Algorithm::EcdsaP256Sha256,
        "EC_P256K" => Algorithm::EcdsaSecp256k1Sha256,
        other => panic!("no Alibaba spec {other}"),
    }
}

/// Signs through the Yandex front (gRPC Sign) and verifies with RustCrypto against `pem`
/// (the public key the Alibaba front published) and the Yandex front's own PEM.
async fn yandex_signs_for(daemon: &Daemon, key_id: &str, algorithm: Algorithm, pem: &str) {
    let mut kms = daemon.kms().await;
    let alibaba = verify::parse_public_key(pem, algorithm)
        .unwrap_or_else(|e| panic!("Alibaba PEM of {key_id}: {e}"));
    let yandex_pem = kms.public_key(key_id).await.expect("Yandex GetPublicKey");
    let yandex = verify::parse_public_key(&yandex_pem, algorithm)
        .unwrap_or_else(|e| panic!("Yandex PEM of {key_id}: {e}"));
    assert_eq!(
        alibaba.spki_der, yandex.spki_der,
        "both fronts publish one key for {key_id}"
    );
    let message = format!("the Yandex front signs with {key_id}").into_bytes();
    let signature = kms.sign(key_id, &message).await.expect("Yandex Sign");
    alibaba
        .verify_message(algorithm, &message, &signature)
        .unwrap_or_else(|e| panic!("Yandex signature of {key_id} ({algorithm}): {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdks_drive_every_action() {
    let token = TestToken::dev();
    // Dev mode's TLS listener (which the token copy leaves out), on an ephemeral port, with
    // the dev CA's certificate: clients trust `ca.pem`, as the dev banner tells them.
    let state = token.state_dir();
    let ca_file = state.join("ca.pem");
    let mut tls = toml::Table::new();
    for (field, file) in [("cert_file", "tls.crt"), ("key_file", "tls.key")] {
        tls.insert(field.into(), state.join(file).display().to_string().into());
    }
    token.set_server("tls_listen", "127.0.0.1:0");
    token.set_server("tls", tls);
    let daemon = Launch::serve(&token).start();
    let tls_addr: SocketAddr = daemon.tls_addr();
    let ak = access_key(&token);

    // A key made through the Yandex key service, for the Alibaba front to use.
    let mut yandex = Clients::connect(&daemon).await;
    let made_by_yandex = yandex
        .create_key("yandex-folder", Algorithm::EcdsaP256Sha256)
        .await;
    let yandex_keys = json!({
        "p256": dev_key_id(Algorithm::EcdsaP256Sha256),
        "k256": dev_key_id(Algorithm::EcdsaSecp256k1Sha256),
        "rsa2048": dev_key_id(Algorithm::Rsa2048PssSha256),
        "rsa3072": dev_key_id(Algorithm::Rsa3072PssSha384),
        "p384": dev_key_id(Algorithm::EcdsaP384Sha384),
        "rsa4096": dev_key_id(Algorithm::Rsa4096PssSha256),
        "created": made_by_yandex.id,
    });
    let args = json!({
        "endpoint": daemon.addr().to_string(),
        "tls_endpoint": format!("127.0.0.1:{}", tls_addr.port()),
        "ca": ca_file,
        "yandex_keys": yandex_keys,
    });
    let summary = run_script(python_script("actions", &args), &ak).await;

    // The action x client matrix.
    const ACTIONS: [&str; 22] = [
        "AsymmetricSign",
        "AsymmetricVerify",
        "GetPublicKey",
        "CreateKey",
        "DescribeKey",
        "ListKeys",
        "EnableKey",
        "DisableKey",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
        "UpdateKeyDescription",
        "CreateKeyVersion",
        "ListKeyVersions",
        "DescribeKeyVersion",
        "CreateAlias",
        "UpdateAlias",
        "DeleteAlias",
        "ListAliases",
        "ListAliasesByKeyId",
        "TagResource",
        "UntagResource",
        "ListResourceTags",
    ];
    let mut table = format!("{:<22}", "action");
    let clients = ["acs3", "v2", "core", "acs3-https"];
    for c in clients {
        table.push_str(&format!("{c:>11}"));
    }
    for action in ACTIONS {
        table.push_str(&format!("\n{action:<22}"));
        for c in clients {
            let n = summary["calls"][c][action].as_u64().unwrap_or(0);
            assert!(n > 0, "{c} never called {action}: {summary}");
            table.push_str(&format!("{n:>11}"));
        }
    }
    table.push_str(&format!("\n{:<22}", "verified signatures"));
    for c in clients {
        let n = summary["verified"][c].as_u64().unwrap_or(0);
        // 6 spec x algorithm pairs, 6 of the lifecycle, 7 with the Yandex front's keys.
        assert!(n >= 19, "{c} verified {n} signatures: {summary}");
        table.push_str(&format!("{n:>11}"));
    }
    assert_eq!(summary["verified"]["core-https"], 1, "{summary}");
    eprintln!("{table}");

    // Every key made through the Alibaba front is a key of the Yandex front too: visible to
    // its key service (with the tags as labels) and signing through its crypto service.
    for (spec, key) in summary["keys"].as_object().expect("keys") {
        let id = key["KeyId"].as_str().unwrap();
        let got = yandex
            .get(id)
            .await
            .expect("the Yandex key service sees it");
        assert_eq!(got.signature_algorithm, algorithm_of(spec).to_proto());
        yandex_signs_for(
            &daemon,
            id,
            algorithm_of(spec),
            key["PublicKey"].as_str().unwrap(),
        )
        .await;
    }
    for (client, key) in summary["lifecycle_keys"]
        .as_object()
        .expect("lifecycle keys")
    {
        let id = key["KeyId"].as_str().unwrap();
        let got = yandex
            .get(id)
            .await
            .expect("the Yandex key service sees it");
        assert_eq!(
            got.labels.get("team").map(String::as_str),
            Some(client.as_str())
        );
        assert_eq!(got.description, format!("{client}: described again"));
        // The Yandex front signs with the primary version: the newest.
        yandex_signs_for(
            &daemon,
            id,
            Algorithm::EcdsaP256Sha256,
            key["PublicKeys"][1].as_str().unwrap(),
        )
        .await;
    }
    // And the Yandex-made key after the Alibaba front used it.
    yandex
        .sign_verified(&made_by_yandex)
        .await
        .expect("the Yandex-made key still signs");
    // ListKeys showed every key of the token, the Yandex front's too.
    let listed: Vec<&str> = summary["listed_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for id in [
        made_by_yandex.id.clone(),
        dev_key_id(Algorithm::EcdsaP521Sha512),
    ] {
        assert!(listed.contains(&id.as_str()), "ListKeys lacks {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_cost_no_hsm_call() {
    let token = TestToken::dev();
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let ak = access_key(&token);
    let key_id = dev_key_id(Algorithm::EcdsaP256Sha256);

    let before = hsm_work(&mut shim).await;
    let args = json!({ "endpoint": daemon.addr().to_string(), "key_id": key_id });
    let summary = run_script(python_script("refusals", &args), &ak).await;
    let after = hsm_work(&mut shim).await;
    eprintln!("token work before the refusals {before:?}, after {after:?}");
    assert_eq!(
        before, after,
        "a refused request reached the token: {summary}"
    );

    let cases = summary["bad_input_cases"].as_u64().unwrap();
    assert!(cases >= 150, "{summary}");
    for client in ["acs3", "v2"] {
        let per_action = summary["bad_input"][client].as_object().unwrap();
        // Every action of the contract, and one it does not serve.
        assert_eq!(per_action.len(), 23, "{client}: {summary}");
        let total: u64 = per_action.values().filter_map(Value::as_u64).sum();
        assert_eq!(total, cases, "{client}: {summary}");
    }
    for client in ["acs3", "v2", "core"] {
        assert_eq!(summary["dry_runs"][client], 8, "{summary}");
        let security = &summary["security"][client];
        for case in [
            "wrong_secret",
            "unknown_id",
            "sts",
            "replayed_nonce",
            "clock_behind",
            "clock_ahead",
        ] {
            assert!(security[case].is_string(), "{client} {case}: {summary}");
        }
    }
    let changed = summary["security"]["acs3"].as_object().unwrap();
    assert_eq!(changed.len(), 12, "{summary}");
    eprintln!("{}", serde_json::to_string_pretty(&summary).unwrap());

    // Healthy afterwards: the npm SDK makes a key, signs and verifies.
    let mut node = Command::new("node");
    node.arg(repo().join("tests/interop/alibaba_openapi_sdk.js"))
        .arg(daemon.addr().to_string())
        .arg(dev_key_id(Algorithm::Rsa2048PssSha256))
        .env("NODE_PATH", node_modules("@alicloud/kms20160120"))
        .current_dir(repo().join("tests/interop"));
    let node = run_script(node, &ak).await;
    assert_eq!(node["verified"], 2, "{node}");
    let healthy = hsm_work(&mut shim).await;
    assert!(
        healthy["calls.C_Sign"] > after["calls.C_Sign"]
            && healthy["calls.C_GenerateKeyPair"] > after["calls.C_GenerateKeyPair"],
        "the counters move when the token works: {after:?} then {healthy:?}"
    );
}
