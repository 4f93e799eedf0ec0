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
    fn ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
