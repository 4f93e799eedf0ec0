//! Authorisation: the Yandex KMS roles, bound per key (in the key's metadata on the token), per
//! folder or globally (in the config file). Default deny.
//!
//! # Unknown keys, re-scans and the existence oracle
//! A caller without a role on a key gets PERMISSION_DENIED with the same message whether the key
//! exists or not, so keys cannot be enumerated. Nor may the *time* of the answer tell: a key
//! created a moment ago on another replica may be missing here, and looking for it means
//! waiting for a re-scan of the token, so a missing key and a forbidden one must wait alike.
//! The rule, in [`Policy::authorize_key`]:
//!
//! 1. The key is looked up in this replica's registry (memory; deleted keys included, since
//!    their folder and bindings are still known).
//! 2. Found, and the caller's roles on it (global and folder bindings from the config, plus the
//!    key's own bindings) allow the action: go on.
//! 3. Missing, or found but not allowed: a caller that holds a *config* binding (global, or on
//!    any folder) granting the action waits for one re-scan and looks again. The key may have
//!    been created, or a binding granted, a moment ago on another replica. Both cases take this
//!    same route, so their answers take the same time. A caller whose roles could not apply to
//!    a key it does not know (no binding at all, or only per-key bindings on other keys) never
//!    causes token I/O: it is answered from memory in both cases, and sees a key created on
//!    another replica once the refresher has read it (`managed_keys.refresh_interval_ms`).
//! 4. Still missing: NOT_FOUND only for a caller whose roles allow the action globally (it
//!    could see the key wherever it were); anyone else gets the PERMISSION_DENIED answer.
//!
//! Re-scans are single-flight: every lookup that waits shares the next scan, and the refresher
//! starts forced scans at most every 250 ms, each costing one small read unless the token
//! changed (see `keys/refresh.rs`). On top of that each caller may wait for only so many
//! ([`SCAN_BURST`], then one per [`SCAN_REFILL`]); past that budget its lookups are answered
//! from memory, missing and forbidden keys alike, so that a caller probing key ids neither
//! holds requests open nor gets a faster answer for one kind of key than for the other.
//!
//! The price of equal timing: for a caller with a role on some folder, a denial waits as long
//! as a re-scan (up to a few hundred ms) instead of answering at once. Denials are errors,
//! which working clients rarely see, and knowing which key ids exist in other tenants' folders
//! is worth more to an attacker than the wait costs anyone else. Answering misses at once and
//! re-scanning in the background instead would refuse a key created a moment ago on another
//! replica, which clients (and the README's "usable through another replica at once") rely
//! on. Callers without any role see no difference at all.

use super::{Caller, RequestContext};
use crate::config::{AuthConfig, ALL_AUTHENTICATED_USERS, ANY_FOLDER};
use crate::error::Error;
use crate::keys::{KeyEntry, KeyRegistry};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Forced re-scans one caller may start at once.
pub const SCAN_BURST: u32 = 20;
/// Then one more per this interval.
pub const SCAN_REFILL: Duration = Duration::from_millis(200);
/// Callers whose budget is kept before idle ones are forgotten.
const TRACKED_CALLERS: usize = 4096;

/// The KMS roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `kms.asymmetricSignatureKeys.signer`: Sign, SignHash, GetPublicKey.
    Signer,
    /// `kms.asymmetricSignatureKeys.publicKeyViewer`: GetPublicKey.
    PublicKeyViewer,
    /// `kms.viewer`: read keys, their operations and bindings, and public keys.
    Viewer,
    /// `kms.editor`: viewer, plus create, change, delete and sign.
    Editor,
    /// `kms.admin`: everything, including access bindings and restoring deleted keys.
    Admin,
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Sign or SignHash.
    Sign,
    /// GetPublicKey.
    GetPublicKey,
    /// Verify a signature against a key's public key (Alibaba's AsymmetricVerify and Verify).
    Verify,
    /// AsymmetricSignatureKeyService.Get.
    Get,
    /// AsymmetricSignatureKeyService.List.
    List,
    /// ListOperations.
    ListOperations,
    /// ListAccessBindings.
    ListAccessBindings,
    /// OperationService.Get and Cancel.
    GetOperation,
    /// Create.
    Create,
    /// Update.
    Update,
    /// Delete.
    Delete,
    /// SetAccessBindings and UpdateAccessBindings.
    SetAccessBindings,
    /// p11kms's Undelete.
    Undelete,
}

impl Action {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Sign => "Sign",
            Action::GetPublicKey => "GetPublicKey",
            Action::Verify => "Verify",
            Action::Get => "Get",
            Action::List => "List",
            Action::ListOperations => "ListOperations",
            Action::ListAccessBindings => "ListAccessBindings",
            Action::GetOperation => "OperationService.Get",
            Action::Create => "Create",
            Action::Update => "Update",
            Action::Delete => "Delete",
            Action::SetAccessBindings => "SetAccessBindings",
            Action::Undelete => "Undelete",
        }
    }
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Signer,
        Role::PublicKeyViewer,
        Role::Viewer,
        Role::Editor,
        Role::Admin,
    ];

    /// The role id, as in bindings.
    pub fn id(self) -> &'static str {
        match self {
            Role::Signer => "kms.asymmetricSignatureKeys.signer",
            Role::PublicKeyViewer => "kms.asymmetricSignatureKeys.publicKeyViewer",
            Role::Viewer => "kms.viewer",
            Role::Editor => "kms.editor",
            Role::Admin => "kms.admin",
        }
    }

    /// The role with this id.
    pub fn parse(id: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.id() == id)
    }

    /// Whether the role allows `action`.
    pub fn allows(self, action: Action) -> bool {
        use Action as A;
        let viewer = |a| {
            matches!(
                a,
                A::Get
                    | A::List
                    | A::ListOperations
                    | A::ListAccessBindings
                    | A::GetPublicKey
                    | A::Verify
                    | A::GetOperation
            )
        };
        match self {
            Role::Signer => matches!(action, A::Sign | A::GetPublicKey | A::Verify),
            Role::PublicKeyViewer => matches!(action, A::GetPublicKey | A::Verify),
            Role::Viewer => viewer(action),
            Role::Editor => {
                viewer(action) || matches!(action, A::Create | A::Update | A::Delete | A::Sign)
            }
            Role::Admin => true,
        }
    }
}

/// Whether a binding's subject names `caller`.
fn subject_matches(subject_id: &str, subject_type: &str, caller: &Caller) -> bool {
    (subject_type == "system" && subject_id == ALL_AUTHENTICATED_USERS)
        || (subject_type == caller.subject_type && subject_id == caller.subject_id)
}

#[derive(Clone, Debug)]
struct ConfigBinding {
    role: Role,
    subject_id: String,
    subject_type: String,
    /// `None`: every folder.
    folder: Option<String>,
}

/// The role bindings of the config file, and the decisions that combine them with a key's own.
#[derive(Debug, Default)]
pub struct Policy {
    bindings: Vec<ConfigBinding>,
    scans: ScanBudget,
}

/// How many re-scans each caller may force (see the module docs).
#[derive(Debug)]
struct ScanBudget(DefaultKeyedRateLimiter<String>);

impl Default for ScanBudget {
    fn default() -> Self {
        let quota = Quota::with_period(SCAN_REFILL)
            .expect("a positive period")
            .allow_burst(NonZeroU32::new(SCAN_BURST).expect("a positive burst"));
        Self(governor::RateLimiter::keyed(quota))
    }
}

impl ScanBudget {
    /// Whether `caller` may force one more re-scan now (and counts it).
    fn take(&self, caller: &Caller) -> bool {
        if self.0.len() > TRACKED_CALLERS {
            self.0.retain_recent();
        }
        self.0
            .check_key(&format!("{}:{}", caller.subject_type, caller.subject_id))
            .is_ok()
    }
}

/// The one PERMISSION_DENIED answer for a key: the same, word for word, whether or not the key
/// exists (it does not even repeat the key id, so two answers can be compared as they are).
pub fn denied(action: Action) -> Error {
    Error::PermissionDenied(format!(
        "permission denied: {} on this asymmetric signature key needs a role the caller does \
         not have, or the key does not exist",
        action.name()
    ))
}

/// PERMISSION_DENIED for a folder-level action.
pub fn denied_in_folder(action: Action, folder_id: &str) -> Error {
    Error::PermissionDenied(format!(
        "permission denied: {} in folder {folder_id} needs a role the caller does not have \
         there (kms.editor or kms.admin)",
        action.name()
    ))
}

fn not_found(key_id: &str) -> Error {
    Error::not_found(
        crate::error::Missing::Key,
        format!("asymmetric signature key {key_id} not found"),
    )
}

/// Which entries a key-level action may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Visible keys only (not deleted, not being created); everything but Undelete.
    Visible,
    /// Deleted keys too (Undelete).
    Any,
}

impl Policy {
    /// The bindings of `[auth]` (their subjects and folders validated at load).
    ///
    /// # Errors
    /// A binding whose role is not one of the KMS roles, named.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, String> {
        let mut bindings = Vec::with_capacity(auth.bindings.len());
        for (i, b) in auth.bindings.iter().enumerate() {
            let Some(role) = Role::parse(&b.role) else {
                return Err(format!(
                    "auth.bindings[{i}] (role {:?}, subject_id {:?}): role is not one of {}",
                    b.role,
                    b.subject_id,
                    Role::ALL
                        .iter()
                        .map(|r| r.id())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            bindings.push(ConfigBinding {
                role,
                subject_id: b.subject_id.clone(),
                subject_type: b.subject_type.clone(),
                folder: (b.folder_id != ANY_FOLDER).then(|| b.folder_id.clone()),
            });
        }
        Ok(Self {
            bindings,
            scans: ScanBudget::default(),
        })
    }

    fn config_grants<'a>(
        &'a self,
        caller: &'a Caller,
        action: Action,
    ) -> impl Iterator<Item = &'a ConfigBinding> + 'a {
        self.bindings.iter().filter(move |b| {
            b.role.allows(action) && subject_matches(&b.subject_id, &b.subject_type, caller)
        })
    }

    /// Whether a config binding on every folder allows `action`.
    pub fn allowed_globally(&self, caller: &Caller, action: Action) -> bool {
        self.config_grants(caller, action)
            .any(|b| b.folder.is_none())
    }

    /// Whether a config binding (global or on `folder_id`) allows `action` in that folder.
    pub fn allowed_in_folder(&self, caller: &Caller, action: Action, folder_id: &str) -> bool {
        self.config_grants(caller, action)
            .any(|b| b.folder.as_deref().is_none_or(|f| f == folder_id))
    }

    /// Whether any config binding, on any folder, allows `action`: the caller has a reason to
    /// look for keys this replica does not know yet.
    pub fn allowed_somewhere(&self, caller: &Caller, action: Action) -> bool {
        self.config_grants(caller, action).next().is_some()
    }

    /// Whether the caller may do `action` on `key`: config bindings on its folder or every
    /// folder, or the key's own bindings (keys created through the API only).
    pub fn allowed_on_key(&self, caller: &Caller, action: Action, key: &KeyEntry) -> bool {
        self.allowed_in_folder(caller, action, &key.folder_id)
            || self.allowed_by_key_bindings(caller, action, key)
    }

    /// Whether the key's own bindings allow `action`.
    pub fn allowed_by_key_bindings(&self, caller: &Caller, action: Action, key: &KeyEntry) -> bool {
        key.bindings.iter().any(|b| {
            subject_matches(&b.subject_id, &b.subject_type, caller)
                && Role::parse(&b.role_id).is_some_and(|role| role.allows(action))
        })
    }

    /// Waits for one re-scan of the token on behalf of `caller` (a lookup that missed or was
    /// refused), until `deadline` at most, while the caller's budget of forced re-scans lasts;
    /// past it, returns at once. Callers decide who may cause re-scans (see the module docs).
    pub async fn rescan_for(
        &self,
        registry: &KeyRegistry,
        caller: &Caller,
        deadline: Option<Instant>,
    ) {
        if self.scans.take(caller) {
            registry.rescan_once(deadline).await;
        }
    }

    /// The key `key_id` if the context's caller may do `action` on it; see the module docs for
    /// unknown keys, re-scans and which answer a caller gets.
    ///
    /// # Errors
    /// UNAUTHENTICATED (anonymous), PERMISSION_DENIED, NOT_FOUND.
    pub async fn authorize_key(
        &self,
        registry: &KeyRegistry,
        ctx: &RequestContext,
        action: Action,
        key_id: &str,
        want: Want,
        deadline: Option<Instant>,
    ) -> Result<Arc<KeyEntry>, Error> {
        let caller = ctx.caller()?;
        let mut scanned = false;
        let mut entry = registry.get_any(key_id);
        // Missing and forbidden take one route (see the module docs): both wait for a re-scan.
        let allowed = entry
            .as_deref()
            .is_some_and(|e| self.allowed_on_key(caller, action, e));
        if !allowed && self.allowed_somewhere(caller, action) {
            self.rescan_for(registry, caller, deadline).await;
            scanned = true;
            entry = registry.get_any(key_id);
        }
        let Some(mut entry) = entry else {
            return Err(if self.allowed_globally(caller, action) {
                not_found(key_id)
            } else {
                denied(action)
            });
        };
        if !self.allowed_on_key(caller, action, &entry) {
            return Err(denied(action));
        }
        ctx.note(|a| {
            a.folder_id = Some(entry.folder_id.clone());
            a.algorithm = Some(entry.algorithm.name());
        });
        if want == Want::Visible && !entry.is_visible() {
            // Deleted or being created here; another replica may have restored or finished
            // it. The caller has a role on this key, so it may cause a scan and learn the
            // answer.
            if !scanned {
                self.rescan_for(registry, caller, deadline).await;
                match registry.get_any(key_id) {
                    Some(fresh) if self.allowed_on_key(caller, action, &fresh) => entry = fresh,
                    Some(_) => return Err(denied(action)),
                    None => return Err(not_found(key_id)),
                }
            }
            if !entry.is_visible() {
                return Err(not_found(key_id));
            }
        }
        Ok(entry)
    }

    /// Checks that the context's caller may do a folder-level `action` (Create) in `folder_id`.
    ///
    /// # Errors
    /// UNAUTHENTICATED, PERMISSION_DENIED.
    pub fn authorize_folder(
        &self,
        ctx: &RequestContext,
        action: Action,
        folder_id: &str,
    ) -> Result<(), Error> {
        let caller = ctx.caller()?;
        if self.allowed_in_folder(caller, action, folder_id) {
            Ok(())
        } else {
            Err(denied_in_folder(action, folder_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn caller(id: &str) -> Caller {
        Caller {
            subject_id: id.into(),
            subject_type: "serviceAccount".into(),
            method: AuthMethod::Token,
        }
    }

    #[test]
    fn roles_allow_what_the_yandex_docs_say() {
        use Action::*;
        let all = [
            Sign,
            GetPublicKey,
            Get,
            List,
            ListOperations,
            ListAccessBindings,
            GetOperation,
            Create,
            Update,
            Delete,
            SetAccessBindings,
            Undelete,
        ];
        let allowed = |r: Role| all.into_iter().filter(|a| r.allows(*a)).collect::<Vec<_>>();
        assert_eq!(allowed(Role::Signer), [Sign, GetPublicKey]);
        assert_eq!(allowed(Role::PublicKeyViewer), [GetPublicKey]);
        assert_eq!(
            allowed(Role::Viewer),
            [
                GetPublicKey,
                Get,
                List,
                ListOperations,
                ListAccessBindings,
                GetOperation
            ]
        );
        assert_eq!(
            allowed(Role::Editor),
            [
                Sign,
                GetPublicKey,
                Get,
                List,
                ListOperations,
                ListAccessBindings,
                GetOperation,
                Create,
                Update,
                Delete
            ]
        );
        assert_eq!(allowed(Role::Admin), all);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.id()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn each_caller_forces_only_so_many_rescans() {
        let budget = ScanBudget::default();
        let (a, b) = (caller("a"), caller("b"));
        let allowed = (0..SCAN_BURST * 3).filter(|_| budget.take(&a)).count();
        // A refill may land while the loop runs; the burst is the bound that matters.
        assert!(
            (SCAN_BURST as usize..=SCAN_BURST as usize + 1).contains(&allowed),
            "{allowed}"
        );
        assert!(budget.take(&b), "another caller's budget is its own");
    }

    #[test]
    fn config_bindings_apply_to_their_folder_or_everywhere() {
        let auth: AuthConfig = toml::from_str(
            r#"
            [[bindings]]
            role = "kms.asymmetricSignatureKeys.signer"
            subject_id = "a"
            subject_type = "serviceAccount"
            folder_id = "f1"
            [[bindings]]
            role = "kms.viewer"
            subject_id = "b"
            subject_type = "serviceAccount"
            folder_id = "*"
            [[bindings]]
            role = "kms.asymmetricSignatureKeys.publicKeyViewer"
            subject_id = "allAuthenticatedUsers"
            subject_type = "system"
            folder_id = "pub"
            "#,
        )
        .unwrap();
        let p = Policy::from_config(&auth).unwrap();
        let (a, b, c) = (caller("a"), caller("b"), caller("c"));
        assert!(p.allowed_in_folder(&a, Action::Sign, "f1"));
        assert!(!p.allowed_in_folder(&a, Action::Sign, "f2"));
        assert!(!p.allowed_globally(&a, Action::Sign));
        assert!(p.allowed_somewhere(&a, Action::Sign));
        assert!(!p.allowed_somewhere(&a, Action::Get));
        assert!(p.allowed_globally(&b, Action::Get));
        assert!(!p.allowed_somewhere(&b, Action::Sign));
        assert!(p.allowed_in_folder(&c, Action::GetPublicKey, "pub"));
        assert!(!p.allowed_in_folder(&c, Action::Sign, "pub"));
        // The type is part of the subject.
        let mut a_user = caller("a");
        a_user.subject_type = "userAccount".into();
        assert!(!p.allowed_in_folder(&a_user, Action::Sign, "f1"));
    }
}
