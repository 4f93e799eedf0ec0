//! Loading the module, `C_Initialize` with OS locking, choosing the token, and logging in.

use super::error::{Context as _, HsmError};
use crate::config::TokenSelector;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};
use secrecy::SecretString;
use std::path::Path;

/// Which token the gateway is talking to; logged and audited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    /// Token label.
    pub label: String,
    /// Token serial number.
    pub serial: String,
}

/// Loads the PKCS#11 module. Loading happens once per process; re-initialisation reuses it.
pub(crate) fn load_module(path: &Path) -> Result<Pkcs11, HsmError> {
    Pkcs11::new(path).map_err(|source| HsmError::Module {
        path: path.display().to_string(),
        source,
    })
}

/// `C_Initialize` with `CKF_OS_LOCKING_OK`: without it SoftHSM crashes under concurrent sessions.
pub(crate) fn initialize(pkcs11: &Pkcs11) -> Result<(), HsmError> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another component of this process initialised the module already; the state is shared.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        other => other.context("C_Initialize"),
    }
}

/// Finds the one slot whose token matches `selector`.
pub(crate) fn find_token(
    pkcs11: &Pkcs11,
    selector: &TokenSelector,
) -> Result<(Slot, TokenIdentity), HsmError> {
    let slots = pkcs11.get_slots_with_token().context("C_GetSlotList")?;
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for slot in slots {
        let info = match pkcs11.get_token_info(slot) {
            Ok(info) => info,
            // A token that vanished between the two calls is simply not a candidate.
            Err(_) => continue,
        };
        let identity = TokenIdentity {
            label: info.label().trim_end().to_string(),
            serial: info.serial_number().trim_end().to_string(),
        };
        let matches = match selector {
            TokenSelector::Label(label) => identity.label == *label,
            TokenSelector::Serial(serial) => identity.serial == *serial,
        };
        if matches {
            found.push((slot, identity));
        } else {
            seen.push(format!("{:?} (serial {})", identity.label, identity.serial));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(HsmError::TokenSelection(format!(
            "no token with {selector}; tokens present: {}",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ))),
        n => Err(HsmError::TokenSelection(format!(
            "{n} tokens match {selector}; select by token_serial instead"
        ))),
    }
}

/// The number of pooled sessions: the configured size, capped by what the token allows while
/// leaving room for the anchor session. A reported 0 means "effectively infinite".
pub(crate) fn pool_capacity(pkcs11: &Pkcs11, slot: Slot, configured: usize) -> usize {
    let Ok(info) = pkcs11.get_token_info(slot) else {
        return configured;
    };
    let cap = |limit: Limit| match limit {
        Limit::Max(n) => usize::try_from(n).ok().map(|n| n.saturating_sub(1).max(1)),
        Limit::Infinite | Limit::Unavailable => None,
    };
    [
        cap(info.max_session_count()),
        cap(info.max_rw_session_count()),
    ]
    .into_iter()
    .flatten()
    .fold(configured, usize::min)
}

/// Opens the anchor session and logs the user in. The anchor stays open for the life of the
/// epoch, because closing the last session logs the whole application out.
///
/// A PIN the token refused is never sent again: tokens lock after a few wrong tries.
pub(crate) fn open_anchor(
    pkcs11: &Pkcs11,
    slot: Slot,
    pin: &SecretString,
) -> Result<Session, HsmError> {
    let info = pkcs11.get_token_info(slot).context("C_GetTokenInfo")?;
    if info.user_pin_locked() {
        return Err(HsmError::Credential(
            "the token reports the user PIN is locked; unlock it with the SO PIN".into(),
        ));
    }
    if info.user_pin_to_be_changed() {
        return Err(HsmError::Credential(
            "the token requires the user PIN to be changed before use".into(),
        ));
    }
    if info.user_pin_final_try() {
        return Err(HsmError::Credential(
            "one wrong PIN would lock the token; refusing to try the configured PIN — check it and reset the retry counter".into(),
        ));
    }
    let session = pkcs11.open_rw_session(slot).context("C_OpenSession")?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(rv, _)) if super::classify(rv) == super::ErrorClass::Credential => {
            Err(HsmError::Credential(format!(
                "the token refused the user PIN ({rv}); fix the PIN and restart or reload; it will not be retried"
            )))
        }
        Err(e) => Err(HsmError::call("C_Login", e)),
    }
}
