//! Independent checks of what the gateway returns, with RustCrypto directly: nothing here calls
//! `p11kms::crypto` beyond naming an [`Algorithm`]. Even the algorithm → (hash, key) table is
//! restated here, so that a wrong table in the gateway cannot make both sides agree.

use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Encode, Sequence, Tagged as _};
use p11kms::crypto::Algorithm;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use sha2::Digest as _;
use signature::hazmat::PrehashVerifier as _;
use spki::SubjectPublicKeyInfoRef;

/// `rsaEncryption`.
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-RSASSA-PSS` (must NOT be used for the published keys).
pub const ID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// `id-ecPublicKey`.
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// A hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// Digest length in bytes.
    pub fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// A named curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
    /// secp256k1.
    K256,
}

impl Curve {
    /// The namedCurve OID.
    pub fn oid(self) -> ObjectIdentifier {
        ObjectIdentifier::new_unwrap(match self {
            Curve::P256 => "1.2.840.10045.3.1.7",
            Curve::P384 => "1.3.132.0.34",
            Curve::P521 => "1.3.132.0.35",
            Curve::K256 => "1.3.132.0.10",
        })
    }

    /// Bytes in a field element / scalar.
    pub fn scalar_len(self) -> usize {
        match self {
            Curve::P256 | Curve::K256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// The key an algorithm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// RSA with this modulus size.
    Rsa(usize),
    /// ECDSA on this curve.
    Ec(Curve),
}

/// What each Yandex algorithm means, restated from the API contract.
pub fn expected(algorithm: Algorithm) -> (Hash, Key) {
    use Algorithm::*;
    match algorithm {
        Rsa2048PssSha256 => (Hash::Sha256, Key::Rsa(2048)),
        Rsa2048PssSha384 => (Hash::Sha384, Key::Rsa(2048)),
        Rsa2048PssSha512 => (Hash::Sha512, Key::Rsa(2048)),
        Rsa3072PssSha256 => (Hash::Sha256, Key::Rsa(3072)),
        Rsa3072PssSha384 => (Hash::Sha384, Key::Rsa(3072)),
        Rsa3072PssSha512 => (Hash::Sha512, Key::Rsa(3072)),
        Rsa4096PssSha256 => (Hash::Sha256, Key::Rsa(4096)),
        Rsa4096PssSha384 => (Hash::Sha384, Key::Rsa(4096)),
        Rsa4096PssSha512 => (Hash::Sha512, Key::Rsa(4096)),
        EcdsaP256Sha256 => (Hash::Sha256, Key::Ec(Curve::P256)),
        EcdsaP384Sha384 => (Hash::Sha384, Key::Ec(Curve::P384)),
        EcdsaP521Sha512 => (Hash::Sha512, Key::Ec(Curve::P521)),
        EcdsaSecp256k1Sha256 => (Hash::Sha256, Key::Ec(Curve::K256)),
    }
}

/// The algorithm's hash.
pub fn hash_of(algorithm: Algorithm) -> Hash {
    expected(algorithm).0
}

/// A public key parsed from GetPublicKey's PEM, after every structural check passed.
#[derive(Clone)]
pub struct ParsedKey {
    /// The DER SubjectPublicKeyInfo inside the PEM.
    pub spki_der: Vec<u8>,
    verifier: Verifier,
}

#[derive(Clone)]
enum Verifier {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    K256(k256::ecdsa::VerifyingKey),
}

/// Parses GetPublicKey's PEM for `algorithm` and checks its structure: one `PUBLIC KEY` block
/// holding a DER SPKI with `rsaEncryption` (NULL parameters, modulus of the right size) for RSA,
/// or `id-ecPublicKey` with the algorithm's named curve and an uncompressed point for EC.
pub fn parse_public_key(pem: &str, algorithm: Algorithm) -> Result<ParsedKey, String> {
    let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| format!("PEM: {e}"))?;
    if label != "PUBLIC KEY" {
        return Err(format!("PEM label is {label:?}, expected \"PUBLIC KEY\""));
    }
    let spki = SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| format!("SPKI: {e}"))?;
    if spki.to_der().map_err(|e| e.to_string())? != der {
        return Err("the SPKI does not re-encode to the same DER".into());
    }
    let oid = spki.algorithm.oid;
    let params = spki.algorithm.parameters;
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or("subjectPublicKey has unused bits")?;
    let verifier = match expected(algorithm).1 {
        Key::Rsa(bits) => {
            if oid == ID_RSASSA_PSS {
                return Err("RSA key published as id-RSASSA-PSS, expected rsaEncryption".into());
            }
            if oid != RSA_ENCRYPTION {
                return Err(format!("algorithm OID {oid}, expected rsaEncryption"));
            }
            match params {
                Some(p) if p.tag() == der::Tag::Null => {}
                other => return Err(format!("rsaEncryption parameters must be NULL: {other:?}")),
            }
            let key = rsa::RsaPublicKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            if key.n().bits() != bits {
                return Err(format!(
                    "modulus is {} bits, expected {bits}",
                    key.n().bits()
                ));
            }
            Verifier::Rsa(key)
        }
        Key::Ec(curve) => {
            if oid != ID_EC_PUBLIC_KEY {
                return Err(format!("algorithm OID {oid}, expected id-ecPublicKey"));
            }
            let named: ObjectIdentifier = params
                .ok_or("id-ecPublicKey without parameters")?
                .decode_as()
                .map_err(|e| format!("EC parameters are not a named curve: {e}"))?;
            if named != curve.oid() {
                return Err(format!("named curve {named}, expected {}", curve.oid()));
            }
            if point.len() != 1 + 2 * curve.scalar_len() || point[0] != 0x04 {
                return Err(format!(
                    "EC point is not uncompressed ({} bytes, first byte {:#04x})",
                    point.len(),
                    point.first().copied().unwrap_or(0)
                ));
            }
            let bad = |e: &dyn std::fmt::Display| format!("EC point: {e}");
            match curve {
                Curve::P256 => Verifier::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?,
                ),
                Curve::P384 => Verifier::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?,
                ),
                Curve::P521 => Verifier::P521(
                    p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?,
                ),
                Curve::K256 => Verifier::K256(
                    k256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?,
                ),
            }
        }
    };
    Ok(ParsedKey {
        spki_der: der,
        verifier,
    })
}

impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("spki_der", &hex::encode(&self.spki_der))
            .finish_non_exhaustive()
    }
}

impl ParsedKey {
    /// Verifies `signature` over `message` (hashed here with the algorithm's hash).
    pub fn verify_message(
        &self,
        algorithm: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        self.verify_digest(algorithm, &hash_of(algorithm).digest(message), signature)
    }

    /// Verifies `signature` over a digest: RSASSA-PSS with the algorithm's hash, MGF1 on the same
    /// hash and salt length = digest length; or ECDSA with a strictly parsed DER signature.
    pub fn verify_digest(
        &self,
        algorithm: Algorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        let hash = hash_of(algorithm);
        match &self.verifier {
            Verifier::Rsa(key) => {
                if signature.len() != key.size() {
                    return Err(format!(
                        "PSS signature is {} bytes, the modulus {}",
                        signature.len(),
                        key.size()
                    ));
                }
                verify_pss(key, hash, digest, signature, hash.len())
            }
            Verifier::P256(k) => {
                ecdsa_der_strict(signature, Curve::P256)?;
                let sig = p256::ecdsa::Signature::from_der(signature).map_err(|e| e.to_string())?;
                k.verify_prehash(digest, &sig).map_err(|e| e.to_string())
            }
            Verifier::P384(k) => {
                ecdsa_der_strict(signature, Curve::P384)?;
                let sig = p384::ecdsa::Signature::from_der(signature).map_err(|e| e.to_string())?;
                k.verify_prehash(digest, &sig).map_err(|e| e.to_string())
            }
            Verifier::P521(k) => {
                ecdsa_der_strict(signature, Curve::P521)?;
                let sig = p521::ecdsa::Signature::from_der(signature).map_err(|e| e.to_string())?;
                k.verify_prehash(digest, &sig).map_err(|e| e.to_string())
            }
            Verifier::K256(k) => {
                ecdsa_der_strict(signature, Curve::K256)?;
                let sig = k256::ecdsa::Signature::from_der(signature).map_err(|e| e.to_string())?;
                k.verify_prehash(digest, &sig).map_err(|e| e.to_string())
            }
        }
    }

    /// For RSA keys: whether `signature` verifies as PSS with `hash` (also for MGF1) and exactly
    /// `salt_len` bytes of salt. Used to show the verifier is strict about the parameters.
    pub fn verifies_pss_with(
        &self,
        hash: Hash,
        salt_len: usize,
        digest: &[u8],
        signature: &[u8],
    ) -> bool {
        match &self.verifier {
            Verifier::Rsa(key) => verify_pss(key, hash, digest, signature, salt_len).is_ok(),
            _ => panic!("not an RSA key"),
        }
    }
}

fn verify_pss(
    key: &rsa::RsaPublicKey,
    hash: Hash,
    digest: &[u8],
    signature: &[u8],
    salt_len: usize,
) -> Result<(), String> {
    // rsa 0.9's PSS uses the same hash for MGF1 and checks the salt length exactly.
    let scheme = match hash {
        Hash::Sha256 => rsa::Pss::new_with_salt::<sha2::Sha256>(salt_len),
        Hash::Sha384 => rsa::Pss::new_with_salt::<sha2::Sha384>(salt_len),
        Hash::Sha512 => rsa::Pss::new_with_salt::<sha2::Sha512>(salt_len),
    };
    key.verify(scheme, digest, signature)
        .map_err(|e| format!("PSS ({hash:?}, salt {salt_len}): {e}"))
}

#[derive(Sequence)]
struct EcdsaSig<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// Parses an ECDSA signature as strict DER `SEQUENCE { INTEGER r, INTEGER s }`: minimal
/// positive INTEGERs, minimal lengths, nothing trailing, `0 < r, s` and at most the curve's
/// scalar size. Returns `(r, s)` as minimal big-endian bytes.
pub fn ecdsa_der_strict(signature: &[u8], curve: Curve) -> Result<(Vec<u8>, Vec<u8>), String> {
    let sig = EcdsaSig::from_der(signature).map_err(|e| format!("ECDSA DER: {e}"))?;
    let reencoded = sig.to_der().map_err(|e| e.to_string())?;
    if reencoded != signature {
        return Err("ECDSA DER is not canonical (re-encodes differently)".into());
    }
    let (r, s) = (sig.r.as_bytes().to_vec(), sig.s.as_bytes().to_vec());
    for (name, v) in [("r", &r), ("s", &s)] {
        if v.iter().all(|&b| b == 0) {
            return Err(format!("{name} is zero"));
        }
        if v.len() > curve.scalar_len() {
            return Err(format!("{name} is {} bytes, longer than a scalar", v.len()));
        }
    }
    Ok((r, s))
}

/// Whether a DER secp256k1 signature has `s <= n/2`.
pub fn is_low_s_secp256k1(signature: &[u8]) -> bool {
    let sig = k256::ecdsa::Signature::from_der(signature).expect("valid secp256k1 DER");
    sig.normalize_s().is_none()
}
