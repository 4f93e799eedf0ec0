//! Signature schemes and key specs in the core's own vocabulary, independent of any KMS's names.
//!
//! A key has a [`KeySpec`] (what the key pair is) and signs with a [`Scheme`] (padding or
//! signature algorithm, and the hash of the digest it signs). Each front names these its own way
//! — Yandex folds both into one `AsymmetricSignatureAlgorithm` ([`super::Algorithm`]), Alibaba
//! names the spec (`EC_P256`) and the scheme (`ECDSA_SHA_256`) separately — and maps them here.

use super::algorithm::{Curve, HashAlg, KeyKind};
use std::fmt;

/// What a key pair is. SM2 is part of the vocabulary, but no supported token can make or use
/// SM2 keys: see [`KeySpec::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// NIST P-256.
    EcP256,
    /// NIST P-384.
    EcP384,
    /// NIST P-521.
    EcP521,
    /// secp256k1.
    EcSecp256k1,
    /// SM2 (GB/T 32918).
    Sm2,
}

/// No PKCS#11 token p11kms runs on offers SM2: SoftHSMv2, kryoptic and NSS softokn have no SM2
/// key generation or signing mechanism. The one place a token's SM2 mechanism would plug in is
/// [`KeySpec::kind`] (a `KeyKind` for SM2 keys) together with `hsm::mechanism::sign_mechanism`
/// (its signing mechanism, e.g. a vendor `CKM_SM2`-style constant) and an SM3/Z(A) digest.
pub const SM2_UNSUPPORTED: &str =
    "the token offers no SM2 signing mechanism (SoftHSMv2, kryoptic and NSS have none), so SM2 keys cannot be created or used; choose an RSA or EC key spec";

impl KeySpec {
    /// The key pair the token holds for this spec; `Err` with [`SM2_UNSUPPORTED`] for SM2.
    ///
    /// # Errors
    /// For SM2.
    pub fn kind(self) -> Result<KeyKind, &'static str> {
        Ok(match self {
            KeySpec::Rsa2048 => KeyKind::Rsa { bits: 2048 },
            KeySpec::Rsa3072 => KeyKind::Rsa { bits: 3072 },
            KeySpec::Rsa4096 => KeyKind::Rsa { bits: 4096 },
            KeySpec::EcP256 => KeyKind::Ec(Curve::P256),
            KeySpec::EcP384 => KeyKind::Ec(Curve::P384),
            KeySpec::EcP521 => KeyKind::Ec(Curve::P521),
            KeySpec::EcSecp256k1 => KeyKind::Ec(Curve::Secp256k1),
            KeySpec::Sm2 => return Err(SM2_UNSUPPORTED),
        })
    }

    /// The spec of a key pair.
    pub fn of(kind: KeyKind) -> Option<Self> {
        Some(match kind {
            KeyKind::Rsa { bits: 2048 } => KeySpec::Rsa2048,
            KeyKind::Rsa { bits: 3072 } => KeySpec::Rsa3072,
            KeyKind::Rsa { bits: 4096 } => KeySpec::Rsa4096,
            KeyKind::Rsa { .. } => return None,
            KeyKind::Ec(Curve::P256) => KeySpec::EcP256,
            KeyKind::Ec(Curve::P384) => KeySpec::EcP384,
            KeyKind::Ec(Curve::P521) => KeySpec::EcP521,
            KeyKind::Ec(Curve::Secp256k1) => KeySpec::EcSecp256k1,
        })
    }

    /// A readable name for messages, e.g. `RSA-2048`, `EC P-256`.
    pub const fn name(self) -> &'static str {
        match self {
            KeySpec::Rsa2048 => "RSA-2048",
            KeySpec::Rsa3072 => "RSA-3072",
            KeySpec::Rsa4096 => "RSA-4096",
            KeySpec::EcP256 => "EC P-256",
            KeySpec::EcP384 => "EC P-384",
            KeySpec::EcP521 => "EC P-521",
            KeySpec::EcSecp256k1 => "EC secp256k1",
            KeySpec::Sm2 => "SM2",
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a digest is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// RSASSA-PSS, MGF1 with the same hash, salt as long as the digest (`CKM_RSA_PKCS_PSS`).
    RsaPss(HashAlg),
    /// RSASSA-PKCS1-v1_5 (`CKM_RSA_PKCS` over a DigestInfo the gateway builds).
    RsaPkcs1(HashAlg),
    /// ECDSA over the digest (`CKM_ECDSA`), DER-encoded.
    Ecdsa(HashAlg),
    /// SM2 signatures; never available (see [`SM2_UNSUPPORTED`]).
    Sm2,
}

impl Scheme {
    /// The hash whose digests this scheme signs; `None` for SM2 (SM3, unsupported).
    pub const fn hash(self) -> Option<HashAlg> {
        match self {
            Scheme::RsaPss(h) | Scheme::RsaPkcs1(h) | Scheme::Ecdsa(h) => Some(h),
            Scheme::Sm2 => None,
        }
    }

    /// Whether a key pair of `kind` can sign with this scheme.
    pub const fn fits(self, kind: KeyKind) -> bool {
        matches!(
            (self, kind),
            (Scheme::RsaPss(_) | Scheme::RsaPkcs1(_), KeyKind::Rsa { .. })
                | (Scheme::Ecdsa(_), KeyKind::Ec(_))
        )
    }

    /// True for the RSA schemes (always verified after signing: CRT fault attacks).
    pub const fn is_rsa(self) -> bool {
        matches!(self, Scheme::RsaPss(_) | Scheme::RsaPkcs1(_))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::RsaPss(h) => write!(f, "RSA-PSS with {}", h.name()),
            Scheme::RsaPkcs1(h) => write!(f, "RSA PKCS#1 v1.5 with {}", h.name()),
            Scheme::Ecdsa(h) => write!(f, "ECDSA with {}", h.name()),
            Scheme::Sm2 => f.write_str("SM2"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;

    #[test]
    fn every_yandex_algorithm_is_a_spec_and_a_scheme_that_fit() {
        for alg in Algorithm::ALL {
            let kind = alg.key_kind();
            assert_eq!(KeySpec::of(kind).unwrap().kind(), Ok(kind));
            assert!(alg.scheme().fits(kind), "{alg}");
            assert_eq!(alg.scheme().hash(), Some(alg.hash()));
            assert_eq!(
                Algorithm::of(KeySpec::of(kind).unwrap(), alg.scheme()),
                Some(alg)
            );
        }
    }

    #[test]
    fn sm2_is_refused_with_the_reason() {
        assert_eq!(KeySpec::Sm2.kind(), Err(SM2_UNSUPPORTED));
        assert!(SM2_UNSUPPORTED.contains("no SM2 signing mechanism"));
        assert_eq!(Scheme::Sm2.hash(), None);
        assert!(!Scheme::Sm2.fits(KeyKind::Ec(Curve::P256)));
        assert!(!Scheme::Ecdsa(HashAlg::Sha256).fits(KeyKind::Rsa { bits: 2048 }));
        assert!(Scheme::RsaPkcs1(HashAlg::Sha256).fits(KeyKind::Rsa { bits: 3072 }));
    }
}
