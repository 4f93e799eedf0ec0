//! Tags: `TagResource`, `UntagResource`, `ListResourceTags`. Alibaba's tags are the key's
//! labels, one map shared with the Yandex fronts; each tag is its own register on the token, so
//! concurrent changes to different tags all take effect. Only keys carry tags here
//! (`SecretName` and `CertificateId` name resources p11kms does not have).

use super::{Actions, Call};
use crate::api::alibaba::openapi::{OpenApiError, Reply};
use crate::auth::authz::Want;
use crate::auth::Action;
use crate::keys::KeyChanges;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

/// Longest `TagKey`.
const MAX_TAG_KEY_CHARS: usize = 128;
/// Longest `TagValue`.
const MAX_TAG_VALUE_CHARS: usize = 128;
/// Most tags one request sets or removes.
const MAX_TAGS_PER_CALL: usize = 20;
/// Most labels a key may carry (the Yandex fronts' limit).
const MAX_LABELS: usize = crate::api::yandex::key_fields::MAX_LABELS;

/// One tag as the JSON parameters carry it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tag {
    #[serde(rename = "TagKey")]
    key: String,
    #[serde(rename = "TagValue", default)]
    value: String,
}

/// Checks tags and makes them labels.
pub(super) fn labels(tags: &[Tag]) -> Result<BTreeMap<String, String>, OpenApiError> {
    let mut out = BTreeMap::new();
    for (i, t) in tags.iter().enumerate() {
        let key_chars = t.key.chars().count();
        if key_chars == 0 || key_chars > MAX_TAG_KEY_CHARS || t.key.chars().any(char::is_control) {
            return Err(OpenApiError::invalid_parameter(
                "Tags",
                format!("tag {i}: TagKey must be 1 to {MAX_TAG_KEY_CHARS} printable characters"),
            ));
        }
        if t.value.chars().count() > MAX_TAG_VALUE_CHARS || t.value.chars().any(char::is_control) {
            return Err(OpenApiError::invalid_parameter(
                "Tags",
                format!(
                    "tag {i}: TagValue must be at most {MAX_TAG_VALUE_CHARS} printable characters"
                ),
            ));
        }
        if t.key.starts_with("acs:") || t.key.starts_with("aliyun") {
            return Err(OpenApiError::invalid_parameter(
                "Tags",
                format!("tag {i}: TagKey may not start with acs: or aliyun (reserved)"),
            ));
        }
        out.insert(t.key.clone(), t.value.clone());
    }
    Ok(out)
}

/// Only `KeyId` names a resource here.
fn only_keys(call: &Call<'_>) -> Result<(), OpenApiError> {
    for other in ["SecretName", "CertificateId"] {
        if call.params.contains(other) {
            return Err(OpenApiError::invalid_parameter(
                other,
                "this gateway holds keys only; name the resource with KeyId",
            ));
        }
    }
    Ok(())
}

impl Actions {
    pub(super) async fn tag_resource(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        only_keys(call)?;
        let tags: Vec<Tag> = call.params.required_json_array("Tags", MAX_TAGS_PER_CALL)?;
        let put = labels(&tags)?;
        let key = self.any_key(call, Action::Update).await?;
        let new = put.keys().filter(|k| !key.labels.contains_key(*k)).count();
        if key.labels.len() + new > MAX_LABELS {
            return Err(OpenApiError::invalid_parameter(
                "Tags",
                format!(
                    "key {} has {} tags; at most {MAX_LABELS} are kept",
                    key.id,
                    key.labels.len()
                ),
            ));
        }
        let changes = KeyChanges {
            put_labels: put,
            ..KeyChanges::default()
        };
        self.manager
            .update(call.ctx, &key.id, changes, Want::Any, call.deadline)
            .await?;
        Ok(Reply::new())
    }

    pub(super) async fn untag_resource(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        only_keys(call)?;
        let keys: Vec<String> = call
            .params
            .required_json_array("TagKeys", MAX_TAGS_PER_CALL)?;
        let key = self.any_key(call, Action::Update).await?;
        let changes = KeyChanges {
            remove_labels: keys,
            ..KeyChanges::default()
        };
        self.manager
            .update(call.ctx, &key.id, changes, Want::Any, call.deadline)
            .await?;
        Ok(Reply::new())
    }

    pub(super) async fn list_resource_tags(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let key = self.any_key(call, Action::Get).await?;
        Ok(Reply::new().list(
            "Tags",
            "Tag",
            key.labels
                .iter()
                .map(|(k, v)| json!({ "KeyId": key.id, "TagKey": k, "TagValue": v })),
        ))
    }
}
