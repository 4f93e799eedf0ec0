//! Micro-benchmarks of the request path without the token: what p11kms itself spends around
//! each `C_Sign`. Run with `cargo bench --bench request_path`; `p11kms bench` measures the
//! whole path against a real token.
//!
//! * `decode_validate`: protobuf decoding of the request (what tonic's codec does with the
//!   body) plus the transport's field checks;
//! * `hash`: `Sign`'s software hashing of 1 KiB and 32 KiB messages;
//! * `ecdsa_der`: the token's raw `r‖s` to DER, per curve (secp256k1 includes low-S
//!   normalisation);
//! * `verify_after_sign`: verifying a signature against the key's public key before it may
//!   leave the process, for all 13 algorithms (RSA: always on; ECDSA: `signing.verify_ecdsa`);
//! * `verify_rustcrypto`: the same NIST-curve verifications with the curve crates' own
//!   (constant-time, table-less) verifier, and RSA-PSS with the `rsa` crate's, which p11kms
//!   replaced; the baseline for the above;
//! * `status_mapping`: an error to its gRPC status, including the HSM-error mapping.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use p11kms::api::yandex::grpc::pb::kms::{AsymmetricSignHashRequest, AsymmetricSignRequest};
use p11kms::api::yandex::validate;
use p11kms::crypto::{ecdsa_der, Algorithm, Curve, KeyKind, PublicKey};
use p11kms::error::Error;
use p11kms::hsm::HsmError;
use prost::Message as _;
use rand_core::OsRng;
use rsa::traits::PublicKeyParts as _;
use signature::hazmat::PrehashSigner as _;
use std::hint::black_box;
use std::time::Duration;

const KEY_ID: &str = "dev-ecdsa-nist-p256-sha-256";

fn decode_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_validate");
    let sign_hash = AsymmetricSignHashRequest {
        key_id: KEY_ID.into(),
        hash: vec![0x5a; 32],
    }
    .encode_to_vec();
    group.throughput(Throughput::Bytes(sign_hash.len() as u64));
    group.bench_function("SignHash", |b| {
        b.iter(|| {
            let req = AsymmetricSignHashRequest::decode(black_box(&sign_hash[..])).unwrap();
            validate::key_id("key_id", &req.key_id).unwrap();
            validate::hash(&req.hash).unwrap();
            req
        })
    });
    for size in [1024, 32 * 1024] {
        let body = AsymmetricSignRequest {
            key_id: KEY_ID.into(),
            message: vec![0x5a; size],
        }
        .encode_to_vec();
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(
            BenchmarkId::new("Sign", format!("{} KiB", size / 1024)),
            |b| {
                b.iter(|| {
                    let req = AsymmetricSignRequest::decode(black_box(&body[..])).unwrap();
                    validate::key_id("key_id", &req.key_id).unwrap();
                    validate::message(&req.message).unwrap();
                    req
                })
            },
        );
    }
    group.finish();
}

fn hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    for size in [1024, 32 * 1024] {
        let message = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        for alg in [
            Algorithm::EcdsaP256Sha256,
            Algorithm::EcdsaP384Sha384,
            Algorithm::EcdsaP521Sha512,
        ] {
            let h = alg.hash();
            group.bench_function(
                BenchmarkId::new(h.name(), format!("{} KiB", size / 1024)),
                |b| b.iter(|| h.digest(black_box(&message))),
            );
        }
    }
    group.finish();
}

fn ecdsa_der(c: &mut Criterion) {
    let mut group = c.benchmark_group("ecdsa_der");
    for curve in [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1] {
        // A high-S secp256k1 value makes the normalisation do its work.
        let mut raw = vec![0xc3; 2 * curve.scalar_len()];
        if curve == Curve::P521 {
            raw[0] = 0x01;
            raw[curve.scalar_len()] = 0x01;
        }
        group.bench_function(curve.name(), |b| {
            b.iter(|| ecdsa_der::raw_to_der(curve, black_box(&raw)).unwrap())
        });
    }
    group.finish();
}

/// A key pair made in software and the public key as the gateway holds it.
struct Fixture {
    algorithm: Algorithm,
    public_key: PublicKey,
    digest: Vec<u8>,
    signature: Vec<u8>,
}

fn fixture(algorithm: Algorithm) -> Fixture {
    let digest = algorithm
        .hash()
        .digest(b"p11kms verify-after-sign benchmark");
    let (public_key, signature) = match algorithm.key_kind() {
        KeyKind::Rsa { bits } => {
            let key = rsa::RsaPrivateKey::new(&mut OsRng, bits).expect("RSA key generation");
            let salt = algorithm.hash().digest_len();
            let scheme = |h| match h {
                p11kms::crypto::HashAlg::Sha256 => rsa::Pss::new_with_salt::<sha2::Sha256>(salt),
                p11kms::crypto::HashAlg::Sha384 => rsa::Pss::new_with_salt::<sha2::Sha384>(salt),
                p11kms::crypto::HashAlg::Sha512 => rsa::Pss::new_with_salt::<sha2::Sha512>(salt),
            };
            let signature = key
                .sign_with_rng(&mut OsRng, scheme(algorithm.hash()), &digest)
                .expect("PSS signing");
            let public = PublicKey::from_rsa(&key.n().to_bytes_be(), &key.e().to_bytes_be(), bits)
                .expect("RSA public key");
            (public, signature)
        }
        KeyKind::Ec(curve) => {
            let (point, der) = match curve {
                Curve::P256 => {
                    let k = p256::ecdsa::SigningKey::random(&mut OsRng);
                    let s: p256::ecdsa::Signature = k.sign_prehash(&digest).unwrap();
                    let p = k
                        .verifying_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec();
                    (p, s.to_der().as_bytes().to_vec())
                }
                Curve::P384 => {
                    let k = p384::ecdsa::SigningKey::random(&mut OsRng);
                    let s: p384::ecdsa::Signature = k.sign_prehash(&digest).unwrap();
                    let p = k
                        .verifying_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec();
                    (p, s.to_der().as_bytes().to_vec())
                }
                Curve::P521 => {
                    let k = p521::ecdsa::SigningKey::random(&mut OsRng);
                    let s: p521::ecdsa::Signature = k.sign_prehash(&digest).unwrap();
                    let p = p521::ecdsa::VerifyingKey::from(&k)
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec();
                    (p, s.to_der().as_bytes().to_vec())
                }
                Curve::Secp256k1 => {
                    let k = k256::ecdsa::SigningKey::random(&mut OsRng);
                    let s: k256::ecdsa::Signature = k.sign_prehash(&digest).unwrap();
                    let p = k
                        .verifying_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec();
                    (p, s.to_der().as_bytes().to_vec())
                }
            };
            (
                PublicKey::from_ec_point(curve, &point).expect("EC public key"),
                der,
            )
        }
    };
    public_key
        .verify_prehash(algorithm.scheme(), &digest, &signature)
        .expect("the fixture signature verifies");
    Fixture {
        algorithm,
        public_key,
        digest,
        signature,
    }
}

fn verify_after_sign(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify_after_sign");
    group.measurement_time(Duration::from_secs(3));
    for algorithm in Algorithm::ALL {
        let f = fixture(algorithm);
        group.bench_function(algorithm.name(), |b| {
            b.iter(|| {
                f.public_key
                    .verify_prehash(
                        f.algorithm.scheme(),
                        black_box(&f.digest),
                        black_box(&f.signature),
                    )
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// The NIST curves through `p256`/`p384`/`p521`'s own `verify_prehash` and RSA through the
/// `rsa` crate: what p11kms used before `crypto::ecdsa_verify` and `crypto::rsa_pss_verify`,
/// kept as the baseline for `verify_after_sign`.
fn verify_rustcrypto(c: &mut Criterion) {
    use signature::hazmat::PrehashVerifier as _;
    let mut group = c.benchmark_group("verify_rustcrypto");
    group.measurement_time(Duration::from_secs(3));
    let digest = [0x5a; 64];
    macro_rules! curve {
        ($name:literal, $krate:ident, $len:expr) => {{
            let key = $krate::ecdsa::SigningKey::random(&mut OsRng);
            let sig: $krate::ecdsa::Signature = key.sign_prehash(&digest[..$len]).unwrap();
            let verifying = $krate::ecdsa::VerifyingKey::from(&key);
            group.bench_function($name, |b| {
                b.iter(|| {
                    verifying
                        .verify_prehash(black_box(&digest[..$len]), black_box(&sig))
                        .unwrap()
                })
            });
        }};
    }
    curve!("ECDSA_NIST_P256_SHA_256", p256, 32);
    curve!("ECDSA_NIST_P384_SHA_384", p384, 48);
    curve!("ECDSA_NIST_P521_SHA_512", p521, 64);
    // RSA-PSS through the `rsa` crate's verifier, which p11kms used before
    // `crypto::rsa_pss_verify`.
    for (name, bits) in [
        ("RSA_PSS_2048_SHA_256", 2048),
        ("RSA_PSS_3072_SHA_256", 3072),
        ("RSA_PSS_4096_SHA_256", 4096),
    ] {
        let key = rsa::RsaPrivateKey::new(&mut OsRng, bits).expect("RSA key generation");
        let scheme = || rsa::Pss::new_with_salt::<sha2::Sha256>(32);
        let sig = key
            .sign_with_rng(&mut OsRng, scheme(), &digest[..32])
            .expect("PSS signing");
        let public = key.to_public_key();
        group.bench_function(name, |b| {
            b.iter(|| {
                public
                    .verify(scheme(), black_box(&digest[..32]), black_box(&sig))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn status_mapping(c: &mut Criterion) {
    let mut group = c.benchmark_group("status_mapping");
    group.bench_function("InvalidArgument", |b| {
        b.iter(|| {
            tonic::Status::from(Error::InvalidArgument(
                black_box("hash is 31 bytes, but key k signs SHA-256 digests of exactly 32 bytes")
                    .to_string(),
            ))
        })
    });
    group.bench_function("NotFound", |b| {
        b.iter(|| {
            tonic::Status::from(Error::not_found(
                p11kms::error::Missing::Key,
                format!("asymmetric signature key {} not found", black_box(KEY_ID)),
            ))
        })
    });
    group.bench_function("HsmError::PoolExhausted", |b| {
        b.iter(|| {
            tonic::Status::from(Error::from(HsmError::PoolExhausted(black_box(
                Duration::from_secs(2),
            ))))
        })
    });
    group.bench_function("HsmError::Recovering", |b| {
        b.iter(|| tonic::Status::from(Error::from(black_box(HsmError::Recovering))))
    });
    group.bench_function("HsmError::Key", |b| {
        b.iter(|| {
            tonic::Status::from(Error::from(HsmError::Key {
                key_id: black_box(KEY_ID).to_string(),
                reason: "the token now holds a different key".into(),
            }))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_validate,
    hash,
    ecdsa_der,
    verify_after_sign,
    verify_rustcrypto,
    status_mapping
);
criterion_main!(benches);
