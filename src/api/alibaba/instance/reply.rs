//! Successful answers: the response message as the body, with the key version it used.

use axum::body::Body;
use http::{HeaderValue, Response};

/// The response message, `200 OK`, and `x-kms-migrationkeyversionid` when a key version was
/// used (Sign, Verify, GetPublicKey: the KMS wrapper SDK fails without it).
pub fn reply<M: prost::Message>(message: &M, key_version_id: Option<&str>) -> Response<Body> {
    let mut response = Response::new(Body::from(message.encode_to_vec()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(super::CONTENT_TYPE),
    );
    if let Some(version) = key_version_id.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(super::MIGRATION_KEY_VERSION_HEADER, version);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::super::pb;
    use super::*;
    use prost::Message as _;

    #[tokio::test]
    async fn replies_carry_the_message_and_the_key_version() {
        let message = pb::GetPublicKeyResponse {
            key_id: "key-1".into(),
            public_key: "-----BEGIN PUBLIC KEY-----\n…".into(),
            request_id: "r".into(),
        };
        let response = reply(&message, Some("7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab"));
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-kms-migrationkeyversionid"],
            "7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab"
        );
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(pb::GetPublicKeyResponse::decode(body).unwrap(), message);
        let random = reply(&pb::GenerateRandomResponse::default(), None);
        assert!(random
            .headers()
            .get("x-kms-migrationkeyversionid")
            .is_none());
    }
}
