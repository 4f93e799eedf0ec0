//! Aliases: `alias/<name>`, each pointing at one key, unique, shared by every replica through the
//! token.
//!
//! An alias is stored like a key (see [`super::doc`]): every change is an immutable object
//! labelled `p11kms/alias/<alias name>` holding an [`AliasDoc`] with one register, its target
//! (a key id, or `None` once deleted). Writes that did not see each other (two replicas creating
//! or repointing one alias at the same moment) resolve to the later write (Lamport clock, then
//! replica id), the same on every replica; the other caller was told OK, and its write is kept
//! on the token but does not take effect.

use super::crdt::{Register, Stamp};
use super::doc::SCHEMA;
use serde::{Deserialize, Serialize};

/// Every alias name starts with this.
pub const PREFIX: &str = "alias/";
/// Longest alias name, the prefix included.
pub const MAX_LEN: usize = 255;
/// Alias names Alibaba reserves for its own aliases.
pub const RESERVED_PREFIX: &str = "alias/acs";

/// An alias as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasEntry {
    /// `alias/<name>`.
    pub name: String,
    /// The key it points at.
    pub key_id: String,
}

/// The stored state of one alias, or one change to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasDoc {
    /// Document version.
    pub schema: u32,
    /// The alias name.
    pub alias: String,
    /// The key it points at; `None` once deleted.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub target: Register<Option<String>>,
}

impl AliasDoc {
    /// Parses a stored document.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a p11kms alias document: {e}"))
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an alias document always serialises")
    }

    /// Merges another document of the same alias.
    pub fn merge(&mut self, other: &AliasDoc) {
        self.schema = self.schema.max(other.schema);
        self.target.merge(&other.target);
    }

    /// Whether this build may write the document.
    pub fn schema_writable(&self) -> bool {
        self.schema <= SCHEMA
    }

    /// The key it points at now.
    pub fn target(&self) -> Option<&str> {
        self.target.latest().and_then(|t| t.as_deref())
    }

    /// A change pointing the alias (as `current` holds it) at `key_id`, or deleting it.
    pub fn write(current: &mut AliasDoc, key_id: Option<String>, replica: &str) -> AliasDoc {
        let clock = current.target.top().map_or(0, Stamp::clock) + 1;
        let stamp = Stamp(
            clock,
            replica.to_string(),
            hex::encode(rand::random::<[u8; 8]>()),
        );
        AliasDoc {
            schema: SCHEMA,
            alias: current.alias.clone(),
            target: current.target.write(key_id, stamp),
        }
    }
}

/// Checks an alias name: `alias/` and 1 to 250 further characters (255 in all) of letters,
/// digits, `_`, `-` and `/`, not starting with `alias/acs` (reserved by Alibaba).
///
/// # Errors
/// What is wrong, for the client.
pub fn check_name(name: &str) -> Result<(), String> {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return Err(format!("an alias name must start with {PREFIX:?}"));
    };
    if rest.is_empty() || name.chars().count() > MAX_LEN {
        return Err(format!(
            "an alias name is {PREFIX:?} followed by 1 to {} characters",
            MAX_LEN - PREFIX.len()
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "alias names starting with {RESERVED_PREFIX:?} are reserved"
        ));
    }
    if let Some(c) = rest
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/')))
    {
        return Err(format!(
            "an alias name may contain letters, digits, '_', '-' and '/', not {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("alias/my-key_1/prod").is_ok());
        assert!(check_name("my-key").is_err());
        assert!(check_name("alias/").is_err());
        assert!(check_name("alias/acs-default").is_err());
        assert!(check_name("alias/a b").is_err());
        assert!(check_name(&format!("alias/{}", "a".repeat(249))).is_ok());
        assert!(check_name(&format!("alias/{}", "a".repeat(250))).is_err());
    }

    #[test]
    fn concurrent_writes_resolve_the_same_everywhere() {
        let mut base = AliasDoc {
            schema: SCHEMA,
            alias: "alias/x".into(),
            ..AliasDoc::default()
        };
        let first = AliasDoc::write(&mut base, Some("k1".into()), "r0");
        let (mut a, mut b) = (base.clone(), base.clone());
        let wa = AliasDoc::write(&mut a, Some("k2".into()), "ra");
        let wb = AliasDoc::write(&mut b, None, "rb");
        let mut one = first.clone();
        one.merge(&wa);
        one.merge(&wb);
        let mut two = wb.clone();
        two.merge(&first);
        two.merge(&wa);
        assert_eq!(one, two);
        assert_eq!(one.target(), None, "rb > ra at the same clock");
        let parsed = AliasDoc::parse(&one.to_json()).unwrap();
        assert_eq!(parsed, one);
    }
}
