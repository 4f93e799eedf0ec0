//! Typed configuration: a TOML file plus `P11KMS__SECTION__KEY` environment overrides, checked at
//! load time. Unknown keys are errors. The PIN comes from a file or an environment variable, never
//! from the command line, and is held as a secret.

use crate::crypto::Algorithm;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest key id the Yandex API accepts.
pub const MAX_KEY_ID_LEN: usize = 50;

/// A configuration problem, with the offending key named.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// The PKCS#11 module, token, PIN and session pool.
    pub hsm: HsmConfig,
    /// Signing behaviour.
    #[serde(default)]
    pub signing: SigningConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Keys created through the key service (their state lives on the token).
    #[serde(default)]
    pub managed_keys: ManagedKeysConfig,
    /// Keys on the token served under KMS key ids.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC listener binds; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// After SIGTERM, how long in-flight requests may take to finish, in milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

/// `[hsm]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Select the token by label (exactly one of label or serial).
    pub token_label: Option<String>,
    /// Select the token by serial number.
    pub token_serial: Option<String>,
    /// File holding the user PIN; must not be group- or world-readable.
    pub pin_file: Option<PathBuf>,
    /// Name of an environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Sessions in the signing pool (capped by the token's own limit).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long a request waits for a free session before RESOURCE_EXHAUSTED, in milliseconds.
    #[serde(default = "default_pool_wait_ms")]
    pub pool_wait_ms: u64,
    /// How often the token is probed for health, in milliseconds.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// The PIN, read at load time from `pin_file` or `pin_env`.
    #[serde(skip)]
    pub pin: Option<SecretString>,
}

fn default_pool_size() -> usize {
    8
}

fn default_pool_wait_ms() -> u64 {
    2000
}

fn default_probe_interval_ms() -> u64 {
    1000
}

/// How the token is chosen; never by slot number, which can change across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token.
    Label(String),
    /// By serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

impl HsmConfig {
    /// The token selector (validated at load to be exactly one).
    pub fn token(&self) -> TokenSelector {
        match (&self.token_label, &self.token_serial) {
            (Some(label), _) => TokenSelector::Label(label.clone()),
            (None, Some(serial)) => TokenSelector::Serial(serial.clone()),
            (None, None) => unreachable!("validated at load"),
        }
    }

    /// The pool wait limit.
    pub fn pool_wait(&self) -> Duration {
        Duration::from_millis(self.pool_wait_ms)
    }
}

/// `[signing]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Verify ECDSA signatures before returning them. RSA is always verified.
    #[serde(default = "yes")]
    pub verify_ecdsa: bool,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self { verify_ecdsa: true }
    }
}

fn yes() -> bool {
    true
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[managed_keys]`: keys created and changed through `AsymmetricSignatureKeyService`.
///
/// The section is not called `[keys]` because `[[keys]]` already holds the config-declared keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedKeysConfig {
    /// How often each replica checks the token for changes made by other replicas, in ms.
    #[serde(default = "default_refresh_interval_ms")]
    pub refresh_interval_ms: u64,
    /// How long a deleted key can still be restored before its key material is destroyed, in
    /// hours. Fractions are allowed (tests use seconds' worth).
    #[serde(default = "default_deletion_retention_hours")]
    pub deletion_retention_hours: f64,
    /// How often expired deleted keys are looked for and destroyed, in ms.
    #[serde(default = "default_purge_interval_ms")]
    pub purge_interval_ms: u64,
    /// Creates admitted at once; more wait (up to a minute, or their deadline) and then get
    /// RESOURCE_EXHAUSTED. Within one process, object creation on the token takes turns anyway
    /// (SoftHSMv2 fails concurrent creation), so generation holds at most one pooled session
    /// and never starves signing; this bounds the queue. Default: a quarter of
    /// `hsm.pool_size`, at least 1.
    pub max_concurrent_generations: Option<usize>,
}

impl Default for ManagedKeysConfig {
    fn default() -> Self {
        Self {
            refresh_interval_ms: default_refresh_interval_ms(),
            deletion_retention_hours: default_deletion_retention_hours(),
            purge_interval_ms: default_purge_interval_ms(),
            max_concurrent_generations: None,
        }
    }
}

fn default_refresh_interval_ms() -> u64 {
    5000
}

fn default_deletion_retention_hours() -> f64 {
    72.0
}

fn default_purge_interval_ms() -> u64 {
    60_000
}

impl ManagedKeysConfig {
    /// The refresh interval.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.refresh_interval_ms)
    }

    /// The deletion retention window (validated at load to be finite and non-negative).
    pub fn deletion_retention(&self) -> Duration {
        Duration::from_secs_f64(self.deletion_retention_hours * 3600.0)
    }

    /// The purge interval.
    pub fn purge_interval(&self) -> Duration {
        Duration::from_millis(self.purge_interval_ms)
    }

    /// The generation budget for a pool of `pool_size` sessions.
    pub fn generation_budget(&self, pool_size: usize) -> usize {
        self.max_concurrent_generations
            .unwrap_or(pool_size / 4)
            .clamp(1, pool_size.max(1))
    }
}

/// Folder of config-declared keys that set no `folder_id`.
pub const DEFAULT_CONFIG_FOLDER_ID: &str = "p11kms-config";

/// Whether a key may sign.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum KeyStatus {
    /// Usable.
    #[default]
    #[serde(rename = "ACTIVE")]
    Active,
    /// Signing is refused with FAILED_PRECONDITION.
    #[serde(rename = "INACTIVE")]
    Inactive,
}

/// One `[[keys]]` entry: a KMS key id mapped to an object on the token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The KMS key id clients use (1 to 50 characters).
    pub id: String,
    /// The token object's `CKA_ID`, in hex.
    pub object_id: Option<String>,
    /// The token object's `CKA_LABEL`.
    pub object_label: Option<String>,
    /// The Yandex algorithm name, e.g. `ECDSA_NIST_P256_SHA_256`.
    pub algorithm: String,
    /// ACTIVE or INACTIVE.
    #[serde(default)]
    pub status: KeyStatus,
    /// Optional SHA-256 (hex) of the key's DER SubjectPublicKeyInfo. When set, the key is only
    /// served if the token's public key has exactly this fingerprint.
    pub pin_sha256: Option<String>,
    /// The folder the key service lists this key under (1 to 50 characters); default
    /// [`DEFAULT_CONFIG_FOLDER_ID`].
    pub folder_id: Option<String>,
}

/// How a key's objects are found on the token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectSelector {
    /// By `CKA_ID` bytes.
    Id(Vec<u8>),
    /// By `CKA_LABEL`.
    Label(String),
}

impl std::fmt::Display for ObjectSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectSelector::Id(id) => write!(f, "CKA_ID {}", hex::encode(id)),
            ObjectSelector::Label(l) => write!(f, "CKA_LABEL {l:?}"),
        }
    }
}

impl KeyConfig {
    /// The object selector (validated at load).
    pub fn selector(&self) -> ObjectSelector {
        match (&self.object_id, &self.object_label) {
            (Some(id), _) => ObjectSelector::Id(hex::decode(id).expect("validated at load")),
            (None, Some(label)) => ObjectSelector::Label(label.clone()),
            (None, None) => unreachable!("validated at load"),
        }
    }

    /// What the HSM layer needs to find and check this key.
    pub fn spec(&self) -> crate::hsm::KeySpec {
        crate::hsm::KeySpec {
            key_id: self.id.clone(),
            selector: self.selector(),
            algorithm: self.algorithm(),
            pin_sha256: self.pin(),
        }
    }

    /// The operator's public-key pin (validated at load).
    pub fn pin(&self) -> Option<[u8; 32]> {
        self.pin_sha256.as_ref().map(|h| {
            let mut pin = [0u8; 32];
            hex::decode_to_slice(h, &mut pin).expect("validated at load");
            pin
        })
    }

    /// The algorithm (validated at load).
    pub fn algorithm(&self) -> Algorithm {
        Algorithm::from_name(&self.algorithm).expect("validated at load")
    }

    /// The folder the key is listed under.
    pub fn folder_id(&self) -> &str {
        self.folder_id
            .as_deref()
            .unwrap_or(DEFAULT_CONFIG_FOLDER_ID)
    }
}

impl Config {
    /// Loads `path`, applies `P11KMS__*` environment overrides, validates, and reads the PIN.
    ///
    /// # Errors
    /// Any unreadable file, unknown key, bad value or missing PIN, with the key named.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base, &path.display().to_string())
    }

    /// Like [`Config::load`] for TOML text; relative paths resolve against `base`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml(text: &str, base: &Path, origin: &str) -> Result<Self, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("P11KMS")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| err(format!("{origin}: {e}")))?;
        let mut cfg: Config = raw.try_deserialize().map_err(|e| {
            let from_env: Vec<String> = std::env::vars()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("P11KMS__"))
                .collect();
            if from_env.is_empty() {
                err(format!("{origin}: {e}"))
            } else {
                err(format!(
                    "{origin}: {e} (values may also come from these environment variables: {})",
                    from_env.join(", ")
                ))
            }
        })?;
        cfg.validate(base)?;
        Ok(cfg)
    }

    fn validate(&mut self, base: &Path) -> Result<(), ConfigError> {
        let hsm = &mut self.hsm;
        match (&hsm.token_label, &hsm.token_serial) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "hsm: set only one of token_label and token_serial, not both",
                ))
            }
            (None, None) => {
                return Err(err(
                    "hsm: set token_label or token_serial to choose the token (slot numbers are not stable)",
                ))
            }
            _ => {}
        }
        if hsm.probe_interval_ms < 100 {
            return Err(err("hsm.probe_interval_ms: must be at least 100"));
        }
        if hsm.pool_size == 0 {
            return Err(err("hsm.pool_size: must be at least 1"));
        }
        hsm.pin = Some(read_pin(hsm, base)?);

        let managed = &self.managed_keys;
        if managed.refresh_interval_ms < 100 {
            return Err(err(
                "managed_keys.refresh_interval_ms: must be at least 100",
            ));
        }
        if managed.purge_interval_ms < 100 {
            return Err(err("managed_keys.purge_interval_ms: must be at least 100"));
        }
        let hours = managed.deletion_retention_hours;
        // Beyond ~100 years Duration::from_secs_f64 is still fine, but nobody means it.
        if !hours.is_finite() || !(0.0..=876_000.0).contains(&hours) {
            return Err(err(format!(
                "managed_keys.deletion_retention_hours: {hours} must be a number of hours from 0 to 876000"
            )));
        }
        if managed.max_concurrent_generations == Some(0) {
            return Err(err(
                "managed_keys.max_concurrent_generations: must be at least 1",
            ));
        }

        let mut seen = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let at = if key.id.is_empty() {
                format!("keys[{i}]")
            } else {
                format!("keys[{i}] (id {:?})", key.id)
            };
            if key.id.is_empty() || key.id.chars().count() > MAX_KEY_ID_LEN {
                return Err(err(format!(
                    "{at}: id must be 1 to {MAX_KEY_ID_LEN} characters"
                )));
            }
            if !seen.insert(key.id.as_str()) {
                return Err(err(format!("{at}: the id is declared twice")));
            }
            if Algorithm::from_name(&key.algorithm).is_none() {
                let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
                return Err(err(format!(
                    "{at}: algorithm {:?} is not one of {}",
                    key.algorithm,
                    names.join(", ")
                )));
            }
            if let Some(folder) = &key.folder_id {
                if folder.is_empty() || folder.chars().count() > MAX_KEY_ID_LEN {
                    return Err(err(format!(
                        "{at}: folder_id must be 1 to {MAX_KEY_ID_LEN} characters"
                    )));
                }
            }
            if let Some(pin) = &key.pin_sha256 {
                let mut buf = [0u8; 32];
                if hex::decode_to_slice(pin, &mut buf).is_err() {
                    return Err(err(format!(
                        "{at}: pin_sha256 must be 64 hex characters (SHA-256 of the DER SubjectPublicKeyInfo)"
                    )));
                }
            }
            match (&key.object_id, &key.object_label) {
                (Some(_), Some(_)) => {
                    return Err(err(format!(
                        "{at}: set only one of object_id and object_label"
                    )))
                }
                (None, None) => {
                    return Err(err(format!(
                        "{at}: set object_id (hex CKA_ID) or object_label (CKA_LABEL)"
                    )))
                }
                (Some(id), None) => match hex::decode(id) {
                    Ok(bytes) if !bytes.is_empty() => {}
                    _ => {
                        return Err(err(format!(
                            "{at}: object_id {id:?} must be non-empty hex, e.g. \"0a1b\""
                        )))
                    }
                },
                (None, Some(label)) if label.is_empty() => {
                    return Err(err(format!("{at}: object_label must not be empty")))
                }
                (None, Some(_)) => {}
            }
        }
        Ok(())
    }
}

fn read_pin(hsm: &HsmConfig, base: &Path) -> Result<SecretString, ConfigError> {
    let pin = match (&hsm.pin_file, &hsm.pin_env) {
        (Some(_), Some(_)) => return Err(err("hsm: set only one of pin_file and pin_env")),
        (None, None) => {
            return Err(err(
                "hsm: set pin_file (a file holding the user PIN) or pin_env (the name of an environment variable holding it)",
            ))
        }
        (Some(file), None) => {
            let path = base.join(file);
            check_pin_file_mode(&path)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(format!(
                    "hsm.pin_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            // Editors add a trailing newline; it is never part of a PIN.
            SecretString::from(text.trim_end_matches(['\n', '\r']))
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) => SecretString::from(value),
            Err(_) => {
                return Err(err(format!(
                    "hsm.pin_env: the environment variable {var} is not set or not UTF-8"
                )))
            }
        },
    };
    if secrecy::ExposeSecret::expose_secret(&pin).is_empty() {
        return Err(err("hsm: the user PIN is empty"));
    }
    Ok(pin)
}

fn check_pin_file_mode(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| err(format!("hsm.pin_file: cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "hsm.pin_file: {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
            path.display()
        )));
    }
    Ok(())
}
