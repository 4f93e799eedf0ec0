//! The OpenAPI front's authentication against the official Alibaba SDKs, unmodified:
//! `alibabacloud-kms20160120` with its default ACS3 signer and with `signature_algorithm='v2'`,
//! the legacy `aliyun-python-sdk-core` + `aliyun-python-sdk-kms`, and npm
//! `@alicloud/kms20160120` (all pinned in `tests/interop/`).
//!
//! This binary tests the authentication alone (`tests/alibaba_openapi_sdk.rs` runs the same
//! SDKs against the real daemon). The SDKs talk to a small test server in this binary, which
//! runs p11kms's request reading and authentication, then answers AsymmetricSign
//! with a signature of the Digest by a P-256 key made here (RustCrypto); the scripts verify
//! every signature they receive with `cryptography` or Node's crypto. Each SDK must get
//! through with the right secret, and surface the precise code for a wrong secret, an unknown
//! AccessKeyId, an STS token and a replayed nonce; a refused request never reaches the
//! handler.
//!
//! Needs the interop venv and `npm ci` in tests/interop (./scripts/test does both); without
//! them the test fails and says what to run.

mod common;

use axum::body::Body;
use axum::extract::State;
use base64::Engine as _;
use common::interop::{node_modules, python, repo};
use http::{Request, Response};
use p11kms::api::alibaba::openapi::{OpenApiAuth, OpenApiError, OpenApiRequest, Reply};
use p11kms::auth::access_keys::{AccessKey, AccessKeys};
use p11kms::auth::{AuthMethod, Caller};
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

const AK_ID: &str = "LTAI5tP11kmsTestKey";

struct Canned {
    auth: OpenApiAuth,
    key: SigningKey,
    signed: AtomicUsize,
}

/// The test server's one route: p11kms's reading and authentication, then a canned
/// AsymmetricSign.
async fn handle(State(s): State<Arc<Canned>>, request: Request<Body>) -> Response<Body> {
    let request_id = p11kms::api::context::request_id(request.headers());
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (parts, body) = request.into_parts();
    let answer = async {
        let r = OpenApiRequest::read(parts, body).await?;
        s.auth.authenticate(&r, None, SystemTime::now())?;
        if r.action() != "AsymmetricSign" {
            return Err(OpenApiError::unsupported_action(r.action()));
        }
        let p = r.params();
        let digest = p.required_base64("Digest", 32)?;
        let signature: Signature = s
            .key
            .sign_prehash(&digest)
            .map_err(|e| OpenApiError::invalid_parameter("Digest", e))?;
        s.signed.fetch_add(1, Ordering::SeqCst);
        Ok(Reply::new()
            .field("KeyId", p.required_string("KeyId", 255)?)
            .field("KeyVersionId", p.required_string("KeyVersionId", 64)?)
            .field(
                "Value",
                base64::engine::general_purpose::STANDARD.encode(signature.to_der()),
            ))
    };
    match answer.await {
        Ok(reply) => reply.into_response(&request_id),
        Err(e) => e.into_response(&request_id, &host),
    }
}

async fn serve(secret: &str, nonce_capacity: usize, key: SigningKey) -> (SocketAddr, Arc<Canned>) {
    let caller = Caller {
        subject_id: "sdk-tester".into(),
        subject_type: "serviceAccount".into(),
        method: AuthMethod::AccessKey,
    };
    let keys = AccessKeys::new([(
        AK_ID.to_string(),
        AccessKey::new(secret.into(), caller, "p11kms-alibaba"),
    )]);
    let canned = Arc::new(Canned {
        auth: OpenApiAuth::new(
            keys,
            p11kms::api::alibaba::openapi::freshness::NonceCache::new(nonce_capacity),
        ),
        key,
        signed: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&canned));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, canned)
}

/// Runs a script to completion (blocking) and parses its JSON lines by (client, case).
fn run_script(mut cmd: Command, secret: &str) -> HashMap<(String, String), Value> {
    // Named by program and arguments only: `{cmd:?}` would print the environment, secret too.
    let what = format!(
        "{} {:?}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let out = cmd
        .env("P11KMS_ALIBABA_AK_ID", AK_ID)
        .env("P11KMS_ALIBABA_AK_SECRET", secret)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "the secret was printed"
    );
    eprintln!("{stdout}");
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let key = (
                v["client"].as_str().unwrap().into(),
                v["case"].as_str().unwrap().into(),
            );
            (key, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_authenticate_and_see_each_refusal_precisely() {
    let secret: String = {
        let bytes: [u8; 15] = rand::random();
        hex::encode(bytes)
    };
    let key = SigningKey::random(&mut rand_core::OsRng);
    let (addr, canned) = serve(&secret, 1000, key.clone()).await;
    let (full_addr, full) = serve(&secret, 1, key.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("public.pem");
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&pem, public_pem).unwrap();

    let mut py = Command::new(python());
    py.arg(repo().join("tests/interop/alibaba_openapi_auth.py"))
        .arg(addr.to_string())
        .arg(full_addr.to_string())
        .arg(&pem)
        .current_dir(repo().join("tests/interop"));
    let mut node = Command::new("node");
    node.arg(repo().join("tests/interop/alibaba_openapi_auth.js"))
        .arg(addr.to_string())
        .arg(&pem)
        .env("NODE_PATH", node_modules("@alicloud/kms20160120"))
        .current_dir(repo().join("tests/interop"));
    let s = secret.clone();
    let mut results = tokio::task::spawn_blocking(move || run_script(py, &s))
        .await
        .unwrap();
    let s = secret.clone();
    results.extend(
        tokio::task::spawn_blocking(move || run_script(node, &s))
            .await
            .unwrap(),
    );

    let get = |client: &str, case: &str| -> &Value {
        results
            .get(&(client.to_string(), case.to_string()))
            .unwrap_or_else(|| panic!("no result for {client} {case}"))
    };
    let refused = |client: &str, case: &str, code: &str, status: u64| {
        let r = get(client, case);
        assert_eq!(r["ok"], false, "{client} {case}: {r}");
        assert_eq!(r["code"], code, "{client} {case}: {r}");
        // The npm SDK keeps the status only in its message ("<Code>Error: code: 400, …").
        if client == "node" {
            let message = r["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("{code}: code: {status},")),
                "{r}"
            );
        } else {
            assert_eq!(r["status"], status, "{client} {case}: {r}");
        }
        assert!(
            r["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{r}"
        );
        r
    };
    // The npm SDK appends "Error" to every code (contract §2.7).
    let code = |client: &str, code: &str| {
        if client == "node" {
            format!("{code}Error")
        } else {
            code.to_string()
        }
    };
    for client in ["acs3", "v2", "core", "node"] {
        let ok = get(client, "ok");
        assert_eq!(
            (ok["ok"].as_bool(), ok["verified"].as_bool()),
            (Some(true), Some(true)),
            "{client}: {ok}"
        );
        let wrong = get(client, "wrong_secret");
        if client == "core" {
            // The legacy SDK compares the string to sign after the ':' of our message with
            // its own; "InvalidAccessKeySecret" means they were identical, character for
            // character.
            refused(client, "wrong_secret", "InvalidAccessKeySecret", 400);
        } else {
            refused(
                client,
                "wrong_secret",
                &code(client, "SignatureDoesNotMatch"),
                400,
            );
            assert!(
                wrong["message"]
                    .as_str()
                    .unwrap()
                    .contains("Server string to sign is:"),
                "{wrong}"
            );
        }
        refused(
            client,
            "unknown_id",
            &code(client, "InvalidAccessKeyId.NotFound"),
            404,
        );
        let sts = refused(
            client,
            "sts",
            &code(client, "Unsupported.SecurityToken"),
            400,
        );
        assert!(
            sts["message"].as_str().unwrap().contains("not supported"),
            "{sts}"
        );
        let replay = refused(client, "replay", &code(client, "SignatureNonceUsed"), 400);
        assert_eq!(
            replay["first_ok"], true,
            "{client}: the first call with the nonce: {replay}"
        );
    }
    let fill = get("acs3", "fill");
    assert_eq!(
        (fill["ok"].as_bool(), fill["verified"].as_bool()),
        (Some(true), Some(true)),
        "{fill}"
    );
    refused("acs3", "full", "Rejected.Throttling", 429);

    // Only authenticated requests reached the handler: ok and replay_first for 4 clients, and
    // the one request that filled the other server's memory.
    assert_eq!(canned.signed.load(Ordering::SeqCst), 8);
    assert_eq!(full.signed.load(Ordering::SeqCst), 1);
    // wrong secret, unknown id, sts and replay per client.
    assert_eq!(canned.auth.keys().total_failures(), 16);
}
