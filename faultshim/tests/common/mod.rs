//! Shared harness for the shim's integration tests: a private SoftHSM token per test, loaded
//! through the built shim with cryptoki, plus helpers for the control and stats files.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use tempfile::TempDir;

pub const SO_PIN: &str = "so-pin-1234";
pub const USER_PIN: &str = "user-pin-5678";
pub const TOKEN_LABEL: &str = "faultshim-test";
/// DER OID of prime256v1 (secp256r1).
const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// A fixed 32-byte "digest" signed with raw CKM_ECDSA.
pub const DIGEST: [u8; 32] = [0x5a; 32];

const CHILD_ENV: &str = "P11KMS_FAULTSHIM_TEST_CHILD";

/// PKCS#11 state is per process, and so are the shim's counters. Under cargo-nextest every test
/// already runs in its own process; under plain `cargo test` the test re-runs its own binary
/// filtered to itself. Returns true if the caller should run the test body here.
pub fn in_own_process(name: &str) -> bool {
    let per_test = std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test");
    if per_test || std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}

/// Declares a test that runs in its own process (see [`in_own_process`]).
#[macro_export]
macro_rules! shim_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            if common::in_own_process(stringify!($name)) $body
        }
    };
}

/// Finds the built shim: `$P11KMS_FAULTSHIM_LIB`, else `libp11kms_faultshim.so` next to this
/// test executable (`target/<profile>/deps/`, where building the tests puts it, because the crate
/// is also an `rlib`) or in the profile directory (`cargo build -p p11kms-faultshim`), whichever
/// is newer.
pub fn shim_path() -> PathBuf {
    if let Some(p) = std::env::var_os("P11KMS_FAULTSHIM_LIB") {
        return PathBuf::from(p);
    }
    let file = format!(
        "{}p11kms_faultshim{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent dir");
    let candidates: Vec<PathBuf> = [Some(deps.join(&file)), deps.parent().map(|p| p.join(&file))]
        .into_iter()
        .flatten()
        .collect();
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| {
            panic!(
                "cannot find the shim library; looked for {candidates:?}. Build it with \
                 `cargo build -p p11kms-faultshim` or set P11KMS_FAULTSHIM_LIB"
            )
        })
}

/// Writes `text` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write temp file");
    fs::rename(&tmp, path).expect("rename temp file");
}

/// Parses a stats file.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("numeric stats value")))
        .collect()
}

/// A private SoftHSM token with one P-256 key pair, used through the shim.
pub struct Harness {
    pub dir: TempDir,
    pub control: PathBuf,
    pub stats: PathBuf,
    generation: u64,
    pub pkcs11: Option<Pkcs11>,
    pub slot: Slot,
    /// Logged-in session kept open for the whole test (login state is per process).
    pub anchor: Option<Session>,
    pub private_key: ObjectHandle,
    pub verifying_key: VerifyingKey,
}

/// Prepares the environment (token dir, SoftHSM config, shim env vars) without loading anything.
pub fn prepare_env() -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    fs::create_dir(&tokens).expect("token dir");
    let conf = dir.path().join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    let control = dir.path().join("faultshim.control");
    let stats = dir.path().join("faultshim.stats");
    // Each test runs in its own process, so setting process-wide env vars is fine.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::set_var("P11KMS_FAULTSHIM_CONTROL", &control);
    std::env::set_var("P11KMS_FAULTSHIM_STATS", &stats);
    std::env::remove_var("P11KMS_FAULTSHIM_MODULE");
    (dir, control, stats)
}

pub fn os_locking() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

pub fn pin(p: &str) -> AuthPin {
    AuthPin::new(p.into())
}

impl Harness {
    /// Fresh token, initialised with `C_Initialize(OS_LOCKING_OK)`.
    pub fn new() -> Harness {
        Harness::with_init_args(os_locking())
    }

    pub fn with_init_args(args: CInitializeArgs) -> Harness {
        let (dir, control, stats) = prepare_env();
        let pkcs11 = Pkcs11::new(shim_path()).expect("load the shim");
        pkcs11.initialize(args).expect("C_Initialize");

        let slot = *pkcs11
            .get_slots_with_token()
            .expect("C_GetSlotList")
            .first()
            .expect("SoftHSM offers a slot with an uninitialised token");
        pkcs11
            .init_token(slot, &pin(SO_PIN), TOKEN_LABEL)
            .expect("C_InitToken");
        // SoftHSM moves an initialised token to a new slot ID: look it up by label.
        let slot = pkcs11
            .get_slots_with_initialized_token()
            .expect("C_GetSlotList")
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|t| t.label() == TOKEN_LABEL)
            })
            .expect("the initialised token");

        let anchor = pkcs11.open_rw_session(slot).expect("C_OpenSession");
        anchor
            .login(UserType::So, Some(&pin(SO_PIN)))
            .expect("SO login");
        anchor.init_pin(&pin(USER_PIN)).expect("C_InitPIN");
        anchor.logout().expect("C_Logout");
        anchor
            .login(UserType::User, Some(&pin(USER_PIN)))
            .expect("user login");

        let public_template = [
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(P256_OID_DER.to_vec()),
            Attribute::Id(vec![1]),
            Attribute::Label(b"k1".to_vec()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Id(vec![1]),
            Attribute::Label(b"k1".to_vec()),
        ];
        let (public_key, private_key) = anchor
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .expect("C_GenerateKeyPair");
        let found = anchor
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(vec![1]),
            ])
            .expect("C_FindObjects");
        assert_eq!(found, vec![private_key]);

        let attrs = anchor
            .get_attributes(public_key, &[AttributeType::EcPoint])
            .expect("C_GetAttributeValue");
        let Some(Attribute::EcPoint(point)) = attrs.into_iter().next() else {
            panic!("no CKA_EC_POINT");
        };
        // CKA_EC_POINT is a DER OCTET STRING wrapping the uncompressed SEC1 point.
        let sec1 = match point.as_slice() {
            [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
            other => other,
        };
        let verifying_key = VerifyingKey::from_sec1_bytes(sec1).expect("P-256 public key");

        Harness {
            dir,
            control,
            stats,
            generation: 0,
            pkcs11: Some(pkcs11),
            slot,
            anchor: Some(anchor),
            private_key,
            verifying_key,
        }
    }

    pub fn pkcs11(&self) -> &Pkcs11 {
        self.pkcs11.as_ref().expect("not finalized")
    }

    pub fn anchor(&self) -> &Session {
        self.anchor.as_ref().expect("anchor session")
    }

    /// A new session (logged in, because the anchor session is).
    pub fn session(&self) -> Result<Session, Error> {
        self.pkcs11().open_rw_session(self.slot)
    }

    pub fn sign(&self, session: &Session) -> Result<Vec<u8>, Error> {
        session.sign(&Mechanism::Ecdsa, self.private_key, &DIGEST)
    }

    pub fn verifies(&self, signature: &[u8]) -> bool {
        verifies(&self.verifying_key, signature)
    }

    /// Installs a new control file (with a fresh `generation`) and waits until the shim has
    /// applied it.
    pub fn set_control(&mut self, text: &str) {
        self.generation += 1;
        let generation = self.generation;
        write_atomic(
            &self.control,
            &format!("{text}\ngeneration = {generation}\n"),
        );
        self.wait_stat("generation", generation);
    }

    /// The current stats file (empty if not written yet).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        fs::read_to_string(&self.stats)
            .map(|t| parse_stats(&t))
            .unwrap_or_default()
    }

    /// A stats counter (missing = 0).
    pub fn stat(&self, key: &str) -> u64 {
        self.stats().get(key).copied().unwrap_or(0)
    }

    /// Waits (up to 5 s) until the stats file shows `key = want`, then asserts it.
    pub fn wait_stat(&self, key: &str, want: u64) {
        wait_stat_in(&self.stats, key, want);
    }

    /// Closes the anchor session and finalizes. Returns the temp dir (drop it to delete the
    /// token, control and stats files).
    pub fn finish(mut self) -> TempDir {
        drop(self.anchor.take());
        if let Some(pkcs11) = self.pkcs11.take() {
            pkcs11.finalize().expect("C_Finalize");
        }
        self.dir
    }
}

/// Whether `signature` (raw r||s) is a valid ECDSA signature of [`DIGEST`] under `key`.
pub fn verifies(key: &VerifyingKey, signature: &[u8]) -> bool {
    Signature::from_slice(signature).is_ok_and(|sig| key.verify_prehash(&DIGEST, &sig).is_ok())
}

/// Waits (up to 5 s) until the stats file at `path` shows `key = want`, then asserts it.
pub fn wait_stat_in(path: &Path, key: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = fs::read_to_string(path)
            .map(|t| parse_stats(&t))
            .unwrap_or_default();
        let got = stats.get(key).copied().unwrap_or(0);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stats {key}: want {want}, got {got}; stats file:\n{stats:#?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The raw session handle number of a cryptoki session.
pub fn raw_handle(session: &Session) -> cryptoki_sys::CK_SESSION_HANDLE {
    session.to_string().parse().expect("session handle")
}

/// Direct access to the shim's `CK_FUNCTION_LIST`, for what cryptoki's safe API cannot express
/// (two threads on one session handle, `C_CloseAllSessions`, symbol inspection).
#[allow(unsafe_code)]
pub mod raw {
    use cryptoki_sys::{
        CKR_OK, CK_FUNCTION_LIST, CK_RV, CK_SESSION_HANDLE, CK_SESSION_INFO, CK_SLOT_ID,
    };

    type GetFunctionListFn = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

    #[derive(Debug)]
    pub struct Raw {
        lib: libloading::Library,
        pub list: CK_FUNCTION_LIST,
    }

    impl Raw {
        /// Loads the shim (sharing state with any cryptoki `Pkcs11` on the same path).
        pub fn load() -> Raw {
            // SAFETY: loading the shim runs no initialisers beyond Rust's; it is built for this.
            let lib = unsafe { libloading::Library::new(super::shim_path()) }.expect("dlopen shim");
            // SAFETY: the PKCS#11 signature of C_GetFunctionList.
            let get = unsafe { lib.get::<GetFunctionListFn>(b"C_GetFunctionList\0") }
                .expect("C_GetFunctionList symbol");
            let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
            // SAFETY: `list` is a valid out-pointer.
            let rv = unsafe { get(&mut list) };
            assert_eq!(rv, CKR_OK, "C_GetFunctionList");
            // SAFETY: on CKR_OK the shim returned a pointer to its static function list; the
            // library stays loaded (it is also marked nodelete). The struct is copied.
            let list = unsafe { list.as_ref() }.copied().expect("non-NULL list");
            Raw { lib, list }
        }

        /// Whether the shim library exports `name`.
        pub fn exports(&self, name: &str) -> bool {
            let symbol = format!("{name}\0");
            // SAFETY: the symbol is only looked up, never called or dereferenced.
            unsafe { self.lib.get::<*const ()>(symbol.as_bytes()) }.is_ok()
        }

        pub fn get_session_info(&self, h: CK_SESSION_HANDLE) -> CK_RV {
            let f = self.list.C_GetSessionInfo.expect("C_GetSessionInfo");
            let mut info = CK_SESSION_INFO::default();
            // SAFETY: `info` is a valid, writable CK_SESSION_INFO; `h` is a plain handle value.
            unsafe { f(h, &mut info) }
        }

        pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> CK_RV {
            let f = self.list.C_CloseAllSessions.expect("C_CloseAllSessions");
            // SAFETY: takes only a slot ID.
            unsafe { f(slot) }
        }
    }
}
