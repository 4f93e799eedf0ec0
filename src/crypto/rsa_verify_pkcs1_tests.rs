//! RSASSA-PKCS1-v1_5 verification ([`RsaKey::verify_pkcs1`]) against the `rsa` crate as an
//! oracle, for signatures it makes and tampered ones, then encodings built by hand so that each
//! fails exactly one rule of EMSA-PKCS1-v1_5 (RFC 8017 §9.2).

use super::tests::{key, ours};
use super::*;
use crate::crypto::digest_info::digest_info;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use rsa::Pkcs1v15Sign;
use sha2::{Sha256, Sha384, Sha512};

const HASHES: [HashAlg; 3] = [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

fn scheme(hash: HashAlg) -> Pkcs1v15Sign {
    match hash {
        HashAlg::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
        HashAlg::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
        HashAlg::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
    }
}

fn sign(k: &rsa::RsaPrivateKey, hash: HashAlg, digest: &[u8]) -> Vec<u8> {
    k.sign(scheme(hash), digest).expect("the rsa crate signs")
}

/// Our answer, checked against the `rsa` crate's.
fn agree(k: &rsa::RsaPrivateKey, v: &RsaKey, hash: HashAlg, digest: &[u8], sig: &[u8]) -> bool {
    let mine = v.verify_pkcs1(hash, digest, sig);
    let theirs = k.to_public_key().verify(scheme(hash), digest, sig).is_ok();
    assert_eq!(
        mine,
        theirs,
        "disagreement with the rsa crate: PKCS#1 v1.5 {hash:?}, {} bits",
        k.n().bits()
    );
    mine
}

/// The signature whose public operation gives `em` (the private operation on it), as `k` bytes.
fn signature_of(k: &rsa::RsaPrivateKey, em: &[u8]) -> Vec<u8> {
    let m = rsa::BigUint::from_bytes_be(em);
    assert!(&m < k.n(), "EM must be below n");
    let size = k.size();
    let mut sig = m.modpow(k.d(), k.n()).to_bytes_be();
    sig.splice(0..0, std::iter::repeat_n(0, size - sig.len()));
    sig
}

#[test]
fn agrees_with_the_rsa_crate_on_valid_and_tampered_signatures() {
    for bits in [2048, 3072, 4096] {
        let k = key(bits);
        let v = ours(&k);
        for hash in HASHES {
            for round in 0..3u8 {
                let digest = hash.digest(&[round; 100]);
                let sig = sign(&k, hash, &digest);
                assert!(agree(&k, &v, hash, &digest, &sig), "valid, {bits} {hash:?}");
                // Deterministic: the token's signature over the same DigestInfo is this one.
                assert_eq!(sig, signature_of(&k, &expected_em(&k, hash, &digest)));

                for at in [0, 1, sig.len() / 2, sig.len() - 2, sig.len() - 1] {
                    let mut bad = sig.clone();
                    bad[at] ^= 1 << (round % 8);
                    assert!(!agree(&k, &v, hash, &digest, &bad), "flipped byte {at}");
                }
                let mut other = digest.clone();
                other[digest.len() - 1] ^= 0x01;
                assert!(!agree(&k, &v, hash, &other, &sig), "another digest");
                assert!(!agree(&k, &v, hash, &digest[1..], &sig), "short digest");
                assert!(
                    !agree(&k, &v, hash, &digest, &sig[1..]),
                    "truncated signature"
                );
                assert!(!agree(&k, &v, hash, &digest, &[]), "empty signature");
                let mut long = sig.clone();
                long.insert(0, 0);
                assert!(!v.verify_pkcs1(hash, &digest, &long), "k + 1 bytes");

                // Made with another hash's DigestInfo, checked as ours over the digest's prefix
                // (the lengths differ, so the same bytes cannot be both).
                for other_hash in HASHES.into_iter().filter(|&h| h != hash) {
                    let long_digest = other_hash.digest(&[round; 100]);
                    let sig = sign(&k, other_hash, &long_digest);
                    let mut as_ours = long_digest.clone();
                    as_ours.resize(hash.digest_len(), 0x5a);
                    assert!(
                        !agree(&k, &v, hash, &as_ours, &sig),
                        "{other_hash:?} DigestInfo checked as {hash:?}"
                    );
                    assert!(agree(&k, &v, other_hash, &long_digest, &sig));
                }
                // The bare digest with no DigestInfo around it.
                let bare = k.sign(Pkcs1v15Sign::new_unprefixed(), &digest).unwrap();
                assert!(!agree(&k, &v, hash, &digest, &bare), "no DigestInfo");
            }
        }
    }
}

#[test]
fn refuses_signatures_not_below_the_modulus_and_pss_signatures() {
    let k = key(2048);
    let v = ours(&k);
    let hash = HashAlg::Sha256;
    let digest = hash.digest(b"m");
    let n = k.n().to_bytes_be();
    assert!(!agree(&k, &v, hash, &digest, &n), "s = n");
    let above = (k.n() + 2u32).to_bytes_be();
    assert!(!agree(&k, &v, hash, &digest, &above), "s = n + 2");
    assert!(!agree(&k, &v, hash, &digest, &[0xff; 256]), "s > n");
    assert!(!agree(&k, &v, hash, &digest, &[0; 256]), "s = 0");
    let mut one = vec![0; 256];
    one[255] = 1;
    assert!(!agree(&k, &v, hash, &digest, &one), "s = 1");

    // A valid signature under another key, and a PSS signature of the same digest.
    let sig = sign(&k, hash, &digest);
    let other = key(3072);
    assert!(!ours(&other).verify_pkcs1(hash, &digest, &sig));
    let pss = rsa::pss::SigningKey::<Sha256>::new(k.clone());
    use rsa::signature::{hazmat::RandomizedPrehashSigner as _, SignatureEncoding as _};
    let pss_sig = pss
        .sign_prehash_with_rng(&mut rsa::rand_core::OsRng, &digest)
        .unwrap()
        .to_vec();
    assert!(v.verify(hash, &digest, &pss_sig));
    assert!(!agree(&k, &v, hash, &digest, &pss_sig), "a PSS signature");
}

/// `00 ‖ block type ‖ PS ‖ separator ‖ tail`, PS being 0xff bytes that fill EM to `k` bytes.
fn em(size: usize, block_type: u8, separator: u8, tail: &[u8]) -> Vec<u8> {
    let mut em = vec![0x00, block_type];
    em.resize(size - tail.len() - 1, 0xff);
    em.push(separator);
    em.extend_from_slice(tail);
    em
}

fn expected_em(k: &rsa::RsaPrivateKey, hash: HashAlg, digest: &[u8]) -> Vec<u8> {
    em(k.size(), 0x01, 0x00, &digest_info(hash, digest))
}

#[test]
fn encodings_that_break_one_rule_are_refused() {
    let k = key(2048);
    let v = ours(&k);
    let size = k.size();
    let hash = HashAlg::Sha256;
    let digest = hash.digest(b"structure");
    let t = digest_info(hash, &digest);
    let der = |hex_prefix: &str| [hex::decode(hex_prefix).unwrap(), digest.clone()].concat();
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut e = expected_em(&k, hash, &digest);
        edit(&mut e);
        e
    };

    assert!(agree(
        &k,
        &v,
        hash,
        &digest,
        &signature_of(&k, &expected_em(&k, hash, &digest))
    ));
    // Check that the DER prefix built here is the one `digest_info` uses.
    assert_eq!(der("3031300d060960864801650304020105000420"), t);

    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("leading byte 01", with(&|e| e[0] = 0x01)),
        ("block type 02", em(size, 0x02, 0x00, &t)),
        ("block type 00", em(size, 0x00, 0x00, &t)),
        ("one padding byte fe", with(&|e| e[size / 2] = 0xfe)),
        (
            "last padding byte 00",
            with(&|e| e[size - t.len() - 2] = 0x00),
        ),
        ("separator 01", em(size, 0x01, 0x01, &t)),
        ("separator ff", em(size, 0x01, 0xff, &t)),
        // Bleichenbacher 2006: a shorter PS leaves room for garbage after the DigestInfo.
        (
            "garbage after the digest",
            em(size, 0x01, 0x00, &[&t[..], &[0xaa; 16]].concat()),
        ),
        (
            "zeros before the DigestInfo",
            em(size, 0x01, 0x00, &[&[0u8; 4][..], &t].concat()),
        ),
        // Fewer than 8 bytes of PS (RFC 8017 §9.2 step 5), the rest zeros before T.
        ("7 bytes of padding", {
            let mut e = vec![0x00, 0x01];
            e.extend_from_slice(&[0xff; 7]);
            e.resize(size - t.len(), 0x00);
            e.extend_from_slice(&t);
            e
        }),
        ("no DigestInfo", em(size, 0x01, 0x00, &digest)),
        (
            "DigestInfo without the NULL parameters",
            em(size, 0x01, 0x00, &der("302f300b06096086480165030402010420")),
        ),
        (
            "DigestInfo with a BER long-form length",
            em(
                size,
                0x01,
                0x00,
                &der("308131300d060960864801650304020105000420"),
            ),
        ),
        (
            "DigestInfo naming SHA-512/256 (same digest length)",
            em(
                size,
                0x01,
                0x00,
                &der("3031300d060960864801650304020605000420"),
            ),
        ),
        (
            "DigestInfo naming SHA3-256 (same digest length)",
            em(
                size,
                0x01,
                0x00,
                &der("3031300d060960864801650304020805000420"),
            ),
        ),
        ("digest's last bit", with(&|e| e[size - 1] ^= 0x01)),
        (
            "digest's first bit",
            with(&|e| e[size - digest.len()] ^= 0x80),
        ),
    ];
    for (what, e) in broken {
        assert_eq!(e.len(), size, "{what}: EM is k bytes");
        assert_ne!(
            e,
            expected_em(&k, hash, &digest),
            "{what}: breaks something"
        );
        let sig = signature_of(&k, &e);
        assert!(!agree(&k, &v, hash, &digest, &sig), "{what}");
    }
}
