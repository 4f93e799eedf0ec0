//! `p11kms dev` on an existing state dir reuses the token: same serial, same public keys, no new
//! objects, and it starts fast. (The first run, which creates the token and all 13 keys, is the
//! harness's template build: `p11kms dev --init-only` on an empty dir.)

mod common;

use common::{dev_ck_id, dev_key_id, verify, Daemon, Launch, TestToken};
use p11kms::crypto::Algorithm;

/// "Fast" is measured against `p11kms serve` on the same token in the same run, which loads the
/// same 13 keys and generates nothing: dev may take at most this many times as long. Generating
/// the keys again takes seconds (RSA-4096); the object-file check is the precise one.
const REUSE_RATIO: u32 = 4;

#[tokio::test]
async fn a_second_dev_run_reuses_the_token_and_its_keys() {
    let token = TestToken::dev();
    let serial = token.serial();
    let objects = token.object_files();
    assert_eq!(
        objects.len(),
        26,
        "13 key pairs in the template: {objects:?}"
    );
    let public_keys: Vec<Vec<u8>> = Algorithm::ALL
        .iter()
        .map(|&alg| token.public_key_der(&dev_ck_id(alg)))
        .collect();

    let mut daemon = Daemon::dev(token.state_dir(), &[]);
    let startup = daemon.startup();

    let banner = daemon.stdout();
    for alg in Algorithm::ALL {
        assert!(
            banner.contains(&dev_key_id(alg)),
            "banner lacks {alg}:\n{banner}"
        );
    }
    assert!(banner.contains(&daemon.addr().to_string()), "{banner}");

    let mut kms = daemon.kms().await;
    for (alg, expected) in Algorithm::ALL.into_iter().zip(&public_keys) {
        let id = dev_key_id(alg);
        let pem = kms.public_key(&id).await.unwrap();
        let key = verify::parse_public_key(&pem, alg).unwrap();
        assert_eq!(&key.spki_der, expected, "{id}: the public key changed");
        let sig = kms.sign(&id, b"dev").await.unwrap();
        key.verify_message(alg, b"dev", &sig).unwrap();
    }
    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );

    assert_eq!(token.serial(), serial, "a new token was created");
    assert_eq!(
        token.object_files(),
        objects,
        "objects were created or removed"
    );

    // The yardstick: the slower of two `serve` start-ups on the same token, now.
    let serve = (0..2)
        .map(|_| {
            let mut d = Daemon::serve(&token, &[]);
            let took = d.startup();
            assert_eq!(d.sigterm_blocking().code(), Some(0), "{}", d.describe());
            took
        })
        .max()
        .unwrap();
    println!("dev started in {startup:?} on an existing token; serve in {serve:?}");
    assert!(
        startup <= serve * REUSE_RATIO,
        "dev took {startup:?} to start on an existing token, serve {serve:?}"
    );
}

#[test]
fn init_only_on_an_existing_state_dir_changes_nothing_on_the_token() {
    let token = TestToken::dev();
    let serial = token.serial();
    let objects = token.object_files();
    let pins = (token.user_pin(), token.so_pin());
    let exited = Launch::new(["dev", "--init-only", "--state-dir"])
        .arg(token.state_dir())
        .arg("--module")
        .arg(common::softhsm_module())
        .output();
    assert!(exited.status.success(), "{exited}");
    assert!(exited.stdout.contains("ready"), "{exited}");
    exited
        .assert_never_printed(&pins.0)
        .assert_never_printed(&pins.1);
    assert_eq!(token.serial(), serial);
    assert_eq!(token.object_files(), objects);
    assert_eq!(
        (token.user_pin(), token.so_pin()),
        pins,
        "the PINs were rewritten"
    );
}
