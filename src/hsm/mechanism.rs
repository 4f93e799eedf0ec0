//! Which PKCS#11 mechanism signs a digest for each algorithm.
//!
//! Digests are always computed in software, so the raw mechanisms give one code path for Sign
//! and SignHash and do not depend on a token's support for combined hash-and-sign mechanisms.

use crate::crypto::{Algorithm, HashAlg, KeyKind};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::types::Ulong;

/// `CKM_ECDSA`, or `CKM_RSA_PKCS_PSS` with the algorithm's hash, MGF1 on the same hash, and a
/// salt as long as the digest (what Yandex clients verify with).
pub(crate) fn sign_mechanism(algorithm: Algorithm) -> Mechanism<'static> {
    match algorithm.key_kind() {
        KeyKind::Ec(_) => Mechanism::Ecdsa,
        KeyKind::Rsa { .. } => {
            let hash = algorithm.hash();
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
    }
}
