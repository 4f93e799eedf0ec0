//! ECDSA verification for verify-after-sign on the NIST curves, about three times as fast as
//! the RustCrypto default.
//!
//! Verifying computes `u1·G + u2·Q`. The `p256`/`p384`/`p521` crates (0.13, via `primeorder`)
//! do that as two separate constant-time scalar multiplications with no precomputation: 2 × 256
//! doublings plus a 16-way constant-time table select per window (`p11kms bench` measured
//! ~195 µs per P-256 verify, more than the token's own signing). Everything in a verification
//! is public (digest, signature, public key), so constant time buys nothing here. This module
//! computes the same sum with textbook variable-time methods instead:
//!
//! * Straus–Shamir with width-w NAF digits: one shared chain of doublings, additions only for
//!   the (sparse) non-zero digits;
//! * the chain is cut into [`SPLIT`] pieces: each scalar's digits are split into `SPLIT` runs of
//!   `c` bits, run k multiplying the point `2^(k·c)·P`. Those shifted points are computed once:
//!   per curve for G ([`GeneratorTables`]), per key for Q ([`KeyPowers`], when the public key is
//!   loaded), so a verification doubles only `c ≈ bits / 4` times instead of `2 × bits`.
//!
//! Only the *scheduling* of group operations is ours: points, additions, doublings, scalars
//! and the final comparison are the curve crates' own, and the checks before it (scalar
//! ranges at signature parsing, `bits2field` of the digest) are `ecdsa`'s. The tests compare
//! every answer with the RustCrypto verifier, for valid and tampered signatures.
//! secp256k1 is not routed here: `k256` already verifies with precomputed tables and an
//! endomorphism.

use ecdsa::elliptic_curve::group::{Curve as _, Group as _};
use ecdsa::elliptic_curve::ops::Invert as _;
use ecdsa::elliptic_curve::ops::Reduce;
use ecdsa::elliptic_curve::point::AffineCoordinates as _;
use ecdsa::elliptic_curve::{CurveArithmetic, FieldBytes, NonZeroScalar, PrimeField as _};
use ecdsa::PrimeCurve;
use std::sync::OnceLock;

/// NAF width for G: tables of 32 odd multiples, built once per curve.
const G_WINDOW: usize = 7;
/// NAF width for Q: tables of 4 odd multiples, built on every call (4 group operations each;
/// a width of 5 saves fewer additions than its larger tables cost).
const Q_WINDOW: usize = 4;
/// Pieces the doubling chain is cut into; each costs one shifted point per key (kept with the
/// key) and one small table per call.
const SPLIT: usize = 4;

/// Digits per piece: the NAF of a scalar has one digit more than the scalar has bits.
fn piece_len<C: CurveArithmetic>() -> usize {
    (FieldBytes::<C>::default().len() * 8 + 1).div_ceil(SPLIT)
}

/// `P, 2^c·P, 2^(2c)·P, …` for the [`SPLIT`] pieces.
fn shifted<C: CurveArithmetic>(p: C::ProjectivePoint) -> Vec<C::ProjectivePoint> {
    let c = piece_len::<C>();
    let mut out = Vec::with_capacity(SPLIT);
    out.push(p);
    for k in 1..SPLIT {
        let mut next = out[k - 1];
        for _ in 0..c {
            next = next.double();
        }
        out.push(next);
    }
    out
}

fn to_affine<C: CurveArithmetic>(points: &[C::ProjectivePoint]) -> Vec<C::AffinePoint> {
    let mut affine = vec![C::AffinePoint::default(); points.len()];
    C::ProjectivePoint::batch_normalize(points, &mut affine);
    affine
}

/// A public key's shifted points `2^(k·c)·Q`, computed once when the key is loaded
/// (about half a verification's work).
#[derive(Clone, Debug)]
pub(crate) struct KeyPowers<C: CurveArithmetic>(Vec<C::AffinePoint>);

impl<C: CurveArithmetic> KeyPowers<C> {
    pub(crate) fn new(q: &C::AffinePoint) -> Self {
        Self(to_affine::<C>(&shifted::<C>(C::ProjectivePoint::from(*q))))
    }
}

/// Odd multiples `P, 3P, 5P, …, (2^(w−1) − 1)·P` of each of G's shifted points, in affine form
/// for mixed additions.
pub(crate) struct GeneratorTables<C: CurveArithmetic>(Vec<Vec<C::AffinePoint>>);

impl<C: CurveArithmetic> GeneratorTables<C> {
    fn new() -> Self {
        Self(
            shifted::<C>(C::ProjectivePoint::generator())
                .into_iter()
                .map(|p| to_affine::<C>(&odd_multiples::<C>(p, G_WINDOW)))
                .collect(),
        )
    }
}

fn odd_multiples<C: CurveArithmetic>(
    p: C::ProjectivePoint,
    window: usize,
) -> Vec<C::ProjectivePoint> {
    let count = 1 << (window - 2);
    let twice = p.double();
    let mut out = Vec::with_capacity(count);
    out.push(p);
    for i in 1..count {
        let next = out[i - 1] + twice;
        out.push(next);
    }
    out
}

/// The P-256 generator tables (built on first use).
pub(crate) fn p256_generator() -> &'static GeneratorTables<p256::NistP256> {
    static TABLES: OnceLock<GeneratorTables<p256::NistP256>> = OnceLock::new();
    TABLES.get_or_init(GeneratorTables::new)
}

/// The P-384 generator tables (built on first use).
pub(crate) fn p384_generator() -> &'static GeneratorTables<p384::NistP384> {
    static TABLES: OnceLock<GeneratorTables<p384::NistP384>> = OnceLock::new();
    TABLES.get_or_init(GeneratorTables::new)
}

/// The P-521 generator tables (built on first use).
pub(crate) fn p521_generator() -> &'static GeneratorTables<p521::NistP521> {
    static TABLES: OnceLock<GeneratorTables<p521::NistP521>> = OnceLock::new();
    TABLES.get_or_init(GeneratorTables::new)
}

/// Verifies the signature `(r, s)` (from `Signature::split_scalars`) over `prehash` under the
/// public key whose shifted points are `q`, exactly as `ecdsa`'s `VerifyingKey::verify_prehash`
/// does, with `g` the generator's tables.
pub(crate) fn verify_prehash<C>(
    g: &GeneratorTables<C>,
    q: &KeyPowers<C>,
    prehash: &[u8],
    (r, s): (NonZeroScalar<C>, NonZeroScalar<C>),
) -> bool
where
    C: PrimeCurve + CurveArithmetic,
{
    // The digest's leftmost bits as a field-sized integer (ecdsa's own conversion, which also
    // refuses a digest shorter than half the field), reduced mod n.
    let Ok(z) = ecdsa::hazmat::bits2field::<C>(prehash) else {
        return false;
    };
    let z = <C::Scalar as Reduce<C::Uint>>::reduce_bytes(&z);
    // r and s are in [1, n − 1]: `Signature` checks that when it is parsed.
    let s_inv = *s.invert_vartime();
    let u1 = z * s_inv;
    let u2 = *r * s_inv;

    let x = lincomb::<C>(
        g,
        &wnaf(&u1.to_repr(), G_WINDOW),
        q,
        &wnaf(&u2.to_repr(), Q_WINDOW),
    )
    .to_affine()
    .x();
    // The point at infinity has x = 0 here, which never equals r (r ≠ 0).
    *r == <C::Scalar as Reduce<C::Uint>>::reduce_bytes(&x)
}

/// `Σ u1_i·2^i·G + Σ u2_i·2^i·Q` from the NAF digits, doubling `c` times: digit `k·c + j` of a
/// scalar is added at step `j`, from the table of the shifted point `2^(k·c)·P`.
fn lincomb<C: CurveArithmetic>(
    g: &GeneratorTables<C>,
    u1: &[i8],
    q: &KeyPowers<C>,
    u2: &[i8],
) -> C::ProjectivePoint {
    let c = piece_len::<C>();
    // Projective: converting Q's small tables to affine costs more than mixed additions save.
    let q_tables: Vec<Vec<C::ProjectivePoint>> =
        q.0.iter()
            .map(|p| odd_multiples::<C>(C::ProjectivePoint::from(*p), Q_WINDOW))
            .collect();
    let digit = |d: &[i8], i: usize| d.get(i).copied().unwrap_or(0);
    let mut acc = C::ProjectivePoint::identity();
    for j in (0..c).rev() {
        acc = acc.double();
        for (k, (g_table, q_table)) in g.0.iter().zip(&q_tables).enumerate() {
            // Digits are odd, so |d| / 2 indexes a table of odd multiples.
            match digit(u1, k * c + j) {
                0 => {}
                d if d > 0 => acc += &g_table[(d / 2) as usize],
                d => acc -= &g_table[(-d / 2) as usize],
            }
            match digit(u2, k * c + j) {
                0 => {}
                d if d > 0 => acc += q_table[(d / 2) as usize],
                d => acc -= q_table[(-d / 2) as usize],
            }
        }
    }
    acc
}

/// The width-`w` non-adjacent form of a big-endian integer, least significant digit first:
/// every non-zero digit is odd, |d| < 2^(w−1), and any w consecutive digits hold at most one
/// non-zero digit.
fn wnaf(be: &[u8], w: usize) -> Vec<i8> {
    debug_assert!((2..=7).contains(&w));
    let bits = be.len() * 8;
    // Little-endian 64-bit limbs, with a zero limb on top for the window reads past the end.
    let mut limbs = vec![0u64; bits.div_ceil(64) + 1];
    for (i, byte) in be.iter().rev().enumerate() {
        limbs[i / 8] |= u64::from(*byte) << (8 * (i % 8));
    }
    let width = 1u64 << w;
    let mask = width - 1;
    // One extra digit for a final carry.
    let mut digits = vec![0i8; bits + 1];
    let mut carry = 0u64;
    let mut pos = 0;
    while pos <= bits {
        let (limb, bit) = (pos / 64, pos % 64);
        let mut buf = limbs[limb] >> bit;
        if bit + w > 64 {
            buf |= limbs[limb + 1] << (64 - bit);
        }
        let window = carry + (buf & mask);
        if window & 1 == 0 {
            pos += 1;
            continue;
        }
        let digit = if window < width / 2 {
            carry = 0;
            window as i64
        } else {
            carry = 1;
            window as i64 - width as i64
        };
        digits[pos] = digit as i8;
        pos += w;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{OsRng, RngCore as _};
    use signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};

    /// Σ d_i·2^i, for values that fit an i128.
    fn naf_value(digits: &[i8]) -> i128 {
        digits
            .iter()
            .enumerate()
            .map(|(i, &d)| i128::from(d) << i)
            .sum()
    }

    #[test]
    fn wnaf_digits_add_up_and_are_sparse() {
        for w in 2..=7 {
            for _ in 0..2000 {
                let mut be = [0u8; 15];
                OsRng.fill_bytes(&mut be);
                if OsRng.next_u32() % 4 == 0 {
                    be[0] = 0xff; // a carry out of the top window
                }
                let value = be.iter().fold(0i128, |acc, &b| (acc << 8) | i128::from(b));
                let digits = wnaf(&be, w);
                assert_eq!(naf_value(&digits), value, "w={w} {be:02x?}");
                let bound = 1i8 << (w - 1);
                for (i, &d) in digits.iter().enumerate() {
                    if d != 0 {
                        assert!(d % 2 != 0 && d.abs() < bound, "w={w} digit {d}");
                        assert!(digits[i + 1..].iter().take(w - 1).all(|&n| n == 0));
                    }
                }
            }
        }
        assert!(wnaf(&[0; 32], 5).iter().all(|&d| d == 0));
    }

    /// Our answer and RustCrypto's for a signature over `digest`, and for tampered variants.
    macro_rules! agrees_with_rustcrypto {
        ($name:ident, $krate:ident, $table:ident, $digest_lens:expr) => {
            #[test]
            fn $name() {
                let ours =
                    |k: &$krate::ecdsa::VerifyingKey, d: &[u8], s: &$krate::ecdsa::Signature| {
                        verify_prehash(
                            $table(),
                            &KeyPowers::new(k.as_affine()),
                            d,
                            s.split_scalars(),
                        )
                    };
                for round in 0..40 {
                    let sk = $krate::ecdsa::SigningKey::random(&mut OsRng);
                    let vk = $krate::ecdsa::VerifyingKey::from(&sk);
                    let other = $krate::ecdsa::VerifyingKey::from(
                        &$krate::ecdsa::SigningKey::random(&mut OsRng),
                    );
                    for len in $digest_lens {
                        let mut digest = vec![0u8; len];
                        if round > 0 {
                            OsRng.fill_bytes(&mut digest); // round 0: an all-zero digest (u1 = 0)
                        }
                        let sig: $krate::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
                        let theirs = |k: &$krate::ecdsa::VerifyingKey, d: &[u8], s| {
                            k.verify_prehash(d, s).is_ok()
                        };
                        assert!(ours(&vk, &digest, &sig), "a valid signature is refused");
                        assert!(theirs(&vk, &digest, &sig));

                        // The leftmost bits: a digest longer than the field is truncated.
                        let mut bad = digest.clone();
                        bad[0] ^= 1;
                        assert!(!ours(&vk, &bad, &sig), "a wrong digest is accepted");
                        assert!(!ours(&other, &digest, &sig), "a wrong key is accepted");

                        // (r, n − s) is valid too; (s, r) and a random (r, s) are not.
                        let (r, s) = sig.split_scalars();
                        let negated = $krate::ecdsa::Signature::from_scalars(*r, -*s).unwrap();
                        assert!(ours(&vk, &digest, &negated));
                        assert!(theirs(&vk, &digest, &negated));
                        let swapped = $krate::ecdsa::Signature::from_scalars(*s, *r).unwrap();
                        assert_eq!(ours(&vk, &digest, &swapped), theirs(&vk, &digest, &swapped));
                        let random: $krate::ecdsa::Signature =
                            $krate::ecdsa::SigningKey::random(&mut OsRng)
                                .sign_prehash(&digest)
                                .unwrap();
                        assert!(!ours(&vk, &digest, &random));
                        assert!(!theirs(&vk, &digest, &random));
                    }
                }
                // Shorter than half the field: refused by both.
                let sk = $krate::ecdsa::SigningKey::random(&mut OsRng);
                let sig: $krate::ecdsa::Signature = sk.sign_prehash(&[7; 48]).unwrap();
                let vk = $krate::ecdsa::VerifyingKey::from(&sk);
                assert!(!ours(&vk, &[7; 8], &sig));
            }
        };
    }

    agrees_with_rustcrypto!(p256_agrees, p256, p256_generator, [32, 48, 64]);
    agrees_with_rustcrypto!(p384_agrees, p384, p384_generator, [48, 32, 64]);
    agrees_with_rustcrypto!(p521_agrees, p521, p521_generator, [64, 66, 48]);
}
