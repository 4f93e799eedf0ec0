//! In-process PKCS#11 (cryptoki) on a [`TestToken`] copy, to create the objects a test needs
//! before a daemon starts: odd keys, duplicates, keys with the wrong attributes.
//!
//! SoftHSM reads `SOFTHSM2_CONF` at `C_Initialize`, so every use sets it, initialises, runs the
//! closure and finalises, under a process-wide lock. Token objects are on disk when the closure
//! returns; a daemon started afterwards sees them. Do not keep cryptoki objects beyond the closure.

use super::{softhsm_module, TestToken};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use std::sync::Mutex;

static PKCS11_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with a read-write session on the token copy, logged in as the user.
pub fn with_user_session<R>(token: &TestToken, f: impl FnOnce(&Session) -> R) -> R {
    let _guard = PKCS11_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // Each nextest test is its own process; under the lock nothing else here reads this variable.
    std::env::set_var("SOFTHSM2_CONF", token.softhsm_conf());
    let pkcs11 = Pkcs11::new(softhsm_module()).expect("load SoftHSM");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == token.label())
        })
        .expect("the dev token is present");
    let result = {
        let session = pkcs11.open_rw_session(slot).expect("C_OpenSession");
        session
            .login(UserType::User, Some(&AuthPin::new(token.user_pin().into())))
            .expect("C_Login");
        let result = f(&session);
        let _ = session.logout();
        result
    };
    pkcs11.finalize().expect("C_Finalize");
    result
}

/// Private-key attributes that the start-up checks look at.
#[derive(Clone, Copy, Debug)]
pub struct PrivateAttrs {
    /// `CKA_SIGN`.
    pub sign: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_AUTHENTICATE` (a PIN per signature).
    pub always_authenticate: bool,
}

impl Default for PrivateAttrs {
    /// What a servable key has.
    fn default() -> Self {
        Self {
            sign: true,
            sensitive: true,
            extractable: false,
            always_authenticate: false,
        }
    }
}

/// What key pair to generate.
#[derive(Clone, Copy, Debug)]
pub enum KeyGen {
    /// EC on the curve with this OID (e.g. `verify::Curve::P256.oid()`).
    Ec(&'static str),
    /// RSA with this modulus size; keep it at 2048 in tests (generation is slow).
    Rsa(u64),
}

/// Generates a token key pair with `CKA_ID` = `ck_id` and `CKA_LABEL` = `label` on both halves.
/// Returns `(public, private)` handles (valid only inside the session's closure).
pub fn generate_key_pair(
    session: &Session,
    kind: KeyGen,
    ck_id: &[u8],
    label: &str,
    private: PrivateAttrs,
) -> (ObjectHandle, ObjectHandle) {
    use der::Encode as _;
    let common = || {
        vec![
            Attribute::Token(true),
            Attribute::Id(ck_id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let mut private_template = common();
    private_template.extend([
        Attribute::Private(true),
        Attribute::Sign(private.sign),
        Attribute::Sensitive(private.sensitive),
        Attribute::Extractable(private.extractable),
        Attribute::AlwaysAuthenticate(private.always_authenticate),
    ]);
    let mut public_template = common();
    public_template.push(Attribute::Verify(true));
    let mechanism = match kind {
        KeyGen::Ec(oid) => {
            let oid = der::asn1::ObjectIdentifier::new(oid).expect("valid OID");
            public_template.push(Attribute::EcParams(oid.to_der().expect("OID encodes")));
            Mechanism::EccKeyPairGen
        }
        KeyGen::Rsa(bits) => {
            public_template.extend([
                Attribute::ModulusBits(Ulong::from(bits)),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ]);
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    session
        .generate_key_pair(&mechanism, &public_template, &private_template)
        .expect("C_GenerateKeyPair")
}

/// Handles of the objects of `class` with `CKA_ID` = `ck_id`.
pub fn find(session: &Session, class: ObjectClass, ck_id: &[u8]) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Class(class), Attribute::Id(ck_id.to_vec())])
        .expect("C_FindObjects")
}

/// The one object of `class` with `CKA_ID` = `ck_id`.
pub fn find_one(session: &Session, class: ObjectClass, ck_id: &[u8]) -> ObjectHandle {
    let found = find(session, class, ck_id);
    assert_eq!(found.len(), 1, "objects of {class} with CKA_ID {ck_id:x?}");
    found[0]
}

/// Sets `CKA_ID` of an object.
pub fn set_id(session: &Session, object: ObjectHandle, ck_id: &[u8]) {
    session
        .update_attributes(object, &[Attribute::Id(ck_id.to_vec())])
        .expect("C_SetAttributeValue(CKA_ID)");
}

/// Destroys an object.
pub fn destroy(session: &Session, object: ObjectHandle) {
    session.destroy_object(object).expect("C_DestroyObject");
}
