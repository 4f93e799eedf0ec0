//! RSA public keys from PEM files: a `PUBLIC KEY` (SubjectPublicKeyInfo), a `CERTIFICATE` (its
//! key) or an `RSA PUBLIC KEY` (PKCS#1) block. Alibaba client keys are configured this way.

use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::RsaPublicKey;
use std::path::Path;

/// Smallest client key accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest client key accepted, in bits (RustCrypto's limit for public keys).
pub const MAX_RSA_BITS: usize = 4096;
/// Larger key files are refused unread: a key or certificate is a few KiB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a client's RSA public key from a PEM file: the first `PUBLIC KEY`
/// (SubjectPublicKeyInfo), `CERTIFICATE` (its key; validity and issuer are not looked at: the
/// certificate only carries the key) or `RSA PUBLIC KEY` (PKCS#1) block.
///
/// # Errors
/// A message that says what is wrong with the file and what it should hold.
pub fn read_public_key(path: &Path) -> Result<RsaPublicKey, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown} is {} bytes; a PEM public key or certificate is a few KiB",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    parse_public_key_pem(&text).map_err(|e| format!("{shown}: {e}"))
}

/// [`read_public_key`] for PEM text.
///
/// # Errors
/// As [`read_public_key`].
pub fn parse_public_key_pem(text: &str) -> Result<RsaPublicKey, String> {
    const EXPECTED: &str = "expected the client key's public key (-----BEGIN PUBLIC KEY-----) \
                            or its certificate (-----BEGIN CERTIFICATE-----)";
    let mut labels = Vec::new();
    for block in pem_blocks(text) {
        let (label, der) = der::pem::decode_vec(block.as_bytes())
            .map_err(|e| format!("a PEM block cannot be decoded ({e}); {EXPECTED}"))?;
        if label.contains("PRIVATE KEY") {
            return Err(format!(
                "holds a private key ({label}); configure only the public key or the certificate: \
                 the gateway never needs the client's private key"
            ));
        }
        let key = match label {
            "PUBLIC KEY" => spki_key(&der)?,
            "CERTIFICATE" => {
                use der::{Decode as _, Encode as _};
                let cert = x509_cert::Certificate::from_der(&der)
                    .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
                let spki = cert
                    .tbs_certificate
                    .subject_public_key_info
                    .to_der()
                    .map_err(|e| format!("the certificate's public key cannot be read: {e}"))?;
                spki_key(&spki)?
            }
            "RSA PUBLIC KEY" => {
                use rsa::pkcs1::DecodeRsaPublicKey as _;
                RsaPublicKey::from_pkcs1_der(&der)
                    .map_err(|e| format!("the RSA public key cannot be parsed: {e}"))?
            }
            other => {
                labels.push(other.to_string());
                continue;
            }
        };
        return check_size(key);
    }
    if labels.is_empty() {
        Err(format!("no PEM block found; {EXPECTED}"))
    } else {
        Err(format!("found only {}; {EXPECTED}", labels.join(", ")))
    }
}

/// The RSA key of a DER SubjectPublicKeyInfo; other algorithms are named in the error.
fn spki_key(der: &[u8]) -> Result<RsaPublicKey, String> {
    use der::Decode as _;
    let info = spki::SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("the public key cannot be parsed: {e}"))?;
    let oid = info.algorithm.oid;
    if oid != rsa::pkcs1::ALGORITHM_OID {
        let name = match oid.to_string().as_str() {
            "1.2.840.10045.2.1" => "an EC",
            "1.3.101.112" => "an Ed25519",
            "1.2.840.113549.1.1.10" => "an RSASSA-PSS-only",
            "1.2.156.10197.1.301" => "an SM2",
            _ => "a non-RSA",
        };
        return Err(format!(
            "holds {name} public key (algorithm {oid}); Alibaba client keys are RSA keys \
             (requests are signed with RSA_PKCS1_SHA_256)"
        ));
    }
    RsaPublicKey::from_public_key_der(der)
        .map_err(|e| format!("the RSA public key cannot be parsed: {e}"))
}

fn check_size(key: RsaPublicKey) -> Result<RsaPublicKey, String> {
    let bits = key.n().bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "holds an RSA-{bits} key; client keys must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
        ));
    }
    Ok(key)
}

/// The `-----BEGIN …-----` … `-----END …-----` blocks of a PEM file, in order; text around
/// them (comments, `openssl x509 -text` output) is skipped.
fn pem_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let from = &rest[start..];
        let Some(end) = from.find(END) else { break };
        let Some(close) = from[end + END.len()..].find("-----") else {
            break;
        };
        let stop = end + END.len() + close + "-----".len();
        blocks.push(&from[..stop]);
        rest = &from[stop..];
    }
    blocks
}
