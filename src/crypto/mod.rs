//! Algorithm table, digests, ECDSA DER encoding, public keys (SPKI/PEM) and verify-after-sign.

pub mod algorithm;
pub mod digest_info;
pub mod ecdsa_der;
mod ecdsa_verify;
pub mod public_key;
pub mod rsa_pem;
mod rsa_verify;
pub mod scheme;

pub use algorithm::{Algorithm, Curve, HashAlg, KeyKind};
pub use public_key::{PublicKey, PublicKeyError, VerifyError};
pub use scheme::{KeySpec, Scheme};
