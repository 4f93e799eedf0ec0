//! The 13 Yandex `AsymmetricSignatureAlgorithm` values and what each one means for keys and hashes.

use super::scheme::{KeySpec, Scheme};
use std::fmt;

/// Hash function of an algorithm; `Sign` hashes in software with it, `SignHash` expects its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-256, 32-byte digest.
    Sha256,
    /// SHA-384, 48-byte digest.
    Sha384,
    /// SHA-512, 64-byte digest.
    Sha512,
}

impl HashAlg {
    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// Hash `message` in software.
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            HashAlg::Sha256 => sha2::Sha256::digest(message).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(message).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(message).to_vec(),
        }
    }

    /// Conventional name, as used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha384 => "SHA-384",
            HashAlg::Sha512 => "SHA-512",
        }
    }
}

/// Named elliptic curves used by the ECDSA algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// secp256k1.
    Secp256k1,
}

impl Curve {
    /// The namedCurve OID.
    pub const fn oid(self) -> der::asn1::ObjectIdentifier {
        use der::asn1::ObjectIdentifier as Oid;
        match self {
            Curve::P256 => Oid::new_unwrap("1.2.840.10045.3.1.7"),
            Curve::P384 => Oid::new_unwrap("1.3.132.0.34"),
            Curve::P521 => Oid::new_unwrap("1.3.132.0.35"),
            Curve::Secp256k1 => Oid::new_unwrap("1.3.132.0.10"),
        }
    }

    /// Length in bytes of a field element and of each of r and s in a raw signature.
    pub const fn scalar_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// Conventional name, as used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::Secp256k1 => "secp256k1",
        }
    }
}

/// The kind of key an algorithm needs on the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with this modulus size in bits, signing with RSASSA-PSS.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// ECDSA on this curve.
    Ec(Curve),
}

/// A Yandex `AsymmetricSignatureAlgorithm`; the discriminants are the wire enum values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum Algorithm {
    /// RSA 2048, PSS, SHA-256.
    Rsa2048PssSha256 = 1,
    /// RSA 2048, PSS, SHA-384.
    Rsa2048PssSha384 = 2,
    /// RSA 2048, PSS, SHA-512.
    Rsa2048PssSha512 = 3,
    /// RSA 3072, PSS, SHA-256.
    Rsa3072PssSha256 = 4,
    /// RSA 3072, PSS, SHA-384.
    Rsa3072PssSha384 = 5,
    /// RSA 3072, PSS, SHA-512.
    Rsa3072PssSha512 = 6,
    /// RSA 4096, PSS, SHA-256.
    Rsa4096PssSha256 = 7,
    /// RSA 4096, PSS, SHA-384.
    Rsa4096PssSha384 = 8,
    /// RSA 4096, PSS, SHA-512.
    Rsa4096PssSha512 = 9,
    /// ECDSA P-256 with SHA-256.
    EcdsaP256Sha256 = 10,
    /// ECDSA P-384 with SHA-384.
    EcdsaP384Sha384 = 11,
    /// ECDSA P-521 with SHA-512.
    EcdsaP521Sha512 = 12,
    /// ECDSA secp256k1 with SHA-256.
    EcdsaSecp256k1Sha256 = 13,
}

impl Algorithm {
    /// Every supported algorithm, in wire order.
    pub const ALL: [Algorithm; 13] = [
        Algorithm::Rsa2048PssSha256,
        Algorithm::Rsa2048PssSha384,
        Algorithm::Rsa2048PssSha512,
        Algorithm::Rsa3072PssSha256,
        Algorithm::Rsa3072PssSha384,
        Algorithm::Rsa3072PssSha512,
        Algorithm::Rsa4096PssSha256,
        Algorithm::Rsa4096PssSha384,
        Algorithm::Rsa4096PssSha512,
        Algorithm::EcdsaP256Sha256,
        Algorithm::EcdsaP384Sha384,
        Algorithm::EcdsaP521Sha512,
        Algorithm::EcdsaSecp256k1Sha256,
    ];

    /// The wire enum value.
    pub const fn to_proto(self) -> i32 {
        self as i32
    }

    /// Parses a wire enum value; `None` for UNSPECIFIED and unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.to_proto() == value)
    }

    /// The proto enum name, e.g. `ECDSA_NIST_P256_SHA_256`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Rsa2048PssSha256 => "RSA_2048_SIGN_PSS_SHA_256",
            Algorithm::Rsa2048PssSha384 => "RSA_2048_SIGN_PSS_SHA_384",
            Algorithm::Rsa2048PssSha512 => "RSA_2048_SIGN_PSS_SHA_512",
            Algorithm::Rsa3072PssSha256 => "RSA_3072_SIGN_PSS_SHA_256",
            Algorithm::Rsa3072PssSha384 => "RSA_3072_SIGN_PSS_SHA_384",
            Algorithm::Rsa3072PssSha512 => "RSA_3072_SIGN_PSS_SHA_512",
            Algorithm::Rsa4096PssSha256 => "RSA_4096_SIGN_PSS_SHA_256",
            Algorithm::Rsa4096PssSha384 => "RSA_4096_SIGN_PSS_SHA_384",
            Algorithm::Rsa4096PssSha512 => "RSA_4096_SIGN_PSS_SHA_512",
            Algorithm::EcdsaP256Sha256 => "ECDSA_NIST_P256_SHA_256",
            Algorithm::EcdsaP384Sha384 => "ECDSA_NIST_P384_SHA_384",
            Algorithm::EcdsaP521Sha512 => "ECDSA_NIST_P521_SHA_512",
            Algorithm::EcdsaSecp256k1Sha256 => "ECDSA_SECP256_K1_SHA_256",
        }
    }

    /// Parses a proto enum name (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The lower-case kebab form the Yandex CLI uses, e.g. `ecdsa-nist-p256-sha-256`.
    pub fn kebab_name(self) -> String {
        self.name().to_ascii_lowercase().replace('_', "-")
    }

    /// The hash this algorithm signs.
    pub const fn hash(self) -> HashAlg {
        match self {
            Algorithm::Rsa2048PssSha256
            | Algorithm::Rsa3072PssSha256
            | Algorithm::Rsa4096PssSha256
            | Algorithm::EcdsaP256Sha256
            | Algorithm::EcdsaSecp256k1Sha256 => HashAlg::Sha256,
            Algorithm::Rsa2048PssSha384
            | Algorithm::Rsa3072PssSha384
            | Algorithm::Rsa4096PssSha384
            | Algorithm::EcdsaP384Sha384 => HashAlg::Sha384,
            Algorithm::Rsa2048PssSha512
            | Algorithm::Rsa3072PssSha512
            | Algorithm::Rsa4096PssSha512
            | Algorithm::EcdsaP521Sha512 => HashAlg::Sha512,
        }
    }

    /// The key this algorithm needs.
    pub const fn key_kind(self) -> KeyKind {
        match self {
            Algorithm::Rsa2048PssSha256
            | Algorithm::Rsa2048PssSha384
            | Algorithm::Rsa2048PssSha512 => KeyKind::Rsa { bits: 2048 },
            Algorithm::Rsa3072PssSha256
            | Algorithm::Rsa3072PssSha384
            | Algorithm::Rsa3072PssSha512 => KeyKind::Rsa { bits: 3072 },
            Algorithm::Rsa4096PssSha256
            | Algorithm::Rsa4096PssSha384
            | Algorithm::Rsa4096PssSha512 => KeyKind::Rsa { bits: 4096 },
            Algorithm::EcdsaP256Sha256 => KeyKind::Ec(Curve::P256),
            Algorithm::EcdsaP384Sha384 => KeyKind::Ec(Curve::P384),
            Algorithm::EcdsaP521Sha512 => KeyKind::Ec(Curve::P521),
            Algorithm::EcdsaSecp256k1Sha256 => KeyKind::Ec(Curve::Secp256k1),
        }
    }

    /// True for the RSA-PSS algorithms.
    pub const fn is_rsa(self) -> bool {
        matches!(self.key_kind(), KeyKind::Rsa { .. })
    }

    /// The scheme this algorithm signs with.
    pub const fn scheme(self) -> Scheme {
        match self.key_kind() {
            KeyKind::Rsa { .. } => Scheme::RsaPss(self.hash()),
            KeyKind::Ec(_) => Scheme::Ecdsa(self.hash()),
        }
    }

    /// The key spec this algorithm needs.
    pub fn spec(self) -> KeySpec {
        KeySpec::of(self.key_kind()).expect("every algorithm's key kind is a spec")
    }

    /// The algorithm that signs with `scheme` on a key of `spec`, if there is one.
    pub fn of(spec: KeySpec, scheme: Scheme) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.spec() == spec && a.scheme() == scheme)
    }

    /// The algorithm a key of `spec` signs with when no scheme is named: PSS with SHA-256 for
    /// RSA, ECDSA with the curve's hash. `None` for SM2.
    pub fn default_for(spec: KeySpec) -> Option<Self> {
        Some(match spec {
            KeySpec::Rsa2048 => Algorithm::Rsa2048PssSha256,
            KeySpec::Rsa3072 => Algorithm::Rsa3072PssSha256,
            KeySpec::Rsa4096 => Algorithm::Rsa4096PssSha256,
            KeySpec::EcP256 => Algorithm::EcdsaP256Sha256,
            KeySpec::EcP384 => Algorithm::EcdsaP384Sha384,
            KeySpec::EcP521 => Algorithm::EcdsaP521Sha512,
            KeySpec::EcSecp256k1 => Algorithm::EcdsaSecp256k1Sha256,
            KeySpec::Sm2 => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_values_and_names_round_trip() {
        for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
            assert_eq!(alg.to_proto(), i as i32 + 1);
            assert_eq!(Algorithm::from_proto(alg.to_proto()), Some(alg));
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_proto(0), None);
        assert_eq!(Algorithm::from_proto(14), None);
        assert_eq!(Algorithm::from_name("ECDSA_NIST_SECP256_K1_SHA_256"), None);
    }

    #[test]
    fn kebab_names_follow_the_cli() {
        assert_eq!(
            Algorithm::Rsa4096PssSha512.kebab_name(),
            "rsa-4096-sign-pss-sha-512"
        );
        assert_eq!(
            Algorithm::EcdsaP256Sha256.kebab_name(),
            "ecdsa-nist-p256-sha-256"
        );
    }

    #[test]
    fn digests_have_the_declared_length() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.hash().digest(b"x").len(), alg.hash().digest_len());
        }
    }
}
