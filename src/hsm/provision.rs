//! Creating tokens and generating key pairs on them. Private keys are generated on the token,
//! sensitive and non-extractable; their key material never exists outside it.

use super::error::{Context as _, HsmError};
use super::{Hsm, KeySpec, KeyState, Pkcs11Module, Retry};
use crate::config::ObjectSelector;
use crate::crypto::{Algorithm, KeyKind, PublicKey};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::Ulong;
use der::Encode;
use secrecy::SecretString;
use std::sync::Arc;

/// A key pair generated on the token.
#[derive(Debug)]
pub struct GeneratedKey {
    /// Its public key, read back from the token.
    pub public_key: PublicKey,
}

/// Initialises the first uninitialised token slot with `label`, then sets the user PIN. Blocking.
///
/// # Errors
/// When no uninitialised slot exists or the token refuses.
pub fn init_token(
    module: &Pkcs11Module,
    label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
) -> Result<(), HsmError> {
    let pkcs11 = &module.0;
    let slot = pkcs11
        .get_slots_with_token()
        .context("C_GetSlotList")?
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|info| !info.token_initialized())
        })
        .ok_or_else(|| {
            HsmError::TokenSelection("no uninitialised token slot is available".into())
        })?;
    pkcs11
        .init_token(slot, so_pin, label)
        .context("C_InitToken")?;
    // Some modules renumber slots after C_InitToken; find the new token by label.
    let slot = pkcs11
        .get_slots_with_token()
        .context("C_GetSlotList")?
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|info| info.token_initialized() && info.label().trim_end() == label)
        })
        .ok_or_else(|| {
            HsmError::TokenSelection(format!("token {label:?} vanished after C_InitToken"))
        })?;
    let session = pkcs11.open_rw_session(slot).context("C_OpenSession")?;
    session
        .login(UserType::So, Some(so_pin))
        .context("C_Login (SO)")?;
    session.init_pin(user_pin).context("C_InitPIN")?;
    session.logout().context("C_Logout")?;
    Ok(())
}

impl Hsm {
    /// Generates a key pair for `algorithm` on the token, tagged with `ck_id` and `label`, and
    /// makes it available for signing under `key_id` in this and every later epoch.
    ///
    /// Device- and login-class failures start recovery, as for signing; the call is never
    /// repeated, because a repeat could leave two key pairs under one `CKA_ID`.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn generate_key_pair(
        &self,
        key_id: &str,
        algorithm: Algorithm,
        ck_id: Vec<u8>,
        label: String,
    ) -> Result<GeneratedKey, HsmError> {
        let spec = KeySpec {
            key_id: key_id.to_string(),
            selector: ObjectSelector::Id(ck_id.clone()),
            algorithm,
            pin_sha256: None,
        };
        // Object creation takes turns in this process (see `objects::WriteMode`).
        let _turn = self.shared.writes.turn().await;
        let shared = Arc::clone(&self.shared);
        self.call(Retry::Never, move |session, epoch| {
            let (public, private) = generate(session, algorithm, &ck_id, &label)?;
            let public_key = read_public_key(session, public, algorithm, &spec.key_id)?;
            // Registered under the gate, so a recovery cannot run between creation and
            // registration and lose the key.
            shared.register(spec.clone(), public_key.spki_der().to_vec());
            epoch.set_key(spec.key_id.clone(), KeyState::Ready(private));
            Ok(GeneratedKey { public_key })
        })
        .await
    }
}

fn generate(
    session: &Session,
    algorithm: Algorithm,
    ck_id: &[u8],
    label: &str,
) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
    let common = |extra: Vec<Attribute>| {
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Id(ck_id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        t.extend(extra);
        t
    };
    let private = common(vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
    ]);
    let (mechanism, public) = match algorithm.key_kind() {
        KeyKind::Rsa { bits } => (
            Mechanism::RsaPkcsKeyPairGen,
            common(vec![
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::ModulusBits(Ulong::new(bits as _)),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ]),
        ),
        KeyKind::Ec(curve) => {
            let params = curve.oid().to_der().expect("a curve OID always encodes");
            (
                Mechanism::EccKeyPairGen,
                common(vec![
                    Attribute::Private(false),
                    Attribute::Verify(true),
                    Attribute::EcParams(params),
                ]),
            )
        }
    };
    session
        .generate_key_pair(&mechanism, &public, &private)
        .context("C_GenerateKeyPair")
}

fn read_public_key(
    session: &Session,
    public: ObjectHandle,
    algorithm: Algorithm,
    key_id: &str,
) -> Result<PublicKey, HsmError> {
    let wanted = [
        AttributeType::EcPoint,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
    ];
    let attrs = session
        .get_attributes(public, &wanted)
        .context("C_GetAttributeValue")?;
    let find = |t: AttributeType| {
        attrs.iter().find_map(|a| match (a, t) {
            (Attribute::EcPoint(v), AttributeType::EcPoint)
            | (Attribute::Modulus(v), AttributeType::Modulus)
            | (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.as_slice()),
            _ => None,
        })
    };
    let bad = |reason: String| HsmError::Key {
        key_id: key_id.to_string(),
        reason,
    };
    let key = match algorithm.key_kind() {
        KeyKind::Ec(curve) => find(AttributeType::EcPoint)
            .ok_or_else(|| bad("the generated public key has no CKA_EC_POINT".into()))
            .and_then(|p| PublicKey::from_ec_point(curve, p).map_err(|e| bad(e.to_string()))),
        KeyKind::Rsa { bits } => match (
            find(AttributeType::Modulus),
            find(AttributeType::PublicExponent),
        ) {
            (Some(n), Some(e)) => PublicKey::from_rsa(n, e, bits).map_err(|e| bad(e.to_string())),
            _ => Err(bad(
                "the generated public key has no modulus or exponent".into()
            )),
        },
    }?;
    Ok(key)
}
