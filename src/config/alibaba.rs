//! `[alibaba]`: the Alibaba Cloud KMS fronts. The shared-gateway OpenAPI authenticates
//! AccessKey pairs (`[[alibaba.access_keys]]`), the KMS instance API client keys
//! (`[[alibaba.client_keys]]`); each maps to a subject that goes through the same roles,
//! bindings, rate limits and audit as every other caller.

use serde::Deserialize;

/// Default of `min_key_version_interval_secs`: Alibaba's 7 days between key versions.
pub const DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS: u64 = 7 * 24 * 3600;

/// `[alibaba]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlibabaConfig {
    /// Shortest time between two versions of one key (`CreateKeyVersion`); 0 in dev mode.
    #[serde(default = "default_min_key_version_interval_secs")]
    pub min_key_version_interval_secs: u64,
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
            access_keys: Vec::new(),
            client_keys: Vec::new(),
        }
    }
}

fn default_min_key_version_interval_secs() -> u64 {
    DEFAULT_MIN_KEY_VERSION_INTERVAL_SECS
}

/// One `[[alibaba.access_keys]]` entry (OpenAPI, ACS3 and v1 signatures).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The AccessKeyId clients send.
    pub id: String,
}

/// One `[[alibaba.client_keys]]` entry (instance API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    /// `KAAP.<uuid>`, sent as `x-kms-acccesskeyid`.
    pub id: String,
}
