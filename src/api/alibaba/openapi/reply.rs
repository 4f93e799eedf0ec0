//! Success replies: a JSON object that always has `RequestId` (contract §1.1), numbers and
//! booleans as JSON numbers and booleans, lists wrapped twice (`{"Keys":{"Key":[…]}}`), with
//! the headers every OpenAPI answer carries.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

/// The content type of every OpenAPI answer, as Alibaba sends it.
pub const CONTENT_TYPE: &str = "application/json;charset=utf-8";
/// The response header with the request id (the ACS4 SDK path reads it from there).
pub const REQUEST_ID_HEADER: &str = "x-acs-request-id";

/// A success reply being built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    fields: Map<String, Value>,
}

impl Reply {
    /// An empty reply (`{"RequestId": …}` once sent).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field.
    #[must_use]
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    /// Sets a list the Alibaba way: `outer: { inner: [items] }`.
    #[must_use]
    pub fn list(self, outer: &str, inner: &str, items: impl IntoIterator<Item = Value>) -> Self {
        let list: Vec<Value> = items.into_iter().collect();
        self.field(outer, serde_json::json!({ inner: list }))
    }

    /// The 200 response, with `RequestId` added.
    pub fn into_response(mut self, request_id: &str) -> Response<Body> {
        self.fields
            .insert("RequestId".into(), Value::String(request_id.to_string()));
        json_response(StatusCode::OK, &Value::Object(self.fields), request_id)
    }
}

/// A JSON response with the OpenAPI headers; errors use it too.
pub(super) fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn success_has_request_id_typed_values_and_double_wrapped_lists() {
        let r = Reply::new()
            .field("KeyId", "key-1")
            .field("Value", true)
            .field("PageNumber", 1)
            .list("Keys", "Key", [serde_json::json!({"KeyId": "key-1"})])
            .into_response("req-9");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], CONTENT_TYPE);
        assert_eq!(r.headers()[REQUEST_ID_HEADER], "req-9");
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "RequestId": "req-9",
                "KeyId": "key-1",
                "Value": true,
                "PageNumber": 1,
                "Keys": {"Key": [{"KeyId": "key-1"}]},
            })
        );
    }
}
