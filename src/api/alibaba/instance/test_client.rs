//! Tests' instance-API client: a client key and the SDK's signing recipe (contract §3.1),
//! written out independently of [`super::auth`].

use crate::auth::client_keys::{ClientKey, ClientKeyStore};
use crate::auth::{AuthMethod, Caller};
use base64::Engine as _;
use http::HeaderMap;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use sha2::{Digest as _, Sha256};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The id the test client key is configured under.
pub(super) const KEY_ID: &str = "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab";

/// The test client key (made once per test binary: RSA generation is slow).
pub(super) fn client_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
}

/// Who the test client key authenticates as.
pub(super) fn caller() -> Caller {
    Caller {
        subject_id: "billing".into(),
        subject_type: "serviceAccount".into(),
        method: AuthMethod::ClientKey,
    }
}

/// A store with the test client key under [`KEY_ID`].
pub(super) fn store() -> ClientKeyStore {
    [(
        KEY_ID.to_string(),
        ClientKey::new(client_key().to_public_key(), caller()),
    )]
    .into_iter()
    .collect()
}

/// The string the client signs for `h`.
pub(super) fn client_string_to_sign(h: &HeaderMap) -> String {
    let get = |n: &str| h.get(n).map_or("", |v| v.to_str().unwrap());
    let mut kms: Vec<(&str, &str)> = h
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-kms-"))
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap().trim()))
        .collect();
    kms.sort();
    let lines: String = kms.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    format!(
        "POST\n{}\n{}\n{}\n{lines}/",
        get("content-sha256"),
        get("content-type"),
        get("date")
    )
}

/// `headers` with `authorization` added: the test client key's signature, as the SDK makes it.
pub(super) fn signed(mut headers: HeaderMap) -> HeaderMap {
    let string_to_sign = client_string_to_sign(&headers);
    let signature = rsa::pkcs1v15::SigningKey::<Sha256>::new(client_key().clone())
        .sign(string_to_sign.as_bytes())
        .to_vec();
    let bearer = format!(
        "Bearer {}",
        base64::engine::general_purpose::STANDARD.encode(signature)
    );
    headers.insert("authorization", bearer.parse().unwrap());
    headers
}

/// The signed headers the SDK sends for `api` with `body`, dated `now`.
pub(super) fn sdk_headers(api: &str, body: &[u8], now: SystemTime) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("accept", "application/x-protobuf".to_string()),
        ("date", httpdate::fmt_http_date(now)),
        ("x-kms-apiversion", "dkms-gcs-0.2".into()),
        ("x-kms-apiname", api.into()),
        ("x-kms-signaturemethod", "RSA_PKCS1_SHA_256".into()),
        ("x-kms-acccesskeyid", KEY_ID.into()),
        ("content-type", "application/x-protobuf".into()),
        ("content-length", body.len().to_string()),
        ("content-sha256", hex::encode_upper(Sha256::digest(body))),
    ] {
        h.insert(name, value.parse().unwrap());
    }
    signed(h)
}
