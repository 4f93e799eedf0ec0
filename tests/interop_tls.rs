//! Interop over TLS: the unmodified official Yandex Cloud Python SDK
//! (`yandexcloud.SDK(endpoint=..., iam_token=..., root_certificates=...)`, no `insecure=True`)
//! discovers p11kms through `ApiEndpointService.List`, creates keys with the key service and
//! its operation waiter, signs, and verifies with `cryptography` (`tests/interop/sdk_tls.py`).
//! The server certificate comes from a CA made in the test; the SDK trusts only that CA.
//!
//! Needs the interop venv: `P11KMS_INTEROP_PYTHON`, else `./.venv-interop/bin/python` (created by
//! `./scripts/test`). Never skips: without it the test fails and says what to run.

mod common;

use common::interop::python;
use common::tls::{Ca, Mtls, TlsDir};
use common::{Daemon, TestToken};
use std::path::Path;
use std::process::Command;

/// Runs `sdk_tls.py ENDPOINT CA` against a TLS daemon; `advertise` is `server.advertise_address`.
fn run_sdk(endpoint_host: &str, listen: Option<&str>, advertise: Option<&str>) {
    let ca = Ca::new("p11kms interop CA");
    let (dir, _) = TlsDir::new(&ca);
    let token = TestToken::dev();
    token.set_server("tls", dir.config(Mtls::Off));
    if let Some(listen) = listen {
        token.set_server("listen", listen);
    }
    if let Some(advertise) = advertise {
        token.set_server("advertise_address", advertise);
    }
    let daemon = Daemon::serve(&token, &[]);
    let endpoint = format!("{endpoint_host}:{}", daemon.addr().port());
    let ca_file = token.state_dir().join("interop-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk_tls.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&endpoint)
        .arg(&ca_file)
        // The admin token (global kms.admin) the harness's dev template carries; sent by the
        // SDK's own call credentials.
        .env("P11KMS_TOKEN", daemon.admin_token())
        .env_remove("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
        .output()
        .expect("run the interop script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "sdk_tls.py failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- p11kms ---\n{}",
        out.status,
        daemon.describe()
    );
    assert!(
        stdout.contains("2/2 keys created, signed and verified over TLS"),
        "{stdout}"
    );
    daemon.assert_never_printed(daemon.admin_token());
}

#[test]
fn sdk_over_tls_by_ip_address_discovers_creates_signs_and_verifies() {
    // Discovery advertises the bound address, 127.0.0.1:PORT, in the certificate as an IP SAN.
    run_sdk("127.0.0.1", None, None);
}

#[test]
fn sdk_over_tls_by_host_name_discovers_creates_signs_and_verifies() {
    // The name in the certificate, advertised as such; the port is chosen up front because the
    // advertised address must name it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("find a free port")
        .local_addr()
        .expect("address")
        .port();
    run_sdk(
        "localhost",
        Some(&format!("127.0.0.1:{port}")),
        Some(&format!("localhost:{port}")),
    );
}
