//! The official Alibaba KMS instance SDK (`alibabacloud-dkms-gcs`, pinned in
//! `tests/interop/requirements-alibaba.txt`) against p11kms's client-key authentication, with
//! client keys made by `p11kms alibaba client-key create`.
//!
//! The instance API's handlers are not built yet, so the SDK talks to a small in-process test
//! server (axum, an ephemeral loopback port) that runs the real front end of the instance API
//! ([`request::accept`]: header checks, client-key signature, body limit and hash, all as the
//! daemon will run them) with a client-key store loaded through the real config loader, and
//! answers `Sign` with a canned reply: a P-256 signature made here with RustCrypto, which the
//! script verifies with `cryptography`, and the `x-kms-migrationkeyversionid` header. Errors
//! are the front's own `Error` protobufs. What the script checks is listed in
//! `tests/interop/alibaba_client_key_sdk.py`.
//!
//! The SDK needs protobuf 3 and an older pyOpenSSL, so it has its own venv:
//! `./scripts/test` creates `./.venv-interop-alibaba` and points `P11KMS_ALIBABA_PYTHON` at it.
//! Without it the test fails and says what to run.

use axum::body::Body;
use axum::extract::State;
use http::{Request, Response};
use p11kms::api::alibaba::instance::api_name::ApiName;
use p11kms::api::alibaba::instance::body::{decode, Limits};
use p11kms::api::alibaba::instance::error::from_domain;
use p11kms::api::alibaba::instance::request::{accept, Accepted};
use p11kms::api::alibaba::instance::{pb, reply::reply, InstanceError};
use p11kms::auth::client_keys::ClientKeyStore;
use p11kms::error::Error;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

const SUBJECT: &str = "sdk-app";
const KEY_VERSION: &str = "7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab";
/// Requests the script makes that reach the server (its docstring lists them).
const EXPECTED_REQUESTS: usize = 8;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter with the Alibaba SDK: `P11KMS_ALIBABA_PYTHON`, else
/// `./.venv-interop-alibaba`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("P11KMS_ALIBABA_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = repo().join(".venv-interop-alibaba/bin/python");
    assert!(
        venv.exists(),
        "this test needs the official Alibaba KMS instance SDK: run ./scripts/test to create \
         .venv-interop-alibaba (or set P11KMS_ALIBABA_PYTHON to a python with \
         tests/interop/requirements-alibaba.txt)"
    );
    venv
}

/// Runs `p11kms alibaba client-key create` into `out`; returns the config entry it printed.
fn create_client_key(out: &Path, subject: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_p11kms"))
        .args(["alibaba", "client-key", "create", "--subject", subject])
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .expect("run p11kms alibaba client-key create");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client-key create failed: {stderr}"
    );
    assert!(
        stderr.contains("not an HSM key"),
        "the command says what the key is: {stderr}"
    );
    String::from_utf8(output.stdout).expect("the config entry is UTF-8")
}

/// The one `clientKey_*` file with `suffix` in `dir`.
fn file_with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the key directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "one *{suffix} in {}", dir.display());
    found.remove(0)
}

/// Copies a created key's files into the script's directory under `name`.
fn stage(key_dir: &Path, from: &Path, name: &str) {
    for suffix in [".json", ".password", ".cert.pem"] {
        std::fs::copy(
            file_with_suffix(from, suffix),
            key_dir.join(format!("{name}{suffix}")),
        )
        .expect("copy a key file");
    }
}

/// A config that the real loader accepts, with `entry` as its client keys; the `[hsm]` section
/// is never used (nothing here opens a token).
fn load_config(dir: &Path, entry: &str) -> p11kms::Config {
    use std::os::unix::fs::OpenOptionsExt as _;
    let pin = dir.join("pin");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pin)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"1234"))
        .expect("write a PIN file");
    let text = format!(
        "[hsm]\nmodule = \"/nonexistent/libsofthsm2.so\"\ntoken_label = \"unused\"\n\
         pin_file = {:?}\n\n{entry}",
        pin.display().to_string()
    );
    p11kms::Config::from_toml(&text, dir, "test config")
        .unwrap_or_else(|e| panic!("the printed entry does not load: {e}\n{text}"))
}

struct Server {
    keys: ClientKeyStore,
    limits: Limits,
    signer: p256::ecdsa::SigningKey,
    requests: AtomicUsize,
    throttled: AtomicUsize,
}

async fn handle(State(server): State<Arc<Server>>, request: Request<Body>) -> Response<Body> {
    let n = server.requests.fetch_add(1, Ordering::SeqCst);
    let request_id = format!("request-{n}");
    match accept(request, &server.keys, &server.limits, SystemTime::now()).await {
        Ok(accepted) => server
            .answer(&accepted, n)
            .unwrap_or_else(|e| e.to_response(&request_id)),
        Err(e) => e.to_response(&request_id),
    }
}

impl Server {
    /// The canned answers: Sign signs the request's digest with the test key.
    fn answer(&self, accepted: &Accepted, n: usize) -> Result<Response<Body>, InstanceError> {
        if accepted.api != ApiName::Sign {
            return Err(from_domain(Error::Unimplemented(
                "the test server answers Sign only".into(),
            )));
        }
        let request: pb::SignRequest = decode("SignRequest", &accepted.body)?;
        if request.key_id == "throttle-once" && self.throttled.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(from_domain(Error::ResourceExhausted(
                "the test server throttles this key once".into(),
            )));
        }
        let digest: [u8; 32] = match request.message_type.as_str() {
            "" | "RAW" => {
                self.limits.check_raw_message(request.message.len())?;
                Sha256::digest(&request.message).into()
            }
            "DIGEST" => request.message.as_slice().try_into().map_err(|_| {
                InstanceError::invalid_parameter("a DIGEST message must be 32 bytes")
            })?,
            other => {
                return Err(InstanceError::invalid_parameter(format!(
                    "unexpected MessageType {other:?}"
                )))
            }
        };
        let signature: p256::ecdsa::Signature = self
            .signer
            .sign_prehash(&digest)
            .expect("P-256 signs a 32-byte digest");
        let response = pb::SignResponse {
            key_id: request.key_id,
            signature: signature.to_der().as_bytes().to_vec(),
            request_id: format!("{}:{n}", accepted.caller.subject_id),
            algorithm: request.algorithm,
            message_type: request.message_type,
        };
        Ok(reply(&response, Some(KEY_VERSION)))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn official_sdk_signs_with_a_created_client_key_and_gets_precise_errors() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_dir = dir.path().join("script");
    std::fs::create_dir(&key_dir).expect("create the script's directory");

    // The configured key and one the server does not know, both made by the CLI.
    let entry = create_client_key(&dir.path().join("good"), SUBJECT);
    create_client_key(&dir.path().join("unknown"), "stranger");
    stage(&key_dir, &dir.path().join("good"), "good");
    stage(&key_dir, &dir.path().join("unknown"), "unknown");
    let config = load_config(dir.path(), &entry);
    assert_eq!(config.alibaba.client_keys.len(), 1);
    assert_eq!(config.alibaba.client_keys[0].subject_id, SUBJECT);

    let signer = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let public_pem = signer
        .verifying_key()
        .to_public_key_pem(Default::default())
        .expect("encode the server's public key");
    std::fs::write(key_dir.join("server-key.pem"), public_pem).expect("write server-key.pem");
    std::fs::write(key_dir.join("version.txt"), KEY_VERSION).expect("write version.txt");
    std::fs::write(key_dir.join("subject.txt"), SUBJECT).expect("write subject.txt");

    let server = Arc::new(Server {
        keys: ClientKeyStore::from_config(&config.alibaba),
        limits: Limits::from_config(&config.alibaba),
        signer,
        requests: AtomicUsize::new(0),
        throttled: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/", axum::routing::post(handle))
        .with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test server");
    let endpoint = listener.local_addr().expect("local address").to_string();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let script = repo().join("tests/interop/alibaba_client_key_sdk.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&endpoint)
            .arg(&key_dir)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .output()
            .expect("run the SDK script")
    })
    .await
    .expect("the script's thread");
    serving.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(output.status.success(), "the SDK script failed");
    assert!(
        stdout.contains(
            "alibaba sdk: key file OK, 3 signatures verified, throttling retried, 4/4 error \
             cases; all OK"
        ),
        "unexpected summary"
    );
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        EXPECTED_REQUESTS,
        "requests that reached the server (the wrong password must send none)"
    );
    for secret in ["good.password", "unknown.password"] {
        let password = std::fs::read_to_string(dir.path().join("script").join(secret))
            .expect("read a password file");
        assert!(
            !stdout.contains(&password) && !stderr.contains(&password),
            "a password was printed"
        );
    }
}

#[test]
fn our_instance_messages_are_wire_identical_to_the_official_sdk() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let descriptors = dir.path().join("p11kms_descriptor.bin");
    // The descriptor set of every proto under proto/, ours for the instance API included.
    std::fs::write(
        &descriptors,
        p11kms::api::yandex::grpc::pb::FILE_DESCRIPTOR_SET,
    )
    .expect("write the descriptor set");
    let output = Command::new(python)
        .arg(repo().join("tests/interop/alibaba_check_proto.py"))
        .arg(&descriptors)
        .stdin(Stdio::null())
        .output()
        .expect("run alibaba_check_proto.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "alibaba_check_proto.py failed");
    assert!(
        stdout.contains("alibaba wire-compat OK: 13 messages match"),
        "unexpected summary"
    );
}
