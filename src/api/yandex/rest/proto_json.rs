//! The proto3 JSON forms of request fields (contract §10), as serde `deserialize_with`
//! helpers for the request bodies in [`super::messages`]. What a parser must accept, per the
//! proto3 JSON mapping:
//!
//! * `bytes`: base64 in the standard or the URL-safe alphabet, padded or not;
//! * `int64`: a decimal string or a JSON number;
//! * enums: the value's name or its number;
//! * `google.protobuf.FieldMask`: one string of comma-separated lowerCamelCase paths;
//! * `null` for any field: its default value;
//! * a message is a JSON object, never an array ([`Object`]: serde would otherwise fill a
//!   struct from an array by position).
//!
//! Each error says what was expected; the caller adds the field's JSON path.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;

const INDIFFERENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, INDIFFERENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, INDIFFERENT);

/// A message: `T` read from a JSON object only.
#[derive(Debug, Default)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(d)).map(Object)
    }
}

/// Hands every request of the value's deserializer to the inner one as a map.
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// Any field: `null` or absent means the type's default.
///
/// # Errors
/// Whatever `T` refuses.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Decodes base64 in either alphabet (not both mixed), with or without padding.
///
/// # Errors
/// A message naming the accepted forms and what is wrong.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE
    } else {
        &STANDARD
    };
    engine
        .decode(text)
        .map_err(|e| format!("not base64 (standard or URL-safe alphabet, padding optional): {e}"))
}

/// `bytes`: a base64 string, decoded straight from the JSON text (no copy of it is made).
///
/// # Errors
/// Not a string, or not base64.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Base64;
    impl Visitor<'_> for Base64 {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a base64 string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            decode_base64(v).map_err(E::custom)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<u8>, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(Base64)
}

/// `int64`: a decimal string or a JSON number (integral).
///
/// # Errors
/// Anything else, or a value out of the int64 range.
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Int64;
    impl Visitor<'_> for Int64 {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer, as a decimal string (\"100\") or a number")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of the int64 range")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            // `100.0` and `1e2` are integers in JSON's eyes. ±2^63 are exact as f64; the
            // range check makes the cast lossless.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                #[allow(clippy::cast_possible_truncation)]
                Ok(v as i64)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            v.parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }

        fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
    }
    d.deserialize_any(Int64)
}

/// A generated (prost) enum, read by name or number.
pub trait ProtoEnum: Sized {
    /// The value named `name` (the proto name, e.g. `ACTIVE`), if any.
    fn number_of(name: &str) -> Option<i32>;
    /// Every name, in number order, for the error message.
    fn names() -> Vec<&'static str>;
}

macro_rules! proto_enum {
    ($($t:ty),* $(,)?) => {$(
        impl ProtoEnum for $t {
            fn number_of(name: &str) -> Option<i32> {
                <$t>::from_str_name(name).map(|v| v as i32)
            }
            fn names() -> Vec<&'static str> {
                (0..=i32::from(u8::MAX))
                    .filter_map(|n| <$t>::try_from(n).ok())
                    .map(|v| v.as_str_name())
                    .collect()
            }
        }
    )*};
}

proto_enum!(
    crate::api::yandex::grpc::pb::kms::AsymmetricSignatureAlgorithm,
    crate::api::yandex::grpc::pb::kms::asymmetric_signature_key::Status,
    crate::api::yandex::grpc::pb::yandex::cloud::access::AccessBindingAction,
);

/// An enum field: the value's name, or its number (unknown numbers are kept, as proto3 does;
/// the field's own validation refuses them).
///
/// # Errors
/// An unknown name (every name is listed), or neither a string nor an integer.
pub fn enumeration<'de, E: ProtoEnum, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    struct Enum<E>(PhantomData<E>);
    impl<E: ProtoEnum> Visitor<'_> for Enum<E> {
        type Value = i32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "one of {} (or its number)", E::names().join(", "))
        }

        fn visit_i64<Er: de::Error>(self, v: i64) -> Result<i32, Er> {
            i32::try_from(v).map_err(|_| Er::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_u64<Er: de::Error>(self, v: u64) -> Result<i32, Er> {
            i32::try_from(v).map_err(|_| Er::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_str<Er: de::Error>(self, v: &str) -> Result<i32, Er> {
            E::number_of(v).ok_or_else(|| Er::invalid_value(de::Unexpected::Str(v), &self))
        }

        fn visit_unit<Er: de::Error>(self) -> Result<i32, Er> {
            Ok(0)
        }
    }
    d.deserialize_any(Enum::<E>(PhantomData))
}

/// A `google.protobuf.FieldMask`: `"name,deletionProtection"` → paths `name`,
/// `deletion_protection` (lowerCamelCase to the proto field names).
///
/// # Errors
/// Not a string.
pub fn field_mask<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<prost_types::FieldMask>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let paths = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(snake_case)
        .collect();
    Ok(Some(prost_types::FieldMask { paths }))
}

/// `deletionProtection` → `deletion_protection`.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::yandex::grpc::pb::kms::AsymmetricSignatureAlgorithm;
    use serde_json::json;

    #[test]
    fn base64_in_every_accepted_form() {
        let data = [0xfb, 0xff, 0xbf, 0x01];
        for text in ["+/+/AQ==", "+/+/AQ", "-_-_AQ==", "-_-_AQ"] {
            assert_eq!(decode_base64(text).unwrap(), data, "{text}");
        }
        assert_eq!(decode_base64("").unwrap(), Vec::<u8>::new());
        for bad in ["+_", "a", "a===", "!!!!", "aGVsbG8=\n", "aGVs bG8="] {
            let e = decode_base64(bad).unwrap_err();
            assert!(e.contains("not base64"), "{bad}: {e}");
        }
    }

    #[test]
    fn int64_from_strings_and_numbers() {
        let read = |v: serde_json::Value| int64(v).map_err(|e| e.to_string());
        assert_eq!(read(json!("100")).unwrap(), 100);
        assert_eq!(read(json!(100)).unwrap(), 100);
        assert_eq!(read(json!(-5)).unwrap(), -5);
        assert_eq!(read(json!(1e2)).unwrap(), 100);
        assert_eq!(read(json!(null)).unwrap(), 0);
        assert_eq!(read(json!("9223372036854775807")).unwrap(), i64::MAX);
        for bad in [
            json!("9223372036854775808"),
            json!(u64::MAX),
            json!(1.5),
            json!("ten"),
            json!(true),
            json!([]),
        ] {
            assert!(read(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn enums_by_name_or_number() {
        let read = |v: serde_json::Value| {
            enumeration::<AsymmetricSignatureAlgorithm, _>(v).map_err(|e| e.to_string())
        };
        assert_eq!(read(json!("ECDSA_NIST_P256_SHA_256")).unwrap(), 10);
        assert_eq!(read(json!(10)).unwrap(), 10);
        assert_eq!(read(json!(99)).unwrap(), 99);
        let e = read(json!("P256")).unwrap_err();
        assert!(
            e.contains("RSA_2048_SIGN_PSS_SHA_256") && e.contains("\"P256\""),
            "{e}"
        );
        assert!(read(json!(true)).is_err());
    }

    #[test]
    fn messages_are_objects_only() {
        #[derive(Debug, serde::Deserialize)]
        struct M {
            a: u8,
        }
        let read = |v: serde_json::Value| Object::<M>::deserialize(v).map_err(|e| e.to_string());
        assert_eq!(read(json!({ "a": 1 })).unwrap().0.a, 1);
        assert!(read(json!([1]))
            .unwrap_err()
            .contains("invalid type: sequence"));
        assert!(read(json!(null)).is_err());
        assert!(read(json!("a")).is_err());
    }

    #[test]
    fn field_masks_are_camel_case_lists() {
        let mask = field_mask(json!("name, deletionProtection,labels"))
            .unwrap()
            .unwrap();
        assert_eq!(mask.paths, ["name", "deletion_protection", "labels"]);
        assert!(field_mask(json!(null)).unwrap().is_none());
        assert!(field_mask(json!("")).unwrap().unwrap().paths.is_empty());
        assert!(field_mask(json!(["name"])).is_err());
    }
}
