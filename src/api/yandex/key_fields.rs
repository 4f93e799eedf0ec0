//! Field checks of the key service, shared by every transport. Like [`super::validate`], they
//! run before any lookup or HSM call, and each message names the field and the rule, exactly as
//! the contract states them (lengths count characters).

use crate::crypto::Algorithm;
use crate::error::Error;
use crate::keys::Status;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};

/// `folder_id`: required, at most this many characters.
pub const MAX_FOLDER_ID_LEN: usize = 50;
/// `name`: at most this many characters.
pub const MAX_NAME_LEN: usize = 100;
/// `description`: at most this many characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// `labels`: at most this many entries.
pub const MAX_LABELS: usize = 64;
/// A label key or value: at most this many characters.
pub const MAX_LABEL_LEN: usize = 63;
/// `page_size`: at most this.
pub const MAX_PAGE_SIZE: i64 = 1000;
/// `page_size` 0 means this.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// List's `page_token`: at most this many characters.
pub const MAX_LIST_TOKEN_LEN: usize = 256;
/// ListOperations' and ListAccessBindings' `page_token`: at most this many characters.
pub const MAX_SHORT_TOKEN_LEN: usize = 100;
/// `resource_id` of the access-binding methods: at most this many characters.
pub const MAX_RESOURCE_ID_LEN: usize = 64;
/// `operation_id`: at most this many characters (ours have 20).
pub const MAX_OPERATION_ID_LEN: usize = 50;

const TOKENS: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn too_long(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let len = value.chars().count();
    if len > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {len} characters long; the limit is {max}"
        )));
    }
    Ok(())
}

/// A required string of at most `max` characters.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn required(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    too_long(field, value, max)?;
    super::validate::printable_id(field, value)
}

/// `folder_id`: required, at most 50 characters.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn folder_id(value: &str) -> Result<(), Error> {
    required("folder_id", value, MAX_FOLDER_ID_LEN)
}

/// `name`: at most 100 characters.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn name(value: &str) -> Result<(), Error> {
    too_long("name", value, MAX_NAME_LEN)
}

/// `description`: at most 1024 characters.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn description(value: &str) -> Result<(), Error> {
    too_long("description", value, MAX_DESCRIPTION_LEN)
}

fn label_key_ok(k: &str) -> bool {
    let mut bytes = k.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase()) && label_value_ok(&k[1..])
}

fn label_value_ok(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `labels`: at most 64 entries; keys of 1 to 63 characters matching `[a-z][-_0-9a-z]*`,
/// values of at most 63 matching `[-_0-9a-z]*`. Returns them ordered.
///
/// # Errors
/// INVALID_ARGUMENT naming the field and the offending entry.
pub fn labels(value: &HashMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    if value.len() > MAX_LABELS {
        return Err(Error::InvalidArgument(format!(
            "labels has {} entries; the limit is {MAX_LABELS}",
            value.len()
        )));
    }
    let sorted: BTreeMap<String, String> =
        value.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in &sorted {
        let klen = k.chars().count();
        if klen > MAX_LABEL_LEN {
            return Err(Error::InvalidArgument(format!(
                "labels: key {k:?} is {klen} characters long; the limit is {MAX_LABEL_LEN}"
            )));
        }
        if !label_key_ok(k) {
            return Err(Error::InvalidArgument(format!(
                "labels: key {k:?} must match [a-z][-_0-9a-z]* (a lower-case letter, then lower-case letters, digits, - or _)"
            )));
        }
        let vlen = v.chars().count();
        if vlen > MAX_LABEL_LEN {
            return Err(Error::InvalidArgument(format!(
                "labels: the value of {k:?} is {vlen} characters long; the limit is {MAX_LABEL_LEN}"
            )));
        }
        if !label_value_ok(v) {
            return Err(Error::InvalidArgument(format!(
                "labels: the value of {k:?} must match [-_0-9a-z]* (lower-case letters, digits, - or _)"
            )));
        }
    }
    Ok(sorted)
}

/// `signature_algorithm`: one of the 13 algorithms.
///
/// # Errors
/// INVALID_ARGUMENT naming the field and listing the choices.
pub fn signature_algorithm(value: i32) -> Result<Algorithm, Error> {
    Algorithm::from_proto(value).ok_or_else(|| {
        let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        Error::InvalidArgument(format!(
            "signature_algorithm {value} is not supported; set one of {}",
            names.join(", ")
        ))
    })
}

/// A status an update may set: ACTIVE or INACTIVE.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn settable_status(value: i32) -> Result<Status, Error> {
    match value {
        2 => Ok(Status::Active),
        3 => Ok(Status::Inactive),
        _ => Err(Error::InvalidArgument(format!(
            "status {value} cannot be set; set ACTIVE (2) or INACTIVE (3)"
        ))),
    }
}

/// `page_size`: 0 to 1000, 0 meaning 100.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn page_size(value: i64) -> Result<usize, Error> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(usize::try_from(value).expect("at most 1000")),
        _ => Err(Error::InvalidArgument(format!(
            "page_size is {value}; it must be from 0 (meaning {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}"
        ))),
    }
}

/// The opaque page token that continues after the item with id `last`.
pub fn page_token(last: &str) -> String {
    TOKENS.encode(last)
}

/// Decodes a page token of at most `max` characters into the id it continues after; `None`
/// for an empty token (the first page).
///
/// # Errors
/// INVALID_ARGUMENT naming the field when the token is too long or was not made by us.
pub fn parse_page_token(value: &str, max: usize) -> Result<Option<String>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    too_long("page_token", value, max)?;
    TOKENS
        .decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|id| !id.is_empty() && id.chars().count() <= MAX_FOLDER_ID_LEN)
        .map(Some)
        .ok_or_else(|| {
            Error::InvalidArgument(
                "page_token is not a token this service returned; send next_page_token from the previous response, or nothing for the first page".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(k: &str, v: &str) -> HashMap<String, String> {
        HashMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn label_rules_at_their_boundaries() {
        assert!(labels(&one("a", "")).is_ok());
        assert!(labels(&one(&"a".repeat(63), &"0".repeat(63))).is_ok());
        assert!(labels(&one(&"a".repeat(64), "")).is_err());
        assert!(labels(&one("a", &"0".repeat(64))).is_err());
        assert!(labels(&one("", "x")).is_err());
        assert!(labels(&one("0a", "x")).is_err());
        assert!(labels(&one("-a", "x")).is_err());
        assert!(labels(&one("aB", "x")).is_err());
        assert!(labels(&one("a", "X")).is_err());
        assert!(labels(&one("a-_9", "-_9z")).is_ok());
        let many: HashMap<_, _> = (0..64).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels(&many).is_ok());
        let too_many: HashMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels(&too_many).is_err());
    }

    #[test]
    fn page_sizes_and_tokens() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
        let t = page_token("abc");
        assert_eq!(parse_page_token(&t, 256).unwrap().as_deref(), Some("abc"));
        assert_eq!(parse_page_token("", 256).unwrap(), None);
        assert!(parse_page_token("!!!", 256).is_err());
        assert!(parse_page_token(&"A".repeat(257), 256).is_err());
    }

    #[test]
    fn lengths_count_characters() {
        assert!(name(&"я".repeat(100)).is_ok());
        assert!(name(&"я".repeat(101)).is_err());
        assert!(description(&"x".repeat(1024)).is_ok());
        assert!(description(&"x".repeat(1025)).is_err());
        assert!(folder_id("").is_err());
        assert!(folder_id(&"f".repeat(50)).is_ok());
        assert!(folder_id(&"f".repeat(51)).is_err());
    }
}
