//! Reading a REST request into one of [`super::messages`]: the content type, the size limit,
//! then JSON (body) or the query string, with every failure a precise INVALID_ARGUMENT (or
//! OUT_OF_RANGE for an oversized body, as gRPC answers an oversized message) that names the
//! field at fault.

use super::proto_json::Object;
use super::MAX_BODY_BYTES;
use crate::error::Error;
use axum::body::Body;
use http::request::Parts;
use serde::de::DeserializeOwned;
use tokio_stream::StreamExt as _;

/// The body of a binding with `body: "*"`, as `T`. An empty body is `{}`.
///
/// # Errors
/// A content type other than JSON, a body over [`MAX_BODY_BYTES`], malformed JSON, a field of
/// the wrong type or form, or an unknown field.
pub async fn body<T: DeserializeOwned>(parts: &Parts, body: Body) -> Result<T, Error> {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&n| n > MAX_BODY_BYTES as u64) {
        // Refused from the header, before a byte of the body is read.
        return Err(too_large(Some(len)));
    }
    let bytes = read_limited(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return json(b"{}");
    }
    content_type(parts)?;
    json(&bytes)
}

/// The query string of a binding, as `T` (only for bodiless bindings). Repeated parameters
/// are refused.
///
/// # Errors
/// An undecodable query, a repeated or unknown parameter, or a value of the wrong form.
pub fn query<T: DeserializeOwned>(parts: &Parts) -> Result<T, Error> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).map_err(|e| {
            Error::InvalidArgument(format!("the query string cannot be decoded: {e}"))
        })?;
    let mut object = serde_json::Map::new();
    for (name, value) in pairs {
        if object.contains_key(&name) {
            return Err(Error::InvalidArgument(format!(
                "query parameter {name:?} is given more than once"
            )));
        }
        object.insert(name, serde_json::Value::String(value));
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(object))
        .map(|Object(value)| value)
        .map_err(|e| field_error("query parameter", &e))
}

fn too_large(len: Option<u64>) -> Error {
    let size = len.map_or_else(|| "longer than that".to_string(), |n| format!("{n} bytes"));
    Error::OutOfRange(format!(
        "the request body is over the limit of {MAX_BODY_BYTES} bytes ({size}); a 32768-byte \
         message in base64 fits. For larger data, hash it and call :signHash"
    ))
}

/// The body, refused as soon as it grows past the limit (it is never buffered beyond it).
async fn read_limited(body: Body) -> Result<Vec<u8>, Error> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::InvalidArgument(format!("the request body could not be read: {e}"))
        })?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large(None));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A body must be declared JSON: `application/json`, optionally with `charset=utf-8`.
fn content_type(parts: &Parts) -> Result<(), Error> {
    let Some(value) = parts.headers.get(http::header::CONTENT_TYPE) else {
        return Err(Error::InvalidArgument(
            "the request has a body but no Content-Type; send it as JSON with \
             Content-Type: application/json"
                .into(),
        ));
    };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    let mut params = text.split(';').map(str::trim);
    let essence = params.next().unwrap_or_default();
    let charset_ok = params.all(|p| match p.split_once('=') {
        Some(("charset", v)) => matches!(v.trim_matches('"'), "utf-8" | "utf8"),
        _ => true,
    });
    if essence == "application/json" && charset_ok {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "Content-Type {:?} is not supported; send the body as JSON (UTF-8) with Content-Type: \
         application/json",
        String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(100)
            .collect::<String>()
    )))
}

fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Object(value) = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_data() {
            field_error("field", &e)
        } else {
            Error::InvalidArgument(format!("the request body is not valid JSON: {}", e.inner()))
        }
    })?;
    de.end().map_err(|e| {
        Error::InvalidArgument(format!(
            "the request body is not valid JSON: {e} (one JSON object expected)"
        ))
    })?;
    Ok(value)
}

/// `field accessBindings[0].subject.id: invalid type: ...`; for the top level, just the cause
/// (which names an unknown field itself).
fn field_error<E: std::fmt::Display>(what: &str, e: &serde_path_to_error::Error<E>) -> Error {
    let path = e.path().to_string();
    if path == "." || path.is_empty() {
        Error::InvalidArgument(e.inner().to_string())
    } else {
        Error::InvalidArgument(format!("{what} {path}: {}", e.inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::yandex::rest::messages;

    fn parts(content_type: Option<&str>, uri: &str) -> Parts {
        let mut b = http::Request::builder().method("POST").uri(uri);
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn sign(ct: Option<&str>, body: &str) -> Result<messages::Sign, String> {
        super::body(&parts(ct, "/"), Body::from(body.to_string()))
            .await
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn bodies_are_json_objects_with_known_fields() {
        let json = Some("application/json");
        assert!(sign(json, r#"{"message":"aGk="}"#).await.is_ok());
        assert!(sign(Some("application/json; charset=UTF-8"), "{}")
            .await
            .is_ok());
        assert!(sign(None, "").await.is_ok());
        let e = sign(json, r#"{"message":"aGk=","extra":1}"#)
            .await
            .unwrap_err();
        assert!(
            e.contains("unknown field `extra`") && e.contains("`keyId`"),
            "{e}"
        );
        let e = sign(json, r#"{"message":5}"#).await.unwrap_err();
        assert!(
            e.starts_with("field message: invalid type: integer `5`"),
            "{e}"
        );
        let e = sign(json, r#"{"message":"***"}"#).await.unwrap_err();
        assert!(
            e.contains("field message") && e.contains("not base64"),
            "{e}"
        );
        let e = sign(json, r#"{"message":"aGk="}{}"#).await.unwrap_err();
        assert!(
            e.contains("not valid JSON") && e.contains("trailing"),
            "{e}"
        );
        let e = sign(json, r#"{"message":"#).await.unwrap_err();
        assert!(e.contains("not valid JSON") && e.contains("EOF"), "{e}");
        let e = sign(json, "[]").await.unwrap_err();
        assert!(e.contains("a JSON object"), "{e}");
        let e = sign(Some("text/plain"), "{}").await.unwrap_err();
        assert!(e.contains("\"text/plain\" is not supported"), "{e}");
        let e = sign(Some("application/json; charset=latin1"), "{}")
            .await
            .unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = sign(None, "{}").await.unwrap_err();
        assert!(e.contains("no Content-Type"), "{e}");
        let big = format!(r#"{{"message":"{}"}}"#, "A".repeat(MAX_BODY_BYTES));
        let e = super::body::<messages::Sign>(&parts(json, "/"), Body::from(big))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::OutOfRange(_)), "{e}");
    }

    #[tokio::test]
    async fn nested_errors_name_the_full_path() {
        let read = |body: &'static str| async move {
            super::body::<messages::SetAccessBindings>(
                &parts(Some("application/json"), "/"),
                Body::from(body),
            )
            .await
            .map_err(|e| e.to_string())
        };
        let e = read(r#"{"accessBindings":[{"roleId":"r","subject":{"id":1}}]}"#)
            .await
            .unwrap_err();
        assert!(
            e.starts_with("field accessBindings[0].subject.id: invalid type"),
            "{e}"
        );
        let e = read(r#"{"accessBindings":[{"subject":{"id":"a","kind":"b"}}]}"#)
            .await
            .unwrap_err();
        assert!(
            e.starts_with("field accessBindings[0].subject.kind: unknown field `kind`"),
            "{e}"
        );
        let e = read(r#"{"accessBindings":[["r"]]}"#).await.unwrap_err();
        assert!(
            e.contains("accessBindings[0]: invalid type: sequence"),
            "{e}"
        );
        assert!(read(r#"{"accessBindings":null,"resource_id":"x"}"#)
            .await
            .is_ok());
    }

    #[test]
    fn queries_name_their_parameters() {
        let q =
            |uri: &str| query::<messages::ListKeys>(&parts(None, uri)).map_err(|e| e.to_string());
        assert!(q("/?folderId=f&pageSize=10&pageToken=x").is_ok());
        assert!(q("/").is_ok());
        let e = q("/?pageSize=ten").unwrap_err();
        assert!(e.starts_with("query parameter pageSize:"), "{e}");
        let e = q("/?pageSize=1&pageSize=2").unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        let e = q("/?folder=f").unwrap_err();
        assert!(e.contains("unknown field `folder`"), "{e}");
        assert!(query::<messages::Nothing>(&parts(None, "/?x=1")).is_err());
        assert!(query::<messages::Nothing>(&parts(None, "/")).is_ok());
    }
}
