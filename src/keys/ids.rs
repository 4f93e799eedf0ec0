//! Ids of keys and operations: 20 lower-case alphanumerics starting with a letter, like Yandex
//! resource ids. With 26·36¹⁹ (≈ 2¹⁰³) values, random ids do not collide in practice; new key
//! ids are still checked against the registry and the token before use.

use rand::Rng as _;

/// Length of generated ids.
pub const ID_LEN: usize = 20;

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const ALPHANUMERICS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh random id.
pub fn generate() -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(ID_LEN);
    id.push(char::from(LETTERS[rng.random_range(0..LETTERS.len())]));
    for _ in 1..ID_LEN {
        id.push(char::from(
            ALPHANUMERICS[rng.random_range(0..ALPHANUMERICS.len())],
        ));
    }
    id
}

/// Whether `id` has the shape of a generated id.
pub fn is_generated_shape(id: &str) -> bool {
    id.len() == ID_LEN
        && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A fresh random key version id: a GUID (RFC 4122 version 4), the shape Alibaba's
/// `KeyVersionId` has.
pub fn generate_version_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    guid(&b)
}

/// The id of a key's first version: derived from the key id, so that every replica (and keys
/// declared in the config, and keys created before versions existed) agree on it without
/// storing it. A name-based GUID (RFC 4122 version 5 layout over SHA-256, truncated).
pub fn first_version_id(key_id: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(format!("p11kms first version of {key_id}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    guid(&b)
}

fn guid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether `id` has the shape of a version id (a lower-case GUID).
pub fn is_version_id_shape(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_yandex_shape() {
        for _ in 0..1000 {
            let id = generate();
            assert!(is_generated_shape(&id), "{id}");
        }
        assert!(!is_generated_shape("0bcdefghijklmnopqrst"));
        assert!(!is_generated_shape("Abcdefghijklmnopqrst"));
        assert!(!is_generated_shape("abc"));
    }

    #[test]
    fn version_ids_are_guids() {
        let v = generate_version_id();
        assert!(is_version_id_shape(&v), "{v}");
        assert_eq!(&v[14..15], "4");
        let first = first_version_id("k");
        assert!(is_version_id_shape(&first), "{first}");
        assert_eq!(first, first_version_id("k"));
        assert_ne!(first, first_version_id("k2"));
        assert!(!is_version_id_shape("7D6A3B2F-1C4E-4B7A-9F0E-0123456789AB"));
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
