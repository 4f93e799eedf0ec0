//! Which PKCS#11 mechanism signs a digest for each scheme, and what it is handed.
//!
//! Digests are always computed in software, so the raw mechanisms give one code path for Sign
//! and SignHash and do not depend on a token's support for combined hash-and-sign mechanisms.
//!
//! SM2: this is where a token's SM2 signing mechanism would plug in (see
//! [`crate::crypto::scheme::SM2_UNSUPPORTED`]); the supported tokens have none, and the core
//! refuses SM2 before any token call, so [`Scheme::Sm2`] never reaches this module.

use crate::crypto::{digest_info::digest_info, HashAlg, Scheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::types::Ulong;

/// `CKM_ECDSA`; `CKM_RSA_PKCS_PSS` with the scheme's hash, MGF1 on the same hash, and a salt as
/// long as the digest (what Yandex and Alibaba clients verify with); or `CKM_RSA_PKCS`.
pub(crate) fn sign_mechanism(scheme: Scheme) -> Mechanism<'static> {
    match scheme {
        Scheme::Ecdsa(_) => Mechanism::Ecdsa,
        Scheme::RsaPkcs1(_) => Mechanism::RsaPkcs,
        Scheme::RsaPss(hash) => {
            let (hash_alg, mgf) = match hash {
                HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
            };
            Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg,
                mgf,
                s_len: Ulong::new(hash.digest_len() as _),
            })
        }
        Scheme::Sm2 => unreachable!("SM2 is refused before any token call"),
    }
}

/// The name of the mechanism [`sign_mechanism`] picks, for metrics.
pub(crate) fn sign_mechanism_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Ecdsa(_) => "CKM_ECDSA",
        Scheme::RsaPkcs1(_) => "CKM_RSA_PKCS",
        Scheme::RsaPss(_) => "CKM_RSA_PKCS_PSS",
        Scheme::Sm2 => "SM2",
    }
}

/// What `C_Sign` signs for `digest`: the digest itself, or for PKCS#1 v1.5 the DER DigestInfo
/// around it (`CKM_RSA_PKCS` pads what it is given and nothing more).
pub(crate) fn sign_input(scheme: Scheme, digest: &[u8]) -> Vec<u8> {
    match scheme {
        Scheme::RsaPkcs1(hash) => digest_info(hash, digest),
        _ => digest.to_vec(),
    }
}
