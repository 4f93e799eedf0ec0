//! One bulk scan of the token's key objects, and the checks that turn a configured key into a
//! usable one: exactly one private key, fit for its algorithm, sensitive, non-extractable.
//!
//! The scan costs O(objects on the token) once; matching keys against it is in memory, so start-up
//! stays linear in the number of keys instead of one `C_FindObjects` per key.

use super::error::{Context as _, HsmError};
use crate::config::ObjectSelector;
use crate::crypto::{Algorithm, KeyKind, PublicKey};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::collections::HashMap;

/// What the gateway needs to know about one key object.
#[derive(Debug, Default)]
pub(crate) struct KeyObject {
    pub(crate) handle: Option<ObjectHandle>,
    pub(crate) id: Vec<u8>,
    pub(crate) label: String,
    pub(crate) key_type: Option<KeyType>,
    pub(crate) sign: Option<bool>,
    pub(crate) sensitive: Option<bool>,
    pub(crate) extractable: Option<bool>,
    pub(crate) always_authenticate: Option<bool>,
    pub(crate) ec_params: Option<Vec<u8>>,
    pub(crate) ec_point: Option<Vec<u8>>,
    pub(crate) modulus: Option<Vec<u8>>,
    pub(crate) public_exponent: Option<Vec<u8>>,
}

impl KeyObject {
    fn from_attributes(handle: ObjectHandle, attributes: Vec<Attribute>) -> Self {
        let mut o = KeyObject {
            handle: Some(handle),
            ..Default::default()
        };
        for a in attributes {
            match a {
                Attribute::Id(v) => o.id = v,
                Attribute::Label(v) => o.label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::KeyType(v) => o.key_type = Some(v),
                Attribute::Sign(v) => o.sign = Some(v),
                Attribute::Sensitive(v) => o.sensitive = Some(v),
                Attribute::Extractable(v) => o.extractable = Some(v),
                Attribute::AlwaysAuthenticate(v) => o.always_authenticate = Some(v),
                Attribute::EcParams(v) => o.ec_params = Some(v),
                Attribute::EcPoint(v) => o.ec_point = Some(v),
                Attribute::Modulus(v) => o.modulus = Some(v),
                Attribute::PublicExponent(v) => o.public_exponent = Some(v),
                _ => {}
            }
        }
        o
    }

    fn matches(&self, selector: &ObjectSelector) -> bool {
        match selector {
            ObjectSelector::Id(id) => self.id == *id,
            ObjectSelector::Label(label) => self.label == *label,
        }
    }
}

/// Every private and public key object on the token.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    private: Vec<KeyObject>,
    public: Vec<KeyObject>,
}

const PRIVATE_ATTRIBUTES: &[AttributeType] = &[
    AttributeType::Id,
    AttributeType::Label,
    AttributeType::KeyType,
    AttributeType::Sign,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::AlwaysAuthenticate,
    AttributeType::EcParams,
    AttributeType::Modulus,
    AttributeType::PublicExponent,
];

const PUBLIC_ATTRIBUTES: &[AttributeType] = &[
    AttributeType::Id,
    AttributeType::Label,
    AttributeType::KeyType,
    AttributeType::EcParams,
    AttributeType::EcPoint,
    AttributeType::Modulus,
    AttributeType::PublicExponent,
];

impl Inventory {
    /// Reads every key object on the token: one search per class, one attribute read per object.
    pub(crate) fn scan(session: &Session) -> Result<Self, HsmError> {
        let read = |class: ObjectClass, wanted: &[AttributeType]| {
            let handles = session
                .find_objects(&[Attribute::Class(class)])
                .context("C_FindObjects")?;
            handles
                .into_iter()
                .map(|h| {
                    let attrs = session
                        .get_attributes(h, wanted)
                        .context("C_GetAttributeValue")?;
                    Ok(KeyObject::from_attributes(h, attrs))
                })
                .collect::<Result<Vec<_>, HsmError>>()
        };
        Ok(Inventory {
            private: read(ObjectClass::PRIVATE_KEY, PRIVATE_ATTRIBUTES)?,
            public: read(ObjectClass::PUBLIC_KEY, PUBLIC_ATTRIBUTES)?,
        })
    }

    /// Reads only the key objects that `selectors` name: one search per selector and class.
    /// Used when a few keys join a token holding many (keys created by other replicas).
    pub(crate) fn scan_selected(
        session: &Session,
        selectors: &[&ObjectSelector],
    ) -> Result<Self, HsmError> {
        let mut inventory = Inventory::default();
        for selector in selectors {
            let by = match selector {
                ObjectSelector::Id(id) => Attribute::Id(id.clone()),
                ObjectSelector::Label(l) => Attribute::Label(l.as_bytes().to_vec()),
            };
            for (class, wanted, out) in [
                (
                    ObjectClass::PRIVATE_KEY,
                    PRIVATE_ATTRIBUTES,
                    &mut inventory.private,
                ),
                (
                    ObjectClass::PUBLIC_KEY,
                    PUBLIC_ATTRIBUTES,
                    &mut inventory.public,
                ),
            ] {
                let handles = session
                    .find_objects(&[Attribute::Class(class), by.clone()])
                    .context("C_FindObjects")?;
                for h in handles {
                    let attrs = session
                        .get_attributes(h, wanted)
                        .context("C_GetAttributeValue")?;
                    out.push(KeyObject::from_attributes(h, attrs));
                }
            }
        }
        Ok(inventory)
    }

    /// Index of private keys by `CKA_ID` and by label, so resolving many keys stays O(1) each.
    pub(crate) fn index(&self) -> InventoryIndex<'_> {
        let mut idx = InventoryIndex {
            inv: self,
            private_by_id: HashMap::new(),
            private_by_label: HashMap::new(),
            public_by_id: HashMap::new(),
            public_by_label: HashMap::new(),
        };
        for (i, o) in self.private.iter().enumerate() {
            idx.private_by_id.entry(&o.id).or_default().push(i);
            idx.private_by_label.entry(&o.label).or_default().push(i);
        }
        for (i, o) in self.public.iter().enumerate() {
            idx.public_by_id.entry(&o.id).or_default().push(i);
            idx.public_by_label.entry(&o.label).or_default().push(i);
        }
        idx
    }
}

/// Lookup tables over an [`Inventory`].
#[derive(Debug)]
pub(crate) struct InventoryIndex<'a> {
    inv: &'a Inventory,
    private_by_id: HashMap<&'a [u8], Vec<usize>>,
    private_by_label: HashMap<&'a str, Vec<usize>>,
    public_by_id: HashMap<&'a [u8], Vec<usize>>,
    public_by_label: HashMap<&'a str, Vec<usize>>,
}

/// A configured key found on the token and checked.
#[derive(Debug)]
pub(crate) struct ResolvedKey {
    pub(crate) private: ObjectHandle,
    pub(crate) public_key: PublicKey,
}

impl InventoryIndex<'_> {
    fn private(&self, selector: &ObjectSelector) -> Vec<&KeyObject> {
        let inv = self.inv;
        let hits = match selector {
            ObjectSelector::Id(id) => self.private_by_id.get(id.as_slice()),
            ObjectSelector::Label(l) => self.private_by_label.get(l.as_str()),
        };
        hits.into_iter()
            .flatten()
            .map(|&i| &inv.private[i])
            .collect()
    }

    fn public(&self, selector: &ObjectSelector) -> Vec<&KeyObject> {
        let inv = self.inv;
        let hits = match selector {
            ObjectSelector::Id(id) => self.public_by_id.get(id.as_slice()),
            ObjectSelector::Label(l) => self.public_by_label.get(l.as_str()),
        };
        hits.into_iter()
            .flatten()
            .map(|&i| &inv.public[i])
            .collect()
    }

    /// Finds and checks one key. Every refusal names the key and says what to fix.
    pub(crate) fn resolve(
        &self,
        key_id: &str,
        selector: &ObjectSelector,
        algorithm: Algorithm,
    ) -> Result<ResolvedKey, HsmError> {
        let fail = |reason: String| HsmError::Key {
            key_id: key_id.to_string(),
            reason,
        };
        let private = match self.private(selector).as_slice() {
            [one] => *one,
            [] => {
                return Err(HsmError::KeyMissing {
                    key_id: key_id.to_string(),
                    selector: selector.to_string(),
                })
            }
            many => {
                return Err(fail(format!(
                    "{} private keys have {selector}; it must identify exactly one",
                    many.len()
                )))
            }
        };
        debug_assert!(private.matches(selector));
        check_private(private, algorithm).map_err(fail)?;

        let publics = self.public(selector);
        let public_key = match (publics.as_slice(), algorithm.key_kind()) {
            ([one], KeyKind::Ec(curve)) => {
                check_ec_params(one.ec_params.as_deref(), curve)
                    .map_err(|r| fail(format!("public key: {r}")))?;
                let point = one
                    .ec_point
                    .as_deref()
                    .ok_or_else(|| fail("the public key has no CKA_EC_POINT".into()))?;
                PublicKey::from_ec_point(curve, point).map_err(|e| fail(e.to_string()))?
            }
            ([one], KeyKind::Rsa { bits }) => {
                let (n, e) = rsa_parts(one).map_err(fail)?;
                if let Some(private_n) = &private.modulus {
                    if strip_zeros(private_n) != strip_zeros(n) {
                        return Err(fail(format!(
                            "the public and private keys with {selector} are not a pair (moduli differ)"
                        )));
                    }
                }
                PublicKey::from_rsa(n, e, bits).map_err(|e| fail(e.to_string()))?
            }
            // RSA private keys carry their public half; EC private keys do not.
            ([], KeyKind::Rsa { bits }) => {
                let (n, e) = rsa_parts(private).map_err(fail)?;
                PublicKey::from_rsa(n, e, bits).map_err(|e| fail(e.to_string()))?
            }
            ([], KeyKind::Ec(_)) => {
                return Err(fail(format!(
                "no public key object with {selector}; EC keys need one to publish the public key"
            )))
            }
            (many, _) => {
                return Err(fail(format!(
                    "{} public keys have {selector}; it must identify exactly one",
                    many.len()
                )))
            }
        };
        public_key
            .check_algorithm(algorithm)
            .map_err(|e| fail(e.to_string()))?;
        Ok(ResolvedKey {
            private: private.handle.expect("scanned objects have handles"),
            public_key,
        })
    }
}

fn check_private(o: &KeyObject, algorithm: Algorithm) -> Result<(), String> {
    match (algorithm.key_kind(), o.key_type) {
        (KeyKind::Rsa { bits }, Some(KeyType::RSA)) => {
            if let Some(n) = &o.modulus {
                let actual = rsa::BigUint::from_bytes_be(n).bits();
                if actual != bits {
                    return Err(format!(
                        "the private key is RSA-{actual}, but {algorithm} needs RSA-{bits}"
                    ));
                }
            }
        }
        (KeyKind::Ec(curve), Some(KeyType::EC)) => {
            check_ec_params(o.ec_params.as_deref(), curve)
                .map_err(|r| format!("private key: {r}"))?;
        }
        (_, found) => {
            return Err(format!(
                "the private key type is {}, but {algorithm} needs {}",
                found.map_or("unknown".into(), |t| t.to_string()),
                if algorithm.is_rsa() { "RSA" } else { "EC" }
            ))
        }
    }
    if o.sign != Some(true) {
        return Err("the private key does not have CKA_SIGN set".into());
    }
    if o.sensitive != Some(true) {
        return Err(
            "the private key is not CKA_SENSITIVE; refusing to serve a key that can be read out"
                .into(),
        );
    }
    if o.extractable != Some(false) {
        return Err(
            "the private key is CKA_EXTRACTABLE; refusing to serve a key that can leave the token"
                .into(),
        );
    }
    if o.always_authenticate == Some(true) {
        return Err("the private key has CKA_ALWAYS_AUTHENTICATE set, which needs a PIN per signature; the gateway does not support it".into());
    }
    Ok(())
}

fn check_ec_params(params: Option<&[u8]>, curve: crate::crypto::Curve) -> Result<(), String> {
    use der::{asn1::ObjectIdentifier, Decode};
    let params = params.ok_or("CKA_EC_PARAMS is missing")?;
    match ObjectIdentifier::from_der(params) {
        Ok(oid) if oid == curve.oid() => Ok(()),
        Ok(oid) => Err(format!(
            "the curve is {oid}, but the algorithm needs {} ({})",
            curve.name(),
            curve.oid()
        )),
        Err(_) => Err("CKA_EC_PARAMS is not a named-curve OID".into()),
    }
}

fn rsa_parts(o: &KeyObject) -> Result<(&[u8], &[u8]), String> {
    match (&o.modulus, &o.public_exponent) {
        (Some(n), Some(e)) => Ok((n, e)),
        _ => Err("the RSA key exposes no CKA_MODULUS / CKA_PUBLIC_EXPONENT".into()),
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Proves that an EC private key belongs to the public key published for it, with one trial
/// signature verified in software. RSA pairs are already proved by their equal moduli; EC
/// private keys carry no public point to compare, and a mismatched pair would otherwise be
/// served and every signature withheld by verify-after-sign.
pub(crate) fn check_pair(
    session: &Session,
    spec: &crate::hsm::KeySpec,
    key: &ResolvedKey,
) -> Result<(), HsmError> {
    let KeyKind::Ec(curve) = spec.algorithm.key_kind() else {
        return Ok(());
    };
    let fail = |reason: String| HsmError::Key {
        key_id: spec.key_id.clone(),
        reason,
    };
    let scheme = spec.algorithm.scheme();
    let digest = spec.algorithm.hash().digest(b"p11kms key pair check");
    let mechanism = super::mechanism::sign_mechanism(scheme);
    // A token fault here must stay classified: it fails this resolution (and so the recovery
    // attempt) instead of refusing a key that is fine.
    let raw = session
        .sign(&mechanism, key.private, &digest)
        .context("C_Sign (key pair check)")?;
    let der = crate::crypto::ecdsa_der::raw_to_der(curve, &raw).map_err(|e| fail(e.to_string()))?;
    key.public_key
        .verify_prehash(scheme, &digest, &der)
        .map_err(|_| {
            fail(format!(
                "the private key and the public key with {} are not a pair: a trial signature does not verify",
                spec.selector
            ))
        })
}
