//! Creation times of config-declared keys. A key declared in `[[keys]]` was made outside
//! p11kms, so its "created" time is when p11kms first adopted it: the first start that served
//! it records that time on the token in an object of its own (`p11kms/adopted/<key id>`), and
//! every replica and every restart reports the same value. Clients need one: every Yandex key
//! has a `createdAt`, and code such as `key.createdAt.toISOString()` fails without it.
//!
//! Two replicas adopting one key at the same moment may both write an object; every reader
//! takes the earliest time, so a replica started later reports it, and a running one as soon
//! as it has scanned the other's object (on SoftHSM, an object written while another process
//! writes can stay hidden from that process for a while, see `Hsm::touch_token`).

use super::KeyManager;
use crate::error::Error;
use crate::hsm::ADOPTED_LABEL_PREFIX;
use crate::keys::doc::time;
use crate::keys::KeySource;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;

/// The document of one adoption object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Adoption {
    key_id: String,
    #[serde(with = "time")]
    adopted_at: SystemTime,
}

/// The earliest adoption time among `values` (the objects labelled for `key_id`); unreadable
/// objects and objects naming another key are skipped.
fn earliest(key_id: &str, values: &[Vec<u8>]) -> Option<SystemTime> {
    values
        .iter()
        .filter_map(|v| match serde_json::from_slice::<Adoption>(v) {
            Ok(a) if a.key_id == key_id => Some(a.adopted_at),
            Ok(_) => {
                tracing::warn!(%key_id, "an adoption object names another key; ignored");
                None
            }
            Err(e) => {
                tracing::warn!(%key_id, error = %e, "unreadable adoption object on the token; ignored");
                None
            }
        })
        .min()
}

impl KeyManager {
    /// Gives config-declared keys the creation times the scan found (`adopted`: key id → the
    /// values of its adoption objects). A time only ever moves earlier: see the module docs.
    pub(super) fn apply_adoptions(&self, adopted: &HashMap<String, Vec<Vec<u8>>>) {
        for (key_id, values) in adopted {
            let Some(at) = earliest(key_id, values) else {
                continue;
            };
            let Some(entry) = self.registry.get_any(key_id) else {
                continue;
            };
            if entry.source != KeySource::Config || entry.created_at.is_some_and(|t| t <= at) {
                continue;
            }
            let mut updated = (*entry).clone();
            updated.created_at = Some(at);
            self.registry.insert(updated);
        }
    }

    /// Records an adoption time on the token for every config-declared key that has none yet
    /// (run at start-up, after the first scan applied those already there).
    ///
    /// # Errors
    /// The token refused the write.
    pub(super) async fn adopt_config_keys(&self) -> Result<(), Error> {
        let now = SystemTime::now();
        let mut wrote = false;
        for entry in self.registry.all_any() {
            if entry.source != KeySource::Config || entry.created_at.is_some() {
                continue;
            }
            let doc = Adoption {
                key_id: entry.id.clone(),
                adopted_at: now,
            };
            let value = serde_json::to_vec(&doc)
                .map_err(|e| Error::internal("an adoption record could not be serialised", e))?;
            let stored = self
                .hsm
                .create_data_object(&adoption_label(&entry.id), value)
                .await?;
            // Stored again by the touches, like key documents: a replica that read it while
            // it was being written would miss it for good otherwise (see `Hsm::touch_token`).
            self.note_written(stored);
            wrote = true;
            let mut updated = (*entry).clone();
            updated.created_at = Some(now);
            self.registry.insert(updated);
            tracing::info!(key_id = %entry.id, "config key adopted: its creation time is now, recorded on the token");
        }
        if wrote {
            self.announce().await;
        }
        Ok(())
    }
}

/// The `CKA_LABEL` of a key's adoption objects.
fn adoption_label(key_id: &str) -> String {
    format!("{ADOPTED_LABEL_PREFIX}{key_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(key_id: &str, at: SystemTime) -> Vec<u8> {
        serde_json::to_vec(&Adoption {
            key_id: key_id.into(),
            adopted_at: at,
        })
        .unwrap()
    }

    #[test]
    fn the_earliest_readable_time_for_the_key_wins() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let values = vec![
            object("k1", t + Duration::from_secs(5)),
            b"not json".to_vec(),
            object("other", t - Duration::from_secs(99)),
            object("k1", t),
        ];
        assert_eq!(earliest("k1", &values), Some(t));
        assert_eq!(earliest("k1", &[b"{}".to_vec()]), None);
        // The stored form is RFC 3339, as in key documents.
        let text = String::from_utf8(object("k1", t)).unwrap();
        assert!(
            text.contains("\"adopted_at\":\"2027-01-15T08:00:00Z\""),
            "{text}"
        );
    }
}
