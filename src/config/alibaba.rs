//! `[alibaba]`: the Alibaba Cloud KMS fronts. The shared-gateway OpenAPI authenticates
//! AccessKey pairs (`[[alibaba.access_keys]]`), the KMS instance API client keys
//! (`[[alibaba.client_keys]]`); each maps to a subject that goes through the same roles,
//! bindings, rate limits and audit as every other caller.

use super::{check_caller_subject, check_secret_file_mode, err, ConfigError, MAX_KEY_ID_LEN};
use secrecy::{ExposeSecret as _, SecretString};
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
/// Default of `max_remembered_nonces`. A nonce is remembered for up to 30 minutes (its
/// timestamp may be 15 minutes ahead, and stays acceptable 15 minutes after), at about 64
/// bytes each: at most ~64 MiB, enough for ~1,100 signed requests a second sustained.
pub const DEFAULT_MAX_REMEMBERED_NONCES: usize = 1_000_000;
/// Folder of the keys an AccessKey creates when its entry sets no `folder_id`. One folder for
/// all of them, because Alibaba has no folders: every AccessKey of an account sees the
/// account's keys.
pub const DEFAULT_ACCESS_KEY_FOLDER_ID: &str = "p11kms-alibaba";
/// Longest AccessKeyId accepted (Alibaba's are 24 to 30 characters).
pub const MAX_ACCESS_KEY_ID_LEN: usize = 128;
/// Longest AccessKey secret accepted, in bytes (Alibaba's are 30 characters).
pub const MAX_ACCESS_KEY_SECRET_LEN: usize = 1024;

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
    /// Signature nonces the OpenAPI front remembers to refuse replays. When that many are
    /// remembered, new requests are refused (Rejected.Throttling, retryable) until the oldest
    /// expire: a replay is never let through to make room.
    #[serde(default = "default_max_remembered_nonces")]
    pub max_remembered_nonces: usize,
    /// A listener of their own for the OpenAPI and the instance API (they are also served on
    /// `server.listen` otherwise, beside the Yandex APIs). Plaintext only on loopback; TLS as
    /// `[server.tls]` says.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for AlibabaConfig {
    fn default() -> Self {
        Self {
            min_key_version_interval_secs: DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS,
            max_raw_message_bytes: DEFAULT_MAX_RAW_MESSAGE_BYTES,
            access_keys: Vec::new(),
            client_keys: Vec::new(),
            max_remembered_nonces: DEFAULT_MAX_REMEMBERED_NONCES,
            listen: None,
        }
    }
}

fn default_min_key_version_interval_secs() -> u64 {
    DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS
}

fn default_max_raw_message_bytes() -> usize {
    DEFAULT_MAX_RAW_MESSAGE_BYTES
}

fn default_max_remembered_nonces() -> usize {
    DEFAULT_MAX_REMEMBERED_NONCES
}

impl AlibabaConfig {
    /// Checks the section, reads the AccessKey secrets and the client keys' public keys;
    /// relative paths resolve against `base`.
    pub(crate) fn validate(&mut self, base: &Path) -> Result<(), ConfigError> {
        if !(1024..=MAX_MAX_RAW_MESSAGE_BYTES).contains(&self.max_raw_message_bytes) {
            return Err(err(format!(
                "alibaba.max_raw_message_bytes: {} must be from 1024 to {MAX_MAX_RAW_MESSAGE_BYTES} \
                 (bytes; default {DEFAULT_MAX_RAW_MESSAGE_BYTES})",
                self.max_raw_message_bytes
            )));
        }
        if !(1..=100_000_000).contains(&self.max_remembered_nonces) {
            return Err(err(
                "alibaba.max_remembered_nonces: must be from 1 to 100000000",
            ));
        }
        let mut ids = HashSet::new();
        for (i, key) in self.access_keys.iter_mut().enumerate() {
            let at = format!("alibaba.access_keys[{i}]");
            key.validate(&at, base)?;
            if !ids.insert(key.id.clone()) {
                return Err(err(format!(
                    "{at} (id {:?}): the AccessKeyId is listed twice",
                    key.id
                )));
            }
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
            let public_key = crate::crypto::rsa_pem::read_public_key(&key.public_key_file)
                .map_err(|e| err(format!("{at}: public_key_file: {e}")))?;
            key.public_key = Some(public_key);
        }
        Ok(())
    }
}

/// One `[[alibaba.access_keys]]` entry (OpenAPI, ACS3 and v1 signatures): an AccessKey pair
/// and the subject it authenticates as.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The AccessKeyId clients send.
    pub id: String,
    /// File holding the AccessKey secret; must not be group- or world-readable.
    pub secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the AccessKey secret.
    pub secret_env: Option<String>,
    /// The subject id bindings name.
    pub subject_id: String,
    /// `userAccount`, `serviceAccount` or `federatedUser`.
    pub subject_type: String,
    /// The folder keys created with this AccessKey go to (1 to 50 characters); default
    /// [`DEFAULT_ACCESS_KEY_FOLDER_ID`].
    pub folder_id: Option<String>,
    /// The secret, read at load time from `secret_file` or `secret_env`.
    #[serde(skip)]
    pub secret: Option<SecretString>,
}

impl AccessKeyConfig {
    /// The folder keys created with this AccessKey go to.
    pub fn folder_id(&self) -> &str {
        self.folder_id
            .as_deref()
            .unwrap_or(DEFAULT_ACCESS_KEY_FOLDER_ID)
    }

    fn validate(&mut self, at: &str, base: &Path) -> Result<(), ConfigError> {
        // The id travels inside `Credential=<id>,` (ACS3) and in logs: no separators, no
        // spaces, nothing to escape.
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ACCESS_KEY_ID_LEN
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(err(format!(
                "{at}: id must be 1 to {MAX_ACCESS_KEY_ID_LEN} characters of A-Z a-z 0-9 . _ - \
                 (an AccessKeyId such as \"LTAI5tExample\")"
            )));
        }
        let at = format!("{at} (id {:?})", self.id);
        check_caller_subject(&at, &self.subject_id, &self.subject_type)?;
        if let Some(folder) = &self.folder_id {
            if folder.is_empty() || folder.chars().count() > MAX_KEY_ID_LEN {
                return Err(err(format!(
                    "{at}: folder_id must be 1 to {MAX_KEY_ID_LEN} characters"
                )));
            }
        }
        self.secret = Some(self.read_secret(&at, base)?);
        Ok(())
    }

    fn read_secret(&self, at: &str, base: &Path) -> Result<SecretString, ConfigError> {
        let secret = match (&self.secret_file, &self.secret_env) {
            (Some(_), Some(_)) => {
                return Err(err(format!(
                    "{at}: set only one of secret_file and secret_env"
                )))
            }
            (None, None) => {
                return Err(err(format!(
                    "{at}: set secret_file (a file holding the AccessKey secret) or secret_env \
                     (the name of an environment variable holding it); the secret itself is \
                     never written in the config"
                )))
            }
            (Some(file), None) => {
                let path = base.join(file);
                let setting = format!("{at}: secret_file");
                check_secret_file_mode(&setting, &path)?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| err(format!("{setting}: cannot read {}: {e}", path.display())))?;
                // Editors add a trailing newline; it is never part of a secret.
                SecretString::from(text.trim_end_matches(['\n', '\r']))
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) => SecretString::from(value),
                Err(_) => {
                    return Err(err(format!(
                        "{at}: secret_env: the environment variable {var} is not set or not UTF-8"
                    )))
                }
            },
        };
        let len = secret.expose_secret().len();
        if len == 0 {
            return Err(err(format!("{at}: the AccessKey secret is empty")));
        }
        if len > MAX_ACCESS_KEY_SECRET_LEN {
            return Err(err(format!(
                "{at}: the AccessKey secret is {len} bytes; at most {MAX_ACCESS_KEY_SECRET_LEN} \
                 are accepted"
            )));
        }
        Ok(secret)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// `[alibaba]` from TOML, validated against `dir`.
    fn load(text: &str, dir: &Path) -> Result<AlibabaConfig, String> {
        let mut cfg: AlibabaConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate(dir).map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    const ENTRY: &str = r#"
        [[access_keys]]
        id = "LTAI5tExample"
        secret_file = "ak.secret"
        subject_id = "alice"
        subject_type = "userAccount"
    "#;

    #[test]
    fn an_entry_reads_its_secret_from_a_private_file_and_defaults_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        secret_file(dir.path(), "ak.secret", "s3cret-value\n", 0o600);
        let cfg = load(ENTRY, dir.path()).unwrap();
        let key = &cfg.access_keys[0];
        assert_eq!(key.secret.as_ref().unwrap().expose_secret(), "s3cret-value");
        assert_eq!(key.folder_id(), DEFAULT_ACCESS_KEY_FOLDER_ID);
        assert_eq!(cfg.max_remembered_nonces, DEFAULT_MAX_REMEMBERED_NONCES);
        assert!(!format!("{cfg:?}").contains("s3cret-value"));
    }

    #[test]
    fn a_secret_can_come_from_the_environment() {
        // PATH is always set; no test may set variables (other threads read the environment).
        let cfg = load(
            r#"
            max_remembered_nonces = 5
            [[access_keys]]
            id = "k"
            secret_env = "PATH"
            subject_id = "ci"
            subject_type = "serviceAccount"
            folder_id = "team-a"
            "#,
            Path::new("/nonexistent"),
        )
        .unwrap();
        let key = &cfg.access_keys[0];
        assert_eq!(
            key.secret.as_ref().unwrap().expose_secret(),
            std::env::var("PATH").unwrap()
        );
        assert_eq!((key.folder_id(), cfg.max_remembered_nonces), ("team-a", 5));
    }

    #[test]
    fn mistakes_are_refused_with_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        secret_file(dir.path(), "ak.secret", "s3cret-value", 0o600);
        secret_file(dir.path(), "open.secret", "s3cret-value", 0o640);
        secret_file(dir.path(), "empty.secret", "\n", 0o600);
        let with = |find: &str, replace: &str| ENTRY.replace(find, replace);
        let cases = [
            (
                with(
                    "secret_file = \"ak.secret\"",
                    "secret_file = \"open.secret\"",
                ),
                "open.secret is readable by group or others (mode 640); run chmod 600",
            ),
            (
                with(
                    "secret_file = \"ak.secret\"",
                    "secret_file = \"missing.secret\"",
                ),
                "secret_file: cannot read",
            ),
            (
                with(
                    "secret_file = \"ak.secret\"",
                    "secret_file = \"empty.secret\"",
                ),
                "the AccessKey secret is empty",
            ),
            (
                with("secret_file = \"ak.secret\"", ""),
                "set secret_file (a file holding the AccessKey secret) or secret_env",
            ),
            (
                with(
                    "secret_file = \"ak.secret\"",
                    "secret_file = \"ak.secret\"\nsecret_env = \"PATH\"",
                ),
                "set only one of secret_file and secret_env",
            ),
            (
                with(
                    "secret_file = \"ak.secret\"",
                    "secret_env = \"P11KMS_TEST_NO_SUCH_VARIABLE\"",
                ),
                "P11KMS_TEST_NO_SUCH_VARIABLE is not set",
            ),
            (
                with("LTAI5tExample", "has,comma"),
                "id must be 1 to 128 characters of A-Z",
            ),
            (with("LTAI5tExample", ""), "id must be 1 to 128"),
            (
                with("userAccount", "robot"),
                "subject_type \"robot\" is not one of userAccount",
            ),
            (
                with("subject_id = \"alice\"", "subject_id = \"\""),
                "subject_id must be 1 to 100",
            ),
            (
                format!("{ENTRY}folder_id = \"\""),
                "folder_id must be 1 to 50",
            ),
            (format!("{ENTRY}{ENTRY}"), "the AccessKeyId is listed twice"),
            (
                format!("max_remembered_nonces = 0\n{ENTRY}"),
                "max_remembered_nonces: must be from 1",
            ),
            (
                format!("{ENTRY}secret = \"inline\""),
                "unknown field `secret`",
            ),
        ];
        for (text, needle) in cases {
            let e = load(&text, dir.path()).unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
            assert!(!e.contains("s3cret-value"), "{e}");
        }
    }
}

#[cfg(test)]
mod client_key_tests {
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
