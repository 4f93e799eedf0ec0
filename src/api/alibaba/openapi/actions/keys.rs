//! Keys: `CreateKey`, `DescribeKey`, `ListKeys`, `EnableKey`, `DisableKey`,
//! `ScheduleKeyDeletion`, `CancelKeyDeletion`, `UpdateKeyDescription`.
//!
//! The key-state rules of contract §4.1: enabling or disabling a key pending deletion,
//! scheduling the deletion of one, or cancelling the deletion of a key that is not pending
//! deletion gives `Rejected.StateModifiedFailed`.

use super::metadata::{key_arn, key_metadata, key_state};
use super::tags::Tag;
use super::{key_ref, Actions, Call, Page};
use crate::api::alibaba::names;
use crate::api::alibaba::openapi::{OpenApiError, Params, Reply};
use crate::auth::authz::Want;
use crate::auth::Action;
use crate::crypto::Algorithm;
use crate::error::{Error, Precondition};
use crate::keys::{KeyChanges, KeyEntry, NewKey, Status};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Longest `Description`.
const MAX_DESCRIPTION_CHARS: usize = 8192;
/// Most tags on one create (as Alibaba).
const MAX_CREATE_TAGS: usize = 20;
/// Most filters in `ListKeys`.
const MAX_FILTERS: usize = 10;

/// A key being created is no key of the Alibaba APIs yet.
pub(super) fn published(key: &KeyEntry) -> Result<(), OpenApiError> {
    if key.status == Status::Creating {
        return Err(OpenApiError::from_domain(&Error::not_found(
            crate::error::Missing::Key,
            format!("key {} is still being created", key.id),
        )));
    }
    Ok(())
}

/// `Rejected.StateModifiedFailed`: the key's state does not allow the change.
fn state_modified_failed(message: String) -> OpenApiError {
    OpenApiError::new(
        "Rejected.StateModifiedFailed",
        StatusCode::CONFLICT,
        message,
        Code::FailedPrecondition,
    )
}

/// A core error where a key pending deletion means `Rejected.StateModifiedFailed`.
fn state_change_error(e: Error) -> OpenApiError {
    match e {
        Error::FailedPrecondition {
            why: Precondition::PendingDeletion,
            message,
        } => state_modified_failed(message),
        e => OpenApiError::from(e),
    }
}

/// One `ListKeys` filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Values")]
    values: Vec<String>,
}

impl Filter {
    /// Whether `key` passes (values of one filter are alternatives).
    fn matches(&self, key: &KeyEntry) -> bool {
        let value = match self.key.as_str() {
            "KeyState" => key_state(key).to_string(),
            "KeySpec" => names::spec_name(key.algorithm.spec()).to_string(),
            "KeyUsage" => "SIGN/VERIFY".to_string(),
            "ProtectionLevel" => "HSM".to_string(),
            "Origin" => "Aliyun_KMS".to_string(),
            "CreatorType" => "User".to_string(),
            "Creator" => key.created_by.clone(),
            "keyId" | "KeyId" => key.id.clone(),
            "TagKey" => return self.values.iter().any(|v| key.labels.contains_key(v)),
            "TagValue" => {
                return self
                    .values
                    .iter()
                    .any(|v| key.labels.values().any(|l| l == v))
            }
            _ => return false,
        };
        self.values.contains(&value)
    }
}

/// The filters of `ListKeys`, checked.
fn filters(params: &Params) -> Result<Vec<Filter>, OpenApiError> {
    const KEYS: &[&str] = &[
        "KeyState",
        "KeySpec",
        "KeyUsage",
        "ProtectionLevel",
        "Origin",
        "CreatorType",
        "Creator",
        "keyId",
        "KeyId",
        "TagKey",
        "TagValue",
    ];
    let filters: Vec<Filter> = params
        .json_array("Filters", MAX_FILTERS)?
        .unwrap_or_default();
    for f in &filters {
        if !KEYS.contains(&f.key.as_str()) {
            return Err(OpenApiError::invalid_parameter(
                "Filters",
                format!(
                    "the filter key {:?} is not one of {}",
                    f.key.chars().take(64).collect::<String>(),
                    KEYS.join(", ")
                ),
            ));
        }
        if f.values.is_empty() || f.values.len() > 10 {
            return Err(OpenApiError::invalid_parameter(
                "Filters",
                format!(
                    "the filter {} has {} values; 1 to 10",
                    f.key,
                    f.values.len()
                ),
            ));
        }
    }
    Ok(filters)
}

impl Actions {
    /// The key a call names, any state but creating, if the caller may do `action`.
    pub(super) async fn any_key(
        &self,
        call: &Call<'_>,
        action: Action,
    ) -> Result<Arc<KeyEntry>, OpenApiError> {
        let key = self
            .manager
            .key(call.ctx, action, key_ref(call)?, Want::Any, call.deadline)
            .await?;
        published(&key)?;
        Ok(key)
    }

    pub(super) async fn create_key(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let p = call.params;
        let spec = match p.string("KeySpec", 64)? {
            Some(name) => names::spec_for_create(name)
                .map_err(|why| OpenApiError::invalid_parameter("KeySpec", why))?,
            None => {
                return Err(OpenApiError::invalid_parameter(
                    "KeySpec",
                    format!(
                        "it is not set, and the default (Aliyun_AES_256) is a symmetric key; \
                         p11kms serves asymmetric signing keys: {}",
                        names::SERVED_SPECS
                    ),
                ))
            }
        };
        if let Some(usage) = p.string("KeyUsage", 64)? {
            if usage != "SIGN/VERIFY" {
                return Err(OpenApiError::invalid_parameter(
                    "KeyUsage",
                    "p11kms keys sign and verify: set SIGN/VERIFY (or leave it out)",
                ));
            }
        }
        if let Some(level) = p.string("ProtectionLevel", 64)? {
            if !matches!(level, "HSM" | "SOFTWARE") {
                return Err(OpenApiError::invalid_parameter(
                    "ProtectionLevel",
                    "it is HSM or SOFTWARE (p11kms keys are always in the HSM)",
                ));
            }
        }
        if let Some(origin) = p.string("Origin", 64)? {
            if origin != "Aliyun_KMS" {
                return Err(OpenApiError::new(
                    "Unsupported.Origin",
                    StatusCode::BAD_REQUEST,
                    "This key origin is not valid for this api: p11kms generates every key in \
                     the HSM (Origin Aliyun_KMS); key material is never imported",
                    Code::InvalidArgument,
                ));
            }
        }
        if p.boolean("EnableAutomaticRotation")?.unwrap_or(false) {
            return Err(OpenApiError::invalid_parameter(
                "EnableAutomaticRotation",
                "asymmetric keys are not rotated automatically; make new versions with \
                 CreateKeyVersion",
            ));
        }
        let description = p
            .string("Description", MAX_DESCRIPTION_CHARS)?
            .unwrap_or_default();
        let tags: Vec<Tag> = p.json_array("Tags", MAX_CREATE_TAGS)?.unwrap_or_default();
        let labels = super::tags::labels(&tags)?;
        let algorithm = Algorithm::default_for(spec).expect("every created spec has one");
        let (key, _) = self
            .manager
            .create(
                call.ctx,
                NewKey {
                    folder_id: call.who.folder_id.clone(),
                    name: String::new(),
                    description: description.to_string(),
                    labels,
                    algorithm,
                    deletion_protection: false,
                },
                call.deadline,
            )
            .await?;
        Ok(Reply::new().field("KeyMetadata", key_metadata(&key)))
    }

    pub(super) async fn describe_key(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let key = self.any_key(call, Action::Get).await?;
        Ok(Reply::new().field("KeyMetadata", key_metadata(&key)))
    }

    pub(super) fn list_keys(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let page = Page::of(call.params)?;
        let filters = filters(call.params)?;
        let keys: Vec<Arc<KeyEntry>> = self
            .manager
            .list_everywhere(call.ctx)?
            .into_iter()
            .filter(|k| filters.iter().all(|f| f.matches(k)))
            .collect();
        let (page, reply) = page.apply(keys, Reply::new());
        Ok(reply.list(
            "Keys",
            "Key",
            page.iter()
                .map(|k| json!({ "KeyId": k.id, "KeyArn": key_arn(&k.id) })),
        ))
    }

    pub(super) async fn set_enabled(
        &self,
        call: &Call<'_>,
        enabled: bool,
    ) -> Result<Reply, OpenApiError> {
        let key = self.any_key(call, Action::Update).await?;
        if key.deletion.is_some() {
            return Err(state_modified_failed(format!(
                "key {} is pending deletion; cancel the deletion before enabling or disabling it",
                key.id
            )));
        }
        let changes = KeyChanges {
            status: Some(if enabled {
                Status::Active
            } else {
                Status::Inactive
            }),
            ..KeyChanges::default()
        };
        self.manager
            .update(call.ctx, &key.id, changes, Want::Any, call.deadline)
            .await
            .map_err(state_change_error)?;
        Ok(Reply::new())
    }

    pub(super) async fn schedule_key_deletion(
        &self,
        call: &Call<'_>,
    ) -> Result<Reply, OpenApiError> {
        let days = call
            .params
            .required_integer("PendingWindowInDays", 7..=366)?;
        let key = self.any_key(call, Action::Delete).await?;
        let window = Duration::from_secs(u64::try_from(days).expect("positive") * 86_400);
        self.manager
            .delete(call.ctx, &key.id, Some(window), Want::Any, call.deadline)
            .await
            .map_err(|e| match e {
                Error::FailedPrecondition {
                    why: Precondition::State,
                    message,
                } => state_modified_failed(message),
                e => state_change_error(e),
            })?;
        Ok(Reply::new())
    }

    pub(super) async fn cancel_key_deletion(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let key = self.any_key(call, Action::Delete).await?;
        self.manager
            .restore(call.ctx, &key.id, Action::Delete, true, call.deadline)
            .await?;
        Ok(Reply::new())
    }

    pub(super) async fn update_key_description(
        &self,
        call: &Call<'_>,
    ) -> Result<Reply, OpenApiError> {
        if !call.params.contains("Description") {
            return Err(OpenApiError::missing_parameter("Description"));
        }
        let description = call
            .params
            .string("Description", MAX_DESCRIPTION_CHARS)?
            .unwrap_or_default();
        let key = self.any_key(call, Action::Update).await?;
        let changes = KeyChanges {
            description: Some(description.to_string()),
            ..KeyChanges::default()
        };
        self.manager
            .update(call.ctx, &key.id, changes, Want::Any, call.deadline)
            .await?;
        Ok(Reply::new())
    }
}
