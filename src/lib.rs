//! p11kms: cloud-KMS signing APIs in front of any PKCS#11 HSM.
//!
//! Several fronts, one core. A request travels one way through these layers:
//!
//! 1. [`api`]: the shared edge (listener, TLS, connection and body limits, the request-context
//!    layer: request ids, authentication, rate limits, audit) routes each request by protocol to
//!    a front. Fronts own their wire types and map them to domain types at their edge:
//!    [`api::yandex`] (gRPC and its REST form) and [`api::alibaba`] (the OpenAPI and the KMS
//!    instance API). A front validates every field; no HSM call happens for a request that
//!    fails validation.
//! 2. [`signer`]: the core of every front. A request names a key (by id or alias), optionally a
//!    version (the primary by default) and a scheme ([`crypto::Scheme`]: PSS, PKCS#1 v1.5 or
//!    ECDSA with a hash). It looks the key up in [`keys`], authorises the caller for the key
//!    and operation ([`auth`]), checks the key's state, hashes in software (or checks a given
//!    digest's exact length).
//! 3. [`hsm`]: takes a session from the bounded pool and runs `C_SignInit`+`C_Sign` on a
//!    blocking thread with `CKM_ECDSA`, `CKM_RSA_PKCS_PSS` or `CKM_RSA_PKCS` over a DigestInfo.
//!    Every PKCS#11 call lives there.
//! 4. [`crypto`]: converts ECDSA `r‖s` to DER and verifies the signature against the version's
//!    pinned public key before it may leave the process; the same verifier serves the Verify
//!    APIs.
//! 5. [`error`]: one domain error; each front maps it to its codes in one place.
//!
//! Public keys are served from the SPKI read when a version was resolved; verification runs in
//! software: neither touches the HSM. [`app`] wires everything together; [`dev`] provisions a
//! local SoftHSM token with TLS and credentials for every front.
//!
//! Key management goes from the fronts to [`keys::KeyManager`]. A key's state (metadata,
//! versions, access bindings, operations) and aliases live on the token as immutable documents
//! whose concurrent changes by several replicas compose deterministically ([`keys::doc`]);
//! the registry mirrors them for the signer. Replicas in front of one token share everything
//! through the token: a state nonce tells them when to re-read it. [`client`] is the
//! `p11kms keys` CLI of the Yandex key service.
//!
//! [`config`] is a leaf: it imports no domain module; what needs them is checked where it is
//! built.

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
