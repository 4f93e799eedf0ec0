//! Changes to a key's fields, lifecycle and access bindings.

use super::{not_found, BindingDelta, KeyChanges, KeyManager};
use crate::auth::authz::Want;
use crate::auth::{Action, RequestContext};
use crate::error::{Error, Missing, Precondition};
use crate::keys::doc::{Binding, KeyState, Writer};
use crate::keys::ops::{Kind, Operation};
use crate::keys::{KeyEntry, Status};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Refuses a change to a deleted key: for the Yandex fronts (`Want::Visible`) it is gone; for
/// the Alibaba fronts (`Want::Any`) it is in a state that does not allow the change.
fn not_deleted(key_id: &str, state: &KeyState, want: Want) -> Result<(), Error> {
    match (&state.deletion, want) {
        (None, _) => Ok(()),
        (Some(_), Want::Visible) => Err(not_found(key_id)),
        (Some(_), Want::Any) => Err(Error::precondition(
            Precondition::PendingDeletion,
            format!("key {key_id} is pending deletion; cancel the deletion first"),
        )),
    }
}

/// Checks that a key can get a new version: ACTIVE and not deleted.
pub(super) fn usable_for_versions(key_id: &str, state: &KeyState) -> Result<(), Error> {
    if state.deletion.is_some() {
        return Err(Error::precondition(
            Precondition::PendingDeletion,
            format!("key {key_id} is pending deletion"),
        ));
    }
    if state.status != Status::Active {
        return Err(Error::precondition(
            Precondition::Disabled,
            format!("key {key_id} is disabled (INACTIVE); enable it first"),
        ));
    }
    Ok(())
}

impl KeyManager {
    /// Changes a key's name, description, labels, status or deletion protection. With
    /// `Want::Any`, a deleted key's description and labels may still change, its status not.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (config keys, state),
    /// HSM failures.
    pub async fn update(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_ref: &str,
        changes: KeyChanges,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let entry = self
            .check_changeable(ctx, Action::Update, key_ref, want, deadline)
            .await?;
        let key_id = entry.id.clone();
        self.change(
            ctx,
            &entry.id,
            Kind::Update,
            deadline,
            Box::new(move |w: &mut Writer, state: &KeyState, _| {
                let lifecycle = changes.status.is_some() || changes.deletion_protection.is_some();
                if want == Want::Visible || lifecycle {
                    not_deleted(&key_id, state, want)?;
                }
                let c = changes.clone();
                if let Some(v) = c.name {
                    w.name(v);
                }
                if let Some(v) = c.description {
                    w.description(v);
                }
                if let Some(v) = &c.labels {
                    w.labels(v);
                }
                for (k, v) in c.put_labels {
                    if state.labels.get(&k) != Some(&v) {
                        w.label(&k, Some(v));
                    }
                }
                for k in c.remove_labels {
                    if state.labels.contains_key(&k) {
                        w.label(&k, None);
                    }
                }
                if let Some(v) = c.status {
                    w.status(v);
                }
                if let Some(v) = c.deletion_protection {
                    w.protection(v);
                }
                Ok(())
            }),
        )
        .await
    }

    /// Deletes a key: gone from signing at once (and from the Yandex fronts' sight), restorable
    /// until its key material is destroyed `window` from now (default: the configured
    /// retention). Refused while deletion protection is on.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (deletion
    /// protection, already deleted, config keys), HSM failures.
    pub async fn delete(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_ref: &str,
        window: Option<Duration>,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let entry = self
            .check_changeable(ctx, Action::Delete, key_ref, want, deadline)
            .await?;
        let window = window.unwrap_or_else(|| self.settings.deletion_retention());
        let key_id = entry.id.clone();
        self.change(
            ctx,
            &entry.id,
            Kind::Delete,
            deadline,
            Box::new(move |w: &mut Writer, state: &KeyState, now: SystemTime| {
                not_deleted(&key_id, state, want)?;
                if state.deletion_protection {
                    return Err(Error::precondition(
                        Precondition::State,
                        format!(
                            "key {key_id} has deletion protection; turn it off first (Update with update_mask \"deletion_protection\")"
                        ),
                    ));
                }
                w.deletion(Some((now, now + window)));
                Ok(())
            }),
        )
        .await
    }

    /// Restores a deleted key before its key material is destroyed; with `enable`, also makes
    /// it ACTIVE (Alibaba's CancelKeyDeletion returns the key to Enabled).
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND (unknown, or past its window),
    /// FAILED_PRECONDITION (not deleted, config keys).
    pub async fn restore(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_ref: &str,
        action: Action,
        enable: bool,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let entry = self
            .check_changeable(ctx, action, key_ref, Want::Any, deadline)
            .await?;
        let key_id = entry.id.clone();
        let hours = self.settings.deletion_retention_hours;
        self.change(
            ctx,
            &entry.id,
            Kind::Undelete,
            deadline,
            Box::new(move |w: &mut Writer, state: &KeyState, now: SystemTime| {
                let Some(deletion) = &state.deletion else {
                    return Err(Error::precondition(
                        Precondition::State,
                        format!("key {key_id} is not deleted"),
                    ));
                };
                if deletion.destroy_at <= now {
                    return Err(Error::not_found(
                        Missing::Key,
                        format!(
                            "asymmetric signature key {key_id} was deleted more than {hours} h ago; it cannot be restored"
                        ),
                    ));
                }
                w.deletion(None);
                if enable && state.status != Status::Active {
                    w.status(Status::Active);
                }
                Ok(())
            }),
        )
        .await
    }

    /// Replaces a key's access bindings. Keys declared in the config take their roles from the
    /// config only.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (config keys), HSM
    /// failures.
    pub async fn set_access_bindings(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        bindings: Vec<Binding>,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let entry = self
            .check_changeable(
                ctx,
                Action::SetAccessBindings,
                key_id,
                Want::Visible,
                deadline,
            )
            .await?;
        let key_id = entry.id.clone();
        let mut wanted: Vec<Binding> = Vec::with_capacity(bindings.len());
        for b in bindings {
            if !wanted.contains(&b) {
                wanted.push(b);
            }
        }
        self.change(
            ctx,
            &entry.id,
            Kind::SetAccessBindings,
            deadline,
            Box::new(move |w: &mut Writer, state: &KeyState, _| {
                not_deleted(&key_id, state, Want::Visible)?;
                for old in state.bindings.iter().filter(|b| !wanted.contains(b)) {
                    w.binding(old, false, 0);
                }
                for (i, b) in wanted.iter().enumerate() {
                    w.binding(b, true, u32::try_from(i).unwrap_or(u32::MAX));
                }
                Ok(())
            }),
        )
        .await
    }

    /// Adds and removes access bindings of a key. Adding a binding that exists and removing one
    /// that does not write nothing for it; each binding is its own register, so concurrent
    /// changes to different bindings all take effect (see `doc.rs`).
    ///
    /// # Errors
    /// As [`KeyManager::set_access_bindings`].
    pub async fn update_access_bindings(
        self: &Arc<Self>,
        ctx: &RequestContext,
        key_id: &str,
        deltas: Vec<BindingDelta>,
        deadline: Option<Instant>,
    ) -> Result<(Arc<KeyEntry>, Operation), Error> {
        let entry = self
            .check_changeable(
                ctx,
                Action::SetAccessBindings,
                key_id,
                Want::Visible,
                deadline,
            )
            .await?;
        let key_id = entry.id.clone();
        self.change(
            ctx,
            &entry.id,
            Kind::UpdateAccessBindings,
            deadline,
            Box::new(move |w: &mut Writer, state: &KeyState, _| {
                not_deleted(&key_id, state, Want::Visible)?;
                let mut present = state.bindings.clone();
                let mut next = u32::try_from(present.len()).unwrap_or(u32::MAX);
                for delta in &deltas {
                    match delta {
                        BindingDelta::Add(b) if !present.contains(b) => {
                            w.binding(b, true, next);
                            next = next.saturating_add(1);
                            present.push(b.clone());
                        }
                        BindingDelta::Remove(b) if present.contains(b) => {
                            w.binding(b, false, 0);
                            present.retain(|x| x != b);
                        }
                        _ => {}
                    }
                }
                Ok(())
            }),
        )
        .await
    }
}
