//! Keys, versions and aliases as the OpenAPI replies show them (`KeyMetadata`, `KeyVersion`,
//! ARNs, UTC times without fractions, unset values as `""`).

use crate::api::alibaba::names;
use crate::keys::{KeyEntry, Status, Version};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The region and account in ARNs: p11kms is one "region" with one "account".
const ARN_PREFIX: &str = "acs:kms:p11kms:p11kms";

/// `2021-05-20T06:34:21Z`.
pub(super) fn time(t: SystemTime) -> String {
    let seconds = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    prost_types::Timestamp { seconds, nanos: 0 }.to_string()
}

/// The key's ARN.
pub(super) fn key_arn(key_id: &str) -> String {
    format!("{ARN_PREFIX}:key/{key_id}")
}

/// An alias's ARN.
pub(super) fn alias_arn(alias: &str) -> String {
    format!("{ARN_PREFIX}:{alias}")
}

/// `Enabled`, `Disabled` or `PendingDeletion`.
pub(super) fn key_state(key: &KeyEntry) -> &'static str {
    if key.deletion.is_some() {
        return "PendingDeletion";
    }
    match key.status {
        Status::Active => "Enabled",
        Status::Inactive => "Disabled",
        // Never shown: keys being created are not published.
        Status::Creating => "PendingImport",
    }
}

/// The `KeyMetadata` object of CreateKey and DescribeKey.
pub(super) fn key_metadata(key: &KeyEntry) -> Value {
    let primary = key.primary();
    json!({
        "Arn": key_arn(&key.id),
        "AutomaticRotation": "Disabled",
        "CreationDate": key.created_at.map(time).unwrap_or_default(),
        "Creator": key.created_by,
        "DKMSInstanceId": "",
        "DeleteDate": key.deletion.as_ref().map(|d| time(d.destroy_at)).unwrap_or_default(),
        "DeletionProtection": if key.deletion_protection { "Enabled" } else { "Disabled" },
        "DeletionProtectionDescription": "",
        "Description": key.description,
        "KeyId": key.id,
        "KeySpec": names::spec_name(key.algorithm.spec()),
        "KeyState": key_state(key),
        "KeyUsage": "SIGN/VERIFY",
        "LastRotationDate": primary.map(|v| time(v.created_at)).unwrap_or_default(),
        "MaterialExpireTime": "",
        "NextRotationDate": "",
        "Origin": "Aliyun_KMS",
        "PrimaryKeyVersion": primary.map(|v| v.id.clone()).unwrap_or_default(),
        "ProtectionLevel": "HSM",
        "RotationInterval": "",
    })
}

/// A `KeyVersion` object.
pub(super) fn key_version(key_id: &str, v: &Version) -> Value {
    json!({
        "KeyId": key_id,
        "KeyVersionId": v.id,
        "CreationDate": time(v.created_at),
    })
}
