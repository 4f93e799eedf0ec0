//! Every algorithm end to end: a real daemon on a real SoftHSM token signs, and RustCrypto
//! (not p11kms::crypto) verifies. Public keys are checked structurally and against the token.

mod common;

use common::verify::{self, Key};
use common::{dev_ck_id, dev_key_id, Daemon, Kms, TestToken};
use p11kms::crypto::Algorithm;

/// Checks one algorithm; returns what is wrong, if anything.
async fn check_algorithm(kms: &mut Kms, token: &TestToken, alg: Algorithm) -> Result<(), String> {
    let id = dev_key_id(alg);
    let pem = kms
        .public_key(&id)
        .await
        .map_err(|s| format!("GetPublicKey: {s}"))?;
    let key = verify::parse_public_key(&pem, alg).map_err(|e| format!("public key: {e}\n{pem}"))?;
    let on_token = token.public_key_der(&dev_ck_id(alg));
    if key.spki_der != on_token {
        return Err(format!(
            "GetPublicKey's SPKI differs from the token's public key (pkcs11-tool):\n  api:   {}\n  token: {}",
            hex::encode(&key.spki_der),
            hex::encode(&on_token)
        ));
    }

    let hash = verify::hash_of(alg);
    let message = format!("p11kms signs this for {id}").into_bytes();
    let digest = hash.digest(&message);
    let signed = kms
        .sign(&id, &message)
        .await
        .map_err(|s| format!("Sign: {s}"))?;
    let hash_signed = kms
        .sign_hash(&id, &digest)
        .await
        .map_err(|s| format!("SignHash: {s}"))?;
    for (what, sig) in [("Sign", &signed), ("SignHash", &hash_signed)] {
        // Sign(msg) and SignHash(H(msg)) are the same signature scheme over the same digest.
        key.verify_message(alg, &message, sig)
            .map_err(|e| format!("{what} signature does not verify over the message: {e}"))?;
        key.verify_digest(alg, &digest, sig)
            .map_err(|e| format!("{what} signature does not verify over the digest: {e}"))?;
        if key.verify_message(alg, b"some other message", sig).is_ok() {
            return Err(format!("{what} signature verifies over another message"));
        }
        match verify::expected(alg).1 {
            Key::Rsa(_) => {
                // Verification above used salt = digest length and MGF1 with the same hash;
                // show that the verifier really is strict about the salt length.
                for salt in [0, hash.len() - 1, hash.len() + 1] {
                    if key.verifies_pss_with(hash, salt, &digest, sig) {
                        return Err(format!("{what}: PSS also verifies with salt length {salt}"));
                    }
                }
            }
            Key::Ec(curve) => {
                verify::ecdsa_der_strict(sig, curve).map_err(|e| format!("{what}: {e}"))?;
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_algorithm_signs_verifiably_and_publishes_the_tokens_key() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let mut failures = Vec::new();
    for alg in Algorithm::ALL {
        if let Err(e) = check_algorithm(&mut kms, &token, alg).await {
            failures.push(format!("{alg}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 13 algorithms failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn secp256k1_signatures_are_low_s() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let alg = Algorithm::EcdsaSecp256k1Sha256;
    let id = dev_key_id(alg);
    let key = verify::parse_public_key(&kms.public_key(&id).await.unwrap(), alg).unwrap();
    // A token returns high-S about half the time: 32 low-S signatures in a row without
    // normalisation would happen with probability 2^-32.
    for i in 0..16u32 {
        let message = format!("low-s {i}").into_bytes();
        let digest = verify::hash_of(alg).digest(&message);
        for sig in [
            kms.sign(&id, &message).await.unwrap(),
            kms.sign_hash(&id, &digest).await.unwrap(),
        ] {
            key.verify_digest(alg, &digest, &sig).unwrap();
            assert!(
                verify::is_low_s_secp256k1(&sig),
                "high-S secp256k1 signature: {}",
                hex::encode(&sig)
            );
        }
    }
}

/// The test's own algorithm table agrees with the wire contract's names and numbers, so that the
/// checks above test the right hash and key for each algorithm.
#[test]
fn algorithm_table_matches_the_contract() {
    let contract = [
        (1, "RSA_2048_SIGN_PSS_SHA_256"),
        (2, "RSA_2048_SIGN_PSS_SHA_384"),
        (3, "RSA_2048_SIGN_PSS_SHA_512"),
        (4, "RSA_3072_SIGN_PSS_SHA_256"),
        (5, "RSA_3072_SIGN_PSS_SHA_384"),
        (6, "RSA_3072_SIGN_PSS_SHA_512"),
        (7, "RSA_4096_SIGN_PSS_SHA_256"),
        (8, "RSA_4096_SIGN_PSS_SHA_384"),
        (9, "RSA_4096_SIGN_PSS_SHA_512"),
        (10, "ECDSA_NIST_P256_SHA_256"),
        (11, "ECDSA_NIST_P384_SHA_384"),
        (12, "ECDSA_NIST_P521_SHA_512"),
        (13, "ECDSA_SECP256_K1_SHA_256"),
    ];
    assert_eq!(Algorithm::ALL.len(), contract.len());
    for (alg, (number, name)) in Algorithm::ALL.into_iter().zip(contract) {
        assert_eq!((alg.to_proto(), alg.name()), (number, name));
        // The name spells out the hash and the key; the test's table must say the same.
        let (hash, key) = verify::expected(alg);
        let hash_suffix = format!("SHA_{}", hash.len() * 8);
        assert!(name.ends_with(&hash_suffix), "{name} vs {hash:?}");
        let key_ok = match key {
            Key::Rsa(bits) => name.starts_with(&format!("RSA_{bits}_")),
            Key::Ec(verify::Curve::P256) => name.starts_with("ECDSA_NIST_P256_"),
            Key::Ec(verify::Curve::P384) => name.starts_with("ECDSA_NIST_P384_"),
            Key::Ec(verify::Curve::P521) => name.starts_with("ECDSA_NIST_P521_"),
            Key::Ec(verify::Curve::K256) => name.starts_with("ECDSA_SECP256_K1_"),
        };
        assert!(key_ok, "{name} vs {key:?}");
    }
}
