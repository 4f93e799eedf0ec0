//! The parameters of one request (query and form body merged, each name once) and the typed
//! getters the action handlers read them with. Every getter names the parameter in its
//! error: `MissingParameter` when it is absent (or empty, which no SDK sends for a value it
//! has), `InvalidParameter` with what is wrong and what is accepted otherwise.
//!
//! On the wire everything is a string (contract §1.1): Python stringifies booleans as
//! `True`/`False`, Node, Go and Java as `true`/`false`; integers are decimal; binary values
//! are standard base64; `Tags`, `TagKeys` and `Filters` are JSON arrays in a string.

use super::error::OpenApiError;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// Parameter name → value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// From decoded pairs.
    ///
    /// # Errors
    /// `InvalidParameter` for a name given twice (across the query and the body too): which
    /// of the two to use would be a guess.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = &'a (String, String)>,
    ) -> Result<Self, OpenApiError> {
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if map.insert(name.clone(), value.clone()).is_some() {
                return Err(OpenApiError::invalid_parameter(
                    name,
                    "it is given more than once; send each parameter once",
                ));
            }
        }
        Ok(Self { map })
    }

    /// The raw value, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// Whether `name` is present (even empty).
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A present, non-empty value.
    fn value(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// A string of at most `max_chars` characters (Unicode scalar values), without control
    /// characters.
    ///
    /// # Errors
    /// `InvalidParameter` when it is longer or holds a control character.
    pub fn string(&self, name: &str, max_chars: usize) -> Result<Option<&str>, OpenApiError> {
        let Some(value) = self.value(name) else {
            return Ok(None);
        };
        let chars = value.chars().count();
        if chars > max_chars {
            return Err(OpenApiError::invalid_parameter(
                name,
                format!("it is {chars} characters long; at most {max_chars} are accepted"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(OpenApiError::invalid_parameter(
                name,
                "it contains a control character",
            ));
        }
        Ok(Some(value))
    }

    /// As [`Params::string`], required.
    ///
    /// # Errors
    /// `MissingParameter`, or as [`Params::string`].
    pub fn required_string(&self, name: &str, max_chars: usize) -> Result<&str, OpenApiError> {
        required(name, self.string(name, max_chars)?)
    }

    /// A boolean: `true` or `false` in any letter case (Python sends `True`/`False`).
    ///
    /// # Errors
    /// `InvalidParameter` for anything else.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, OpenApiError> {
        let Some(value) = self.value(name) else {
            return Ok(None);
        };
        if value.eq_ignore_ascii_case("true") {
            Ok(Some(true))
        } else if value.eq_ignore_ascii_case("false") {
            Ok(Some(false))
        } else {
            Err(OpenApiError::invalid_parameter(
                name,
                format!(
                    "{:?} is not a boolean; send true or false",
                    super::error::shown(value)
                ),
            ))
        }
    }

    /// A decimal integer within `range`.
    ///
    /// # Errors
    /// `InvalidParameter` for a value that is not a plain decimal integer, or out of range.
    pub fn integer(
        &self,
        name: &str,
        range: RangeInclusive<i64>,
    ) -> Result<Option<i64>, OpenApiError> {
        let Some(value) = self.value(name) else {
            return Ok(None);
        };
        let digits = value.strip_prefix('-').unwrap_or(value);
        let parsed = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<i64>().ok())
            .flatten();
        match parsed {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(OpenApiError::invalid_parameter(
                name,
                format!(
                    "{:?} is not an integer from {} to {}",
                    super::error::shown(value),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// As [`Params::integer`], required.
    ///
    /// # Errors
    /// `MissingParameter`, or as [`Params::integer`].
    pub fn required_integer(
        &self,
        name: &str,
        range: RangeInclusive<i64>,
    ) -> Result<i64, OpenApiError> {
        required(name, self.integer(name, range)?)
    }

    /// Standard base64 (padded, canonical) decoding to at most `max_bytes` bytes.
    ///
    /// # Errors
    /// `InvalidParameter` for anything that is not strict standard base64, or too long.
    pub fn base64(&self, name: &str, max_bytes: usize) -> Result<Option<Vec<u8>>, OpenApiError> {
        let Some(value) = self.value(name) else {
            return Ok(None);
        };
        // Checked before decoding, so an oversized value costs no allocation of its size.
        if value.len() > max_bytes.div_ceil(3) * 4 {
            return Err(OpenApiError::invalid_parameter(
                name,
                format!("it decodes to more than {max_bytes} bytes"),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| {
                OpenApiError::invalid_parameter(
                    name,
                    format!("it is not standard base64 (A-Z a-z 0-9 + /, padded with =): {e}"),
                )
            })?;
        if bytes.len() > max_bytes {
            return Err(OpenApiError::invalid_parameter(
                name,
                format!("it decodes to {} bytes; at most {max_bytes}", bytes.len()),
            ));
        }
        Ok(Some(bytes))
    }

    /// As [`Params::base64`], required.
    ///
    /// # Errors
    /// `MissingParameter`, or as [`Params::base64`].
    pub fn required_base64(&self, name: &str, max_bytes: usize) -> Result<Vec<u8>, OpenApiError> {
        required(name, self.base64(name, max_bytes)?)
    }

    /// A JSON array (in the string) of at most `max_items` items, each a `T`.
    ///
    /// # Errors
    /// `InvalidParameter` for malformed JSON, something other than an array, too many items,
    /// or an item that is not a `T` (the message says which item and why).
    pub fn json_array<T: DeserializeOwned>(
        &self,
        name: &str,
        max_items: usize,
    ) -> Result<Option<Vec<T>>, OpenApiError> {
        let Some(value) = self.value(name) else {
            return Ok(None);
        };
        let items: Vec<serde_json::Value> = serde_json::from_str(value).map_err(|e| {
            OpenApiError::invalid_parameter(name, format!("it is not a JSON array: {e}"))
        })?;
        if items.len() > max_items {
            return Err(OpenApiError::invalid_parameter(
                name,
                format!("it has {} items; at most {max_items}", items.len()),
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value(item)
                    .map_err(|e| OpenApiError::invalid_parameter(name, format!("item {i}: {e}")))
            })
            .collect::<Result<Vec<T>, _>>()
            .map(Some)
    }

    /// As [`Params::json_array`], required.
    ///
    /// # Errors
    /// `MissingParameter`, or as [`Params::json_array`].
    pub fn required_json_array<T: DeserializeOwned>(
        &self,
        name: &str,
        max_items: usize,
    ) -> Result<Vec<T>, OpenApiError> {
        required(name, self.json_array(name, max_items)?)
    }
}

fn required<T>(name: &str, value: Option<T>) -> Result<T, OpenApiError> {
    value.ok_or_else(|| OpenApiError::missing_parameter(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Params::from_pairs(&owned).unwrap()
    }

    fn code<T: std::fmt::Debug>(r: Result<T, OpenApiError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.code().to_string(), e.message().to_string())
    }

    #[test]
    fn duplicates_are_refused() {
        let pairs = [
            ("KeyId".to_string(), "a".to_string()),
            ("KeyId".into(), "b".into()),
        ];
        let (c, m) = code(Params::from_pairs(&pairs));
        assert_eq!(c, "InvalidParameter");
        assert!(
            m.contains("\"KeyId\"") && m.contains("more than once"),
            "{m}"
        );
    }

    #[test]
    fn strings_missing_empty_long_and_control_characters() {
        let p = params(&[("KeyId", "key-1"), ("Empty", ""), ("Ctl", "a\u{1}b")]);
        assert_eq!(p.required_string("KeyId", 5).unwrap(), "key-1");
        assert_eq!(p.string("Nope", 5).unwrap(), None);
        let (c, m) = code(p.required_string("Nope", 5));
        assert_eq!(c, "MissingParameter");
        assert!(m.contains("\"Nope\""), "{m}");
        assert_eq!(code(p.required_string("Empty", 5)).0, "MissingParameter");
        let (c, m) = code(p.required_string("KeyId", 4));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("5 characters") && m.contains("at most 4"), "{m}");
        assert!(code(p.string("Ctl", 9)).1.contains("control character"));
        let p = params(&[("D", "ééé")]);
        assert_eq!(
            p.string("D", 3).unwrap(),
            Some("ééé"),
            "characters, not bytes"
        );
    }

    #[test]
    fn booleans_in_any_case() {
        let p = params(&[
            ("a", "True"),
            ("b", "false"),
            ("c", "TRUE"),
            ("d", "1"),
            ("e", "yes"),
        ]);
        assert_eq!(p.boolean("a").unwrap(), Some(true));
        assert_eq!(p.boolean("b").unwrap(), Some(false));
        assert_eq!(p.boolean("c").unwrap(), Some(true));
        assert_eq!(p.boolean("z").unwrap(), None);
        for bad in ["d", "e"] {
            let (c, m) = code(p.boolean(bad));
            assert_eq!(c, "InvalidParameter");
            assert!(m.contains("true or false"), "{m}");
        }
    }

    #[test]
    fn integers_in_range_only() {
        let p = params(&[
            ("PageSize", "100"),
            ("Big", "101"),
            ("Neg", "-1"),
            ("Plus", "+5"),
            ("Space", " 5"),
            ("Float", "5.0"),
            ("Huge", "99999999999999999999999"),
        ]);
        assert_eq!(p.integer("PageSize", 1..=100).unwrap(), Some(100));
        assert_eq!(p.integer("Neg", -5..=5).unwrap(), Some(-1));
        assert_eq!(p.integer("Missing", 1..=100).unwrap(), None);
        assert_eq!(
            code(p.required_integer("Missing", 1..=9)).0,
            "MissingParameter"
        );
        for bad in ["Big", "Plus", "Space", "Float", "Huge"] {
            let (c, m) = code(p.integer(bad, 1..=100));
            assert_eq!(c, "InvalidParameter", "{bad}");
            assert!(m.contains("from 1 to 100"), "{m}");
        }
    }

    #[test]
    fn base64_is_strict_and_bounded() {
        let p = params(&[
            ("Digest", "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="),
            ("Unpadded", "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek"),
            ("UrlSafe", "uU0nuZNNPgilLlLX2n2r-sSE7-N6U4DukIj3rOLvzek="),
            ("Short", "aGk="),
            ("NonCanonical", "aGl="),
            ("Spaces", "aGk= "),
        ]);
        assert_eq!(p.required_base64("Digest", 32).unwrap().len(), 32);
        assert_eq!(p.base64("Short", 32).unwrap().unwrap(), b"hi");
        for bad in ["Unpadded", "UrlSafe", "NonCanonical", "Spaces"] {
            let (c, m) = code(p.base64(bad, 32));
            assert_eq!(c, "InvalidParameter", "{bad}");
            assert!(m.contains("standard base64"), "{bad}: {m}");
        }
        let (c, m) = code(p.base64("Digest", 16));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("more than 16 bytes"), "{m}");
        assert_eq!(code(p.required_base64("Value", 512)).0, "MissingParameter");
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Tag {
        #[serde(rename = "TagKey")]
        key: String,
        #[serde(rename = "TagValue")]
        value: String,
    }

    #[test]
    fn json_arrays_typed_and_bounded() {
        let p = params(&[
            ("Tags", r#"[{"TagKey":"env","TagValue":"prod"}]"#),
            ("TagKeys", r#"["a","b","c"]"#),
            ("Object", r#"{"TagKey":"env"}"#),
            ("Broken", "[{"),
            ("WrongItem", r#"[{"TagKey":"env"}]"#),
        ]);
        let tags: Vec<Tag> = p.required_json_array("Tags", 20).unwrap();
        assert_eq!(
            tags,
            [Tag {
                key: "env".into(),
                value: "prod".into()
            }]
        );
        let keys: Vec<String> = p.json_array("TagKeys", 3).unwrap().unwrap();
        assert_eq!(keys, ["a", "b", "c"]);
        let (c, m) = code(p.json_array::<String>("TagKeys", 2));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("3 items; at most 2"), "{m}");
        for bad in ["Object", "Broken"] {
            let (_, m) = code(p.json_array::<Tag>(bad, 20));
            assert!(m.contains("not a JSON array") && m.contains(bad), "{m}");
        }
        let (_, m) = code(p.json_array::<Tag>("WrongItem", 20));
        assert!(m.contains("item 0") && m.contains("TagValue"), "{m}");
        assert_eq!(
            code(p.required_json_array::<Tag>("Filters", 10)).0,
            "MissingParameter"
        );
    }
}
