//! The OpenAPI actions (contract §1.2), each mapping Alibaba's parameters and replies to the
//! core's domain calls. Any other action is answered `UnsupportedOperation`, naming it.
//!
//! Every action validates its parameters first (a bad request never reaches the core, let
//! alone the HSM), then calls the core, which authorises the caller per key with the same roles
//! and bindings as for every front: signing needs the signer role, reading the viewer role,
//! changing keys, versions, aliases and tags the editor role, deletion the editor role. A key
//! that does not exist and a key the caller may not use get the same answer:
//! `Forbidden.NoPermission` for callers without a global role (a global viewer learns
//! `Forbidden.KeyNotFound`), as for the Yandex fronts.

mod aliases;
mod crypto;
mod keys;
mod metadata;
mod tags;
mod versions;

use super::{Authenticated, OpenApiError, Params, Reply};
use crate::auth::RequestContext;
use crate::keys::KeyManager;
use crate::signer::Signer;
use std::sync::Arc;
use tokio::time::Instant;

/// Longest `KeyId` accepted: key ids, and aliases (`alias/` and 250 characters).
pub const MAX_KEY_REF_LEN: usize = 255;
/// Longest `KeyVersionId` accepted (a GUID is 36 characters).
pub const MAX_VERSION_ID_LEN: usize = 64;
/// Largest `Digest` accepted before its exact length is checked against the algorithm.
pub const MAX_DIGEST_BYTES: usize = 64;
/// Largest signature `Value` accepted (RSA-4096 is 512 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// What the actions run on.
#[derive(Debug, Clone)]
pub struct Actions {
    signer: Arc<Signer>,
    manager: Arc<KeyManager>,
}

/// One request, as the actions see it.
#[derive(Debug)]
pub struct Call<'a> {
    /// The request's context (its caller is the AccessKey's subject).
    pub ctx: &'a RequestContext,
    /// Who signed it.
    pub who: &'a Authenticated,
    /// Its parameters.
    pub params: &'a Params,
    /// When it must be answered by.
    pub deadline: Option<Instant>,
}

impl Actions {
    /// Actions over the shared core.
    pub fn new(signer: Arc<Signer>, manager: Arc<KeyManager>) -> Self {
        Self { signer, manager }
    }

    /// Runs `action`.
    ///
    /// # Errors
    /// The action's OpenAPI error.
    pub async fn run(&self, action: &str, call: &Call<'_>) -> Result<Reply, OpenApiError> {
        match action {
            "AsymmetricSign" => self.asymmetric_sign(call).await,
            "AsymmetricVerify" => self.asymmetric_verify(call).await,
            "GetPublicKey" => self.get_public_key(call).await,
            "CreateKey" => self.create_key(call).await,
            "DescribeKey" => self.describe_key(call).await,
            "ListKeys" => self.list_keys(call),
            "EnableKey" => self.set_enabled(call, true).await,
            "DisableKey" => self.set_enabled(call, false).await,
            "ScheduleKeyDeletion" => self.schedule_key_deletion(call).await,
            "CancelKeyDeletion" => self.cancel_key_deletion(call).await,
            "UpdateKeyDescription" => self.update_key_description(call).await,
            "CreateKeyVersion" => self.create_key_version(call).await,
            "ListKeyVersions" => self.list_key_versions(call).await,
            "DescribeKeyVersion" => self.describe_key_version(call).await,
            "CreateAlias" => self.create_alias(call).await,
            "UpdateAlias" => self.update_alias(call).await,
            "DeleteAlias" => self.delete_alias(call).await,
            "ListAliases" => self.list_aliases(call),
            "ListAliasesByKeyId" => self.list_aliases_by_key_id(call).await,
            "TagResource" => self.tag_resource(call).await,
            "UntagResource" => self.untag_resource(call).await,
            "ListResourceTags" => self.list_resource_tags(call).await,
            other => Err(OpenApiError::unsupported_action(other)),
        }
    }
}

/// The required `KeyId` (a key id or an alias), noted for the audit record.
fn key_ref<'p>(call: &Call<'p>) -> Result<&'p str, OpenApiError> {
    let key = call.params.required_string("KeyId", MAX_KEY_REF_LEN)?;
    call.ctx
        .note(|a| a.key_id = Some(crate::auth::audit::bounded(key)));
    Ok(key)
}

/// A page request: `PageNumber` (from 1) and `PageSize` (1 to 100, default 10).
struct Page {
    number: usize,
    size: usize,
}

impl Page {
    fn of(params: &Params) -> Result<Self, OpenApiError> {
        let number = params.integer("PageNumber", 1..=1_000_000)?.unwrap_or(1);
        let size = params.integer("PageSize", 1..=100)?.unwrap_or(10);
        Ok(Self {
            number: usize::try_from(number).expect("positive"),
            size: usize::try_from(size).expect("positive"),
        })
    }

    /// This page of `items`, with the paging fields of the reply.
    fn apply<T>(&self, items: Vec<T>, reply: Reply) -> (Vec<T>, Reply) {
        let total = items.len();
        let page: Vec<T> = items
            .into_iter()
            .skip((self.number - 1).saturating_mul(self.size))
            .take(self.size)
            .collect();
        let reply = reply
            .field("PageNumber", self.number)
            .field("PageSize", self.size)
            .field("TotalCount", total);
        (page, reply)
    }
}
