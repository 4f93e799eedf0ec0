//! The official Alibaba KMS instance SDKs against the real daemon: `alibabacloud-dkms-gcs` and
//! the TransferClient of `alibabacloud-kms-python-sdk` (pinned in
//! `tests/interop/requirements-alibaba.txt`), unmodified, over HTTPS with `ca_file_path` and
//! over plaintext, on a copy of the dev token served by `p11kms serve`.
//!
//! * [`official_sdks_sign_verify_and_publish_over_https_and_plaintext`]: the dev admin's client
//!   key (written by `p11kms dev`) signs, verifies and reads public keys with every algorithm
//!   the Alibaba APIs serve; `tests/interop/alibaba_instance_sdk.py` lists what it checks. Here:
//!   every request it made has exactly one audit record (`alibaba-instance`, the API, key and
//!   version), and neither the client key's password nor any signature appears in the
//!   daemon's logs or audit trail.
//! * [`official_sdk_client_keys_made_by_the_cli_get_precise_errors`]: client keys made by
//!   `p11kms alibaba client-key create`, the SDK's retries of `Rejected.Throttling` and the
//!   precise code for every way of getting a credential wrong
//!   (`tests/interop/alibaba_client_key_sdk.py`).
//! * [`the_dev_banners_instance_api_example_runs_as_printed`]: `p11kms dev --tls-listen`
//!   writes the dev admin's client key and CA, and the banner's Python example, copied as it
//!   is printed, signs over HTTPS with `ca_file_path`; the signature verifies under the
//!   token's public key.
//! * [`our_instance_messages_are_wire_identical_to_the_official_sdk`]: our `.proto` against
//!   the SDK's descriptors.
//!
//! The SDKs need protobuf 3 and an older pyOpenSSL, so they have their own venv:
//! `./scripts/test` creates `./.venv-interop-alibaba` and points `P11KMS_ALIBABA_PYTHON` at
//! it. Without it the tests fail and say what to run.

mod common;

use base64::Engine as _;
use common::alibaba::{audit_records, audit_to_file, dev_ca, serve_dev_tls, spki_pem};
use common::{dev_ck_id, dev_key_id, Daemon, Launch, TestToken};
use p11kms::crypto::Algorithm;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const CONFIG_FOLDER: &str = "p11kms-config";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter with the Alibaba SDKs: `P11KMS_ALIBABA_PYTHON`, else
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

/// Runs `tests/interop/<script> <args>` with the SDK's interpreter, off the async runtime
/// (the daemon is a separate process; the runtime stays free for nothing else, but a blocked
/// worker must not hold up the test's other futures).
async fn run_script(script: &str, args: Vec<String>) -> Output {
    run_script_path(repo().join("tests/interop").join(script), args).await
}

/// [`run_script`] for a script anywhere.
async fn run_script_path(script: PathBuf, args: Vec<String>) -> Output {
    let python = python();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
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
    eprintln!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The dev keys the Alibaba APIs serve, with their Alibaba algorithm names.
fn alibaba_keys() -> Vec<(Algorithm, &'static [&'static str])> {
    const RSA: &[&str] = &["RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"];
    const EC: &[&str] = &["ECDSA_SHA_256"];
    vec![
        (Algorithm::Rsa2048PssSha256, RSA),
        (Algorithm::Rsa3072PssSha256, RSA),
        (Algorithm::EcdsaP256Sha256, EC),
        (Algorithm::EcdsaSecp256k1Sha256, EC),
    ]
}

/// Every secret and signature that must never be logged, checked in the daemon's output and
/// audit trail.
fn assert_nowhere(daemon: &Daemon, audit: &Path, what: &str, secret: &str) {
    daemon.assert_never_printed(secret);
    let trail = std::fs::read_to_string(audit).unwrap_or_default();
    assert!(!trail.contains(secret), "{what} is in the audit trail");
}

#[tokio::test(flavor = "multi_thread")]
async fn official_sdks_sign_verify_and_publish_over_https_and_plaintext() {
    let token = TestToken::dev();
    serve_dev_tls(&token);
    let audit = audit_to_file(&token);
    token.set_config("audit", "required", true);
    // Debug logs: the strictest place for a secret to hide.
    let daemon = Launch::serve(&token).env("RUST_LOG", "debug").start();
    let work = tempfile::tempdir().expect("temp dir");

    let mut kms = daemon.kms().await;
    let mut keys = Vec::new();
    for (algorithm, names) in alibaba_keys() {
        let key_id = dev_key_id(algorithm);
        let token_pem = work.path().join(format!("{key_id}.token.pem"));
        let yandex_pem = work.path().join(format!("{key_id}.yandex.pem"));
        std::fs::write(
            &token_pem,
            spki_pem(&token.public_key_der(&dev_ck_id(algorithm))),
        )
        .expect("write the token's public key");
        let published = kms.public_key(&key_id).await.expect("Yandex GetPublicKey");
        std::fs::write(&yandex_pem, published).expect("write the Yandex public key");
        keys.push(json!({
            "key_id": key_id,
            "algorithms": names,
            "token_pem": token_pem,
            "yandex_pem": yandex_pem,
        }));
    }
    let state = token.state_dir();
    let params = json!({
        "http": daemon.addr().to_string(),
        "https": daemon.tls_addr().to_string(),
        "ca": dev_ca(&token),
        "client_key_file": state.join("alibaba-client-key.json"),
        "client_key_password_file": state.join("alibaba-client-key.password"),
        "access_key_file": state.join("alibaba-access-key.json"),
        "keys": keys,
    });
    std::fs::write(work.path().join("params.json"), params.to_string()).expect("params.json");

    let output = run_script(
        "alibaba_instance_sdk.py",
        vec![work.path().display().to_string()],
    )
    .await;
    assert!(output.status.success(), "the SDK script failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("; all OK"), "unexpected summary:\n{stdout}");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("results.json")).expect("results.json"),
    )
    .expect("results.json is JSON");

    // One audit record per request, saying what it was.
    let records = audit_records(&audit);
    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in &records {
        if let Some(id) = r["request_id"].as_str() {
            by_id.entry(id).or_default().push(r);
        }
    }
    let requests = results["requests"].as_array().expect("requests");
    assert!(requests.len() > 100, "{} requests", requests.len());
    for request in requests {
        let id = request["request_id"].as_str().expect("request_id");
        let found = by_id.get(id).map_or(&[][..], Vec::as_slice);
        assert_eq!(found.len(), 1, "audit records of {request}: {found:#?}");
        let record = found[0];
        assert_eq!(record["protocol"], "alibaba-instance", "{record}");
        assert_eq!(record["rpc"], request["api"], "{record}");
        assert_eq!(record["outcome"], "OK", "{record}");
        assert_eq!(record["subject"]["id"], "dev-admin", "{record}");
        assert_eq!(record["subject"]["method"], "client_key", "{record}");
        if request["api"] != "GenerateRandom" {
            assert_eq!(record["key_id"], request["key_id"], "{record}");
            assert_eq!(record["version_id"], request["version_id"], "{record}");
        }
    }
    // One record per refusal too, with the refused outcome.
    let refusals = results["refusals"].as_array().expect("refusals");
    assert_eq!(refusals.len(), 2 * 7, "7 refusals on each transport");
    for refusal in refusals {
        let id = refusal["request_id"].as_str().expect("request_id");
        let found = by_id.get(id).map_or(&[][..], Vec::as_slice);
        assert_eq!(found.len(), 1, "audit records of {refusal}: {found:#?}");
        assert_eq!(found[0]["protocol"], "alibaba-instance", "{}", found[0]);
        assert_ne!(found[0]["outcome"], "OK", "{}", found[0]);
    }
    let tls = records
        .iter()
        .filter(|r| r["protocol"] == "alibaba-instance" && r["tls"] == true)
        .count();
    assert!(tls > 0, "no instance-API request came over TLS");

    // Nothing secret or signed in any log.
    let password = std::fs::read_to_string(state.join("alibaba-client-key.password"))
        .expect("the client key's password");
    assert_nowhere(
        &daemon,
        &audit,
        "the client key's password",
        password.trim_end(),
    );
    let signatures = results["signatures"].as_array().expect("signatures");
    for signature in signatures {
        let hex_sig = signature.as_str().expect("hex");
        let bytes = hex::decode(hex_sig).expect("hex");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_nowhere(&daemon, &audit, "a signature (hex)", hex_sig);
        assert_nowhere(&daemon, &audit, "a signature (base64)", &b64);
    }
    eprintln!(
        "{} instance-API requests audited, {} signatures verified and logged nowhere",
        requests.len(),
        signatures.len()
    );
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

/// Appends the `[[alibaba.client_keys]]` entry the CLI printed to the token copy's config.
fn configure(token: &TestToken, entry: &str) {
    let parsed: toml::Table = entry.parse().expect("the printed entry is TOML");
    let added = parsed["alibaba"]["client_keys"]
        .as_array()
        .expect("an [[alibaba.client_keys]] entry")
        .clone();
    token.edit_config(|t| {
        t.entry("alibaba")
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .expect("[alibaba]")
            .entry("client_keys")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .expect("client_keys is an array")
            .extend(added);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn official_sdk_client_keys_made_by_the_cli_get_precise_errors() {
    let token = TestToken::dev();
    let audit = audit_to_file(&token);
    let dir = tempfile::tempdir().expect("temp dir");
    let key_dir = dir.path().join("script");
    std::fs::create_dir(&key_dir).expect("create the script's directory");
    for (name, subject, configured) in [
        ("good", "sdk-app", true),
        ("norole", "sdk-norole", true),
        ("unknown", "stranger", false),
    ] {
        let entry = create_client_key(&dir.path().join(name), subject);
        stage(&key_dir, &dir.path().join(name), name);
        if configured {
            configure(&token, &entry);
        }
    }
    token.add_binding(SIGNER, "sdk-app", "serviceAccount", CONFIG_FOLDER);
    // The slowest rate the config accepts, one request per 1000 s: a subject's second request
    // (and the SDK's retries, a second apart) is over it unless the test ran for 16 minutes.
    token.set_config("rate_limit", "per_subject_rps", 0.001);
    token.set_config("rate_limit", "burst", 1);
    let algorithm = Algorithm::EcdsaP256Sha256;
    std::fs::write(key_dir.join("key.txt"), dev_key_id(algorithm)).expect("key.txt");
    std::fs::write(
        key_dir.join("key.pem"),
        spki_pem(&token.public_key_der(&dev_ck_id(algorithm))),
    )
    .expect("key.pem");
    let daemon = Launch::serve(&token).env("RUST_LOG", "debug").start();

    let output = run_script(
        "alibaba_client_key_sdk.py",
        vec![daemon.addr().to_string(), key_dir.display().to_string()],
    )
    .await;
    assert!(output.status.success(), "the SDK script failed");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(
            "alibaba sdk: key file OK, 1 signature verified, throttling retried, 6/6 error \
             cases; all OK"
        ),
        "unexpected summary"
    );

    // What reached the daemon, as its audit trail tells it.
    let records: Vec<Value> = audit_records(&audit)
        .into_iter()
        .filter(|r| r["protocol"] == "alibaba-instance")
        .collect();
    let count = |subject: &str, outcome: &str| {
        records
            .iter()
            .filter(|r| r["subject"]["id"] == subject && r["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("sdk-app", "OK"), 1, "{records:#?}");
    // The SDK makes 4 attempts at a Rejected.Throttling (3 retries, a second apart).
    assert_eq!(count("sdk-app", "RESOURCE_EXHAUSTED"), 4, "{records:#?}");
    assert_eq!(count("sdk-norole", "PERMISSION_DENIED"), 1, "{records:#?}");
    let failed_authentication = records
        .iter()
        .filter(|r| r["subject"].is_null())
        .map(|r| r["outcome"].as_str().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(
        failed_authentication.len(),
        3,
        "unknown id, forged signature, skewed clock: {records:#?}"
    );
    assert_eq!(
        records.len(),
        9,
        "requests that reached the daemon: {records:#?}"
    );
    for name in ["good", "norole", "unknown"] {
        let password =
            std::fs::read_to_string(key_dir.join(format!("{name}.password"))).expect("password");
        assert_nowhere(&daemon, &audit, "a password", password.trim_end());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stdout.contains(password.trim_end()) && !stderr.contains(password.trim_end()),
            "the script printed a password"
        );
    }
}

/// The lines of the dev banner's block that starts with `heading`, up to the blank line that
/// ends it, without the banner's two-space indent.
fn banner_block(banner: &str, heading: &str) -> String {
    let start = banner
        .find(heading)
        .unwrap_or_else(|| panic!("the banner has no {heading:?}:\n{banner}"));
    banner[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_banners_instance_api_example_runs_as_printed() {
    let token = TestToken::dev();
    // Launch::dev binds the TLS listener to an ephemeral port.
    let daemon = Launch::dev(token.state_dir()).start();
    let state = token.state_dir();
    for file in [
        "alibaba-client-key.json",
        "alibaba-client-key.password",
        "ca.pem",
    ] {
        assert!(state.join(file).is_file(), "dev mode did not write {file}");
    }
    let banner = daemon.stdout();
    let example = banner_block(&banner, "instance API from Python");
    // As the banner promises: over HTTPS, the dev CA given to the SDK.
    assert!(
        example.contains(&format!("endpoint=\"{}\"", daemon.tls_addr()))
            && example.contains(&format!("ca_file_path=\"{}\"", dev_ca(&token).display())),
        "the example does not use the TLS listener and its CA:\n{example}"
    );
    let script = state.join("banner_instance_example.py");
    std::fs::write(&script, &example).expect("write the example");

    let output = run_script_path(script, Vec::new()).await;
    assert!(output.status.success(), "the banner's example failed");
    let printed = String::from_utf8_lossy(&output.stdout);
    let signature = hex::decode(printed.trim()).expect("the example prints the signature in hex");
    let algorithm = Algorithm::EcdsaP256Sha256;
    let token_pem = spki_pem(&token.public_key_der(&dev_ck_id(algorithm)));
    common::verify::parse_public_key(&token_pem, algorithm)
        .expect("the token's public key")
        .verify_digest(
            algorithm,
            &<sha2::Sha256 as sha2::Digest>::digest(b"hello"),
            &signature,
        )
        .expect("the example's signature verifies under the token's public key");
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
