//! Property test of the gateway's raw `r‖s` → DER conversion against RustCrypto's encoder on
//! every curve: byte-for-byte equal for r, s uniform in [1, n−1] and for the edge cases (leading
//! zero bytes, high bit set, tiny values, values next to n, P-521's 66-byte scalars). For
//! secp256k1 the gateway normalises to low-S, so the reference is RustCrypto's normalised
//! signature there. Wrong raw lengths are refused.

use p11kms::crypto::ecdsa_der::raw_to_der;
use p11kms::crypto::Curve;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per curve; about a second each in a debug build.
const CASES: u32 = 20_000;

/// `bytes − k` for a big-endian number larger than `k`.
fn sub_small(bytes: &[u8], k: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut borrow = u128::from(k);
    for b in out.iter_mut().rev() {
        if borrow == 0 {
            break;
        }
        let sub = (borrow & 0xff) as u8;
        borrow >>= 8;
        let (v, under) = b.overflowing_sub(sub);
        *b = v;
        if under {
            borrow += 1;
        }
    }
    assert_eq!(borrow, 0, "underflow");
    out
}

/// Scalars of `n_minus_1.len()` bytes: mostly uniform below 2^bits(n), plus edge cases.
/// Values outside [1, n−1] are discarded by the property (RustCrypto refuses them).
fn scalar(n_minus_1: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = n_minus_1.len();
    // Keep only the bits n has in its top byte (0xff for 256/384-bit curves, 0x01 for P-521).
    let top_mask = u8::MAX >> n_minus_1[0].leading_zeros();
    let bytes = move || proptest::collection::vec(any::<u8>(), len);
    let uniform = bytes().prop_map(move |mut v| {
        v[0] &= top_mask;
        v
    });
    let leading_zeros = (1..len, bytes()).prop_map(|(zeros, mut v)| {
        v[..zeros].fill(0);
        v
    });
    let high_bit = (0..len, bytes()).prop_map(move |(zeros, mut v)| {
        v[..zeros].fill(0);
        v[zeros] |= 0x80;
        v[0] &= top_mask;
        v
    });
    let tiny = (1u32..=0x1_0000).prop_map(move |x| {
        let mut v = vec![0; len];
        let be = x.to_be_bytes();
        v[len - 4..].copy_from_slice(&be);
        v
    });
    let near_order = (0u64..=1000).prop_map(move |k| sub_small(&n_minus_1, k));
    prop_oneof![
        10 => uniform,
        3 => leading_zeros,
        3 => high_bit,
        1 => tiny,
        1 => near_order,
    ]
    .boxed()
}

/// Runs the property for one curve. `reference` returns RustCrypto's DER for a raw signature,
/// or `None` when RustCrypto refuses it (r or s not in [1, n−1]).
fn check_curve(
    curve: Curve,
    n_minus_1: Vec<u8>,
    reference: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<(), String> {
    let half = n_minus_1.len();
    assert_eq!(half, curve.scalar_len());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        max_global_rejects: CASES / 10,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (scalar(n_minus_1.clone()), scalar(n_minus_1));
    runner
        .run(&strategy, |(r, s)| {
            let raw = [r, s].concat();
            let Some(expected) = reference(&raw) else {
                return Err(TestCaseError::reject("not a valid signature"));
            };
            let ours = raw_to_der(curve, &raw)
                .map_err(|e| TestCaseError::fail(format!("refused a valid signature: {e}")))?;
            prop_assert_eq!(
                hex::encode(&ours),
                hex::encode(&expected),
                "raw {}",
                hex::encode(&raw)
            );
            Ok(())
        })
        .map_err(|e| format!("{curve:?}: {e}"))?;

    // Wrong raw lengths are refused, never encoded.
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &proptest::collection::vec(any::<u8>(), 0..=2 * half + 8),
            |raw| {
                prop_assume!(raw.len() != 2 * half);
                prop_assert!(
                    raw_to_der(curve, &raw).is_err(),
                    "accepted {} bytes",
                    raw.len()
                );
                Ok(())
            },
        )
        .map_err(|e| format!("{curve:?} lengths: {e}"))
}

#[test]
fn p256_matches_rustcrypto() {
    let n_minus_1 = (-p256::Scalar::ONE).to_bytes().to_vec();
    check_curve(Curve::P256, n_minus_1, |raw| {
        let sig = p256::ecdsa::Signature::from_slice(raw).ok()?;
        Some(sig.to_der().as_bytes().to_vec())
    })
    .unwrap();
}

#[test]
fn p384_matches_rustcrypto() {
    let n_minus_1 = (-p384::Scalar::ONE).to_bytes().to_vec();
    check_curve(Curve::P384, n_minus_1, |raw| {
        let sig = p384::ecdsa::Signature::from_slice(raw).ok()?;
        Some(sig.to_der().as_bytes().to_vec())
    })
    .unwrap();
}

#[test]
fn p521_matches_rustcrypto() {
    let n_minus_1 = (-p521::Scalar::ONE).to_bytes().to_vec();
    assert_eq!(n_minus_1.len(), 66);
    check_curve(Curve::P521, n_minus_1, |raw| {
        let sig = p521::ecdsa::Signature::from_slice(raw).ok()?;
        Some(sig.to_der().as_bytes().to_vec())
    })
    .unwrap();
}

#[test]
fn secp256k1_matches_rustcrypto_after_low_s_normalisation() {
    let n_minus_1 = (-k256::Scalar::ONE).to_bytes().to_vec();
    check_curve(Curve::Secp256k1, n_minus_1, |raw| {
        let sig = k256::ecdsa::Signature::from_slice(raw).ok()?;
        let low = sig.normalize_s().unwrap_or(sig);
        assert!(low.normalize_s().is_none(), "normalised signature is low-S");
        Some(low.to_der().as_bytes().to_vec())
    })
    .unwrap();
}

/// Hand-picked edges, with the expected bytes written out rather than computed.
#[test]
fn hand_picked_edges() {
    // r = 1, s = 1: shortest INTEGERs.
    let mut raw = vec![0u8; 64];
    raw[31] = 1;
    raw[63] = 1;
    assert_eq!(
        raw_to_der(Curve::P256, &raw).unwrap(),
        [0x30, 6, 0x02, 1, 1, 0x02, 1, 1]
    );
    // High bit set: a 0x00 pad byte; leading zero bytes: stripped.
    let mut raw = vec![0u8; 64];
    raw[0] = 0x80;
    raw[33] = 0x7f; // s = 0x7f << 8*30 ..., after one leading zero byte
    raw[63] = 1;
    let der = raw_to_der(Curve::P256, &raw).unwrap();
    assert_eq!(&der[..5], &[0x30, 2 + 33 + 2 + 31, 0x02, 33, 0x00]);
    assert_eq!(der[5], 0x80);
    assert_eq!(&der[2 + 2 + 33..2 + 2 + 33 + 3], &[0x02, 31, 0x7f]);

    // P-521 with 66-byte scalars (n − 1): 66-byte INTEGERs and a long-form SEQUENCE length.
    let n_minus_1 = (-p521::Scalar::ONE).to_bytes().to_vec();
    let der = raw_to_der(
        Curve::P521,
        &[n_minus_1.clone(), n_minus_1.clone()].concat(),
    )
    .unwrap();
    assert_eq!(&der[..3], &[0x30, 0x81, 2 * (2 + 66)]);
    assert_eq!(&der[3..5], &[0x02, 66]);
    assert_eq!(&der[5..71], &n_minus_1[..]);

    // secp256k1 s = n − 1 is high: normalised to s = 1.
    let n_minus_1 = (-k256::Scalar::ONE).to_bytes().to_vec();
    let mut raw = vec![0u8; 32];
    raw[31] = 5;
    raw.extend_from_slice(&n_minus_1);
    assert_eq!(
        raw_to_der(Curve::Secp256k1, &raw).unwrap(),
        [0x30, 6, 0x02, 1, 5, 0x02, 1, 1]
    );
    // The same raw on P-256 (no normalisation there) keeps s as is.
    let p256_der = raw_to_der(Curve::P256, &raw).unwrap();
    assert!(p256_der.len() > 8);
}
