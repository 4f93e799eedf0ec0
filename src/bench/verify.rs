//! Independent checks of sampled signatures, with RustCrypto directly.
//!
//! Nothing here calls `crate::crypto` beyond naming an [`Algorithm`]: the public key is parsed
//! from GetPublicKey's PEM (or the SPKI read off the token), and the algorithm's hash and key
//! are restated here, so a wrong table in the gateway cannot make both sides agree.

use crate::crypto::Algorithm;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use signature::hazmat::PrehashVerifier as _;

/// How the signature to check is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// What the API returns: DER ECDSA, or PSS bytes.
    Api,
    /// What the token returns: ECDSA `r‖s`, or PSS bytes.
    Raw,
}

#[derive(Clone, Copy, Debug)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// The algorithm's hash, from the API contract.
fn hash_of(algorithm: Algorithm) -> Hash {
    use Algorithm::*;
    match algorithm {
        Rsa2048PssSha256 | Rsa3072PssSha256 | Rsa4096PssSha256 | EcdsaP256Sha256
        | EcdsaSecp256k1Sha256 => Hash::Sha256,
        Rsa2048PssSha384 | Rsa3072PssSha384 | Rsa4096PssSha384 | EcdsaP384Sha384 => Hash::Sha384,
        Rsa2048PssSha512 | Rsa3072PssSha512 | Rsa4096PssSha512 | EcdsaP521Sha512 => Hash::Sha512,
    }
}

/// The digest of `message` under the algorithm's hash.
pub(crate) fn digest(algorithm: Algorithm, message: &[u8]) -> Vec<u8> {
    hash_of(algorithm).digest(message)
}

/// The digest length the algorithm signs.
pub(crate) fn digest_len(algorithm: Algorithm) -> usize {
    hash_of(algorithm).len()
}

enum Key {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    K256(k256::ecdsa::VerifyingKey),
}

/// A parsed public key and the algorithm it verifies.
pub(crate) struct Verifier {
    algorithm: Algorithm,
    key: Key,
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Parses GetPublicKey's PEM.
    pub(crate) fn from_pem(algorithm: Algorithm, pem: &str) -> Result<Self, String> {
        let (label, der) =
            der::pem::decode_vec(pem.as_bytes()).map_err(|e| format!("public key PEM: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!("PEM label is {label:?}, expected \"PUBLIC KEY\""));
        }
        Self::from_spki_der(algorithm, &der)
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub(crate) fn from_spki_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, String> {
        use Algorithm::*;
        let bad = |e: &dyn std::fmt::Display| format!("{algorithm} public key: {e}");
        let key = match algorithm {
            Rsa2048PssSha256 | Rsa2048PssSha384 | Rsa2048PssSha512 | Rsa3072PssSha256
            | Rsa3072PssSha384 | Rsa3072PssSha512 | Rsa4096PssSha256 | Rsa4096PssSha384
            | Rsa4096PssSha512 => {
                let key = rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| bad(&e))?;
                let want = match algorithm {
                    Rsa2048PssSha256 | Rsa2048PssSha384 | Rsa2048PssSha512 => 2048,
                    Rsa3072PssSha256 | Rsa3072PssSha384 | Rsa3072PssSha512 => 3072,
                    _ => 4096,
                };
                if key.n().bits() != want {
                    return Err(bad(&format!("modulus is {} bits", key.n().bits())));
                }
                Key::Rsa(key)
            }
            EcdsaP256Sha256 => {
                Key::P256(p256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(|e| bad(&e))?)
            }
            EcdsaP384Sha384 => {
                Key::P384(p384::ecdsa::VerifyingKey::from_public_key_der(der).map_err(|e| bad(&e))?)
            }
            EcdsaP521Sha512 => {
                // p521 0.13 has no SPKI decoding for its verifying key: take the point from
                // the SPKI and decode it as SEC1.
                let spki = spki::SubjectPublicKeyInfoRef::try_from(der).map_err(|e| bad(&e))?;
                let point = spki
                    .subject_public_key
                    .as_bytes()
                    .ok_or_else(|| bad(&"subjectPublicKey has unused bits"))?;
                Key::P521(p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?)
            }
            EcdsaSecp256k1Sha256 => {
                Key::K256(k256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(|e| bad(&e))?)
            }
        };
        Ok(Self {
            algorithm,
            key,
            spki_der: der.to_vec(),
        })
    }

    /// The algorithm it verifies.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo.
    pub(crate) fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Verifies `signature` over `digest`: RSASSA-PSS with the algorithm's hash, MGF1 on the
    /// same hash and a salt as long as the digest; or ECDSA (low-S for secp256k1 in API form).
    pub(crate) fn verify(
        &self,
        digest: &[u8],
        signature: &[u8],
        encoding: Encoding,
    ) -> Result<(), String> {
        let hash = hash_of(self.algorithm);
        if digest.len() != hash.len() {
            return Err(format!("the digest is {} bytes", digest.len()));
        }
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match &self.key {
            Key::Rsa(key) => {
                let scheme = match hash {
                    Hash::Sha256 => rsa::Pss::new_with_salt::<sha2::Sha256>(hash.len()),
                    Hash::Sha384 => rsa::Pss::new_with_salt::<sha2::Sha384>(hash.len()),
                    Hash::Sha512 => rsa::Pss::new_with_salt::<sha2::Sha512>(hash.len()),
                };
                key.verify(scheme, digest, signature).map_err(|x| e(&x))
            }
            Key::P256(k) => {
                let sig = match encoding {
                    Encoding::Api => p256::ecdsa::Signature::from_der(signature),
                    Encoding::Raw => p256::ecdsa::Signature::from_slice(signature),
                }
                .map_err(|x| e(&x))?;
                k.verify_prehash(digest, &sig).map_err(|x| e(&x))
            }
            Key::P384(k) => {
                let sig = match encoding {
                    Encoding::Api => p384::ecdsa::Signature::from_der(signature),
                    Encoding::Raw => p384::ecdsa::Signature::from_slice(signature),
                }
                .map_err(|x| e(&x))?;
                k.verify_prehash(digest, &sig).map_err(|x| e(&x))
            }
            Key::P521(k) => {
                let sig = match encoding {
                    Encoding::Api => p521::ecdsa::Signature::from_der(signature),
                    Encoding::Raw => p521::ecdsa::Signature::from_slice(signature),
                }
                .map_err(|x| e(&x))?;
                k.verify_prehash(digest, &sig).map_err(|x| e(&x))
            }
            Key::K256(k) => {
                let sig = match encoding {
                    Encoding::Api => k256::ecdsa::Signature::from_der(signature),
                    // The token may return high-S; the gateway normalises it, so do the same
                    // for the direct path's raw output before k256 (which demands low-S).
                    Encoding::Raw => k256::ecdsa::Signature::from_slice(signature)
                        .map(|s| s.normalize_s().unwrap_or(s)),
                }
                .map_err(|x| e(&x))?;
                k.verify_prehash(digest, &sig).map_err(|x| e(&x))
            }
        }
    }
}
