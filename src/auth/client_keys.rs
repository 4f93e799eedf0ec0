//! Alibaba client keys ("application access points"): the public keys of
//! `[[alibaba.client_keys]]`, each mapped to the [`Caller`] it authenticates as. The instance
//! API (`crate::api::alibaba::instance::auth`) checks a request's RSA PKCS#1 v1.5 SHA-256
//! signature with the key its `x-kms-acccesskeyid` names.
//!
//! Only public keys are ever held here: the private half stays in the client's ClientKey file.

use super::{AuthMethod, Caller};
use crate::config::AlibabaConfig;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::RsaPublicKey;
use sha2::Sha256;
use signature::Verifier as _;
use std::collections::HashMap;
use std::path::Path;

/// Smallest client key accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest client key accepted, in bits (RustCrypto's limit for public keys).
pub const MAX_RSA_BITS: usize = 4096;
/// Larger key files are refused unread: a key or certificate is a few KiB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One client key: the public key that checks its signatures, and who it is.
pub struct ClientKey {
    key: VerifyingKey<Sha256>,
    caller: Caller,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A client key that authenticates as `caller`.
    pub fn new(public_key: RsaPublicKey, caller: Caller) -> Self {
        Self {
            key: VerifyingKey::new(public_key),
            caller,
        }
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::try_from(signature).is_ok_and(|s| self.key.verify(message, &s).is_ok())
    }

    /// Who a request signed with this key comes from.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
}

/// The configured client keys by id.
#[derive(Debug, Default)]
pub struct ClientKeyStore {
    keys: HashMap<String, ClientKey>,
}

impl ClientKeyStore {
    /// From `[[alibaba.client_keys]]` (validated, keys read, at load).
    pub fn from_config(config: &AlibabaConfig) -> Self {
        config
            .client_keys
            .iter()
            .map(|k| {
                let caller = Caller {
                    subject_id: k.subject_id.clone(),
                    subject_type: k.subject_type.clone(),
                    method: AuthMethod::ClientKey,
                };
                (k.id.clone(), ClientKey::new(k.public_key().clone(), caller))
            })
            .collect()
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&ClientKey> {
        self.keys.get(id)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromIterator<(String, ClientKey)> for ClientKeyStore {
    fn from_iter<I: IntoIterator<Item = (String, ClientKey)>>(iter: I) -> Self {
        Self {
            keys: iter.into_iter().collect(),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey as _;

    fn rsa_key(bits: usize) -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap()
    }

    fn caller() -> Caller {
        Caller {
            subject_id: "app".into(),
            subject_type: "serviceAccount".into(),
            method: AuthMethod::ClientKey,
        }
    }

    #[test]
    fn public_keys_come_from_spki_pkcs1_or_certificate_pem() {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        let private = rsa_key(2048);
        let public = private.to_public_key();
        let spki = public.to_public_key_pem(Default::default()).unwrap();
        assert_eq!(parse_public_key_pem(&spki).unwrap(), public);
        let pkcs1 = public.to_pkcs1_pem(Default::default()).unwrap();
        assert_eq!(parse_public_key_pem(&pkcs1).unwrap(), public);
        // Text around the block, as `openssl x509 -text` leaves it, is skipped.
        let commented = format!("Subject: CN=x\n{spki}\ntrailing words\n");
        assert_eq!(parse_public_key_pem(&commented).unwrap(), public);

        let cert = crate::alibaba_client_key::self_signed_certificate(&private, "KAAP.x").unwrap();
        assert_eq!(parse_public_key_pem(&cert).unwrap(), public);
    }

    #[test]
    fn wrong_files_get_messages_that_say_what_to_configure() {
        use rsa::pkcs8::EncodePrivateKey as _;
        let private = rsa_key(2048);
        let pem = private.to_pkcs8_pem(Default::default()).unwrap();
        let e = parse_public_key_pem(&pem).unwrap_err();
        assert!(
            e.contains("holds a private key") && e.contains("never needs"),
            "{e}"
        );

        let ec = p256::SecretKey::random(&mut rsa::rand_core::OsRng)
            .public_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let e = parse_public_key_pem(&ec).unwrap_err();
        assert!(e.contains("an EC public key") && e.contains("RSA"), "{e}");

        let small = rsa_key(1024)
            .to_public_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let e = parse_public_key_pem(&small).unwrap_err();
        assert!(e.contains("RSA-1024") && e.contains("2048 to 4096"), "{e}");

        let e = parse_public_key_pem("not a key").unwrap_err();
        assert!(
            e.contains("no PEM block") && e.contains("BEGIN PUBLIC KEY"),
            "{e}"
        );
        let e = parse_public_key_pem("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
            .unwrap_err();
        assert!(e.contains("found only X509 CRL"), "{e}");
        let e = parse_public_key_pem("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n")
            .unwrap_err();
        assert!(e.contains("cannot be decoded"), "{e}");
    }

    #[test]
    fn signatures_verify_only_with_their_key_and_message() {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        let private = rsa_key(2048);
        let other = rsa_key(2048);
        let sign = |key: &rsa::RsaPrivateKey, m: &[u8]| {
            rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone())
                .sign(m)
                .to_vec()
        };
        let store: ClientKeyStore = [(
            "KAAP.x".to_string(),
            ClientKey::new(private.to_public_key(), caller()),
        )]
        .into_iter()
        .collect();
        let key = store.get("KAAP.x").unwrap();
        assert_eq!(key.caller(), &caller());
        let sig = sign(&private, b"to sign");
        assert!(key.verify(b"to sign", &sig));
        assert!(!key.verify(b"to sigN", &sig));
        assert!(!key.verify(b"to sign", &sign(&other, b"to sign")));
        assert!(!key.verify(b"to sign", &sig[1..]));
        assert!(!key.verify(b"to sign", &[]));
        assert!(store.get("KAAP.y").is_none());
        assert_eq!(store.len(), 1);
    }
}
