//! Creating, repointing and deleting aliases. Changing an alias needs the Update role on the key
//! it points at (and, when repointed, on the new key as well).

use super::KeyManager;
use crate::auth::authz::Want;
use crate::auth::{Action, RequestContext};
use crate::error::{Error, Missing, Precondition};
use crate::hsm::{alias_label, StoredVersion};
use crate::keys::alias::{self, AliasDoc, AliasEntry};
use crate::keys::doc::SCHEMA;
use std::sync::Arc;
use tokio::time::Instant;

fn alias_not_found(name: &str) -> Error {
    Error::not_found(Missing::Alias, format!("alias {name} not found"))
}

impl KeyManager {
    /// An alias's documents on the token, merged, with the objects they came from.
    async fn read_alias(&self, name: &str) -> Result<(AliasDoc, Vec<StoredVersion>), Error> {
        let stored = self.hsm.read_data_objects(&alias_label(name)).await?;
        let mut doc = AliasDoc {
            schema: SCHEMA,
            alias: name.to_string(),
            ..AliasDoc::default()
        };
        let mut readable = Vec::new();
        for v in stored {
            match AliasDoc::parse(&v.value) {
                Ok(d) if d.alias == name => {
                    doc.merge(&d);
                    readable.push(v);
                }
                _ => {
                    tracing::warn!(alias = %name, "an unreadable alias document on the token; ignored")
                }
            }
        }
        Ok((doc, readable))
    }

    /// Points `name` at `key_id` (`None`: deletes it) if `check` accepts the alias's current
    /// target, and writes it over the documents read.
    async fn write_alias(
        &self,
        name: &str,
        key_id: Option<String>,
        check: impl FnOnce(Option<&str>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _guard = self.mutation.lock().await;
        let (mut doc, objects) = self.read_alias(name).await?;
        check(doc.target())?;
        if !doc.schema_writable() {
            return Err(Error::precondition(
                Precondition::State,
                format!("alias {name} was written by a newer p11kms; change it with that version"),
            ));
        }
        AliasDoc::write(&mut doc, key_id.clone(), &self.replica);
        let epoch = self.hsm.stats().epoch;
        let (written, announced) = self
            .hsm
            .replace_data_objects(&alias_label(name), objects, doc.to_json())
            .await?;
        self.note_written(written);
        match announced {
            Ok(change) => self.announced(epoch, change),
            Err(e) => self.announce_failed(&e),
        }
        let entry = doc.target().map(|k| AliasEntry {
            name: name.to_string(),
            key_id: k.to_string(),
        });
        self.registry.set_alias(name, entry);
        Ok(())
    }

    /// A key an alias may point at: the caller may update it, and it is not pending deletion.
    async fn alias_target(
        &self,
        ctx: &RequestContext,
        key_ref: &str,
        deadline: Option<Instant>,
    ) -> Result<String, Error> {
        let key = self
            .check_changeable(ctx, Action::Update, key_ref, Want::Any, deadline)
            .await?;
        if key.deletion.is_some() {
            return Err(Error::precondition(
                Precondition::PendingDeletion,
                format!(
                    "key {} is pending deletion; an alias cannot point at it",
                    key.id
                ),
            ));
        }
        Ok(key.id.clone())
    }

    /// Creates `name` pointing at `key_ref`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (name), ALREADY_EXISTS, and as for changing the key.
    pub async fn create_alias(
        self: &Arc<Self>,
        ctx: &RequestContext,
        name: &str,
        key_ref: &str,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        alias::check_name(name).map_err(Error::InvalidArgument)?;
        ctx.note(|a| a.alias = Some(name.to_string()));
        let key_id = self.alias_target(ctx, key_ref, deadline).await?;
        let this = Arc::clone(self);
        let name = name.to_string();
        super::detached(deadline, async move {
            this.write_alias(&name, Some(key_id), |current| match current {
                Some(_) => Err(Error::AlreadyExists(format!("alias {name} already exists"))),
                None => Ok(()),
            })
            .await
        })
        .await
    }

    /// Points the existing alias `name` at `key_ref`.
    ///
    /// # Errors
    /// NOT_FOUND (alias), and as for changing both keys.
    pub async fn update_alias(
        self: &Arc<Self>,
        ctx: &RequestContext,
        name: &str,
        key_ref: &str,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        ctx.note(|a| a.alias = Some(crate::auth::audit::bounded(name)));
        let current = self.existing_alias(ctx, name, deadline).await?;
        self.check_changeable(ctx, Action::Update, &current.key_id, Want::Any, deadline)
            .await?;
        let key_id = self.alias_target(ctx, key_ref, deadline).await?;
        let this = Arc::clone(self);
        let owned = name.to_string();
        super::detached(deadline, async move {
            this.write_alias(&owned, Some(key_id), |current| match current {
                Some(_) => Ok(()),
                None => Err(alias_not_found(&owned)),
            })
            .await
        })
        .await
    }

    /// Deletes the alias `name`.
    ///
    /// # Errors
    /// NOT_FOUND (alias), and as for changing its key.
    pub async fn delete_alias(
        self: &Arc<Self>,
        ctx: &RequestContext,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        ctx.note(|a| a.alias = Some(crate::auth::audit::bounded(name)));
        let current = self.existing_alias(ctx, name, deadline).await?;
        self.check_changeable(ctx, Action::Update, &current.key_id, Want::Any, deadline)
            .await?;
        let this = Arc::clone(self);
        let owned = name.to_string();
        super::detached(deadline, async move {
            this.write_alias(&owned, None, |current| match current {
                Some(_) => Ok(()),
                None => Err(alias_not_found(&owned)),
            })
            .await
        })
        .await
    }

    /// The alias `name`, re-scanning once on a miss (as keys are looked up).
    async fn existing_alias(
        &self,
        ctx: &RequestContext,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<AliasEntry, Error> {
        if let Some(a) = self.registry.alias(name) {
            return Ok(a);
        }
        if let Some(c) = ctx
            .caller()
            .ok()
            .filter(|c| self.policy.allowed_somewhere(c, Action::Update))
        {
            self.policy.rescan_for(&self.registry, c, deadline).await;
        }
        self.registry
            .alias(name)
            .ok_or_else(|| alias_not_found(name))
    }

    /// The aliases the caller may see (those of keys it may list), in name order.
    ///
    /// # Errors
    /// UNAUTHENTICATED.
    pub fn list_aliases(
        &self,
        ctx: &RequestContext,
        key_id: Option<&str>,
    ) -> Result<Vec<AliasEntry>, Error> {
        let caller = ctx.caller()?;
        let aliases = match key_id {
            Some(k) => self.registry.aliases_of(k),
            None => self.registry.aliases(),
        };
        Ok(aliases
            .into_iter()
            .filter(|a| {
                self.registry
                    .get_any(&a.key_id)
                    .is_some_and(|k| self.policy.allowed_on_key(caller, Action::List, &k))
            })
            .collect())
    }
}
