//! Start-up key checks: a configured key that is missing, ambiguous, of the wrong kind or
//! unsafe stops the daemon with a non-zero exit, and stderr names the key and what is wrong.
//! Odd objects are created with cryptoki, in this process, on a private token copy.

mod common;

use common::pkcs11::{
    destroy, find, find_one, generate_key_pair, set_id, with_user_session, KeyGen, PrivateAttrs,
};
use common::verify::Curve;
use common::{dev_ck_id, Daemon, KeyDecl, TestToken};
use cryptoki::object::ObjectClass;
use p11kms::crypto::Algorithm;

const P256_OID: &str = "1.2.840.10045.3.1.7";

/// Adds `[[keys]]` for `id` → `CKA_ID` `ck_id` as `alg`, runs serve, expects a failure naming
/// the key plus every needle.
fn assert_refused(token: &TestToken, id: &str, ck_id: &[u8], alg: Algorithm, needles: &[&str]) {
    token.add_key(KeyDecl::by_id(id, ck_id, alg));
    let exited = Daemon::serve_expecting_failure(token, &[]);
    exited
        .assert_failed()
        .assert_stderr_has(&[id])
        .assert_stderr_has(needles);
}

#[test]
fn a_key_missing_from_the_token_is_named() {
    let token = TestToken::dev();
    assert_refused(
        &token,
        "missing-key",
        b"\xde\xad\xbe\xef",
        Algorithm::EcdsaP256Sha256,
        &["no private key with CKA_ID deadbeef"],
    );
}

#[test]
fn a_key_by_label_missing_from_the_token_is_named() {
    let token = TestToken::dev();
    let mut key = KeyDecl::by_id("missing-label", b"x", Algorithm::EcdsaP256Sha256);
    key.object = common::ObjectRef::Label("no-such-label".into());
    token.add_key(key);
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&["missing-label", "no private key", "no-such-label"]);
}

#[test]
fn two_private_keys_with_the_same_id_are_ambiguous() {
    let token = TestToken::dev();
    let ck_id = b"twin";
    with_user_session(&token, |s| {
        for label in ["twin-a", "twin-b"] {
            generate_key_pair(
                s,
                KeyGen::Ec(P256_OID),
                ck_id,
                label,
                PrivateAttrs::default(),
            );
        }
    });
    assert_refused(
        &token,
        "twin-key",
        ck_id,
        Algorithm::EcdsaP256Sha256,
        &["2 private keys have CKA_ID", "exactly one"],
    );
}

#[test]
fn an_rsa_2048_key_declared_rsa_4096_is_refused() {
    let token = TestToken::dev();
    assert_refused(
        &token,
        "rsa-too-small",
        &dev_ck_id(Algorithm::Rsa2048PssSha256),
        Algorithm::Rsa4096PssSha256,
        &["RSA-2048", "RSA_4096_SIGN_PSS_SHA_256 needs RSA-4096"],
    );
}

#[test]
fn a_p256_key_declared_p384_is_refused() {
    let token = TestToken::dev();
    assert_refused(
        &token,
        "wrong-curve",
        &dev_ck_id(Algorithm::EcdsaP256Sha256),
        Algorithm::EcdsaP384Sha384,
        &[&Curve::P256.oid().to_string(), "P-384"],
    );
}

#[test]
fn an_rsa_key_declared_ecdsa_is_refused() {
    let token = TestToken::dev();
    assert_refused(
        &token,
        "rsa-as-ec",
        &dev_ck_id(Algorithm::Rsa2048PssSha256),
        Algorithm::EcdsaP256Sha256,
        &["type is CKK_RSA", "needs EC"],
    );
}

#[test]
fn an_ec_key_declared_rsa_is_refused() {
    let token = TestToken::dev();
    assert_refused(
        &token,
        "ec-as-rsa",
        &dev_ck_id(Algorithm::EcdsaP256Sha256),
        Algorithm::Rsa2048PssSha256,
        &["type is CKK_EC", "needs RSA"],
    );
}

/// Generates an EC P-256 pair with the given private attributes and expects a refusal.
fn assert_attribute_refused(id: &str, attrs: PrivateAttrs, needles: &[&str]) {
    let token = TestToken::dev();
    let ck_id = id.as_bytes();
    with_user_session(&token, |s| {
        generate_key_pair(s, KeyGen::Ec(P256_OID), ck_id, id, attrs);
    });
    assert_refused(&token, id, ck_id, Algorithm::EcdsaP256Sha256, needles);
}

#[test]
fn a_key_without_cka_sign_is_refused() {
    let attrs = PrivateAttrs {
        sign: false,
        ..PrivateAttrs::default()
    };
    assert_attribute_refused("no-sign", attrs, &["CKA_SIGN"]);
}

#[test]
fn an_extractable_key_is_refused() {
    let attrs = PrivateAttrs {
        extractable: true,
        ..PrivateAttrs::default()
    };
    assert_attribute_refused("extractable", attrs, &["CKA_EXTRACTABLE"]);
}

#[test]
fn a_non_sensitive_key_is_refused() {
    let attrs = PrivateAttrs {
        sensitive: false,
        ..PrivateAttrs::default()
    };
    assert_attribute_refused("not-sensitive", attrs, &["CKA_SENSITIVE"]);
}

#[test]
fn a_key_that_needs_a_pin_per_signature_is_refused() {
    let attrs = PrivateAttrs {
        always_authenticate: true,
        ..PrivateAttrs::default()
    };
    assert_attribute_refused("always-auth", attrs, &["CKA_ALWAYS_AUTHENTICATE"]);
}

#[test]
fn an_ec_key_without_a_public_key_object_is_refused() {
    let token = TestToken::dev();
    let ck_id = dev_ck_id(Algorithm::EcdsaP256Sha256);
    with_user_session(&token, |s| {
        destroy(s, find_one(s, ObjectClass::PUBLIC_KEY, &ck_id));
    });
    assert_refused(
        &token,
        "ec-no-public",
        &ck_id,
        Algorithm::EcdsaP256Sha256,
        &["no public key object", "EC keys need one"],
    );
}

/// RSA private keys carry their public half, so a missing public key object is fine.
#[tokio::test]
async fn an_rsa_key_without_a_public_key_object_is_served() {
    let token = TestToken::dev();
    let alg = Algorithm::Rsa2048PssSha256;
    let ck_id = dev_ck_id(alg);
    let before = token.public_key_der(&ck_id);
    with_user_session(&token, |s| {
        destroy(s, find_one(s, ObjectClass::PUBLIC_KEY, &ck_id));
        assert!(find(s, ObjectClass::PUBLIC_KEY, &ck_id).is_empty());
    });
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let id = common::dev_key_id(alg);
    let key = common::verify::parse_public_key(&kms.public_key(&id).await.unwrap(), alg).unwrap();
    assert_eq!(
        key.spki_der, before,
        "published from the private key's modulus"
    );
    let sig = kms.sign(&id, b"no public object").await.unwrap();
    key.verify_message(alg, b"no public object", &sig).unwrap();
}

/// The private key of one RSA pair with the public key object of another, under one `CKA_ID`.
#[test]
fn an_rsa_private_key_paired_with_another_keys_public_key_is_refused() {
    let token = TestToken::dev();
    let a = dev_ck_id(Algorithm::Rsa2048PssSha256);
    let b = dev_ck_id(Algorithm::Rsa2048PssSha384);
    with_user_session(&token, |s| {
        destroy(s, find_one(s, ObjectClass::PUBLIC_KEY, &a));
        set_id(s, find_one(s, ObjectClass::PUBLIC_KEY, &b), &a);
    });
    token.retain_keys(|id| !id.starts_with("dev-rsa-2048"));
    assert_refused(
        &token,
        "rsa-mispaired",
        &a,
        Algorithm::Rsa2048PssSha256,
        &["not a pair"],
    );
}

/// The same for EC. An EC private key does not carry its point, so only a trial signature at
/// start-up can tell; without one, every Sign fails verify-after-sign with INTERNAL (which
/// clients retry) instead of the daemon refusing the key at start-up.
#[test]
fn an_ec_private_key_paired_with_another_keys_public_key_is_refused() {
    let token = TestToken::dev();
    let a = dev_ck_id(Algorithm::EcdsaP256Sha256);
    with_user_session(&token, |s| {
        let (other_public, _) = generate_key_pair(
            s,
            KeyGen::Ec(P256_OID),
            b"other",
            "other",
            PrivateAttrs::default(),
        );
        destroy(s, find_one(s, ObjectClass::PUBLIC_KEY, &a));
        set_id(s, other_public, &a);
    });
    token.retain_keys(|id| id != common::dev_key_id(Algorithm::EcdsaP256Sha256));
    assert_refused(
        &token,
        "ec-mispaired",
        &a,
        Algorithm::EcdsaP256Sha256,
        &["not a pair"],
    );
}

/// A key generated the way an operator would (all attributes right) is served: the refusals
/// above are about the attributes, not about keys made outside `p11kms dev`.
#[tokio::test]
async fn a_well_formed_key_made_outside_dev_mode_is_served() {
    let token = TestToken::dev();
    with_user_session(&token, |s| {
        generate_key_pair(
            s,
            KeyGen::Ec(P256_OID),
            b"ops",
            "ops-key",
            PrivateAttrs::default(),
        );
    });
    token.add_key(KeyDecl::by_id(
        "ops-key",
        b"ops",
        Algorithm::EcdsaP256Sha256,
    ));
    let mut by_label = KeyDecl::by_id("ops-key-by-label", b"", Algorithm::EcdsaP256Sha256);
    by_label.object = common::ObjectRef::Label("ops-key".into());
    token.add_key(by_label);
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let alg = Algorithm::EcdsaP256Sha256;
    for id in ["ops-key", "ops-key-by-label"] {
        let pem = kms.public_key(id).await.unwrap();
        let key = common::verify::parse_public_key(&pem, alg).unwrap();
        assert_eq!(key.spki_der, token.public_key_der(b"ops"));
        let sig = kms.sign(id, b"ops").await.unwrap();
        key.verify_message(alg, b"ops", &sig).unwrap();
    }
}

/// Every unusable key is reported in one go, so an operator fixes them all in one pass.
#[test]
fn every_unusable_key_is_listed_at_once() {
    let token = TestToken::dev();
    token.add_key(KeyDecl::by_id(
        "gone-1",
        b"gone-1",
        Algorithm::EcdsaP256Sha256,
    ));
    token.add_key(KeyDecl::by_id(
        "wrong-size",
        &dev_ck_id(Algorithm::Rsa3072PssSha256),
        Algorithm::Rsa2048PssSha256,
    ));
    token.add_key(KeyDecl::by_id(
        "gone-2",
        b"gone-2",
        Algorithm::EcdsaP384Sha384,
    ));
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&[
            "3 configured key(s)",
            "gone-1",
            "wrong-size",
            "RSA-3072",
            "gone-2",
        ]);
}
