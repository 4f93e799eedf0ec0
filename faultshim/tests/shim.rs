//! End-to-end tests of the fault shim: cryptoki 0.12 → shim → SoftHSMv2.

mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{os_locking, pin, raw_handle, Harness};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::UserType;
use cryptoki::slot::Limit;
use cryptoki_sys::{
    CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED, CKF_USER_PIN_TO_BE_CHANGED, CKR_OK,
    CKR_SESSION_HANDLE_INVALID,
};

/// Asserts that `$res` is `Err(Error::Pkcs11(RvError::$rv, Function::$f))`.
macro_rules! assert_rv {
    ($res:expr, $rv:ident, $f:ident) => {{
        let res = $res;
        assert!(
            matches!(res, Err(Error::Pkcs11(RvError::$rv, Function::$f))),
            "expected {} from {}, got {res:?}",
            stringify!($rv),
            stringify!($f),
        );
    }};
}

shim_test! {
    /// Pass-through signing works and all the calls cryptoki makes are routed through the shim.
    fn passthrough_signing_verifies_and_is_counted() {
        let h = Harness::new();
        let session = h.session().expect("session");
        let signature = h.sign(&session).expect("sign");
        assert_eq!(signature.len(), 64);
        assert!(h.verifies(&signature), "pass-through signature must verify");

        h.wait_stat("calls.C_Sign", 2); // size query + data call
        h.wait_stat("calls.C_SignInit", 1);
        let stats = h.stats();
        for (key, want) in [
            ("calls.C_GetFunctionList", 1),
            ("calls.C_Initialize", 1),
            ("initialize_calls", 1),
            ("initialize_without_os_locking", 0),
            ("calls.C_InitToken", 1),
            ("calls.C_InitPIN", 1),
            ("calls.C_GenerateKeyPair", 1),
            ("calls.C_FindObjectsInit", 1),
            ("login_calls", 2),
            ("login_failures", 0),
            ("open_sessions", 2),
            ("corrupted", 0),
            ("poisoned_session_reuse", 0),
            ("concurrent_session_use", 0),
            ("generation", 0),
        ] {
            assert_eq!(stats.get(key).copied(), Some(want), "{key} in {stats:#?}");
        }
        assert!(stats.keys().all(|k| !k.starts_with("faults.")), "{stats:#?}");
        let keys: Vec<_> = stats.keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "stats keys are sorted");

        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(!info.user_pin_locked() && !info.user_pin_final_try());

        drop(session);
        let stats_path = h.stats.clone();
        let _dir = h.finish();
        // Written synchronously at C_Finalize.
        let stats = common::parse_stats(&std::fs::read_to_string(stats_path).expect("stats"));
        assert_eq!(stats.get("calls.C_Finalize"), Some(&1));
        assert_eq!(stats.get("open_sessions"), Some(&0));
    }
}

shim_test! {
    /// Every CK_FUNCTION_LIST entry is a forwarder, and C_GetInterface is not exported, so
    /// cryptoki 0.12 (which prefers C_GetInterface when present) uses C_GetFunctionList.
    fn function_list_is_complete_and_no_get_interface() {
        let _env = common::prepare_env();
        let raw = Raw::load();
        assert!(raw.exports("C_GetFunctionList"));
        assert!(!raw.exports("C_GetInterface"), "C_GetInterface must stay unexported: cryptoki 0.12 prefers it over C_GetFunctionList");
        assert!(!raw.exports("C_GetInterfaceList"));
        assert!(!raw.exports("C_Sign"), "only C_GetFunctionList is exported");
        let l = raw.list;
        assert_eq!((l.version.major, l.version.minor), (2, 40));
        let entries = [
            l.C_Initialize.is_some(), l.C_Finalize.is_some(), l.C_GetInfo.is_some(),
            l.C_GetFunctionList.is_some(), l.C_GetSlotList.is_some(), l.C_GetSlotInfo.is_some(),
            l.C_GetTokenInfo.is_some(), l.C_GetMechanismList.is_some(),
            l.C_GetMechanismInfo.is_some(), l.C_InitToken.is_some(), l.C_InitPIN.is_some(),
            l.C_SetPIN.is_some(), l.C_OpenSession.is_some(), l.C_CloseSession.is_some(),
            l.C_CloseAllSessions.is_some(), l.C_GetSessionInfo.is_some(),
            l.C_GetOperationState.is_some(), l.C_SetOperationState.is_some(),
            l.C_Login.is_some(), l.C_Logout.is_some(), l.C_CreateObject.is_some(),
            l.C_CopyObject.is_some(), l.C_DestroyObject.is_some(), l.C_GetObjectSize.is_some(),
            l.C_GetAttributeValue.is_some(), l.C_SetAttributeValue.is_some(),
            l.C_FindObjectsInit.is_some(), l.C_FindObjects.is_some(),
            l.C_FindObjectsFinal.is_some(), l.C_EncryptInit.is_some(), l.C_Encrypt.is_some(),
            l.C_EncryptUpdate.is_some(), l.C_EncryptFinal.is_some(), l.C_DecryptInit.is_some(),
            l.C_Decrypt.is_some(), l.C_DecryptUpdate.is_some(), l.C_DecryptFinal.is_some(),
            l.C_DigestInit.is_some(), l.C_Digest.is_some(), l.C_DigestUpdate.is_some(),
            l.C_DigestKey.is_some(), l.C_DigestFinal.is_some(), l.C_SignInit.is_some(),
            l.C_Sign.is_some(), l.C_SignUpdate.is_some(), l.C_SignFinal.is_some(),
            l.C_SignRecoverInit.is_some(), l.C_SignRecover.is_some(), l.C_VerifyInit.is_some(),
            l.C_Verify.is_some(), l.C_VerifyUpdate.is_some(), l.C_VerifyFinal.is_some(),
            l.C_VerifyRecoverInit.is_some(), l.C_VerifyRecover.is_some(),
            l.C_DigestEncryptUpdate.is_some(), l.C_DecryptDigestUpdate.is_some(),
            l.C_SignEncryptUpdate.is_some(), l.C_DecryptVerifyUpdate.is_some(),
            l.C_GenerateKey.is_some(), l.C_GenerateKeyPair.is_some(), l.C_WrapKey.is_some(),
            l.C_UnwrapKey.is_some(), l.C_DeriveKey.is_some(), l.C_SeedRandom.is_some(),
            l.C_GenerateRandom.is_some(), l.C_GetFunctionStatus.is_some(),
            l.C_CancelFunction.is_some(), l.C_WaitForSlotEvent.is_some(),
        ];
        assert_eq!(entries.len(), 68);
        assert!(entries.iter().all(|e| *e));
    }
}

shim_test! {
    /// fault.C_Sign returns the CKR without calling the real C_Sign, which leaves the operation
    /// active in SoftHSM (next C_SignInit → OPERATION_ACTIVE), and the session counts as poisoned.
    fn fault_on_sign_returns_ckr_and_poisons_the_session() {
        let mut h = Harness::new();
        let session = h.session().expect("session");
        h.set_control("fault.C_Sign = 0x30 # CKR_DEVICE_ERROR");
        assert_rv!(h.sign(&session), DeviceError, Sign);
        h.wait_stat("faults.C_Sign", 1);

        h.set_control("");
        assert_rv!(h.sign(&session), OperationActive, SignInit);
        h.wait_stat("poisoned_session_reuse", 1);

        // Closing the poisoned session clears it; a new session (possibly reusing the handle
        // number) is clean.
        drop(session);
        let fresh = h.session().expect("session");
        let signature = h.sign(&fresh).expect("sign");
        assert!(h.verifies(&signature));
        h.wait_stat("calls.C_SignInit", 3);
        assert_eq!(h.stat("poisoned_session_reuse"), 1);
        assert_eq!(h.stat("faults.C_Sign"), 1);
        drop(fresh);
        h.finish();
    }
}

shim_test! {
    /// nth fails exactly the n-th call and every the k-th calls, counted per control version.
    fn nth_and_every_count_per_control_version() {
        let mut h = Harness::new();
        let sign_fresh = |h: &Harness| {
            let s = h.session().expect("session");
            h.sign(&s).map(|_| ())
        };

        h.set_control("fault.C_SignInit = CKR_DEVICE_REMOVED\nnth.C_SignInit = 3");
        let outcomes: Vec<bool> = (0..5).map(|_| sign_fresh(&h).is_ok()).collect();
        assert_eq!(outcomes, [true, true, false, true, true]);
        h.wait_stat("faults.C_SignInit", 1);

        // A new control version restarts the count.
        h.set_control("fault.C_SignInit = 0x32\nevery.C_SignInit = 2");
        let outcomes: Vec<bool> = (0..6).map(|_| sign_fresh(&h).is_ok()).collect();
        assert_eq!(outcomes, [true, false, true, false, true, false]);
        h.wait_stat("faults.C_SignInit", 4);

        // The error surfaces as the injected CKR.
        h.set_control("fault.C_SignInit = 0x32");
        assert_rv!(sign_fresh(&h), DeviceRemoved, SignInit);

        // Calls are counted literally: cryptoki's sign() makes two C_Sign calls (size query,
        // then data), so nth.C_Sign = 2 hits the data call of the first signature.
        h.set_control("fault.C_Sign = CKR_DEVICE_ERROR\nnth.C_Sign = 2");
        assert_rv!(sign_fresh(&h), DeviceError, Sign);
        assert!(sign_fresh(&h).is_ok());
        h.wait_stat("faults.C_Sign", 1);
        // Sessions were closed after each use, so nothing was reused while poisoned.
        assert_eq!(h.stat("poisoned_session_reuse"), 0);
        h.finish();
    }
}

shim_test! {
    /// delay_ms delays each call; lifting it releases calls that are already waiting.
    fn delay_ms_delays_and_can_be_lifted() {
        let mut h = Harness::new();
        h.set_control("delay_ms.C_SignInit = 300");
        let session = h.session().expect("session");
        let start = Instant::now();
        h.sign(&session).expect("sign");
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");

        h.set_control("delay_ms.C_Sign = 60000");
        let key = h.private_key;
        let waiting = std::thread::spawn(move || {
            let start = Instant::now();
            let result = session.sign(&cryptoki::mechanism::Mechanism::Ecdsa, key, &common::DIGEST);
            (result, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "C_Sign should still be delayed");
        h.set_control("");
        let (result, elapsed) = waiting.join().expect("signing thread");
        assert!(h.verifies(&result.expect("sign after the delay was lifted")));
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        h.finish();
    }
}

shim_test! {
    /// corrupt_every flips a bit of every k-th data-returning C_Sign.
    fn corrupt_every_breaks_signatures() {
        let mut h = Harness::new();
        let session = h.session().expect("session");
        h.set_control("corrupt_every = 1");
        let signature = h.sign(&session).expect("sign");
        assert_eq!(signature.len(), 64);
        assert!(!h.verifies(&signature), "corrupted signature must not verify");
        h.wait_stat("corrupted", 1);

        h.set_control("corrupt_every = 2");
        let verified: Vec<bool> = (0..4)
            .map(|_| h.verifies(&h.sign(&session).expect("sign")))
            .collect();
        assert_eq!(verified, [true, false, true, false]);
        h.wait_stat("corrupted", 3);

        h.set_control("");
        assert!(h.verifies(&h.sign(&session).expect("sign")));
        drop(session);
        h.finish();
    }
}

shim_test! {
    /// max_sessions makes C_OpenSession fail with CKR_SESSION_COUNT and is reported in token info.
    fn max_sessions_limits_open_sessions() {
        let mut h = Harness::new();
        h.wait_stat("open_sessions", 1); // the anchor
        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(!matches!(info.max_session_count(), Limit::Max(2)));

        h.set_control("max_sessions = 2");
        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(matches!(info.max_session_count(), Limit::Max(2)));
        assert!(matches!(info.max_rw_session_count(), Limit::Max(2)));

        let second = h.session().expect("second session");
        assert_rv!(h.session(), SessionCount, OpenSession);
        h.wait_stat("faults.C_OpenSession", 1);
        h.wait_stat("open_sessions", 2);
        drop(second);
        h.wait_stat("open_sessions", 1);
        let third = h.session().expect("a slot was freed");

        h.set_control("max_sessions = 2\nreport_max_sessions = unavailable");
        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(matches!(info.max_session_count(), Limit::Unavailable));
        h.set_control("report_max_sessions = 0");
        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(matches!(info.max_session_count(), Limit::Infinite));
        let fourth = h.session().expect("no limit any more");
        drop((third, fourth));
        h.finish();
    }
}

shim_test! {
    /// token_flags_set ORs bits into CK_TOKEN_INFO.flags.
    fn token_flags_set_shows_in_token_info() {
        let mut h = Harness::new();
        let flags = CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_TO_BE_CHANGED;
        h.set_control(&format!("token_flags_set = {flags:#x}"));
        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(info.user_pin_locked());
        assert!(info.user_pin_final_try());
        assert!(info.user_pin_to_be_changed());
        assert!(info.token_initialized(), "real flags are kept");

        h.set_control("");
        let info = h.pkcs11().get_token_info(h.slot).expect("token info");
        assert!(!info.user_pin_locked() && !info.user_pin_final_try());
        h.finish();
    }
}

shim_test! {
    /// Faults on non-signing functions, and the login counters (PINs are never recorded).
    fn login_and_other_function_faults() {
        let mut h = Harness::new();
        h.wait_stat("login_calls", 2);
        let session = h.session().expect("session");
        h.set_control("fault.C_Login = CKR_PIN_LOCKED");
        let result = session.login(UserType::User, Some(&pin(common::USER_PIN)));
        assert_rv!(result, PinLocked, Login);
        h.wait_stat("login_calls", 3);
        h.wait_stat("login_failures", 1);
        h.wait_stat("faults.C_Login", 1);

        // The real module's own failures count too (already logged in via the anchor).
        h.set_control("");
        assert!(session.login(UserType::User, Some(&pin(common::USER_PIN))).is_err());
        h.wait_stat("login_failures", 2);

        h.set_control(
            "fault.C_GetSlotList = CKR_DEVICE_ERROR\n\
             fault.C_GetTokenInfo = CKR_TOKEN_NOT_PRESENT\n\
             fault.C_GetSessionInfo = CKR_SESSION_HANDLE_INVALID\n\
             fault.C_FindObjectsInit = CKR_DEVICE_REMOVED\n\
             fault.C_GetAttributeValue = CKR_DEVICE_REMOVED",
        );
        assert_rv!(h.pkcs11().get_all_slots(), DeviceError, GetSlotList);
        assert_rv!(h.pkcs11().get_token_info(h.slot), TokenNotPresent, GetTokenInfo);
        assert_rv!(session.get_session_info(), SessionHandleInvalid, GetSessionInfo);
        assert!(session.find_objects(&[]).is_err());
        // The session saw SESSION_HANDLE_INVALID, so the later FindObjectsInit was a reuse.
        h.wait_stat("poisoned_session_reuse", 1);
        drop(session);
        h.set_control("");
        h.finish();
    }
}

shim_test! {
    /// A C_Initialize without CKF_OS_LOCKING_OK is counted (single-threaded: SoftHSM is not
    /// safe to use from several threads in that mode).
    fn initialize_without_os_locking_is_counted() {
        let h = Harness::with_init_args(CInitializeArgs::new(CInitializeFlags::empty()));
        h.wait_stat("initialize_calls", 1);
        h.wait_stat("initialize_without_os_locking", 1);
        let session = h.session().expect("session");
        assert!(h.verifies(&h.sign(&session).expect("sign")));
        drop(session);
        let stats_path = h.stats.clone();
        let shim = common::shim_path();
        let _dir = h.finish();

        let pkcs11 = Pkcs11::new(shim).expect("reload");
        pkcs11.initialize(os_locking()).expect("re-init with OS locking");
        common::wait_stat_in(&stats_path, "initialize_calls", 2);
        common::wait_stat_in(&stats_path, "initialize_without_os_locking", 1);
        pkcs11.finalize().expect("finalize");
    }
}

shim_test! {
    /// Faults can be injected into C_Initialize itself (the control file is read before it).
    fn fault_on_initialize() {
        let (_dir, control, stats) = common::prepare_env();
        common::write_atomic(&control, "fault.C_Initialize = CKR_DEVICE_ERROR\nnth.C_Initialize = 1\n");
        let pkcs11 = Pkcs11::new(common::shim_path()).expect("load");
        assert_rv!(pkcs11.initialize(os_locking()), DeviceError, Initialize);
        pkcs11.initialize(os_locking()).expect("second C_Initialize is not faulted");
        common::wait_stat_in(&stats, "faults.C_Initialize", 1);
        common::wait_stat_in(&stats, "initialize_calls", 2);
        pkcs11.finalize().expect("finalize");
    }
}

shim_test! {
    /// Two calls in flight on one session handle are counted.
    fn concurrent_use_of_one_session_is_counted() {
        let mut h = Harness::new();
        let session = h.session().expect("session");
        let handle = raw_handle(&session);
        // Delay and fail, so the real (non-thread-safe per session) module is never entered.
        h.set_control("delay_ms.C_GetSessionInfo = 300\nfault.C_GetSessionInfo = CKR_DEVICE_ERROR");
        let threads: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || Raw::load().get_session_info(handle)))
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), cryptoki_sys::CKR_DEVICE_ERROR);
        }
        h.wait_stat("concurrent_session_use", 1);
        h.set_control("");
        // Sequential use is fine.
        session.get_session_info().expect("session info");
        session.get_session_info().expect("session info");
        assert_eq!(h.stat("concurrent_session_use"), 1);
        drop(session);
        h.finish();
    }
}

shim_test! {
    /// C_CloseAllSessions resets open_sessions for the slot; a stale handle then gets the real
    /// CKR_SESSION_HANDLE_INVALID, which poisons it.
    fn close_all_sessions_and_stale_handles() {
        let h = Harness::new();
        let session = h.session().expect("session");
        h.wait_stat("open_sessions", 2);
        let raw = Raw::load();
        assert_eq!(raw.close_all_sessions(h.slot.id()), CKR_OK);
        h.wait_stat("open_sessions", 0);
        assert_eq!(raw.get_session_info(raw_handle(&session)), CKR_SESSION_HANDLE_INVALID);
        assert!(h.sign(&session).is_err());
        h.wait_stat("poisoned_session_reuse", 1);
        // Closing the stale session (SESSION_HANDLE_INVALID) clears it.
        drop(session);
        h.finish();
    }
}

shim_test! {
    /// Unknown or malformed control lines are reported on stderr and ignored; the rest applies.
    fn bad_control_lines_are_ignored() {
        let mut h = Harness::new();
        h.set_control("bogus = 1\nfault.C_NoSuchFunction = 5\nnot a rule\nfault.C_Sign = nope\n\
                       max_sessions = 1");
        assert_rv!(h.session(), SessionCount, OpenSession);
        h.set_control("");
        h.finish();
    }
}

shim_test! {
    /// A missing real module makes C_GetFunctionList fail cleanly instead of crashing the host.
    fn missing_real_module_fails_cleanly() {
        let _env = common::prepare_env();
        std::env::set_var("P11KMS_FAULTSHIM_MODULE", "/nonexistent/libnothing.so");
        let result = Pkcs11::new(common::shim_path());
        assert_rv!(result, GeneralError, GetFunctionList);
        // Retried on the next load.
        std::env::remove_var("P11KMS_FAULTSHIM_MODULE");
        let pkcs11 = Pkcs11::new(common::shim_path()).expect("load with the default module");
        pkcs11.initialize(os_locking()).expect("init");
        pkcs11.finalize().expect("finalize");
    }
}

shim_test! {
    /// The shim is thread-safe: one session per thread, all signatures verify, and no false
    /// concurrent-use reports.
    fn multithreaded_signing_through_the_shim() {
        let h = Harness::new();
        let (pkcs11, slot, key, vk) = (h.pkcs11(), h.slot, h.private_key, &h.verifying_key);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(move || {
                    let session = pkcs11.open_rw_session(slot).expect("session");
                    for _ in 0..50 {
                        let sig = session
                            .sign(&cryptoki::mechanism::Mechanism::Ecdsa, key, &common::DIGEST)
                            .expect("sign");
                        assert!(common::verifies(vk, &sig));
                    }
                });
            }
        });
        h.wait_stat("calls.C_SignInit", 200);
        h.wait_stat("calls.C_Sign", 400);
        h.wait_stat("open_sessions", 1);
        assert_eq!(h.stat("concurrent_session_use"), 0);
        assert_eq!(h.stat("poisoned_session_reuse"), 0);
        h.finish();
    }
}
