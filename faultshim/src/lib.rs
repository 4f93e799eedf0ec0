//! `p11kms-faultshim`: a **test-only** fault-injecting pass-through PKCS#11 module.
//!
//! The cdylib exports `C_GetFunctionList` only. On first use it `dlopen`s the real module
//! (`P11KMS_FAULTSHIM_MODULE`, default SoftHSMv2) and hands out its own `CK_FUNCTION_LIST`, whose
//! every entry forwards to the real module after applying the rules of a control file
//! (`P11KMS_FAULTSHIM_CONTROL`): injected CKRs, delays, corrupted signatures, a session limit and
//! extra token flags. Counters are written to a stats file (`P11KMS_FAULTSHIM_STATS`).
//! See `faultshim/README.md` for the control and stats formats.
//!
//! All `unsafe` code lives in [`ffi`]; the rest of the crate forbids it.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod control;
mod ffi;
mod funcs;
mod state;

pub use ffi::C_GetFunctionList;
