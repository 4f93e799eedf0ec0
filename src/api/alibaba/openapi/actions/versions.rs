//! Key versions: `CreateKeyVersion`, `ListKeyVersions`, `DescribeKeyVersion`. Each version is
//! its own key pair on the token; a new one becomes primary (contract §1.2: at most 50 per key,
//! at least `[alibaba] min_key_version_interval_secs` apart, only for an enabled key).

use super::metadata::key_version;
use super::{Actions, Call, Page, MAX_VERSION_ID_LEN};
use crate::api::alibaba::openapi::{OpenApiError, Reply};
use crate::auth::Action;
use crate::error::{Error, Missing};
use crate::keys::VersionStatus;

impl Actions {
    pub(super) async fn create_key_version(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let key = self.any_key(call, Action::Update).await?;
        super::crypto::servable(&key, None)?;
        let (key, version) = self
            .manager
            .create_version(call.ctx, &key.id, call.deadline)
            .await?;
        call.ctx.note(|a| a.version_id = Some(version.id.clone()));
        Ok(Reply::new().field("KeyVersion", key_version(&key.id, &version)))
    }

    pub(super) async fn list_key_versions(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let page = Page::of(call.params)?;
        let key = self.any_key(call, Action::Get).await?;
        let versions: Vec<_> = key.ready_versions().collect();
        let (page, reply) = page.apply(versions, Reply::new());
        Ok(reply.list(
            "KeyVersions",
            "KeyVersion",
            page.into_iter().map(|v| key_version(&key.id, v)),
        ))
    }

    pub(super) async fn describe_key_version(
        &self,
        call: &Call<'_>,
    ) -> Result<Reply, OpenApiError> {
        let id = call
            .params
            .required_string("KeyVersionId", MAX_VERSION_ID_LEN)?;
        let key = self.any_key(call, Action::Get).await?;
        let version = key
            .version(id)
            .filter(|v| v.status == VersionStatus::Ready)
            .ok_or_else(|| {
                OpenApiError::from(Error::not_found(
                    Missing::Version,
                    format!("key {} has no version {id}", key.id),
                ))
            })?;
        call.ctx.note(|a| a.version_id = Some(version.id.clone()));
        Ok(Reply::new().field("KeyVersion", key_version(&key.id, version)))
    }
}
