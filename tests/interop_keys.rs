//! Interop: the key service through the official Yandex Cloud Python SDK
//! (`tests/interop/sdk_keys.py`): every algorithm is created, used, deactivated, reactivated,
//! protected, deleted and undeleted with the SDK's key-service stub and its operation waiter
//! (`wait_operation_and_get_result`), and every signature is verified with `cryptography`.
//!
//! Needs the interop venv: `P11KMS_INTEROP_PYTHON`, else `./.venv-interop/bin/python` (created by
//! `./scripts/test`). Never skips: without it the test fails and says what to run.

mod common;

use common::interop::python;
use common::{bin, Daemon, TestToken};
use std::path::Path;
use std::process::Command;

#[test]
fn sdk_manages_keys_of_every_algorithm() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk_keys.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(daemon.addr().to_string())
        .arg(bin())
        // The admin token: the SDK's calls and `p11kms keys undelete` both send it.
        .env("P11KMS_TOKEN", daemon.admin_token())
        .output()
        .expect("run the interop script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "sdk_keys.py failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- p11kms ---\n{}",
        out.status,
        daemon.describe()
    );
    assert!(stdout.contains("all 13 algorithms"), "{stdout}");
}
