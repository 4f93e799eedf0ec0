//! Typed configuration: a TOML file plus `P11KMS__SECTION__KEY` environment overrides, checked at
//! load time. Unknown keys are errors. The PIN comes from a file or an environment variable, never
//! from the command line, and is held as a secret.

pub mod alibaba;

pub use alibaba::AlibabaConfig;

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
    /// Caller authentication and role bindings.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Per-subject rate limits.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// The Alibaba Cloud KMS fronts.
    #[serde(default)]
    pub alibaba: AlibabaConfig,
    /// The admin listener (metrics, liveness, readiness); none without the section.
    pub admin: Option<AdminConfig>,
}

/// `[admin]`: `/metrics`, `/healthz` and `/readyz` on a listener of their own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin listener binds (default [`DEFAULT_ADMIN_LISTEN`], loopback). It
    /// answers without credentials: keep it on loopback or a network only monitoring reaches.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

/// The admin listener's default address (Prometheus exporters' customary port).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN.parse().expect("a valid address")
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC listener binds; port 0 picks a free port. Without `[server.tls]` it must
    /// be a loopback address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// After SIGTERM, how long in-flight requests may take to finish, in milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// `host:port` that endpoint discovery (`ApiEndpointService`) hands to clients: the name in
    /// the certificate. Default: the bound listen address.
    pub advertise_address: Option<String>,
    /// A separate listener for the REST API; `listen` then serves gRPC only. Default: none,
    /// REST and gRPC share `listen` (told apart by content type). Same TLS and limits.
    pub rest_listen: Option<SocketAddr>,
    /// A second listener serving everything `listen` serves, over TLS (`[server.tls]`); `listen`
    /// then stays plaintext and must be a loopback address. Default: none, and `[server.tls]`
    /// (when set) applies to `listen` itself.
    pub tls_listen: Option<SocketAddr>,
    /// HTTP/2 streams one connection may have open at once.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Largest request header block accepted (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`), in bytes.
    #[serde(default = "default_max_header_list_size")]
    pub max_header_list_size: u32,
    /// Interval of HTTP/2 keepalive PINGs on every connection, in milliseconds; 0 turns them off.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    /// How long a keepalive PING may go unanswered before the connection is closed, in ms.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Age after which a connection is asked to go away (graceful GOAWAY), in milliseconds,
    /// with up to ±10% jitter; 0 means no limit.
    #[serde(default = "default_max_connection_age_ms")]
    pub max_connection_age_ms: u64,
    /// After that GOAWAY, how long its in-flight requests may take before it is closed, in ms.
    #[serde(default = "default_max_connection_age_grace_ms")]
    pub max_connection_age_grace_ms: u64,
    /// Streams a client may open and reset before the server accepted them (Rapid Reset),
    /// per connection; beyond it the connection is closed with GOAWAY.
    #[serde(default = "default_max_pending_accept_reset_streams")]
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of the client's protocol errors, per connection,
    /// before it closes the connection with GOAWAY.
    #[serde(default = "default_max_local_error_reset_streams")]
    pub max_local_error_reset_streams: usize,
    /// HTTP/1.1 only: how long a client may take to send a request's headers, in milliseconds.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Connections open at once, over every listener; beyond it (and the health reserve) new
    /// connections are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client IP address may have open at once (reserve connections included).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Connections accepted beyond `max_connections` that carry health checks only (and age
    /// out quickly), so that an orchestrator's probes get through while the gateway is full.
    #[serde(default = "default_health_reserve_connections")]
    pub health_reserve_connections: usize,
    /// Bytes that request bodies still being received may hold, over every connection; from
    /// this much on, new requests with a body are refused (RESOURCE_EXHAUSTED), and requests
    /// without a valid credential from half of it.
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u64,
    /// TLS on the listener; required unless `listen` is a loopback address.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            advertise_address: None,
            tls_listen: None,
            rest_listen: None,
            max_concurrent_streams: default_max_concurrent_streams(),
            max_header_list_size: default_max_header_list_size(),
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            max_connection_age_ms: default_max_connection_age_ms(),
            max_connection_age_grace_ms: default_max_connection_age_grace_ms(),
            max_pending_accept_reset_streams: default_max_pending_accept_reset_streams(),
            max_local_error_reset_streams: default_max_local_error_reset_streams(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            health_reserve_connections: default_health_reserve_connections(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            tls: None,
        }
    }
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_max_concurrent_streams() -> u32 {
    128
}

fn default_max_header_list_size() -> u32 {
    16 * 1024
}

fn default_keepalive_interval_ms() -> u64 {
    30_000
}

fn default_keepalive_timeout_ms() -> u64 {
    20_000
}

fn default_max_connection_age_ms() -> u64 {
    30 * 60 * 1000
}

fn default_max_connection_age_grace_ms() -> u64 {
    30_000
}

fn default_max_pending_accept_reset_streams() -> usize {
    20
}

fn default_max_local_error_reset_streams() -> usize {
    256
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_connections_per_ip() -> usize {
    256
}

fn default_health_reserve_connections() -> usize {
    16
}

fn default_max_buffered_body_bytes() -> u64 {
    64 << 20
}

/// Largest `server.max_header_list_size`: the HTTP/2 and HTTP/1.1 layers are given four times
/// it as their own hard ceiling.
pub const MAX_HEADER_LIST_SIZE: u32 = 256 * 1024;

/// `[server.tls]`: the listener's certificate, optional mTLS, and the handshake deadline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Re-read on SIGHUP and when the file changes.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle for client certificates. When set, every client must present a
    /// certificate that chains to it (mTLS); when absent, none is asked for.
    pub client_ca_file: Option<PathBuf>,
    /// How long a client has from TCP accept to a finished TLS handshake and the start of HTTP,
    /// in milliseconds; then it is disconnected.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// How often the files are checked for changes, in milliseconds; 0: only on SIGHUP.
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
}

/// The default of `server.tls.handshake_timeout_ms`; plaintext (loopback) listeners give a client
/// the same time to start speaking HTTP.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}

fn default_watch_interval_ms() -> u64 {
    2000
}

impl ServerConfig {
    /// Checks the listener settings and resolves the TLS file paths against `base`.
    fn validate(&mut self, base: &Path) -> Result<(), ConfigError> {
        if let Some(tls_listen) = self.tls_listen {
            if self.tls.is_none() {
                return Err(err(format!(
                    "server.tls_listen: {tls_listen} needs a [server.tls] section (cert_file, \
                     key_file) for its certificate"
                )));
            }
            if !self.listen.ip().is_loopback() {
                return Err(err(format!(
                    "server.listen: {} is not a loopback address, and with server.tls_listen set \
                     it is plaintext; listen on 127.0.0.1 or [::1], or leave tls_listen out to \
                     put TLS on listen itself",
                    self.listen
                )));
            }
            if tls_listen == self.listen && tls_listen.port() != 0 {
                return Err(err(format!(
                    "server.tls_listen: {tls_listen} is also server.listen; pick another address"
                )));
            }
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(err(format!(
                "server.listen: {} is not a loopback address, and without server.tls the \
                 listener would be plaintext; add a [server.tls] section (cert_file, key_file), \
                 or listen on 127.0.0.1 or [::1]",
                self.listen
            )));
        }
        if let Some(rest) = self.rest_listen {
            if self.tls_listen.is_some() && !rest.ip().is_loopback() {
                return Err(err(format!(
                    "server.rest_listen: {rest} is not a loopback address, and with \
                     server.tls_listen set it is plaintext; listen on 127.0.0.1 or [::1]"
                )));
            }
            if self.tls.is_none() && !rest.ip().is_loopback() {
                return Err(err(format!(
                    "server.rest_listen: {rest} is not a loopback address, and without \
                     server.tls the REST listener would be plaintext; add a [server.tls] \
                     section, or listen on 127.0.0.1 or [::1]"
                )));
            }
            if rest == self.listen && rest.port() != 0 {
                return Err(err(format!(
                    "server.rest_listen: {rest} is also server.listen; leave rest_listen out to \
                     serve REST and gRPC on one port, or pick another address"
                )));
            }
        }
        if let Some(address) = &self.advertise_address {
            let port = address
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return Err(err(format!(
                    "server.advertise_address: {address:?} must be host:port (the name clients \
                     connect to, as in the certificate), e.g. \"kms.example.com:443\""
                )));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err(err("server.max_concurrent_streams: must be at least 1"));
        }
        if !(1024..=MAX_HEADER_LIST_SIZE).contains(&self.max_header_list_size) {
            return Err(err(format!(
                "server.max_header_list_size: must be from 1024 to {MAX_HEADER_LIST_SIZE} (bytes)"
            )));
        }
        if self.max_connections == 0 {
            return Err(err("server.max_connections: must be at least 1"));
        }
        if self.max_connections_per_ip == 0 {
            return Err(err("server.max_connections_per_ip: must be at least 1"));
        }
        if self.max_buffered_body_bytes < 1 << 20 {
            return Err(err(
                "server.max_buffered_body_bytes: must be at least 1048576 (1 MiB: a few \
                 requests of the largest size)",
            ));
        }
        if self.keepalive_interval_ms > 0 && self.keepalive_timeout_ms == 0 {
            return Err(err(
                "server.keepalive_timeout_ms: must be at least 1 while keepalive_interval_ms is set",
            ));
        }
        if self.header_read_timeout_ms == 0 {
            return Err(err("server.header_read_timeout_ms: must be at least 1"));
        }
        if let Some(tls) = &mut self.tls {
            if tls.handshake_timeout_ms == 0 {
                return Err(err("server.tls.handshake_timeout_ms: must be at least 1"));
            }
            if tls.watch_interval_ms != 0 && tls.watch_interval_ms < 100 {
                return Err(err(
                    "server.tls.watch_interval_ms: must be 0 (SIGHUP only) or at least 100",
                ));
            }
            tls.cert_file = base.join(&tls.cert_file);
            tls.key_file = base.join(&tls.key_file);
            tls.client_ca_file = tls.client_ca_file.as_ref().map(|f| base.join(f));
        }
        Ok(())
    }
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
    /// The name the key service shows (at most [`MAX_CONFIG_KEY_NAME_LEN`] characters);
    /// default the key id.
    pub name: Option<String>,
}

/// Longest `name` of a `[[keys]]` entry, in characters (the Yandex key service's limit).
pub const MAX_CONFIG_KEY_NAME_LEN: usize = 100;

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
        self.server.validate(base)?;
        self.auth.validate(base)?;
        self.audit.validate(base)?;
        self.rate_limit.validate()?;
        self.alibaba.validate(base)?;
        if let Some(listen) = self.alibaba.listen {
            if self.server.tls.is_none() && !listen.ip().is_loopback() {
                return Err(err(format!(
                    "alibaba.listen: {listen} is not a loopback address, and without server.tls \
                     the listener would be plaintext; add a [server.tls] section, or listen on \
                     127.0.0.1 or [::1]"
                )));
            }
            if self.server.tls_listen.is_some() && !listen.ip().is_loopback() {
                return Err(err(format!(
                    "alibaba.listen: {listen} is not a loopback address, and with \
                     server.tls_listen set it is plaintext; listen on 127.0.0.1 or [::1]"
                )));
            }
        }
        if let Some(admin) = &self.admin {
            let api = [
                Some(self.server.listen),
                self.server.tls_listen,
                self.server.rest_listen,
            ];
            if admin.listen.port() != 0 && api.contains(&Some(admin.listen)) {
                return Err(err(format!(
                    "admin.listen: {} is also an API listener; the admin endpoints answer                      without credentials and need an address of their own",
                    admin.listen
                )));
            }
        }
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
            if let Some(name) = &key.name {
                if name.chars().count() > MAX_CONFIG_KEY_NAME_LEN
                    || name.chars().any(char::is_control)
                {
                    return Err(err(format!(
                        "{at}: name must be at most {MAX_CONFIG_KEY_NAME_LEN} characters, without control characters"
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
    check_secret_file_mode("hsm.pin_file", path)
}

/// A file holding a secret must be readable by its owner alone; `setting` names it in errors.
fn check_secret_file_mode(setting: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    // systemd's credentials directory is readable by this service alone, whatever mode bits
    // (group-readable with an ACL, on some versions) the files in it show.
    if let Some(credentials) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        if !credentials.is_empty() && path.starts_with(&credentials) {
            return Ok(());
        }
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| err(format!("{setting}: cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "{setting}: {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
            path.display()
        )));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Identity: [auth], [audit], [rate_limit]
// ------------------------------------------------------------------------------------------

/// Subject types a credential may map to (`yandex.cloud.access.Subject.type`).
pub const CALLER_SUBJECT_TYPES: &[&str] = &["userAccount", "serviceAccount", "federatedUser"];
/// The `system` subject that every authenticated caller matches in a binding.
pub const ALL_AUTHENTICATED_USERS: &str = "allAuthenticatedUsers";
/// Longest subject id (as `yandex.cloud.access.Subject.id`).
pub const MAX_SUBJECT_ID_LEN: usize = 100;
/// `folder_id` of a binding that applies to every folder.
pub const ANY_FOLDER: &str = "*";

/// `[auth]`: how callers prove who they are, and the roles bound to them in this file. Roles
/// can also be bound per key through `SetAccessBindings`/`UpdateAccessBindings`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static API tokens, stored as SHA-256 hashes only.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Verified mTLS client certificate subjects mapped to subjects.
    #[serde(default)]
    pub mtls: Vec<MtlsSubjectConfig>,
    /// JWTs from an identity provider, checked against a JWKS file.
    pub jwt: Option<JwtConfig>,
    /// Roles bound to subjects on one folder or on every folder.
    #[serde(default)]
    pub bindings: Vec<BindingConfig>,
}

/// One `[[auth.tokens]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// SHA-256 of the token, 64 hex digits (the token itself is never in the config).
    pub sha256: String,
    /// The subject id the token authenticates as.
    pub subject_id: String,
    /// `userAccount`, `serviceAccount` or `federatedUser`.
    pub subject_type: String,
}

impl TokenConfig {
    /// The hash (validated at load).
    pub fn hash(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out).expect("validated at load");
        out
    }
}

/// One `[[auth.mtls]]` entry: a verified client certificate's identity (URI SAN, else CN).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSubjectConfig {
    /// The certificate identity, e.g. `spiffe://example.org/ns/ci/sa/release`, or a CN.
    pub subject: String,
    /// The subject id it authenticates as; default: `subject` itself.
    pub subject_id: Option<String>,
    /// `userAccount`, `serviceAccount` or `federatedUser`.
    pub subject_type: String,
}

impl MtlsSubjectConfig {
    /// The subject id.
    pub fn id(&self) -> &str {
        self.subject_id.as_deref().unwrap_or(&self.subject)
    }
}

/// `[auth.jwt]`: JWT bearer tokens signed by an identity provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The identity provider's JWKS (public keys), as a JSON file.
    pub jwks_file: PathBuf,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim (one of the token's audiences).
    pub audience: String,
    /// The claim that names the subject; default `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The subject type JWT callers get; default `federatedUser`.
    #[serde(default = "default_jwt_subject_type")]
    pub subject_type: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds; default 30.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// How often the JWKS file is checked for changes, in ms (0: only on SIGHUP); default 10000.
    #[serde(default = "default_jwks_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_jwt_subject_type() -> String {
    "federatedUser".into()
}

fn default_leeway_s() -> u64 {
    30
}

fn default_jwks_reload_interval_ms() -> u64 {
    10_000
}

/// One `[[auth.bindings]]` entry: a role for a subject on a folder, or on every folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// One of the KMS roles, e.g. `kms.asymmetricSignatureKeys.signer`.
    pub role: String,
    /// The subject id (as the credential maps it).
    pub subject_id: String,
    /// The subject type; `system` with id `allAuthenticatedUsers` matches every caller.
    pub subject_type: String,
    /// The folder the role applies to, or `*` for every folder.
    pub folder_id: String,
}

fn check_caller_subject(at: &str, id: &str, kind: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.chars().count() > MAX_SUBJECT_ID_LEN {
        return Err(err(format!(
            "{at}: subject_id must be 1 to {MAX_SUBJECT_ID_LEN} characters"
        )));
    }
    if !CALLER_SUBJECT_TYPES.contains(&kind) {
        return Err(err(format!(
            "{at}: subject_type {kind:?} is not one of {}",
            CALLER_SUBJECT_TYPES.join(", ")
        )));
    }
    Ok(())
}

impl AuthConfig {
    fn validate(&mut self, base: &Path) -> Result<(), ConfigError> {
        let mut hashes = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}] (subject_id {:?})", t.subject_id);
            let mut h = [0u8; 32];
            if hex::decode_to_slice(&t.sha256, &mut h).is_err() {
                return Err(err(format!(
                    "{at}: sha256 must be the 64-hex-digit SHA-256 of the token, e.g. from \
                     `printf %s \"$TOKEN\" | sha256sum`"
                )));
            }
            if !hashes.insert(h) {
                return Err(err(format!("{at}: the same token hash is listed twice")));
            }
            check_caller_subject(&at, &t.subject_id, &t.subject_type)?;
        }
        let mut subjects = HashSet::new();
        for (i, m) in self.mtls.iter().enumerate() {
            let at = format!("auth.mtls[{i}] (subject {:?})", m.subject);
            if m.subject.is_empty() {
                return Err(err(format!("auth.mtls[{i}]: subject must not be empty")));
            }
            if !subjects.insert(m.subject.as_str()) {
                return Err(err(format!("{at}: the subject is listed twice")));
            }
            check_caller_subject(&at, m.id(), &m.subject_type)?;
        }
        if let Some(jwt) = &mut self.jwt {
            if jwt.issuer.is_empty() || jwt.audience.is_empty() {
                return Err(err(
                    "auth.jwt: issuer and audience must be set (tokens are checked against both)",
                ));
            }
            if jwt.subject_claim.is_empty() {
                return Err(err("auth.jwt.subject_claim: must not be empty"));
            }
            if !CALLER_SUBJECT_TYPES.contains(&jwt.subject_type.as_str()) {
                return Err(err(format!(
                    "auth.jwt.subject_type: {:?} is not one of {}",
                    jwt.subject_type,
                    CALLER_SUBJECT_TYPES.join(", ")
                )));
            }
            if jwt.leeway_s > 300 {
                return Err(err("auth.jwt.leeway_s: at most 300 seconds"));
            }
            if jwt.reload_interval_ms != 0 && jwt.reload_interval_ms < 100 {
                return Err(err(
                    "auth.jwt.reload_interval_ms: must be 0 (SIGHUP only) or at least 100",
                ));
            }
            // Read (and refused with the path named) when the authenticator is built.
            jwt.jwks_file = base.join(&jwt.jwks_file);
        }
        for (i, b) in self.bindings.iter().enumerate() {
            let at = format!(
                "auth.bindings[{i}] (role {:?}, subject_id {:?})",
                b.role, b.subject_id
            );
            if b.subject_type == "system" {
                if b.subject_id != ALL_AUTHENTICATED_USERS {
                    return Err(err(format!(
                        "{at}: the only system subject is {ALL_AUTHENTICATED_USERS:?} (anonymous \
                         callers are never authorised)"
                    )));
                }
            } else {
                check_caller_subject(&at, &b.subject_id, &b.subject_type)?;
            }
            if b.folder_id != ANY_FOLDER
                && (b.folder_id.is_empty() || b.folder_id.chars().count() > MAX_KEY_ID_LEN)
            {
                return Err(err(format!(
                    "{at}: folder_id must be 1 to {MAX_KEY_ID_LEN} characters, or \"*\" for every folder"
                )));
            }
        }
        Ok(())
    }
}

/// Where audit records go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    /// One JSON line per request on standard output.
    #[default]
    Stdout,
    /// Appended to `audit.file`, reopened on SIGHUP.
    File,
    /// No audit trail.
    Off,
}

/// `[audit]`: one JSON record per request, written before the response leaves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout` (default), `file` or `off`.
    #[serde(default)]
    pub sink: AuditSink,
    /// The file, with `sink = "file"`; relative paths resolve against the config's directory.
    pub file: Option<PathBuf>,
    /// Refuse to answer (UNAVAILABLE) when a record cannot be written.
    #[serde(default)]
    pub required: bool,
    /// Longest a request waits for its record to be written, in ms; default 1000.
    #[serde(default = "default_audit_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// `fdatasync` the file after every batch of records; default false.
    #[serde(default)]
    pub fsync: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSink::default(),
            file: None,
            required: false,
            write_timeout_ms: default_audit_write_timeout_ms(),
            fsync: false,
        }
    }
}

fn default_audit_write_timeout_ms() -> u64 {
    1000
}

impl AuditConfig {
    fn validate(&mut self, base: &Path) -> Result<(), ConfigError> {
        match (self.sink, &self.file) {
            (AuditSink::File, None) => {
                return Err(err(
                    "audit.file: required with sink = \"file\" (the file records are appended to)",
                ))
            }
            (AuditSink::File, Some(f)) => self.file = Some(base.join(f)),
            (_, Some(_)) => {
                return Err(err(
                    "audit.file: only used with sink = \"file\"; set sink = \"file\" or remove it",
                ))
            }
            (_, None) => {}
        }
        if self.required && self.sink == AuditSink::Off {
            return Err(err(
                "audit.required: cannot be true with sink = \"off\" (nothing could be written)",
            ));
        }
        if !(1..=60_000).contains(&self.write_timeout_ms) {
            return Err(err("audit.write_timeout_ms: must be 1 to 60000"));
        }
        Ok(())
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

/// `[rate_limit]`: a token bucket per subject (anonymous callers per peer IP), off unless
/// `per_subject_rps` is set; and, on by default, one per client IP for requests without a
/// valid credential and a separate, more generous one per client IP for health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second each subject may make.
    pub per_subject_rps: Option<f64>,
    /// Requests a subject may make at once after being idle; default: `per_subject_rps`
    /// rounded up.
    pub burst: Option<u32>,
    /// Requests per second one client IP may make without a valid credential (health checks
    /// aside); 0 turns the limit off.
    #[serde(default = "default_anonymous_per_ip_rps")]
    pub anonymous_per_ip_rps: f64,
    /// The burst of that bucket.
    #[serde(default = "default_anonymous_burst")]
    pub anonymous_burst: u32,
    /// Health checks per second one client IP may make, credential or not; 0 turns the limit
    /// off.
    #[serde(default = "default_health_per_ip_rps")]
    pub health_per_ip_rps: f64,
    /// The burst of that bucket.
    #[serde(default = "default_health_burst")]
    pub health_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_subject_rps: None,
            burst: None,
            anonymous_per_ip_rps: default_anonymous_per_ip_rps(),
            anonymous_burst: default_anonymous_burst(),
            health_per_ip_rps: default_health_per_ip_rps(),
            health_burst: default_health_burst(),
        }
    }
}

fn default_anonymous_per_ip_rps() -> f64 {
    50.0
}

fn default_anonymous_burst() -> u32 {
    100
}

fn default_health_per_ip_rps() -> f64 {
    100.0
}

fn default_health_burst() -> u32 {
    200
}

impl RateLimitConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(rps) = self.per_subject_rps {
            if !rps.is_finite() || !(0.001..=1_000_000.0).contains(&rps) {
                return Err(err(format!(
                    "rate_limit.per_subject_rps: {rps} must be from 0.001 to 1000000"
                )));
            }
        } else if self.burst.is_some() {
            return Err(err(
                "rate_limit.burst: set per_subject_rps too (the limit is off without it)",
            ));
        }
        if self.burst == Some(0) {
            return Err(err("rate_limit.burst: must be at least 1"));
        }
        for (name, rps, burst_name, burst) in [
            (
                "anonymous_per_ip_rps",
                self.anonymous_per_ip_rps,
                "anonymous_burst",
                self.anonymous_burst,
            ),
            (
                "health_per_ip_rps",
                self.health_per_ip_rps,
                "health_burst",
                self.health_burst,
            ),
        ] {
            if !rps.is_finite() || !(rps == 0.0 || (0.001..=1_000_000.0).contains(&rps)) {
                return Err(err(format!(
                    "rate_limit.{name}: {rps} must be 0 (off) or from 0.001 to 1000000"
                )));
            }
            if burst == 0 {
                return Err(err(format!("rate_limit.{burst_name}: must be at least 1")));
            }
        }
        Ok(())
    }
}
