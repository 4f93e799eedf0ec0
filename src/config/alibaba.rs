//! `[alibaba]`: the Alibaba Cloud KMS fronts. The shared-gateway OpenAPI authenticates
//! AccessKey pairs (`[[alibaba.access_keys]]`), the KMS instance API client keys
//! (`[[alibaba.client_keys]]`); each maps to a subject that goes through the same roles,
//! bindings, rate limits and audit as every other caller.

use super::{check_caller_subject, err, ConfigError};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Default of `min_key_version_interval_secs`: Alibaba's 7 days between key versions.
pub const DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// Default of `max_raw_message_bytes`: 1 MiB.
pub const DEFAULT_MAX_RAW_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest `max_raw_message_bytes` accepted: a request body is buffered whole (its
/// `content-sha256` is checked before it is decoded), so this is memory per concurrent request.
pub const MAX_MAX_RAW_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// `[alibaba]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlibabaConfig {
    /// Shortest time between two versions of one key (`CreateKeyVersion`); 0 in dev mode.
    #[serde(default = "default_min_key_version_interval_secs")]
    pub min_key_version_interval_secs: u64,
    /// Longest message the instance API hashes for a RAW `Sign`/`Verify`, in bytes; a request
    /// body that cannot fit under it is refused from its `Content-Length`, unread.
    #[serde(default = "default_max_raw_message_bytes")]
    pub max_raw_message_bytes: usize,
    /// AccessKey pairs of the OpenAPI front.
    #[serde(default)]
    pub access_keys: Vec<AccessKeyConfig>,
    /// Client keys ("application access points") of the instance API.
    #[serde(default)]
    pub client_keys: Vec<ClientKeyConfig>,
}

impl Default for AlibabaConfig {
    fn default() -> Self {
        Self {
            min_key_version_interval_secs: DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS,
            max_raw_message_bytes: DEFAULT_MAX_RAW_MESSAGE_BYTES,
            access_keys: Vec::new(),
            client_keys: Vec::new(),
        }
    }
}

fn default_min_key_version_interval_secs() -> u64 {
    DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS
}

fn default_max_raw_message_bytes() -> usize {
    DEFAULT_MAX_RAW_MESSAGE_BYTES
}

/// One `[[alibaba.access_keys]]` entry (OpenAPI, ACS3 and v1 signatures).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The AccessKeyId clients send.
    pub id: String,
}

/// One `[[alibaba.client_keys]]` entry (instance API): the public half of a client key made
/// with `p11kms alibaba client-key create` (or by any other means). The private key stays with
/// the client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    /// `KAAP.<uuid>`, sent as `x-kms-acccesskeyid`.
    pub id: String,
    /// PEM file with the client's RSA public key (`PUBLIC KEY`, SubjectPublicKeyInfo) or an
    /// X.509 certificate (`CERTIFICATE`) whose key is used; relative to the config's directory.
    pub public_key_file: PathBuf,
    /// The subject id the client key authenticates as.
    pub subject_id: String,
    /// `userAccount`, `serviceAccount` or `federatedUser`.
    pub subject_type: String,
    /// The key read from `public_key_file` at load time.
    #[serde(skip)]
    pub public_key: Option<rsa::RsaPublicKey>,
}

impl ClientKeyConfig {
    /// The public key (read and checked at load).
    pub fn public_key(&self) -> &rsa::RsaPublicKey {
        self.public_key.as_ref().expect("read at load")
    }
}

/// Whether `id` is `KAAP.` followed by a UUID in its 8-4-4-4-12 hex form.
pub fn is_client_key_id(id: &str) -> bool {
    let Some(uuid) = id.strip_prefix("KAAP.") else {
        return false;
    };
    let groups: Vec<&str> = uuid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl AlibabaConfig {
    /// Checks the section, resolves the key files against `base` and reads the public keys.
    pub(crate) fn validate(&mut self, base: &Path) -> Result<(), ConfigError> {
        if !(1024..=MAX_MAX_RAW_MESSAGE_BYTES).contains(&self.max_raw_message_bytes) {
            return Err(err(format!(
                "alibaba.max_raw_message_bytes: {} must be from 1024 to {MAX_MAX_RAW_MESSAGE_BYTES} \
                 (bytes; default {DEFAULT_MAX_RAW_MESSAGE_BYTES})",
                self.max_raw_message_bytes
            )));
        }
        let mut ids = HashSet::new();
        for (i, key) in self.client_keys.iter_mut().enumerate() {
            let at = format!("alibaba.client_keys[{i}] (id {:?})", key.id);
            if !is_client_key_id(&key.id) {
                return Err(err(format!(
                    "{at}: id must be KAAP.<uuid>, e.g. \
                     \"KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab\" (the KeyId of the ClientKey \
                     file that `p11kms alibaba client-key create` wrote)"
                )));
            }
            if !ids.insert(key.id.clone()) {
                return Err(err(format!("{at}: the id is listed twice")));
            }
            check_caller_subject(&at, &key.subject_id, &key.subject_type)?;
            key.public_key_file = base.join(&key.public_key_file);
            let public_key = crate::auth::client_keys::read_public_key(&key.public_key_file)
                .map_err(|e| err(format!("{at}: public_key_file: {e}")))?;
            key.public_key = Some(public_key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab";

    /// `[alibaba]` from TOML, validated against `base`.
    fn load(text: &str, base: &Path) -> Result<AlibabaConfig, String> {
        let mut config: AlibabaConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate(base).map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn entry(id: &str, file: &str, subject: &str) -> String {
        format!(
            "[[client_keys]]\nid = \"{id}\"\npublic_key_file = \"{file}\"\n\
             subject_id = \"{subject}\"\nsubject_type = \"serviceAccount\"\n"
        )
    }

    #[test]
    fn client_keys_load_with_their_public_keys() {
        use rsa::pkcs8::EncodePublicKey as _;
        let dir = tempfile::tempdir().unwrap();
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        std::fs::write(dir.path().join("app.pem"), pem).unwrap();

        let config = load(&entry(ID, "app.pem", "app"), dir.path()).unwrap();
        assert_eq!(config.max_raw_message_bytes, DEFAULT_MAX_RAW_MESSAGE_BYTES);
        let k = &config.client_keys[0];
        assert_eq!(
            k.public_key_file,
            dir.path().join("app.pem"),
            "relative to the config"
        );
        assert_eq!(k.public_key(), &key.to_public_key());

        let err = |text: &str| load(text, dir.path()).unwrap_err();
        let e = err(&entry("KAAP.123", "app.pem", "app"));
        assert!(
            e.contains("client_keys[0]") && e.contains("id must be KAAP.<uuid>"),
            "{e}"
        );
        let twice = format!("{}{}", entry(ID, "app.pem", "a"), entry(ID, "app.pem", "b"));
        let e = err(&twice);
        assert!(
            e.contains("client_keys[1]") && e.contains("listed twice"),
            "{e}"
        );
        let e = err(&entry(ID, "app.pem", ""));
        assert!(e.contains("subject_id must be 1 to 100"), "{e}");
        let e = err(&entry(ID, "missing.pem", "app"));
        assert!(
            e.contains("public_key_file: cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = err(&entry(ID, "key.pem", "app"));
        assert!(e.contains("key.pem: holds a private key"), "{e}");
        for bad in [0, 1023, MAX_MAX_RAW_MESSAGE_BYTES + 1] {
            let e = err(&format!("max_raw_message_bytes = {bad}"));
            assert!(e.contains("alibaba.max_raw_message_bytes"), "{e}");
        }
        assert_eq!(
            load("max_raw_message_bytes = 4096", dir.path())
                .unwrap()
                .max_raw_message_bytes,
            4096
        );
    }

    #[test]
    fn client_key_ids_are_kaap_uuids() {
        assert!(is_client_key_id(
            "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab"
        ));
        assert!(is_client_key_id(
            "KAAP.0F6E7C8A-1B2C-4D3E-8F9A-0123456789AB"
        ));
        for bad in [
            "",
            "KAAP.",
            "kaap.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab",
            "KAAP.0f6e7c8a1b2c4d3e8f9a0123456789ab",
            "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789a",
            "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789abc",
            "KAAP.0f6e7c8g-1b2c-4d3e-8f9a-0123456789ab",
            "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab-",
            "XKAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab",
        ] {
            assert!(!is_client_key_id(bad), "{bad:?}");
        }
    }
}
