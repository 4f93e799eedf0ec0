//! Alibaba AccessKey pairs (`[[alibaba.access_keys]]`): an AccessKeyId names a secret and the
//! [`Caller`] a request signed with it authenticates as, plus the folder the keys it creates
//! go to. Checking a signature is the OpenAPI front's business (its canonicalisation is wire
//! format); this store only answers "whose id is this, with which secret", and counts and logs
//! failures the way [`super::authn`] does, never with a secret or a signature.

use super::failures::FailureCounter;
use super::{AuthMethod, Caller};
use crate::api::peer::Peer;
use crate::config::alibaba::AccessKeyConfig;
use secrecy::SecretString;
use std::collections::HashMap;
use std::net::IpAddr;

/// One AccessKey pair.
pub struct AccessKey {
    secret: SecretString,
    caller: Caller,
    folder_id: String,
}

impl AccessKey {
    /// A pair whose requests authenticate as `caller` and create keys in `folder_id`.
    pub fn new(secret: SecretString, caller: Caller, folder_id: impl Into<String>) -> Self {
        Self {
            secret,
            caller,
            folder_id: folder_id.into(),
        }
    }

    /// The AccessKey secret, the HMAC key of the request signatures.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// Who a request signed with this pair is.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Where keys created with this pair go.
    pub fn folder_id(&self) -> &str {
        &self.folder_id
    }
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("caller", &self.caller)
            .field("folder_id", &self.folder_id)
            .finish_non_exhaustive()
    }
}

/// AccessKeyId → [`AccessKey`].
#[derive(Default)]
pub struct AccessKeys {
    keys: HashMap<String, AccessKey>,
    failures: FailureCounter,
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("AccessKeys")
            .field("ids", &ids)
            .finish_non_exhaustive()
    }
}

impl AccessKeys {
    /// From `[[alibaba.access_keys]]`, as validated at load (secrets read, ids unique).
    ///
    /// # Panics
    /// On an entry whose secret was not read: the config was not loaded through
    /// [`crate::Config::load`].
    pub fn from_config(entries: &[AccessKeyConfig]) -> Self {
        Self::new(entries.iter().map(|e| {
            let secret = e
                .secret
                .clone()
                .expect("AccessKey secrets are read when the config is loaded");
            let caller = Caller {
                subject_id: e.subject_id.clone(),
                subject_type: e.subject_type.clone(),
                method: AuthMethod::AccessKey,
            };
            (e.id.clone(), AccessKey::new(secret, caller, e.folder_id()))
        }))
    }

    /// From (AccessKeyId, pair) entries; a later entry for an id replaces an earlier one.
    pub fn new(entries: impl IntoIterator<Item = (String, AccessKey)>) -> Self {
        Self {
            keys: entries.into_iter().collect(),
            failures: FailureCounter::default(),
        }
    }

    /// The pair of `access_key_id`, if configured. Ids are not secret, so a plain lookup is
    /// fine; the secret it returns is compared by the signature check in constant time.
    pub fn get(&self, access_key_id: &str) -> Option<&AccessKey> {
        self.keys.get(access_key_id)
    }

    /// Whether no pair is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Counts and logs a refused request. `reason` is the error code the client got;
    /// `access_key_id` is what the request claimed (shortened and stripped of control
    /// characters: it is client input).
    pub fn count_failure(&self, reason: &str, access_key_id: Option<&str>, peer: Option<&Peer>) {
        let ip = peer.map(|p| p.addr.ip());
        let counted = self.failures.count(ip);
        let id: String = access_key_id
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        if counted.worth_a_warning() {
            tracing::warn!(
                peer = %ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
                failures = counted.peer,
                total_failures = counted.total,
                reason,
                access_key_id = %id,
                "AccessKey authentication failed"
            );
        } else {
            tracing::debug!(
                failures = counted.peer,
                reason,
                access_key_id = %id,
                "AccessKey authentication failed"
            );
        }
    }

    /// Failed AccessKey authentications from `ip` so far.
    pub fn failures_from(&self, ip: IpAddr) -> u64 {
        self.failures.from(ip)
    }

    /// Failed AccessKey authentications so far, from anyone.
    pub fn total_failures(&self) -> u64 {
        self.failures.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn maps_ids_to_secrets_callers_and_folders() {
        let caller = Caller {
            subject_id: "ci".into(),
            subject_type: "serviceAccount".into(),
            method: AuthMethod::AccessKey,
        };
        let keys = AccessKeys::new([(
            "LTAI-test".to_string(),
            AccessKey::new("s3cret".into(), caller.clone(), "f1"),
        )]);
        let k = keys.get("LTAI-test").unwrap();
        assert_eq!(k.secret().expose_secret(), "s3cret");
        assert_eq!((k.caller(), k.folder_id()), (&caller, "f1"));
        assert!(keys.get("LTAI-TEST").is_none(), "ids are case-sensitive");
        let shown = format!("{keys:?} {k:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let peer = Peer {
            addr: "10.0.0.2:9".parse().unwrap(),
            tls: false,
            client_subject: None,
            health_only: false,
        };
        keys.count_failure("SignatureDoesNotMatch", Some("LTAI\n-x"), Some(&peer));
        keys.count_failure("InvalidAccessKeyId.NotFound", None, None);
        assert_eq!(keys.failures_from(peer.addr.ip()), 1);
        assert_eq!(keys.total_failures(), 2);
    }
}
