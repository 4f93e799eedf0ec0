//! Public keys read from the token: checked, encoded as SPKI/PEM, and used to verify signatures.
//!
//! Verification here is the gateway's own check of the token's output (verify-after-sign); it is
//! RustCrypto, independent of the token that made the signature.

use super::algorithm::{Algorithm, Curve, KeyKind};
use super::ecdsa_verify;
use super::rsa_verify::RsaKey;
use super::scheme::Scheme;
use der::{asn1::OctetString, Decode};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};
use signature::hazmat::PrehashVerifier;

/// A public key failed to parse or does not fit the declared algorithm.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    /// The EC point is not a valid point on the expected curve.
    #[error("the EC point is not a valid {0} point")]
    BadPoint(&'static str),
    /// RSA modulus or exponent are unusable.
    #[error("the RSA public key is invalid: {0}")]
    BadRsa(String),
    /// The key's size or curve differs from what the algorithm needs.
    #[error("{0}")]
    Mismatch(String),
    /// SPKI encoding failed.
    #[error("cannot encode the public key as SPKI: {0}")]
    Encode(String),
}

/// A signature did not verify under the key's public key.
#[derive(Debug, thiserror::Error)]
#[error("signature does not verify under the key's public key")]
pub struct VerifyError;

#[derive(Clone)]
enum Verifier {
    /// The modulus's Montgomery constants, for the fast verifier.
    Rsa(RsaKey),
    /// Q and its shifted points, for the fast verifier.
    P256(ecdsa_verify::KeyPowers<p256::NistP256>),
    /// Q and its shifted points, for the fast verifier.
    P384(ecdsa_verify::KeyPowers<p384::NistP384>),
    /// Q and its shifted points, for the fast verifier.
    P521(ecdsa_verify::KeyPowers<p521::NistP521>),
    K256(k256::ecdsa::VerifyingKey),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verifier::Rsa(_) => "Rsa",
            Verifier::P256(_) => "P256",
            Verifier::P384(_) => "P384",
            Verifier::P521(_) => "P521",
            Verifier::K256(_) => "K256",
        })
    }
}

/// A checked public key with its SPKI encodings, ready to verify signatures.
#[derive(Clone, Debug)]
pub struct PublicKey {
    spki_der: Vec<u8>,
    pem: String,
    verifier: Verifier,
}

impl PublicKey {
    /// Builds an RSA key from big-endian modulus and exponent, checking the modulus size.
    ///
    /// # Errors
    /// When the values are not a usable RSA key or the modulus is not `bits` long.
    pub fn from_rsa(modulus: &[u8], exponent: &[u8], bits: usize) -> Result<Self, PublicKeyError> {
        let n = rsa::BigUint::from_bytes_be(modulus);
        let actual = n.bits();
        if actual != bits {
            return Err(PublicKeyError::Mismatch(format!(
                "the RSA modulus is {actual} bits, the algorithm needs {bits}"
            )));
        }
        let key = rsa::RsaPublicKey::new(n, rsa::BigUint::from_bytes_be(exponent))
            .map_err(|e| PublicKeyError::BadRsa(e.to_string()))?;
        let spki_der = key
            .to_public_key_der()
            .map_err(|e| PublicKeyError::Encode(e.to_string()))?
            .into_vec();
        let verifier = RsaKey::new(modulus, exponent).map_err(PublicKeyError::BadRsa)?;
        Self::finish(spki_der, Verifier::Rsa(verifier))
    }

    /// Builds an EC key from `CKA_EC_POINT`, which tokens return either DER-wrapped in an
    /// OCTET STRING (SoftHSM, as the spec says) or bare.
    ///
    /// # Errors
    /// When the point is not a valid uncompressed or compressed point on `curve`.
    pub fn from_ec_point(curve: Curve, ec_point: &[u8]) -> Result<Self, PublicKeyError> {
        let point = unwrap_ec_point(curve, ec_point);
        let bad = || PublicKeyError::BadPoint(curve.name());
        let (spki, verifier) = match curve {
            Curve::P256 => {
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                (
                    k.to_public_key_der(),
                    Verifier::P256(ecdsa_verify::KeyPowers::new(k.as_affine())),
                )
            }
            Curve::P384 => {
                let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                (
                    k.to_public_key_der(),
                    Verifier::P384(ecdsa_verify::KeyPowers::new(k.as_affine())),
                )
            }
            Curve::P521 => {
                let k = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                let pk = p521::PublicKey::from_sec1_bytes(point).map_err(|_| bad())?;
                (
                    pk.to_public_key_der(),
                    Verifier::P521(ecdsa_verify::KeyPowers::new(k.as_affine())),
                )
            }
            Curve::Secp256k1 => {
                let k = k256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                (k.to_public_key_der(), Verifier::K256(k))
            }
        };
        let spki_der = spki
            .map_err(|e| PublicKeyError::Encode(e.to_string()))?
            .into_vec();
        Self::finish(spki_der, verifier)
    }

    fn finish(spki_der: Vec<u8>, verifier: Verifier) -> Result<Self, PublicKeyError> {
        let pem = der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &spki_der)
            .map_err(|e| PublicKeyError::Encode(e.to_string()))?;
        Ok(Self {
            spki_der,
            pem,
            verifier,
        })
    }

    /// Checks that this key can serve `algorithm`.
    ///
    /// # Errors
    /// When the key type, curve or modulus size differ from what the algorithm needs.
    pub fn check_algorithm(&self, algorithm: Algorithm) -> Result<(), PublicKeyError> {
        self.check_kind(algorithm.key_kind()).map_err(|_| {
            PublicKeyError::Mismatch(format!("the public key does not fit {algorithm}"))
        })
    }

    /// Checks that this is a key pair of `kind`.
    ///
    /// # Errors
    /// When the key type, curve or modulus size differ.
    pub fn check_kind(&self, kind: KeyKind) -> Result<(), PublicKeyError> {
        let fits = match (kind, &self.verifier) {
            (KeyKind::Rsa { bits }, Verifier::Rsa(k)) => k.bits() == bits,
            (KeyKind::Ec(Curve::P256), Verifier::P256(_))
            | (KeyKind::Ec(Curve::P384), Verifier::P384(_))
            | (KeyKind::Ec(Curve::P521), Verifier::P521(_))
            | (KeyKind::Ec(Curve::Secp256k1), Verifier::K256(_)) => true,
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(PublicKeyError::Mismatch(format!(
                "the public key is not a {kind:?} key"
            )))
        }
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// PEM `PUBLIC KEY` block of the SPKI, as GetPublicKey returns it.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// SHA-256 of the DER SPKI, lower-case hex: the key's pin fingerprint.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.spki_der))
    }

    /// Verifies a signature as the APIs return it (PSS or PKCS#1 v1.5 bytes, or DER ECDSA) over
    /// `digest`, made with `scheme`. Used both for verify-after-sign and for the Verify APIs, so
    /// it accepts exactly what the standards accept: ECDSA per X9.62/RFC 3279, high-S included
    /// (OpenSSL makes high-S secp256k1 signatures; p11kms itself returns low-S ones).
    ///
    /// # Errors
    /// When the signature does not verify, does not parse, or the scheme does not fit the key.
    pub fn verify_prehash(
        &self,
        scheme: Scheme,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let ok = match (&self.verifier, scheme) {
            // The public operation in Montgomery form (see `rsa_verify`): about four times as
            // fast as the `rsa` crate's.
            (Verifier::Rsa(key), Scheme::RsaPss(hash)) => key.verify(hash, digest, signature),
            (Verifier::Rsa(key), Scheme::RsaPkcs1(hash)) => {
                key.verify_pkcs1(hash, digest, signature)
            }
            (Verifier::Rsa(_), _) | (_, Scheme::RsaPss(_) | Scheme::RsaPkcs1(_) | Scheme::Sm2) => {
                false
            }
            // The NIST curves go through our variable-time scheduling of the same arithmetic
            // (see `ecdsa_verify`): about twice as fast as the crates' constant-time default.
            (Verifier::P256(powers), Scheme::Ecdsa(_)) => {
                p256::ecdsa::Signature::from_der(signature).is_ok_and(|s| {
                    ecdsa_verify::verify_prehash(
                        ecdsa_verify::p256_generator(),
                        powers,
                        digest,
                        s.split_scalars(),
                    )
                })
            }
            (Verifier::P384(powers), Scheme::Ecdsa(_)) => {
                p384::ecdsa::Signature::from_der(signature).is_ok_and(|s| {
                    ecdsa_verify::verify_prehash(
                        ecdsa_verify::p384_generator(),
                        powers,
                        digest,
                        s.split_scalars(),
                    )
                })
            }
            (Verifier::P521(powers), Scheme::Ecdsa(_)) => {
                p521::ecdsa::Signature::from_der(signature).is_ok_and(|s| {
                    ecdsa_verify::verify_prehash(
                        ecdsa_verify::p521_generator(),
                        powers,
                        digest,
                        s.split_scalars(),
                    )
                })
            }
            // `k256` refuses high-S outright (a BIP-62 rule, not ECDSA's); (r, s) and (r, n − s)
            // are both valid ECDSA signatures, so check the low-S twin.
            (Verifier::K256(k), Scheme::Ecdsa(_)) => k256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| {
                    let low = s.normalize_s().unwrap_or(s);
                    k.verify_prehash(digest, &low).is_ok()
                }),
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError)
        }
    }
}

/// Returns the SEC1 point inside `CKA_EC_POINT`, unwrapping the OCTET STRING when present.
fn unwrap_ec_point(curve: Curve, value: &[u8]) -> &[u8] {
    let bare_uncompressed = 1 + 2 * curve.scalar_len();
    if value.len() == bare_uncompressed && value.first() == Some(&0x04) {
        return value;
    }
    match OctetString::from_der(value) {
        // Borrow the inner bytes from `value` itself: they are its trailing octets.
        Ok(os) => &value[value.len() - os.as_bytes().len()..],
        Err(_) => value,
    }
}
