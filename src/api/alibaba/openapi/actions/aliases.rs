//! Aliases: `CreateAlias`, `UpdateAlias`, `DeleteAlias`, `ListAliases`, `ListAliasesByKeyId`.
//! An alias is `alias/<name>`, unique, pointing at one key; changing one needs the editor role
//! on the key(s) involved. Creating an alias for a key pending deletion gives
//! `Rejected.StateModifiedFailed`; repointing one to such a key `Rejected.PendingDeletion`
//! (contract §1.2).

use super::metadata::alias_arn;
use super::{key_ref, Actions, Call, Page};
use crate::api::alibaba::openapi::{OpenApiError, Reply};
use crate::auth::Action;
use crate::error::{Error, Precondition};
use crate::keys::AliasEntry;
use http::StatusCode;
use serde_json::json;
use tonic::Code;

/// The required, well-formed `AliasName`.
fn alias_name<'p>(call: &Call<'p>) -> Result<&'p str, OpenApiError> {
    let name = call
        .params
        .required_string("AliasName", crate::keys::alias::MAX_LEN)?;
    crate::keys::alias::check_name(name)
        .map_err(|why| OpenApiError::invalid_parameter("AliasName", why))?;
    Ok(name)
}

fn alias_json(a: &AliasEntry) -> serde_json::Value {
    json!({ "AliasName": a.name, "AliasArn": alias_arn(&a.name), "KeyId": a.key_id })
}

impl Actions {
    pub(super) async fn create_alias(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let name = alias_name(call)?;
        let key = key_ref(call)?;
        self.manager
            .create_alias(call.ctx, name, key, call.deadline)
            .await
            .map_err(|e| match e {
                Error::FailedPrecondition {
                    why: Precondition::PendingDeletion,
                    message,
                } => OpenApiError::new(
                    "Rejected.StateModifiedFailed",
                    StatusCode::CONFLICT,
                    message,
                    Code::FailedPrecondition,
                ),
                e => OpenApiError::from(e),
            })?;
        Ok(Reply::new())
    }

    pub(super) async fn update_alias(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let name = alias_name(call)?;
        let key = key_ref(call)?;
        self.manager
            .update_alias(call.ctx, name, key, call.deadline)
            .await?;
        Ok(Reply::new())
    }

    pub(super) async fn delete_alias(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let name = alias_name(call)?;
        self.manager
            .delete_alias(call.ctx, name, call.deadline)
            .await?;
        Ok(Reply::new())
    }

    pub(super) fn list_aliases(&self, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        let page = Page::of(call.params)?;
        let aliases = self.manager.list_aliases(call.ctx, None)?;
        let (page, reply) = page.apply(aliases, Reply::new());
        Ok(reply.list("Aliases", "Alias", page.iter().map(alias_json)))
    }

    pub(super) async fn list_aliases_by_key_id(
        &self,
        call: &Call<'_>,
    ) -> Result<Reply, OpenApiError> {
        let page = Page::of(call.params)?;
        let key = self.any_key(call, Action::Get).await?;
        let aliases = self.manager.list_aliases(call.ctx, Some(&key.id))?;
        let (page, reply) = page.apply(aliases, Reply::new());
        Ok(reply.list("Aliases", "Alias", page.iter().map(alias_json)))
    }
}
