//! The official Yandex Cloud Node.js SDK (`@yandex-cloud/nodejs-sdk`, pinned in
//! tests/interop/package.json), unmodified, against the daemon (issue 18): over TLS with the
//! SDK's `Session` (the dev CA as `ssl.rootCerts`) and over the plaintext endpoint with the SDK's
//! clients on an insecure channel, as the README's Node section shows. It signs with Sign and
//! SignHash (every signature verified with Node's crypto), creates a key and awaits its
//! operation with `waitForOperation`, reads `createdAt` of a config key, and gets an
//! `ApiError` whose `requestId` is the audit record's request id.
//!
//! Needs `npm ci` in tests/interop (./scripts/test runs it); without it the test fails and
//! says what to run.

mod common;

use common::interop::{node_modules, repo};
use common::{Launch, TestToken};
use serde_json::Value;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn official_node_sdk_signs_over_tls_and_plaintext_and_sees_request_ids() {
    let token = TestToken::dev();
    let state = token.state_dir();
    // The dev template's TLS listener, on an ephemeral port, with this copy's certificate.
    token.set_server("tls_listen", "127.0.0.1:0");
    let mut tls = toml::Table::new();
    tls.insert(
        "cert_file".into(),
        state.join("tls.crt").display().to_string().into(),
    );
    tls.insert(
        "key_file".into(),
        state.join("tls.key").display().to_string().into(),
    );
    token.set_server("tls", tls);
    let audit = state.join("audit.jsonl");
    token.set_config("audit", "sink", "file");
    token.set_config("audit", "file", audit.display().to_string());
    let mut daemon = Launch::serve(&token).start();

    let out = Command::new("node")
        .arg(repo().join("tests/interop/yandex_node_sdk.js"))
        .arg(daemon.addr().to_string())
        // The dev certificate names localhost and 127.0.0.1.
        .arg(format!("localhost:{}", daemon.tls_addr().port()))
        .arg(state.join("ca.pem"))
        .env("NODE_PATH", node_modules("@yandex-cloud/nodejs-sdk"))
        .env("P11KMS_TOKEN", daemon.admin_token())
        .current_dir(repo().join("tests/interop"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "yandex_node_sdk.js failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- p11kms ---\n{}",
        out.status,
        daemon.describe()
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let find = |transport: &str, case: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|v| v["case"] == case && (transport.is_empty() || v["transport"] == transport))
            .collect()
    };
    assert_eq!(find("", "done").len(), 1, "{stdout}");
    let sdk = find("", "sdk")[0];
    println!("SDK {} on Node {}", sdk["version"], sdk["node"]);

    // Sign and SignHash, each verified by Node: two keys over TLS plus the created one, two
    // over plaintext.
    let verified: u64 = find("", "signed")
        .iter()
        .map(|v| v["verified"].as_u64().unwrap())
        .sum();
    assert_eq!(verified, 10, "{stdout}");

    // Config keys have a name and a creation time that toISOString() accepts.
    for transport in ["tls", "plaintext"] {
        let key = find(transport, "config_key")[0];
        assert_eq!(key["name"], key["keyId"], "{key}");
        assert!(key["createdAt"].as_str().unwrap().ends_with('Z'), "{key}");
    }
    assert!(!find("tls", "created")[0]["createdAt"]
        .as_str()
        .unwrap()
        .starts_with("1970"));

    // ApiError carries the request id of the audit record of that very call.
    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("the audit file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (transport, key) in [
        ("tls", "no-such-key-tls"),
        ("plaintext", "no-such-key-plain"),
    ] {
        let error = find(transport, "api_error")[0];
        // ApiError keeps the message of nice-grpc's ClientError, which names the status.
        assert!(
            error["message"].as_str().unwrap().contains("NOT_FOUND"),
            "{error}"
        );
        let request_id = error["requestId"]
            .as_str()
            .unwrap_or_else(|| panic!("{transport}: ApiError.requestId is not set: {error}"));
        let record = records
            .iter()
            .find(|r| r["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no audit record with request id {request_id}"));
        assert_eq!(record["key_id"], key, "{record}");
        assert_eq!(record["outcome"], "NOT_FOUND", "{record}");
        assert_eq!(
            error["serverTraceId"], record["trace_id"],
            "x-server-trace-id is the record's trace id"
        );
    }
}
