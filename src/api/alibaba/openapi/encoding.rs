//! The two encodings every OpenAPI signer relies on: form-decoding what arrived (`+` is a
//! space, `%XX` a byte, UTF-8), and re-encoding it the RFC 3986 way (only `A-Z a-z 0-9 - _ .
//! ~` literal, everything else `%XX` in upper-case hex). Python sends a space as `+` and `*` as
//! `%2A`, Node sends `%20` and a literal `*`; decoding first and re-encoding makes both the
//! same canonical text, which is what both SDKs signed.
//!
//! Decoding is strict: a `%` not followed by two hex digits, or bytes that are not UTF-8, are
//! refused rather than guessed at, so what we verify is exactly what the handlers read.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::fmt;

/// Everything but the RFC 3986 unreserved characters is escaped.
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s`, RFC 3986-encoded (as the signers' `enc`), for use in a `format!`.
pub fn enc(s: &str) -> impl fmt::Display + '_ {
    percent_encoding::utf8_percent_encode(s, RESERVED)
}

/// Why a form-encoded string could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `%` without two hex digits after it.
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("the decoded text is not UTF-8")]
    NotUtf8,
    /// `=value` with no name.
    #[error("a parameter has no name")]
    NoName,
}

/// Form-decodes one name or value.
///
/// # Errors
/// A bad `%` escape, or bytes that are not UTF-8.
pub fn form_decode(raw: &str) -> Result<String, DecodeError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(DecodeError::BadEscape)?;
                let mut byte = [0u8; 1];
                hex::decode_to_slice(hex, &mut byte).map_err(|_| DecodeError::BadEscape)?;
                out.push(byte[0]);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

/// The `name=value` pairs of a query string or form body, decoded, in the order sent. Empty
/// segments (`a=1&&b=2`, a trailing `&`) are skipped; `name` alone is `name=`.
///
/// # Errors
/// A pair that cannot be decoded, or has no name.
pub fn form_pairs(raw: &str) -> Result<Vec<(String, String)>, DecodeError> {
    raw.split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
            if name.is_empty() {
                return Err(DecodeError::NoName);
            }
            Ok((form_decode(name)?, form_decode(value)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_and_node_spellings_decode_to_the_same_text_and_encode_canonically() {
        // CreateKey's Description as each SDK sent it (contract §6.1, §6.3).
        let python = form_decode("a+b%2Bc%2Fd%2Ae~f").unwrap();
        let node = form_decode("a%20b%2Bc%2Fd*e~f").unwrap();
        assert_eq!(python, "a b+c/d*e~f");
        assert_eq!(node, python);
        assert_eq!(enc(&python).to_string(), "a%20b%2Bc%2Fd%2Ae~f");
        assert_eq!(
            enc("uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=").to_string(),
            "uU0nuZNNPgilLlLX2n2r%2BsSE7%2BN6U4DukIj3rOLvzek%3D"
        );
        assert_eq!(enc("-_.~AZaz09").to_string(), "-_.~AZaz09");
        assert_eq!(enc("é:").to_string(), "%C3%A9%3A", "UTF-8, upper-case hex");
        assert_eq!(
            form_decode("%c3%A9").unwrap(),
            "é",
            "either hex case decodes"
        );
    }

    #[test]
    fn malformed_input_is_refused_not_guessed() {
        assert_eq!(form_decode("50%"), Err(DecodeError::BadEscape));
        assert_eq!(form_decode("%4"), Err(DecodeError::BadEscape));
        assert_eq!(form_decode("%zz"), Err(DecodeError::BadEscape));
        assert_eq!(form_decode("%FF"), Err(DecodeError::NotUtf8));
        assert_eq!(form_pairs("=x"), Err(DecodeError::NoName));
    }

    #[test]
    fn pairs_keep_order_empties_and_bare_names() {
        let pairs = form_pairs("b=2&&a&c=&d=x%3Dy&").unwrap();
        let expected = [("b", "2"), ("a", ""), ("c", ""), ("d", "x=y")];
        assert_eq!(pairs, expected.map(|(n, v)| (n.to_string(), v.to_string())));
        assert!(form_pairs("").unwrap().is_empty());
    }
}
