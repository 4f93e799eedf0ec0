//! The PKCS#11 ABI surface: loading the real module, the exported `C_GetFunctionList`, and one
//! forwarder per `CK_FUNCTION_LIST` entry. This is the only module of the project that contains
//! `unsafe` code.
//!
//! Every forwarder has exactly the signature of the corresponding `cryptoki-sys` `CK_C_*` type:
//! [`FUNCTION_LIST`] is a typed struct literal, so a mismatch does not compile.
#![allow(unsafe_code, non_snake_case)]

use std::ffi::{c_void, OsString};
use std::ptr;
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki_sys::{
    CKF_OS_LOCKING_OK, CKR_ARGUMENTS_BAD, CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_OK,
    CKR_SESSION_COUNT, CK_ATTRIBUTE, CK_BBOOL, CK_BYTE, CK_C_INITIALIZE_ARGS, CK_FLAGS,
    CK_FUNCTION_LIST, CK_INFO, CK_MECHANISM, CK_MECHANISM_INFO, CK_MECHANISM_TYPE, CK_NOTIFY,
    CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE, CK_SESSION_INFO, CK_SLOT_ID, CK_SLOT_INFO,
    CK_TOKEN_INFO, CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR, CK_VERSION,
};

use crate::funcs::Func;
use crate::state::shim;

/// Env var: path of the real PKCS#11 module to wrap.
const ENV_MODULE: &str = "P11KMS_FAULTSHIM_MODULE";
/// Real module used when [`ENV_MODULE`] is not set.
const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

type GetFunctionListFn = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

/// The wrapped module. It is never unloaded: the `Library` lives in a static.
#[derive(Debug)]
struct Real {
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

static REAL: OnceLock<Real> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The real module's function list, once loaded.
fn real_list() -> Option<&'static CK_FUNCTION_LIST> {
    REAL.get().map(|r| &r.list)
}

/// Loads the real module (once; a failed attempt is retried on the next call).
fn load_real() -> Result<(), String> {
    if REAL.get().is_some() {
        return Ok(());
    }
    let _guard = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if REAL.get().is_some() {
        return Ok(());
    }
    let path = std::env::var_os(ENV_MODULE).unwrap_or_else(|| OsString::from(DEFAULT_MODULE));
    let shown = path.to_string_lossy().into_owned();
    // SAFETY: dlopen runs the module's initialisers. The module is the PKCS#11 library the test
    // environment names (SoftHSMv2 by default), which is meant to be loaded this way.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("cannot load the real PKCS#11 module {shown}: {e}"))?;
    // SAFETY: PKCS#11 defines `C_GetFunctionList` with exactly this signature.
    let get = unsafe { lib.get::<GetFunctionListFn>(b"C_GetFunctionList\0") }
        .map_err(|e| format!("{shown} has no C_GetFunctionList: {e}"))?;
    let get: GetFunctionListFn = *get;
    if ptr::fn_addr_eq(get, C_GetFunctionList as GetFunctionListFn) {
        return Err(format!("{ENV_MODULE}={shown} points at the shim itself"));
    }
    let mut list_ptr: *mut CK_FUNCTION_LIST = ptr::null_mut();
    // SAFETY: `list_ptr` is a valid, writable out-pointer for the duration of the call.
    let rv = unsafe { get(&mut list_ptr) };
    if rv != CKR_OK {
        return Err(format!("{shown}: C_GetFunctionList returned {rv:#x}"));
    }
    // SAFETY: on CKR_OK the module stored a pointer to its function list, which stays valid while
    // the library is loaded; `as_ref` handles NULL. The struct is plain data and is copied.
    let Some(list) = (unsafe { list_ptr.as_ref() }).copied() else {
        return Err(format!("{shown}: C_GetFunctionList returned a NULL list"));
    };
    // Only this function sets REAL, under LOADING, after checking it was unset.
    let _ = REAL.set(Real { _lib: lib, list });
    Ok(())
}

/// Calls the real module's entry `$name` with the given arguments.
macro_rules! call_real {
    ($name:ident($($arg:expr),* $(,)?)) => {
        match real_list().map(|list| list.$name) {
            Some(Some(real)) => {
                // SAFETY: the arguments are passed through unchanged from our caller, who must
                // uphold the PKCS#11 contract of this function; `real` is the wrapped module's
                // implementation of the same function, with the identical cryptoki-sys type.
                unsafe { real($($arg),*) }
            }
            Some(None) => CKR_FUNCTION_NOT_SUPPORTED,
            // Unreachable in practice: our list is only handed out after the load succeeded.
            None => CKR_GENERAL_ERROR,
        }
    };
}

/// Defines a plain forwarder: count, delay, maybe inject a fault, else call the real function.
macro_rules! forward {
    ($name:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        forward!(@define $name, None, ($($arg: $ty),*));
    };
    (session $name:ident($h:ident: CK_SESSION_HANDLE $(, $arg:ident: $ty:ty)* $(,)?)) => {
        forward!(@define $name, Some($h), ($h: CK_SESSION_HANDLE $(, $arg: $ty)*));
    };
    (@define $name:ident, $session:expr, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            let shim = shim();
            let call = shim.enter(Func::$name, $session);
            let rv = match call.injected {
                Some(rv) => rv,
                None => call_real!($name($($arg),*)),
            };
            shim.leave(call, rv)
        }
    };
}

/// Returns the shim's function list. This is the only symbol the shim exports; in particular it
/// does not export `C_GetInterface`, so cryptoki (which prefers `C_GetInterface` when present)
/// falls back to this function.
///
/// # Safety
///
/// `pp_function_list` must be NULL or valid for a pointer-sized write.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp_function_list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    let shim = shim();
    if let Err(msg) = load_real() {
        shim.report_once(&msg);
        shim.count_call(Func::C_GetFunctionList);
        return CKR_GENERAL_ERROR;
    }
    shim.refresh_paths();
    shim.reload_if_changed();
    let call = shim.enter(Func::C_GetFunctionList, None);
    let rv = match call.injected {
        Some(rv) => rv,
        None if pp_function_list.is_null() => CKR_ARGUMENTS_BAD,
        None => {
            // SAFETY: checked non-NULL above; the caller guarantees it is writable. The list is a
            // static that PKCS#11 callers only read.
            unsafe { pp_function_list.write(ptr::addr_of!(FUNCTION_LIST).cast_mut()) };
            CKR_OK
        }
    };
    shim.leave(call, rv)
}

/// True if `args` (NULL or a `CK_C_INITIALIZE_ARGS`) sets `CKF_OS_LOCKING_OK`.
///
/// # Safety
///
/// `args` must be NULL or point to a valid `CK_C_INITIALIZE_ARGS`.
unsafe fn os_locking_ok(args: *mut c_void) -> bool {
    // SAFETY: guaranteed by the caller; `as_ref` handles NULL.
    let args = unsafe { args.cast::<CK_C_INITIALIZE_ARGS>().as_ref() };
    args.is_some_and(|a| a.flags & CKF_OS_LOCKING_OK != 0)
}

unsafe extern "C" fn C_Initialize(p_init_args: *mut c_void) -> CK_RV {
    let shim = shim();
    shim.refresh_paths();
    shim.reload_if_changed();
    // SAFETY: PKCS#11 requires pInitArgs to be NULL or to point to a CK_C_INITIALIZE_ARGS.
    let os_locking = unsafe { os_locking_ok(p_init_args) };
    shim.initialize_called(os_locking);
    shim.start_worker();
    let call = shim.enter(Func::C_Initialize, None);
    let rv = match call.injected {
        Some(rv) => rv,
        None => call_real!(C_Initialize(p_init_args)),
    };
    shim.leave(call, rv)
}

unsafe extern "C" fn C_Finalize(p_reserved: *mut c_void) -> CK_RV {
    let shim = shim();
    let call = shim.enter(Func::C_Finalize, None);
    let rv = match call.injected {
        Some(rv) => rv,
        None => {
            let rv = call_real!(C_Finalize(p_reserved));
            if rv == CKR_OK {
                shim.finalized();
                shim.stop_worker();
            }
            rv
        }
    };
    let rv = shim.leave(call, rv);
    shim.write_stats(true);
    rv
}

unsafe extern "C" fn C_GetTokenInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_TOKEN_INFO) -> CK_RV {
    let shim = shim();
    let call = shim.enter(Func::C_GetTokenInfo, None);
    let rv = match call.injected {
        Some(rv) => rv,
        None => {
            let rv = call_real!(C_GetTokenInfo(slot_id, p_info));
            // SAFETY: on CKR_OK the module filled `*p_info`, a CK_TOKEN_INFO the caller provided
            // for writing; `as_mut` handles NULL.
            let info = unsafe { p_info.as_mut() }.filter(|_| rv == CKR_OK);
            if let Some(info) = info {
                info.flags |= call.rules.token_flags_set;
                if let Some(max) = call.rules.reported_max_sessions() {
                    info.ulMaxSessionCount = max;
                    info.ulMaxRwSessionCount = max;
                }
            }
            rv
        }
    };
    shim.leave(call, rv)
}

unsafe extern "C" fn C_OpenSession(
    slot_id: CK_SLOT_ID,
    flags: CK_FLAGS,
    p_application: *mut c_void,
    notify: CK_NOTIFY,
    ph_session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let shim = shim();
    let call = shim.enter(Func::C_OpenSession, None);
    let rv = match call.injected {
        Some(rv) => rv,
        None if !shim.reserve_session(&call.rules) => {
            shim.count_fault(Func::C_OpenSession);
            CKR_SESSION_COUNT
        }
        None => {
            let rv = call_real!(C_OpenSession(
                slot_id,
                flags,
                p_application,
                notify,
                ph_session
            ));
            // SAFETY: on CKR_OK the module stored the new handle in `*ph_session`, which the
            // caller provided; `as_ref` handles NULL.
            let handle = unsafe { ph_session.as_ref() }
                .copied()
                .filter(|_| rv == CKR_OK);
            shim.session_opened(slot_id, handle);
            rv
        }
    };
    shim.leave(call, rv)
}

unsafe extern "C" fn C_CloseAllSessions(slot_id: CK_SLOT_ID) -> CK_RV {
    let shim = shim();
    let call = shim.enter(Func::C_CloseAllSessions, None);
    let rv = match call.injected {
        Some(rv) => rv,
        None => {
            let rv = call_real!(C_CloseAllSessions(slot_id));
            if rv == CKR_OK {
                shim.all_sessions_closed(slot_id);
            }
            rv
        }
    };
    shim.leave(call, rv)
}

unsafe extern "C" fn C_Login(
    h_session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    p_pin: *mut CK_UTF8CHAR,
    ul_pin_len: CK_ULONG,
) -> CK_RV {
    let shim = shim();
    let call = shim.enter(Func::C_Login, Some(h_session));
    let rv = match call.injected {
        Some(rv) => rv,
        None => call_real!(C_Login(h_session, user_type, p_pin, ul_pin_len)),
    };
    shim.login_done(rv);
    shim.leave(call, rv)
}

/// Flips the lowest bit of the last byte of a signature buffer. Returns false if it is empty.
///
/// # Safety
///
/// `sig` must point to at least `*sig_len` initialised, writable bytes, and `sig_len` must be
/// NULL or valid for reads.
unsafe fn flip_last_bit(sig: *mut CK_BYTE, sig_len: *const CK_ULONG) -> bool {
    // SAFETY: guaranteed by the caller; `as_ref` handles NULL.
    let len = unsafe { sig_len.as_ref() }.and_then(|n| usize::try_from(*n).ok());
    let Some(len) = len.filter(|n| *n > 0) else {
        return false;
    };
    // SAFETY: guaranteed by the caller: `sig` holds `len` (> 0) initialised, writable bytes, and
    // no other reference to them exists while this slice lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(sig, len) };
    match bytes.last_mut() {
        Some(last) => {
            *last ^= 1;
            true
        }
        None => false,
    }
}

unsafe extern "C" fn C_Sign(
    h_session: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
) -> CK_RV {
    let shim = shim();
    let call = shim.enter(Func::C_Sign, Some(h_session));
    let rv = match call.injected {
        Some(rv) => rv,
        None => {
            let rv = call_real!(C_Sign(
                h_session,
                p_data,
                ul_data_len,
                p_signature,
                pul_signature_len
            ));
            if rv == CKR_OK && !p_signature.is_null() && call.rules.should_corrupt_signature() {
                // SAFETY: on CKR_OK with a non-NULL pSignature, the module wrote
                // `*pul_signature_len` bytes into the caller's signature buffer.
                if unsafe { flip_last_bit(p_signature, pul_signature_len) } {
                    shim.corrupted_one();
                }
            }
            rv
        }
    };
    shim.leave(call, rv)
}

forward!(C_GetInfo(p_info: *mut CK_INFO));
forward!(C_GetSlotList(
    token_present: CK_BBOOL,
    p_slot_list: *mut CK_SLOT_ID,
    pul_count: *mut CK_ULONG,
));
forward!(C_GetSlotInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_SLOT_INFO));
forward!(C_GetMechanismList(
    slot_id: CK_SLOT_ID,
    p_mechanism_list: *mut CK_MECHANISM_TYPE,
    pul_count: *mut CK_ULONG,
));
forward!(C_GetMechanismInfo(
    slot_id: CK_SLOT_ID,
    mech_type: CK_MECHANISM_TYPE,
    p_info: *mut CK_MECHANISM_INFO,
));
forward!(C_InitToken(
    slot_id: CK_SLOT_ID,
    p_pin: *mut CK_UTF8CHAR,
    ul_pin_len: CK_ULONG,
    p_label: *mut CK_UTF8CHAR,
));
forward!(session C_InitPIN(h: CK_SESSION_HANDLE, p_pin: *mut CK_UTF8CHAR, ul_pin_len: CK_ULONG));
forward!(session C_SetPIN(
    h: CK_SESSION_HANDLE,
    p_old_pin: *mut CK_UTF8CHAR,
    ul_old_len: CK_ULONG,
    p_new_pin: *mut CK_UTF8CHAR,
    ul_new_len: CK_ULONG,
));
forward!(session C_CloseSession(h: CK_SESSION_HANDLE));
forward!(session C_GetSessionInfo(h: CK_SESSION_HANDLE, p_info: *mut CK_SESSION_INFO));
forward!(session C_GetOperationState(
    h: CK_SESSION_HANDLE,
    p_state: *mut CK_BYTE,
    pul_state_len: *mut CK_ULONG,
));
forward!(session C_SetOperationState(
    h: CK_SESSION_HANDLE,
    p_state: *mut CK_BYTE,
    ul_state_len: CK_ULONG,
    h_encryption_key: CK_OBJECT_HANDLE,
    h_authentication_key: CK_OBJECT_HANDLE,
));
forward!(session C_Logout(h: CK_SESSION_HANDLE));
forward!(session C_CreateObject(
    h: CK_SESSION_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
    ph_object: *mut CK_OBJECT_HANDLE,
));
forward!(session C_CopyObject(
    h: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
    ph_new_object: *mut CK_OBJECT_HANDLE,
));
forward!(session C_DestroyObject(h: CK_SESSION_HANDLE, h_object: CK_OBJECT_HANDLE));
forward!(session C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    pul_size: *mut CK_ULONG,
));
forward!(session C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
));
forward!(session C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
));
forward!(session C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
));
forward!(session C_FindObjects(
    h: CK_SESSION_HANDLE,
    ph_object: *mut CK_OBJECT_HANDLE,
    ul_max_object_count: CK_ULONG,
    pul_object_count: *mut CK_ULONG,
));
forward!(session C_FindObjectsFinal(h: CK_SESSION_HANDLE));
forward!(session C_EncryptInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
));
forward!(session C_Encrypt(
    h: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_encrypted: *mut CK_BYTE,
    pul_encrypted_len: *mut CK_ULONG,
));
forward!(session C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
    p_encrypted_part: *mut CK_BYTE,
    pul_encrypted_part_len: *mut CK_ULONG,
));
forward!(session C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    p_last: *mut CK_BYTE,
    pul_last_len: *mut CK_ULONG,
));
forward!(session C_DecryptInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
));
forward!(session C_Decrypt(
    h: CK_SESSION_HANDLE,
    p_encrypted: *mut CK_BYTE,
    ul_encrypted_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    pul_data_len: *mut CK_ULONG,
));
forward!(session C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    p_encrypted_part: *mut CK_BYTE,
    ul_encrypted_part_len: CK_ULONG,
    p_part: *mut CK_BYTE,
    pul_part_len: *mut CK_ULONG,
));
forward!(session C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    p_last: *mut CK_BYTE,
    pul_last_len: *mut CK_ULONG,
));
forward!(session C_DigestInit(h: CK_SESSION_HANDLE, p_mechanism: *mut CK_MECHANISM));
forward!(session C_Digest(
    h: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_digest: *mut CK_BYTE,
    pul_digest_len: *mut CK_ULONG,
));
forward!(session C_DigestUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, ul_part_len: CK_ULONG));
forward!(session C_DigestKey(h: CK_SESSION_HANDLE, h_key: CK_OBJECT_HANDLE));
forward!(session C_DigestFinal(
    h: CK_SESSION_HANDLE,
    p_digest: *mut CK_BYTE,
    pul_digest_len: *mut CK_ULONG,
));
forward!(session C_SignInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
));
forward!(session C_SignUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, ul_part_len: CK_ULONG));
forward!(session C_SignFinal(
    h: CK_SESSION_HANDLE,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
));
forward!(session C_SignRecoverInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
));
forward!(session C_SignRecover(
    h: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
));
forward!(session C_VerifyInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
));
forward!(session C_Verify(
    h: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
));
forward!(session C_VerifyUpdate(h: CK_SESSION_HANDLE, p_part: *mut CK_BYTE, ul_part_len: CK_ULONG));
forward!(session C_VerifyFinal(
    h: CK_SESSION_HANDLE,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
));
forward!(session C_VerifyRecoverInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
));
forward!(session C_VerifyRecover(
    h: CK_SESSION_HANDLE,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    pul_data_len: *mut CK_ULONG,
));
forward!(session C_DigestEncryptUpdate(
    h: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
    p_encrypted_part: *mut CK_BYTE,
    pul_encrypted_part_len: *mut CK_ULONG,
));
forward!(session C_DecryptDigestUpdate(
    h: CK_SESSION_HANDLE,
    p_encrypted_part: *mut CK_BYTE,
    ul_encrypted_part_len: CK_ULONG,
    p_part: *mut CK_BYTE,
    pul_part_len: *mut CK_ULONG,
));
forward!(session C_SignEncryptUpdate(
    h: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
    p_encrypted_part: *mut CK_BYTE,
    pul_encrypted_part_len: *mut CK_ULONG,
));
forward!(session C_DecryptVerifyUpdate(
    h: CK_SESSION_HANDLE,
    p_encrypted_part: *mut CK_BYTE,
    ul_encrypted_part_len: CK_ULONG,
    p_part: *mut CK_BYTE,
    pul_part_len: *mut CK_ULONG,
));
forward!(session C_GenerateKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
));
forward!(session C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    p_public_template: *mut CK_ATTRIBUTE,
    ul_public_count: CK_ULONG,
    p_private_template: *mut CK_ATTRIBUTE,
    ul_private_count: CK_ULONG,
    ph_public_key: *mut CK_OBJECT_HANDLE,
    ph_private_key: *mut CK_OBJECT_HANDLE,
));
forward!(session C_WrapKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_wrapping_key: CK_OBJECT_HANDLE,
    h_key: CK_OBJECT_HANDLE,
    p_wrapped_key: *mut CK_BYTE,
    pul_wrapped_key_len: *mut CK_ULONG,
));
forward!(session C_UnwrapKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_unwrapping_key: CK_OBJECT_HANDLE,
    p_wrapped_key: *mut CK_BYTE,
    ul_wrapped_key_len: CK_ULONG,
    p_template: *mut CK_ATTRIBUTE,
    ul_attribute_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
));
forward!(session C_DeriveKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_base_key: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_attribute_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
));
forward!(session C_SeedRandom(h: CK_SESSION_HANDLE, p_seed: *mut CK_BYTE, ul_seed_len: CK_ULONG));
forward!(session C_GenerateRandom(
    h: CK_SESSION_HANDLE,
    p_random_data: *mut CK_BYTE,
    ul_random_len: CK_ULONG,
));
forward!(session C_GetFunctionStatus(h: CK_SESSION_HANDLE));
forward!(session C_CancelFunction(h: CK_SESSION_HANDLE));
forward!(C_WaitForSlotEvent(
    flags: CK_FLAGS,
    p_slot: *mut CK_SLOT_ID,
    p_reserved: *mut c_void,
));

/// The function list handed to applications: every entry is a shim forwarder.
static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
