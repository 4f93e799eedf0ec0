//! p11kms: cloud-KMS signing APIs in front of any PKCS#11 HSM.
//!
//! A `Sign` request travels one way through these layers:
//!
//! 1. [`api`]: the listener decodes the request (size-limited; gRPC or its REST/JSON form,
//!    told apart by content type, both into the same request message) and validates every
//!    field; no HSM call happens for a request that fails validation.
//! 2. [`signer`]: looks the key up in [`keys`], checks its status, hashes the message in
//!    software (or checks a given digest's exact length).
//! 3. [`hsm`]: takes a session from the bounded pool and runs `C_SignInit`+`C_Sign` on a
//!    blocking thread with `CKM_ECDSA` or `CKM_RSA_PKCS_PSS`. Every PKCS#11 call lives there.
//! 4. [`crypto`]: converts ECDSA `r‖s` to DER and verifies the signature against the key's
//!    public key before it may leave the process.
//! 5. [`error`]: failures map to one gRPC status, in one place (REST answers with that code
//!    and the HTTP status of Yandex's table).
//!
//! `GetPublicKey` never touches the HSM: it is served from the SPKI read when the key was
//! resolved. [`app`] wires everything together; [`dev`] provisions a local SoftHSM token.
//!
//! Key management (`AsymmetricSignatureKeyService`, `OperationService`, p11kms's
//! `KeyAdminService`) goes from [`api`] to [`keys::KeyManager`], which keeps every key's
//! metadata in a data object on the token ([`hsm`] owns those objects too) and mirrors it in
//! the registry the signer reads. Replicas in front of one token share everything through the
//! token: a state nonce tells them when to re-read it. [`client`] is the `p11kms keys` CLI;
//! [`alibaba_client_key`] makes the client keys of Alibaba's KMS instance API.

pub mod alibaba_client_key;
pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
pub mod hsm;
pub mod keys;
pub mod signer;
pub mod telemetry;

pub use app::App;
pub use config::Config;
