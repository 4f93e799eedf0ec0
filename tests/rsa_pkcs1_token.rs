//! RSA PKCS#1 v1.5 on the real token: `Hsm::sign` with `Scheme::RsaPkcs1` (`CKM_RSA_PKCS` over
//! the DigestInfo p11kms builds), verified with RustCrypto's `rsa::pkcs1v15::VerifyingKey`, which
//! hashes the message itself, under the public key as `pkcs11-tool` reads it off the token:
//! independent of p11kms's verifier, its hashing and the token.
//!
//! No front exposes PKCS#1 v1.5 yet, so this opens a copy of the dev token in-process with
//! `Hsm::connect`, as the daemon does at start-up, and signs with its RSA keys.

mod common;

use common::{dev_ck_id, dev_key_id, softhsm_module, TestToken};
use p11kms::config::Config;
use p11kms::crypto::{Algorithm, HashAlg, Scheme};
use p11kms::hsm::{Hsm, KeySpec};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;

const HASHES: [HashAlg; 3] = [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

/// One dev key per modulus size; any RSA key on the token can sign with either padding.
const KEYS: [Algorithm; 3] = [
    Algorithm::Rsa2048PssSha256,
    Algorithm::Rsa3072PssSha256,
    Algorithm::Rsa4096PssSha256,
];

/// RustCrypto's RSASSA-PKCS1-v1_5 verification of `sig` over `message` hashed with `hash`.
fn rustcrypto_verifies(spki: &[u8], hash: HashAlg, message: &[u8], sig: &[u8]) -> bool {
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    let public = rsa::RsaPublicKey::from_public_key_der(spki).expect("the token's SPKI parses");
    let Ok(sig) = Signature::try_from(sig) else {
        return false;
    };
    match hash {
        HashAlg::Sha256 => VerifyingKey::<sha2::Sha256>::new(public).verify(message, &sig),
        HashAlg::Sha384 => VerifyingKey::<sha2::Sha384>::new(public).verify(message, &sig),
        HashAlg::Sha512 => VerifyingKey::<sha2::Sha512>::new(public).verify(message, &sig),
    }
    .is_ok()
}

#[test]
fn the_token_signs_pkcs1_v1_5_that_rustcrypto_verifies() {
    let token = TestToken::dev();
    // SoftHSM reads SOFTHSM2_CONF at C_Initialize; this test is the only PKCS#11 user in its
    // process (nextest runs each test in its own).
    std::env::set_var("SOFTHSM2_CONF", token.softhsm_conf());
    let mut cfg = Config::load(&token.config_path()).expect("the dev config loads");
    cfg.hsm.module = softhsm_module();
    // A loaded 2-core machine must not turn a slow RSA-4096 signature into a pool timeout.
    cfg.hsm.pool_wait_ms = 120_000;
    let hsm = Hsm::connect(&cfg.hsm).expect("log in to the dev token");
    let specs: Vec<KeySpec> = cfg
        .keys
        .iter()
        .filter(|k| KEYS.contains(&k.algorithm()))
        .map(KeySpec::from_config)
        .collect();
    assert_eq!(specs.len(), KEYS.len(), "the dev config has the RSA keys");
    let resolved = hsm.resolve_keys(&specs).expect("scan the token");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    let mut checked = 0;
    for alg in KEYS {
        let key_id = dev_key_id(alg);
        let ours = resolved
            .iter()
            .find(|(id, _)| *id == key_id)
            .and_then(|(_, r)| r.as_ref().ok())
            .unwrap_or_else(|| panic!("{key_id} resolves: {resolved:?}"));
        let spki = token.public_key_der(&dev_ck_id(alg));
        assert_eq!(
            ours.spki_der(),
            spki,
            "{key_id}: the pinned key is the token's"
        );
        for hash in HASHES {
            let message = format!("PKCS#1 v1.5 with {} by {key_id}", hash.name()).into_bytes();
            let digest = hash.digest(&message);
            let sign = || {
                runtime
                    .block_on(hsm.sign(&key_id, Scheme::RsaPkcs1(hash), digest.clone(), None))
                    .unwrap_or_else(|e| panic!("{key_id} {hash:?}: C_Sign: {e}"))
            };
            let sig = sign();
            let what = format!("{key_id}, PKCS#1 v1.5 {}", hash.name());
            assert_eq!(sig.len(), spki_modulus_len(&spki), "{what}: k bytes");
            assert!(
                rustcrypto_verifies(&spki, hash, &message, &sig),
                "{what}: RustCrypto refuses the token's signature"
            );
            // The DigestInfo names the hash: the same bytes are no signature under another.
            for other in HASHES.into_iter().filter(|&h| h != hash) {
                assert!(
                    !rustcrypto_verifies(&spki, other, &message, &sig),
                    "{what} as {other:?}"
                );
            }
            let mut tampered = sig.clone();
            tampered[sig.len() / 2] ^= 0x10;
            assert!(
                !rustcrypto_verifies(&spki, hash, &message, &tampered),
                "{what}: tampered"
            );
            // Deterministic, as PKCS#1 v1.5 is (a PSS mechanism would salt it).
            assert_eq!(
                sign(),
                sig,
                "{what}: signing again gives the same signature"
            );
            // The gateway's own verifier agrees, and does not take it for PSS.
            assert!(
                ours.verify_prehash(Scheme::RsaPkcs1(hash), &digest, &sig)
                    .is_ok(),
                "{what}"
            );
            assert!(
                ours.verify_prehash(Scheme::RsaPss(hash), &digest, &sig)
                    .is_err(),
                "{what}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, KEYS.len() * HASHES.len());
    hsm.shutdown();
}

fn spki_modulus_len(spki: &[u8]) -> usize {
    use rsa::traits::PublicKeyParts as _;
    rsa::RsaPublicKey::from_public_key_der(spki).unwrap().size()
}
