//! Alibaba's names for key specs and signing algorithms, shared by both Alibaba fronts, and the
//! rules for which keys the Alibaba APIs serve (contract §5).
//!
//! Alibaba signs with RSA 2048/3072 (PSS or PKCS#1 v1.5, SHA-256) and ECDSA on P-256 and
//! secp256k1 (SHA-256). Keys of other specs (a Yandex key on P-384, say) are listed and described
//! with their spec, but signing, verifying and publishing through the Alibaba APIs is refused
//! with an error that names the spec. SM2 is part of the vocabulary and always refused: no
//! supported token has an SM2 mechanism.

use crate::crypto::scheme::SM2_UNSUPPORTED;
use crate::crypto::{HashAlg, KeySpec, Scheme};

/// Alibaba's `KeySpec` name of a spec (for specs Alibaba has no name for, the same pattern).
pub fn spec_name(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Rsa2048 => "RSA_2048",
        KeySpec::Rsa3072 => "RSA_3072",
        KeySpec::Rsa4096 => "RSA_4096",
        KeySpec::EcP256 => "EC_P256",
        KeySpec::EcP384 => "EC_P384",
        KeySpec::EcP521 => "EC_P521",
        KeySpec::EcSecp256k1 => "EC_P256K",
        KeySpec::Sm2 => "EC_SM2",
    }
}

/// The specs Alibaba's signing APIs serve, as Alibaba names them.
pub const SERVED_SPECS: &str = "RSA_2048, RSA_3072, EC_P256 and EC_P256K";

/// A `KeySpec` a client may create a key with.
///
/// # Errors
/// A message naming the value and what is accepted (SM2: that the token has no mechanism).
pub fn spec_for_create(name: &str) -> Result<KeySpec, String> {
    match name {
        "RSA_2048" => Ok(KeySpec::Rsa2048),
        "RSA_3072" => Ok(KeySpec::Rsa3072),
        "EC_P256" => Ok(KeySpec::EcP256),
        "EC_P256K" => Ok(KeySpec::EcSecp256k1),
        "EC_SM2" => Err(SM2_UNSUPPORTED.to_string()),
        "Aliyun_AES_256" | "Aliyun_AES_128" | "Aliyun_AES_192" | "Aliyun_SM4" => Err(format!(
            "{name} is a symmetric key spec; p11kms serves asymmetric signing keys: {SERVED_SPECS}"
        )),
        other => Err(format!(
            "{:?} is not a key spec p11kms creates; use one of {SERVED_SPECS}",
            other.chars().take(64).collect::<String>()
        )),
    }
}

/// Whether the Alibaba APIs sign with keys of `spec`.
///
/// # Errors
/// A message naming the key's spec.
pub fn served(key_id: &str, spec: KeySpec) -> Result<(), String> {
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::EcP256 | KeySpec::EcSecp256k1 => Ok(()),
        KeySpec::Sm2 => Err(SM2_UNSUPPORTED.to_string()),
        other => Err(format!(
            "key {key_id} is an {} key ({}); the Alibaba APIs sign with {SERVED_SPECS} keys \
             only. Use it through the Yandex API.",
            spec_name(other),
            other
        )),
    }
}

/// The scheme of an Alibaba `Algorithm` name.
///
/// # Errors
/// A message naming the value and the algorithms accepted (SM2DSA: that the token has no
/// mechanism).
pub fn scheme(name: &str) -> Result<Scheme, String> {
    match name {
        "RSA_PSS_SHA_256" => Ok(Scheme::RsaPss(HashAlg::Sha256)),
        "RSA_PKCS1_SHA_256" => Ok(Scheme::RsaPkcs1(HashAlg::Sha256)),
        "ECDSA_SHA_256" => Ok(Scheme::Ecdsa(HashAlg::Sha256)),
        "SM2DSA" => Err(SM2_UNSUPPORTED.to_string()),
        other => Err(format!(
            "{:?} is not a signing algorithm; use RSA_PSS_SHA_256 or RSA_PKCS1_SHA_256 (RSA keys) \
             or ECDSA_SHA_256 (EC keys)",
            other.chars().take(64).collect::<String>()
        )),
    }
}

/// Alibaba's name of a scheme.
pub fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::RsaPss(_) => "RSA_PSS_SHA_256",
        Scheme::RsaPkcs1(_) => "RSA_PKCS1_SHA_256",
        Scheme::Ecdsa(_) => "ECDSA_SHA_256",
        Scheme::Sm2 => "SM2DSA",
    }
}

/// Checks that `scheme` fits a key of `spec` (RSA schemes for RSA keys, ECDSA for EC keys).
///
/// # Errors
/// A message naming both.
pub fn fits(spec: KeySpec, scheme: Scheme) -> Result<(), String> {
    match spec.kind() {
        Ok(kind) if scheme.fits(kind) => Ok(()),
        Ok(_) => Err(format!(
            "{} does not fit a {} key",
            scheme_name(scheme),
            spec_name(spec)
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_refusals_say_why() {
        for name in ["RSA_2048", "RSA_3072", "EC_P256", "EC_P256K"] {
            let spec = spec_for_create(name).unwrap();
            assert_eq!(spec_name(spec), name);
            assert!(served("k", spec).is_ok());
        }
        assert!(spec_for_create("EC_SM2")
            .unwrap_err()
            .contains("no SM2 signing mechanism"));
        assert!(spec_for_create("Aliyun_AES_256")
            .unwrap_err()
            .contains("symmetric"));
        let e = served("k", KeySpec::EcP384).unwrap_err();
        assert!(e.contains("EC_P384") && e.contains("Yandex"), "{e}");
        for name in ["RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256", "ECDSA_SHA_256"] {
            assert_eq!(scheme_name(scheme(name).unwrap()), name);
        }
        assert!(scheme("SM2DSA").unwrap_err().contains("SM2"));
        assert!(fits(KeySpec::EcP256, scheme("RSA_PSS_SHA_256").unwrap()).is_err());
        assert!(fits(KeySpec::Rsa2048, scheme("RSA_PKCS1_SHA_256").unwrap()).is_ok());
    }
}
