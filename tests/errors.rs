//! Every client error at its boundary, with the exact gRPC code and a message that says what to
//! fix; and proof, through the fault shim's call counters, that refused requests never reach
//! the HSM.

mod common;

use common::faultshim::Shim;
use common::verify::{self, Hash};
use common::{
    assert_status, dev_ck_id, dev_key_id, Daemon, KeyDecl, Kms, Launch, ServingStatus, TestToken,
};
use p11kms::crypto::Algorithm;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

/// Checks that `message` is signed validly by `key_id` (an algorithm `alg` key).
async fn assert_signs(kms: &mut Kms, key_id: &str, alg: Algorithm, message: &[u8]) {
    let pem = kms.public_key(key_id).await.expect("GetPublicKey");
    let key = verify::parse_public_key(&pem, alg).expect("public key");
    let sig = kms
        .sign(key_id, message)
        .await
        .unwrap_or_else(|s| panic!("Sign({key_id}, {} bytes): {s}", message.len()));
    key.verify_message(alg, message, &sig)
        .unwrap_or_else(|e| panic!("Sign({key_id}, {} bytes): {e}", message.len()));
}

#[tokio::test]
async fn key_id_length_boundaries_count_characters() {
    let token = TestToken::dev();
    let ascii_50 = "k".repeat(50);
    let cyrillic_50 = "я".repeat(50); // 100 bytes, 50 characters
    for id in [&ascii_50, &cyrillic_50] {
        token.add_key(KeyDecl::by_id(id, &dev_ck_id(P256), P256));
    }
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;

    // 0 characters.
    assert_status(
        kms.sign("", b"m").await,
        Code::InvalidArgument,
        &["key_id is required"],
    );
    assert_status(
        kms.sign_hash("", &[0; 32]).await,
        Code::InvalidArgument,
        &["key_id is required"],
    );
    assert_status(
        kms.public_key("").await,
        Code::InvalidArgument,
        &["key_id is required"],
    );

    // 50 characters: accepted, in ASCII and in two-byte characters.
    assert_signs(&mut kms, &ascii_50, P256, b"fifty").await;
    assert_signs(&mut kms, &cyrillic_50, P256, b"fifty").await;
    let digest = Hash::Sha256.digest(b"fifty");
    kms.sign_hash(&cyrillic_50, &digest)
        .await
        .expect("SignHash, 50 characters");
    // 50 characters, unknown key: the length is fine, the key is not.
    let unknown_50 = "u".repeat(50);
    assert_status(
        kms.sign(&unknown_50, b"m").await,
        Code::NotFound,
        &[&unknown_50, "not found"],
    );

    // 51 characters, ASCII or not: refused before any lookup.
    for id in ["k".repeat(51), "я".repeat(51)] {
        let needles = ["key_id", "51 characters", "limit is 50"];
        assert_status(kms.sign(&id, b"m").await, Code::InvalidArgument, &needles);
        assert_status(
            kms.sign_hash(&id, &digest).await,
            Code::InvalidArgument,
            &needles,
        );
        assert_status(kms.public_key(&id).await, Code::InvalidArgument, &needles);
    }
}

#[tokio::test]
async fn message_length_boundaries() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let id = dev_key_id(P256);

    assert_status(
        kms.sign(&id, b"").await,
        Code::InvalidArgument,
        &["message is required"],
    );
    assert_signs(&mut kms, &id, P256, &[0x42]).await;
    assert_signs(&mut kms, &id, P256, &vec![0x42; 32768]).await;
    // An RSA key too: the limit does not depend on the algorithm.
    let rsa = Algorithm::Rsa2048PssSha256;
    assert_signs(&mut kms, &dev_key_id(rsa), rsa, &vec![7; 32768]).await;
    for len in [32769, 60_000] {
        // Still under the transport's decode limit, so the answer says what to do instead.
        assert_status(
            kms.sign(&id, &vec![0x42; len]).await,
            Code::InvalidArgument,
            &[
                &format!("message is {len} bytes"),
                "limit is 32768",
                "SignHash",
            ],
        );
    }
}

#[tokio::test]
async fn hash_length_boundaries_for_every_digest_size() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let p256 = dev_key_id(P256);

    assert_status(
        kms.sign_hash(&p256, &[]).await,
        Code::InvalidArgument,
        &["hash is required"],
    );
    // Within the field limit but not a digest of the key's size.
    assert_status(
        kms.sign_hash(&p256, &[1; 4096]).await,
        Code::InvalidArgument,
        &["hash is 4096 bytes", "exactly 32 bytes", "SHA-256"],
    );
    assert_status(
        kms.sign_hash(&p256, &[1; 4097]).await,
        Code::InvalidArgument,
        &["hash is 4097 bytes", "limit is 4096"],
    );

    // Every hash size, on an RSA and an EC key where one exists: -1 and +1 refused, exact signs.
    for alg in [
        Algorithm::EcdsaP256Sha256,
        Algorithm::Rsa2048PssSha256,
        Algorithm::EcdsaP384Sha384,
        Algorithm::Rsa3072PssSha384,
        Algorithm::EcdsaP521Sha512,
        Algorithm::Rsa2048PssSha512,
        Algorithm::EcdsaSecp256k1Sha256,
    ] {
        let id = dev_key_id(alg);
        let hash = verify::hash_of(alg);
        let len = hash.len();
        for wrong in [len - 1, len + 1] {
            assert_status(
                kms.sign_hash(&id, &vec![3; wrong]).await,
                Code::InvalidArgument,
                &[
                    &format!("hash is {wrong} bytes"),
                    &id,
                    &format!("exactly {len} bytes"),
                ],
            );
        }
        // Another algorithm's digest length is just as wrong.
        for other in [32, 48, 64].into_iter().filter(|&n| n != len) {
            assert_status(
                kms.sign_hash(&id, &vec![3; other]).await,
                Code::InvalidArgument,
                &[&format!("exactly {len} bytes")],
            );
        }
        let digest = hash.digest(b"exact");
        let sig = kms
            .sign_hash(&id, &digest)
            .await
            .expect("exact digest length");
        let key = verify::parse_public_key(&kms.public_key(&id).await.unwrap(), alg).unwrap();
        key.verify_digest(alg, &digest, &sig).unwrap();
    }
}

#[tokio::test]
async fn unknown_keys_are_not_found_and_inactive_keys_refuse_to_sign() {
    let token = TestToken::dev();
    let inactive = dev_key_id(P256);
    let inactive_rsa = dev_key_id(Algorithm::Rsa2048PssSha256);
    token.set_key_field(&inactive, "status", "INACTIVE");
    token.set_key_field(&inactive_rsa, "status", "INACTIVE");
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;

    for id in ["no-such-key", "dev-ecdsa-nist-p256-sha-25"] {
        let needles = [id, "not found"];
        assert_status(kms.sign(id, b"m").await, Code::NotFound, &needles);
        assert_status(kms.sign_hash(id, &[0; 32]).await, Code::NotFound, &needles);
        assert_status(kms.public_key(id).await, Code::NotFound, &needles);
    }

    for (id, alg) in [
        (&inactive, P256),
        (&inactive_rsa, Algorithm::Rsa2048PssSha256),
    ] {
        let needles = [id.as_str(), "INACTIVE", "activate"];
        assert_status(kms.sign(id, b"m").await, Code::FailedPrecondition, &needles);
        let digest = verify::hash_of(alg).digest(b"m");
        assert_status(
            kms.sign_hash(id, &digest).await,
            Code::FailedPrecondition,
            &needles,
        );
        // By design, an INACTIVE key still publishes its public key.
        let pem = kms
            .public_key(id)
            .await
            .expect("GetPublicKey of an INACTIVE key");
        let key = verify::parse_public_key(&pem, alg).unwrap();
        assert_eq!(key.spki_der, token.public_key_der(id.as_bytes()));
    }

    // The other keys are unaffected.
    let active = dev_key_id(Algorithm::EcdsaP384Sha384);
    assert_signs(
        &mut kms,
        &active,
        Algorithm::EcdsaP384Sha384,
        b"still works",
    )
    .await;
}

#[tokio::test]
async fn a_one_mebibyte_request_is_refused_and_the_daemon_stays_healthy() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let id = dev_key_id(P256);

    let huge = vec![0x55; 1024 * 1024];
    assert_status(kms.sign(&id, &huge).await, Code::OutOfRange, &["too large"]);
    assert_status(
        kms.sign_hash(&id, &huge).await,
        Code::OutOfRange,
        &["too large"],
    );

    // Still healthy, and the same connection and a new one both keep working.
    for service in ["", common::CRYPTO_SERVICE] {
        assert_eq!(
            daemon.health(service).await.unwrap(),
            ServingStatus::Serving
        );
    }
    assert_signs(&mut kms, &id, P256, b"after the big one").await;
    let mut fresh = daemon.kms().await;
    assert_signs(&mut fresh, &id, P256, b"new connection").await;
}

/// Refused requests (validation, unknown or INACTIVE key, oversized) never call `C_SignInit` or
/// `C_Sign`, and neither does GetPublicKey. (Other token reads are not counted: the daemon's
/// background probe and key refresher make them at any time.)
#[tokio::test]
async fn refused_requests_never_reach_the_hsm() {
    let token = TestToken::dev();
    let inactive = dev_key_id(Algorithm::EcdsaP384Sha384);
    token.set_key_field(&inactive, "status", "INACTIVE");
    let shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let mut kms = daemon.kms().await;
    let id = dev_key_id(P256);

    // One good signature first, so that the session is open and the baseline settled.
    assert_signs(&mut kms, &id, P256, b"baseline").await;
    // The shim writes its stats file from a background thread, so a read right after the
    // baseline can miss its calls; settled stats include them.
    let before = shim.settled_stats().await;
    let sign_inits = before["calls.C_SignInit"];

    let long_id = "k".repeat(51);
    let refused: Vec<(Code, tonic::Status)> = vec![
        (Code::InvalidArgument, kms.sign("", b"m").await.unwrap_err()),
        (
            Code::InvalidArgument,
            kms.sign(&long_id, b"m").await.unwrap_err(),
        ),
        (Code::InvalidArgument, kms.sign(&id, b"").await.unwrap_err()),
        (
            Code::InvalidArgument,
            kms.sign(&id, &vec![0; 32769]).await.unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            kms.sign_hash(&id, &[]).await.unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            kms.sign_hash(&id, &[0; 31]).await.unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            kms.sign_hash(&id, &[0; 33]).await.unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            kms.sign_hash(&id, &[0; 4097]).await.unwrap_err(),
        ),
        (
            Code::NotFound,
            kms.sign("no-such-key", b"m").await.unwrap_err(),
        ),
        (
            Code::NotFound,
            kms.sign_hash("no-such-key", &[0; 32]).await.unwrap_err(),
        ),
        (
            Code::FailedPrecondition,
            kms.sign(&inactive, b"m").await.unwrap_err(),
        ),
        (
            Code::FailedPrecondition,
            kms.sign_hash(&inactive, &[0; 48]).await.unwrap_err(),
        ),
        (
            Code::OutOfRange,
            kms.sign(&id, &vec![0; 1 << 20]).await.unwrap_err(),
        ),
    ];
    for (want, status) in &refused {
        assert_eq!(status.code(), *want, "{status:?}");
    }
    for alg in Algorithm::ALL {
        kms.public_key(&dev_key_id(alg))
            .await
            .expect("GetPublicKey");
    }

    // A final good signature is the barrier: once the stats show its last call (the second
    // C_Sign: size query, then data), they show every call made before it. Its C_SignInit
    // alone is not enough: a snapshot can fall between the barrier's calls.
    assert_signs(&mut kms, &id, P256, b"barrier").await;
    shim.wait_stat("calls.C_Sign", before["calls.C_Sign"] + 2)
        .await;
    let after = shim.settled_stats().await;
    assert_eq!(
        after["calls.C_SignInit"],
        sign_inits + 1,
        "refused requests called C_SignInit; before: {before:#?}\nafter: {after:#?}"
    );
    // The barrier's size query and data call.
    assert_eq!(
        after["calls.C_Sign"],
        before["calls.C_Sign"] + 2,
        "refused requests called C_Sign; before: {before:#?}\nafter: {after:#?}"
    );
}
