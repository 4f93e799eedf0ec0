//! Field checks shared by every transport. They run before any lookup or HSM call, and each
//! message names the field, the limit and what to send instead.

use crate::config::MAX_KEY_ID_LEN;
use crate::error::Error;

/// Largest `message` Sign accepts, in bytes.
pub const MAX_MESSAGE_LEN: usize = 32 * 1024;
/// Largest `hash` SignHash accepts, in bytes (the exact digest length is checked later).
pub const MAX_HASH_LEN: usize = 4096;

/// `key_id`: required, at most 50 characters.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn key_id(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{field} is required: set it to the id of an asymmetric signature key"
        )));
    }
    let len = value.chars().count();
    if len > MAX_KEY_ID_LEN {
        return Err(Error::InvalidArgument(format!(
            "{field} is {len} characters long; the limit is {MAX_KEY_ID_LEN}"
        )));
    }
    printable_id(field, value)
}

/// An id (of a key, folder or operation) has no control characters: no real id has one, and
/// refused here none can reach a log line or an error message.
///
/// # Errors
/// INVALID_ARGUMENT naming the field and the character.
pub fn printable_id(field: &str, value: &str) -> Result<(), Error> {
    match value.chars().enumerate().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(Error::InvalidArgument(format!(
            "{field} has a control character (U+{:04X}) at character {}; ids are printable text",
            u32::from(c),
            at + 1
        ))),
        None => Ok(()),
    }
}

/// `message`: required, at most 32768 bytes.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn message(value: &[u8]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(
            "message is required: send 1 to 32768 bytes to sign".into(),
        ));
    }
    if value.len() > MAX_MESSAGE_LEN {
        return Err(Error::InvalidArgument(format!(
            "message is {} bytes; the limit is {MAX_MESSAGE_LEN}. For larger data, hash it with the key's hash algorithm and call SignHash",
            value.len()
        )));
    }
    Ok(())
}

/// `hash`: required, at most 4096 bytes.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn hash(value: &[u8]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(
            "hash is required: send the binary digest of the data, as long as the key's hash output".into(),
        ));
    }
    if value.len() > MAX_HASH_LEN {
        return Err(Error::InvalidArgument(format!(
            "hash is {} bytes; the limit is {MAX_HASH_LEN}, and it must be exactly the key's digest length",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_limits_count_characters() {
        assert!(key_id("key_id", "").is_err());
        assert!(key_id("key_id", &"k".repeat(50)).is_ok());
        assert!(key_id("key_id", &"k".repeat(51)).is_err());
        // 50 two-byte characters are 100 bytes but still 50 characters.
        assert!(key_id("key_id", &"я".repeat(50)).is_ok());
    }

    #[test]
    fn key_ids_with_control_characters_are_refused() {
        for bad in ["a\nb", "\r", "k\u{1b}[31m", "tab\there", "nul\0"] {
            let e = key_id("key_id", bad).unwrap_err().to_string();
            assert!(e.contains("control character"), "{bad:?}: {e}");
        }
        assert!(key_id("key_id", "printable key-id_1.2 ÿ").is_ok());
    }

    #[test]
    fn message_and_hash_limits() {
        assert!(message(&[]).is_err());
        assert!(message(&vec![0; 32768]).is_ok());
        assert!(message(&vec![0; 32769]).is_err());
        assert!(hash(&[]).is_err());
        assert!(hash(&vec![0; 4096]).is_ok());
        assert!(hash(&vec![0; 4097]).is_err());
    }
}
