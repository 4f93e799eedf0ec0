//! ECDSA signature encoding: PKCS#11 returns raw `r‖s`, the Yandex API returns DER.
//!
//! The DER form is `SEQUENCE { INTEGER r, INTEGER s }` (X9.62, RFC 3279 §2.2.3): minimal positive
//! INTEGERs, and a long-form length where the content exceeds 127 bytes (P-521).

use super::algorithm::Curve;
use der::asn1::UintRef;
use der::{Encode, Sequence};

/// A raw signature was not two scalars of the curve's size.
#[derive(Debug, thiserror::Error)]
#[error("raw ECDSA signature for {curve} is {actual} bytes, expected {expected}")]
pub struct RawSignatureLength {
    curve: &'static str,
    actual: usize,
    expected: usize,
}

#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// Largest DER signature for any supported curve (P-521: 3 + 2 × (2 + 67)).
pub const MAX_DER_LEN: usize = 141;

/// Converts a raw `r‖s` signature from the token into DER.
///
/// secp256k1 signatures are normalised to low-S first: tokens return either form, and
/// secp256k1 verifiers (RustCrypto `k256`, Bitcoin, Ethereum) reject high-S. `(r, n − s)` is
/// the same signature to every standard ECDSA verifier.
///
/// # Errors
/// When `raw` is not exactly twice the curve's scalar length; PKCS#11 says token-made
/// signatures always are, so anything else means a faulty token.
pub fn raw_to_der(curve: Curve, raw: &[u8]) -> Result<Vec<u8>, RawSignatureLength> {
    let half = curve.scalar_len();
    if raw.len() != 2 * half {
        return Err(RawSignatureLength {
            curve: curve.name(),
            actual: raw.len(),
            expected: 2 * half,
        });
    }
    let low_s;
    let raw = if curve == Curve::Secp256k1 {
        low_s = k256::ecdsa::Signature::from_slice(raw)
            .ok()
            .and_then(|sig| sig.normalize_s())
            .map(|sig| sig.to_bytes());
        low_s.as_ref().map_or(raw, |b| &b[..])
    } else {
        raw
    };
    let (r, s) = raw.split_at(half);
    // UintRef strips leading zero bytes and re-adds a single 0x00 where the high bit is set;
    // both constructors and the encoder are infallible for inputs this small.
    let value = EcdsaSigValue {
        r: UintRef::new(r).expect("scalar fits a DER INTEGER"),
        s: UintRef::new(s).expect("scalar fits a DER INTEGER"),
    };
    let mut out = Vec::with_capacity(MAX_DER_LEN);
    value
        .encode_to_vec(&mut out)
        .expect("ECDSA signature DER fits in memory");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_raw_length() {
        assert!(raw_to_der(Curve::P256, &[1; 63]).is_err());
        assert!(raw_to_der(Curve::P256, &[1; 65]).is_err());
        assert!(raw_to_der(Curve::P521, &[1; 128]).is_err());
    }

    #[test]
    fn p521_uses_long_form_length() {
        let der = raw_to_der(Curve::P521, &[0xff; 132]).unwrap();
        // 0x30 0x81 len: content is 2 × (2 + 67) = 138 bytes.
        assert_eq!(&der[..3], &[0x30, 0x81, 138]);
        assert_eq!(der.len(), MAX_DER_LEN);
    }

    #[test]
    fn leading_zeros_are_stripped_and_high_bits_padded() {
        let mut raw = [0u8; 64];
        raw[31] = 0x01; // r = 1
        raw[32] = 0x80; // s has its high bit set
        let der = raw_to_der(Curve::P256, &raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 2 + 1 + 2 + 33, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
    }
}
