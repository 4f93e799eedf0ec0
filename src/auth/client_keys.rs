//! Alibaba client keys ("application access points"): the public keys of
//! `[[alibaba.client_keys]]`, each mapped to the [`Caller`] it authenticates as. The instance
//! API (`crate::api::alibaba::instance::auth`) checks a request's RSA PKCS#1 v1.5 SHA-256
//! signature with the key its `x-kms-acccesskeyid` names.
//!
//! Only public keys are ever held here: the private half stays in the client's ClientKey file.

use super::{AuthMethod, Caller};
use crate::config::AlibabaConfig;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::RsaPublicKey;
use std::collections::HashMap;

/// One client key: the public key that checks its signatures, and who it is.
pub struct ClientKey {
    /// The PKCS#1 `RSAPublicKey` DER. ring, not the rsa crate, verifies: every instance-API
    /// request costs one verification, and the rsa crate's took a third of the daemon's CPU
    /// per request.
    key: UnparsedPublicKey<Vec<u8>>,
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
    ///
    /// # Panics
    /// Never for a key the config accepted: any RSA public key has a PKCS#1 encoding.
    pub fn new(public_key: RsaPublicKey, caller: Caller) -> Self {
        let der = public_key
            .to_pkcs1_der()
            .expect("an RSA public key encodes as PKCS#1");
        Self {
            key: UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der.as_bytes().to_vec()),
            caller,
        }
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify(message, signature).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::rsa_pem::parse_public_key_pem;
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
        use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
        use sha2::Sha256;
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
        // The same key, but another scheme or hash than RSA_PKCS1_SHA_256.
        let sha512 = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(private.clone())
            .sign(b"to sign")
            .to_vec();
        assert!(!key.verify(b"to sign", &sha512));
        let pss = rsa::pss::SigningKey::<Sha256>::new(private.clone())
            .sign_with_rng(&mut rsa::rand_core::OsRng, b"to sign")
            .to_vec();
        assert!(!key.verify(b"to sign", &pss));
        // A 3072-bit client key too (the config takes 2048 to 4096 bits).
        let large = rsa_key(3072);
        let large_key = ClientKey::new(large.to_public_key(), caller());
        assert!(large_key.verify(b"to sign", &sign(&large, b"to sign")));
        assert!(!large_key.verify(b"to sign", &sig));
        assert!(store.get("KAAP.y").is_none());
        assert_eq!(store.len(), 1);
    }
}
