//! Config problems stop `p11kms serve` with a non-zero exit and a message that names the
//! offending key and says what to fix; secrets never reach the output; overrides from the
//! environment work; and the command line has no way to pass a PIN or choose a token.

mod common;

use common::faultshim::Shim;
use common::{dev_ck_id, Daemon, KeyDecl, Launch, TestToken};
use p11kms::crypto::Algorithm;
use std::os::unix::fs::PermissionsExt as _;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

/// Exit status of a start-up failure only an operator can fix (systemd must not restart).
const NEEDS_OPERATOR: i32 = 78;
/// Exit status of a start-up failure that may clear by itself (a token not present yet).
const MAY_CLEAR: i32 = 1;

/// Runs serve on the token's (edited) config with `env`; expects a failure that only an
/// operator can fix, whose stderr contains every needle, and checks the real PIN was not
/// printed.
#[track_caller]
fn refused(token: &TestToken, env: &[(&str, &str)], needles: &[&str]) -> common::Exited {
    refused_with(token, env, needles, NEEDS_OPERATOR)
}

/// [`refused`] with the expected exit status.
#[track_caller]
fn refused_with(
    token: &TestToken,
    env: &[(&str, &str)],
    needles: &[&str],
    status: i32,
) -> common::Exited {
    let exited = Daemon::serve_expecting_failure(token, env);
    exited
        .assert_failed()
        .assert_exit_code(status)
        .assert_stderr_has(needles)
        .assert_never_printed(&token.user_pin());
    exited
}

#[test]
fn unknown_fields_are_refused_in_every_section() {
    for (section, field) in [
        ("server", "listen_addr"),
        ("hsm", "pool_sizee"),
        ("signing", "verify"),
    ] {
        let token = TestToken::dev();
        token.edit_config(|t| {
            t.entry(section)
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .unwrap()
                .insert(field.into(), 1.into());
        });
        refused(&token, &[], &["unknown field", field]);
    }
}

#[test]
fn an_unknown_field_in_a_key_is_refused() {
    let token = TestToken::dev();
    token.set_key_field(
        &common::dev_key_id(P256),
        "algoritm",
        "ECDSA_NIST_P256_SHA_256",
    );
    refused(&token, &[], &["unknown field", "algoritm"]);
}

#[test]
fn an_unknown_section_is_refused() {
    let token = TestToken::dev();
    token.edit_config(|t| {
        t.insert("sever".into(), toml::Table::new().into());
    });
    refused(&token, &[], &["unknown field", "sever"]);
}

#[test]
fn an_unknown_field_from_the_environment_is_refused() {
    let token = TestToken::dev();
    refused(
        &token,
        &[("P11KMS__HSM__POOL_SIZEE", "2")],
        &["unknown field", "pool_sizee"],
    );
}

#[tokio::test]
async fn environment_overrides_apply() {
    let token = TestToken::dev();
    // Accepted, and used: the log reports the pool size the override set.
    let mut daemon = Daemon::serve(&token, &[("P11KMS__HSM__POOL_SIZE", "2")]);
    daemon
        .kms()
        .await
        .sign(&common::dev_key_id(P256), b"x")
        .await
        .unwrap();
    assert_eq!(daemon.sigterm().await.code(), Some(0));
    assert!(daemon.stderr().contains("pool=2"), "{}", daemon.describe());

    // An override wins over the file: an invalid value from the environment is refused.
    refused(
        &token,
        &[("P11KMS__HSM__POOL_SIZE", "0")],
        &["hsm.pool_size", "at least 1"],
    );
}

#[test]
fn a_bad_algorithm_name_is_refused_with_the_valid_names() {
    let token = TestToken::dev();
    let id = common::dev_key_id(P256);
    token.set_key_field(&id, "algorithm", "ECDSA_P256");
    refused(
        &token,
        &[],
        &[
            &id,
            "\"ECDSA_P256\"",
            "is not one of",
            "ECDSA_NIST_P256_SHA_256",
        ],
    );
}

#[test]
fn a_duplicate_key_id_is_refused() {
    let token = TestToken::dev();
    let id = common::dev_key_id(P256);
    token.add_key(KeyDecl::by_id(&id, &dev_ck_id(P256), P256));
    refused(&token, &[], &[&id, "declared twice"]);
}

#[test]
fn a_key_id_of_51_characters_is_refused() {
    let token = TestToken::dev();
    let id = "k".repeat(51);
    token.add_key(KeyDecl::by_id(&id, &dev_ck_id(P256), P256));
    refused(&token, &[], &[&id, "1 to 50 characters"]);
}

#[test]
fn an_empty_key_id_is_refused() {
    let token = TestToken::dev();
    token.add_key(KeyDecl::by_id("", &dev_ck_id(P256), P256));
    refused(&token, &[], &["keys[13]", "1 to 50 characters"]);
}

#[test]
fn object_id_and_object_label_must_be_exactly_one() {
    let token = TestToken::dev();
    let id = common::dev_key_id(P256);
    token.set_key_field(&id, "object_label", "both");
    refused(
        &token,
        &[],
        &[&id, "only one of object_id and object_label"],
    );

    let token = TestToken::dev();
    token.edit_config(|t| {
        let keys = t.get_mut("keys").unwrap().as_array_mut().unwrap();
        keys[0].as_table_mut().unwrap().remove("object_id");
    });
    let first = common::dev_key_id(Algorithm::ALL[0]);
    refused(&token, &[], &[&first, "set object_id", "or object_label"]);
}

#[test]
fn a_non_hex_object_id_is_refused() {
    for bad in ["xyz", "abc", ""] {
        let token = TestToken::dev();
        let id = common::dev_key_id(P256);
        token.set_key_field(&id, "object_id", bad);
        refused(&token, &[], &[&id, &format!("object_id {bad:?}"), "hex"]);
    }
}

#[test]
fn token_label_and_token_serial_must_be_exactly_one() {
    let token = TestToken::dev();
    token.set_hsm("token_serial", token.serial());
    refused(
        &token,
        &[],
        &["hsm", "only one of token_label and token_serial"],
    );

    let token = TestToken::dev();
    token.remove_hsm("token_label");
    refused(&token, &[], &["hsm", "set token_label or token_serial"]);
}

#[tokio::test]
async fn the_token_can_be_chosen_by_serial() {
    let token = TestToken::dev();
    token.remove_hsm("token_label");
    token.set_hsm("token_serial", token.serial());
    let daemon = Daemon::serve(&token, &[]);
    daemon
        .kms()
        .await
        .sign(&common::dev_key_id(P256), b"x")
        .await
        .unwrap();
}

/// Two tokens with the same label: choosing by label is ambiguous and refused (never "the
/// first one"); choosing by serial works.
#[tokio::test]
async fn two_tokens_with_one_label_must_be_chosen_by_serial() {
    let token = TestToken::dev();
    let serial = token.serial();
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", token.softhsm_conf())
        .args(["--init-token", "--free", "--label", token.label()])
        .args(["--so-pin", "so-pin-1234", "--pin", "user-pin-1234"])
        .output()
        .expect("run softhsm2-util");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    refused_with(
        &token,
        &[],
        &["2 tokens match label \"p11kms-dev\"", "token_serial"],
        MAY_CLEAR,
    );

    token.remove_hsm("token_label");
    token.set_hsm("token_serial", serial);
    let daemon = Daemon::serve(&token, &[]);
    let alg = P256;
    let mut kms = daemon.kms().await;
    let key = common::verify::parse_public_key(
        &kms.public_key(&common::dev_key_id(alg)).await.unwrap(),
        alg,
    )
    .unwrap();
    let sig = kms
        .sign(&common::dev_key_id(alg), b"by serial")
        .await
        .unwrap();
    key.verify_message(alg, b"by serial", &sig).unwrap();
}

#[test]
fn an_unknown_token_label_or_serial_is_refused_with_the_tokens_present() {
    let token = TestToken::dev();
    token.set_hsm("token_label", "no-such-token");
    refused_with(
        &token,
        &[],
        &["no token with label \"no-such-token\"", "p11kms-dev"],
        MAY_CLEAR,
    );

    let token = TestToken::dev();
    token.remove_hsm("token_label");
    token.set_hsm("token_serial", "0000000000000000");
    refused_with(
        &token,
        &[],
        &["no token with serial \"0000000000000000\"", "p11kms-dev"],
        MAY_CLEAR,
    );
}

#[test]
fn a_group_readable_pin_file_is_refused_with_a_chmod_hint() {
    for mode in [0o640, 0o604, 0o644] {
        let token = TestToken::dev();
        let pin_file = token.state_dir().join("user.pin");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(mode)).unwrap();
        refused(&token, &[], &["hsm.pin_file", "user.pin", "chmod 600"]);
    }
}

/// systemd's `LoadCredential=` directory is private to the service whatever its files' mode
/// bits say, so a PIN file there is trusted; `CREDENTIALS_DIRECTORY` elsewhere changes nothing.
#[tokio::test]
async fn a_pin_file_in_the_systemd_credentials_directory_is_trusted() {
    let token = TestToken::dev();
    let pin_file = token.state_dir().join("user.pin");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o440)).unwrap();
    let other = tempfile::tempdir().unwrap();
    let other = other.path().to_str().unwrap();
    refused(
        &token,
        &[("CREDENTIALS_DIRECTORY", other)],
        &["hsm.pin_file", "chmod 600"],
    );

    let state = token.state_dir().to_str().unwrap().to_owned();
    let daemon = Daemon::serve(&token, &[("CREDENTIALS_DIRECTORY", &state)]);
    let id = common::dev_key_id(P256);
    let mut kms = daemon.kms().await;
    let key = common::verify::parse_public_key(&kms.public_key(&id).await.unwrap(), P256).unwrap();
    let sig = kms.sign(&id, b"credential").await.unwrap();
    key.verify_message(P256, b"credential", &sig).unwrap();
}

#[test]
fn pin_file_and_pin_env_must_be_exactly_one() {
    let token = TestToken::dev();
    token.set_hsm("pin_env", "P11KMS_TEST_PIN");
    refused(
        &token,
        &[("P11KMS_TEST_PIN", "x")],
        &["only one of pin_file and pin_env"],
    );

    let token = TestToken::dev();
    token.remove_hsm("pin_file");
    refused(&token, &[], &["set pin_file", "or pin_env"]);
}

/// Editors add a trailing newline to the PIN file; it is not part of the PIN.
#[tokio::test]
async fn a_pin_file_with_a_trailing_newline_works() {
    let token = TestToken::dev();
    let pin_file = token.state_dir().join("user.pin");
    std::fs::write(&pin_file, format!("{}\n", token.user_pin())).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::serve(&token, &[]);
    daemon
        .kms()
        .await
        .sign(&common::dev_key_id(P256), b"x")
        .await
        .unwrap();
    daemon.assert_never_printed(&token.user_pin());
}

#[test]
fn an_unset_pin_env_is_refused_by_name() {
    let token = TestToken::dev();
    token.remove_hsm("pin_file");
    token.set_hsm("pin_env", "P11KMS_TEST_PIN_UNSET");
    refused(
        &token,
        &[],
        &["hsm.pin_env", "P11KMS_TEST_PIN_UNSET", "not set"],
    );
}

#[test]
fn a_missing_pin_file_is_refused_by_path() {
    let token = TestToken::dev();
    token.set_hsm("pin_file", "nope.pin");
    refused(&token, &[], &["hsm.pin_file", "nope.pin"]);
}

#[tokio::test]
async fn the_pin_can_come_from_the_environment() {
    let token = TestToken::dev();
    token.remove_hsm("pin_file");
    token.set_hsm("pin_env", "P11KMS_TEST_PIN");
    let pin = token.user_pin();
    let mut daemon = Daemon::serve(&token, &[("P11KMS_TEST_PIN", &pin)]);
    daemon
        .kms()
        .await
        .sign(&common::dev_key_id(P256), b"x")
        .await
        .unwrap();
    assert_eq!(daemon.sigterm().await.code(), Some(0));
    assert!(!daemon.stderr().contains(&pin) && !daemon.stdout().contains(&pin));
}

/// A wrong PIN fails closed: one login attempt (counted by the fault shim), no retry, a
/// non-zero exit, and the PIN text appears nowhere in the output.
#[test]
fn a_wrong_pin_fails_closed_without_retry_or_echo() {
    const WRONG: &str = "wrong-pin-canary-7f3a9c";
    // From the environment…
    let token = TestToken::dev();
    let mut shim = Shim::install(&token);
    // The shim counts a call on entry, then sleeps: each login attempt is in the stats file
    // (rewritten every 5 ms) before it returns, even though the daemon exits right after.
    shim.set_control("delay_ms.C_Login = 100");
    token.remove_hsm("pin_file");
    token.set_hsm("pin_env", "P11KMS_TEST_PIN");
    let exited = Launch::serve(&token)
        .envs(shim.env())
        .env("P11KMS_TEST_PIN", WRONG)
        .run_to_exit();
    exited
        .assert_failed()
        .assert_exit_code(NEEDS_OPERATOR)
        .assert_stderr_has(&["refused the user PIN", "will not be retried"])
        .assert_never_printed(WRONG)
        .assert_never_printed(&token.user_pin());
    let stats = shim.stats();
    assert_eq!(stats.get("calls.C_Login"), Some(&1), "{stats:#?}");

    // …and from a file.
    let token = TestToken::dev();
    std::fs::write(token.state_dir().join("user.pin"), format!("{WRONG}\n")).unwrap();
    refused(&token, &[], &["refused the user PIN"]).assert_never_printed(WRONG);
}

#[test]
fn a_missing_config_file_or_module_is_named() {
    let token = TestToken::dev();
    let missing = token.state_dir().join("nope.toml");
    Launch::new(["serve", "--config"])
        .arg(&missing)
        .run_to_exit()
        .assert_failed()
        .assert_exit_code(NEEDS_OPERATOR)
        .assert_stderr_has(&["nope.toml"]);

    token.set_hsm("module", "/nonexistent/libpkcs11.so");
    refused(&token, &[], &["/nonexistent/libpkcs11.so"]);
}

/// Secrets come from files or the environment only: no subcommand takes a PIN or a token on
/// the command line, where any local user could read it.
#[test]
fn the_command_line_has_no_pin_or_token_flag() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["dev", "--help"],
        vec!["help", "serve"],
    ] {
        let exited = Launch::new(&args).output();
        assert!(exited.status.success(), "{args:?}: {exited}");
        let flags: Vec<&str> = exited
            .stdout
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
            .filter(|w| w.starts_with('-'))
            .collect();
        assert!(
            !flags.is_empty() || args == ["--help"],
            "{args:?}: no flags in\n{exited}"
        );
        for flag in &flags {
            let f = flag.to_ascii_lowercase();
            for secret in ["pin", "token", "pass", "secret", "slot"] {
                assert!(
                    !f.contains(secret),
                    "{args:?} offers {flag}:\n{}",
                    exited.stdout
                );
            }
        }
    }
    // And an attempt to pass one is rejected rather than ignored.
    for flag in ["--pin", "--user-pin", "--token-label"] {
        let exited = Launch::new(["serve", flag, "1234", "--config", "x.toml"]).output();
        assert!(!exited.status.success(), "{flag} accepted: {exited}");
        assert!(!exited.stdout.contains("1234") || exited.stdout.is_empty());
    }
}

/// `[[alibaba.access_keys]]`: the AccessKey secret comes from a file only its owner can read
/// (or the environment); a readable file stops start-up naming the entry, and the secret is
/// never printed, refused or served.
#[tokio::test]
async fn alibaba_access_key_secrets_come_from_private_files_and_are_never_printed() {
    let token = TestToken::dev();
    let secret = "ak-secret-canary-7f3e9b";
    let file = token.state_dir().join("ak.secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    token.edit_config(|t| {
        let entry: toml::Table = toml::from_str(
            r#"
            id = "LTAI5tConfigTest"
            secret_file = "ak.secret"
            subject_id = "alibaba-ci"
            subject_type = "serviceAccount"
            "#,
        )
        .unwrap();
        let mut alibaba = toml::Table::new();
        alibaba.insert("access_keys".into(), toml::Value::Array(vec![entry.into()]));
        t.insert("alibaba".into(), alibaba.into());
    });
    refused(
        &token,
        &[],
        &[
            "alibaba.access_keys[0]",
            "LTAI5tConfigTest",
            "ak.secret",
            "chmod 600",
        ],
    )
    .assert_never_printed(secret);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut daemon = Daemon::serve(&token, &[]);
    assert_eq!(daemon.sigterm().await.code(), Some(0));
    daemon.assert_never_printed(secret);
}
