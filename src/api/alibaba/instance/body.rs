//! The request body: size limits (from `Content-Length` before a byte is read, and while it is
//! read) and bounded protobuf decoding.
//!
//! Decoding is bounded by the body limit: prost allocates at most what the body holds (a
//! length prefix longer than the rest of the buffer is an error, not an allocation), and the
//! messages have no nested messages; an unknown group is skipped within prost's recursion
//! limit. Anything that does not decode is `InvalidParameter`.

use super::error::InstanceError;
use crate::config::AlibabaConfig;
use axum::body::{Body, Bytes};
use http::HeaderMap;
use tokio_stream::StreamExt as _;

/// Room in a request for everything but the message: key id, algorithm, message type, a
/// signature (Verify), protobuf framing.
pub const ENVELOPE_BYTES: usize = 16 * 1024;

/// The instance API's size limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_raw_message_bytes: usize,
}

impl Limits {
    /// Limits for RAW messages of up to `max_raw_message_bytes`.
    pub fn new(max_raw_message_bytes: usize) -> Self {
        Self {
            max_raw_message_bytes,
        }
    }

    /// From `[alibaba]`.
    pub fn from_config(config: &AlibabaConfig) -> Self {
        Self::new(config.max_raw_message_bytes)
    }

    /// The longest message hashed for a RAW `Sign` or `Verify`.
    pub fn max_raw_message_bytes(&self) -> usize {
        self.max_raw_message_bytes
    }

    /// The largest request body read.
    pub fn max_body_bytes(&self) -> usize {
        self.max_raw_message_bytes + ENVELOPE_BYTES
    }

    /// Refuses a body whose declared `Content-Length` is over [`Limits::max_body_bytes`].
    ///
    /// # Errors
    /// `InvalidParameter`, saying the limit.
    pub fn check_declared(&self, headers: &HeaderMap) -> Result<(), InstanceError> {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(n) if n > self.max_body_bytes() as u64 => Err(self.too_large(Some(n))),
            _ => Ok(()),
        }
    }

    /// Refuses a RAW message longer than [`Limits::max_raw_message_bytes`].
    ///
    /// # Errors
    /// `InvalidParameter`, saying the limit.
    pub fn check_raw_message(&self, len: usize) -> Result<(), InstanceError> {
        if len <= self.max_raw_message_bytes {
            return Ok(());
        }
        Err(InstanceError::invalid_parameter(format!(
            "Message is {len} bytes; a RAW message is hashed up to {} bytes \
             (alibaba.max_raw_message_bytes). Hash it yourself and send the digest with \
             MessageType DIGEST",
            self.max_raw_message_bytes
        )))
    }

    fn too_large(&self, len: Option<u64>) -> InstanceError {
        let size = len.map_or_else(|| "longer than that".to_string(), |n| format!("{n} bytes"));
        InstanceError::invalid_parameter(format!(
            "the request body is over the limit of {} bytes ({size}): a RAW message is hashed up \
             to {} bytes (alibaba.max_raw_message_bytes). Hash larger messages yourself and send \
             the digest with MessageType DIGEST",
            self.max_body_bytes(),
            self.max_raw_message_bytes
        ))
    }

    /// Reads the body, refusing it as soon as it grows past [`Limits::max_body_bytes`]
    /// (whatever `Content-Length` said, or without one).
    ///
    /// # Errors
    /// `InvalidParameter` for a body over the limit or one that cannot be read.
    pub async fn read(&self, body: Body) -> Result<Bytes, InstanceError> {
        let limit = self.max_body_bytes();
        let mut stream = body.into_data_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                InstanceError::invalid_parameter(format!("the request body could not be read: {e}"))
            })?;
            if out.len() + chunk.len() > limit {
                return Err(self.too_large(None));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }
}

/// Decodes a request message (`what` names it in the error).
///
/// # Errors
/// `InvalidParameter` when the body is not a valid `what`.
pub fn decode<M: prost::Message + Default>(what: &str, body: &[u8]) -> Result<M, InstanceError> {
    M::decode(body).map_err(|e| {
        InstanceError::invalid_parameter(format!(
            "the request body is not a valid {what} protobuf message: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::error::Code;
    use super::super::pb;
    use super::*;
    use prost::Message as _;

    #[test]
    fn declared_lengths_over_the_limit_are_refused_unread() {
        let limits = Limits::new(1024);
        assert_eq!(limits.max_body_bytes(), 1024 + ENVELOPE_BYTES);
        let declared = |n: usize| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_LENGTH, n.into());
            limits.check_declared(&h)
        };
        assert!(declared(limits.max_body_bytes()).is_ok());
        let e = declared(limits.max_body_bytes() + 1).unwrap_err();
        assert_eq!(e.code(), Code::InvalidParameter);
        assert!(
            e.message()
                .contains("over the limit of 17408 bytes (17409 bytes)")
                && e.message().contains("MessageType DIGEST"),
            "{}",
            e.message()
        );
        assert!(limits.check_declared(&HeaderMap::new()).is_ok());
        assert!(limits.check_raw_message(1024).is_ok());
        let e = limits.check_raw_message(1025).unwrap_err();
        assert!(
            e.message().starts_with("Message is 1025 bytes"),
            "{}",
            e.message()
        );
    }

    #[tokio::test]
    async fn bodies_are_cut_off_at_the_limit_whatever_was_declared() {
        let limits = Limits::new(1024);
        let fits = vec![7u8; limits.max_body_bytes()];
        assert_eq!(limits.read(Body::from(fits.clone())).await.unwrap(), fits);
        // A streamed body with no length: refused once it passes the limit.
        let chunks = (0..40).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1024])));
        let streamed = Body::from_stream(tokio_stream::iter(chunks));
        let e = limits.read(streamed).await.unwrap_err();
        assert!(
            e.message().contains("(longer than that)"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn malformed_protobuf_is_invalid_parameter() {
        let good = pb::SignRequest {
            key_id: "key-1".into(),
            algorithm: "ECDSA_SHA_256".into(),
            message: b"hello".to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            decode::<pb::SignRequest>("SignRequest", &good)
                .unwrap()
                .key_id,
            "key-1"
        );
        let deep_group = {
            // Unknown field 15 as nested start-groups, far past prost's recursion limit.
            let mut b = vec![0x7b; 10_000];
            b.extend(vec![0x7c; 10_000]);
            b
        };
        for bad in [
            &good[..good.len() - 1],                   // truncated
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f][..], // a 4 GiB length prefix
            &[0x0a, 0x02, 0xff, 0xfe][..],             // KeyId not UTF-8
            &[0x22][..],                               // a tag with no value
            &[0xff; 11][..],                           // a varint that never ends
            &deep_group[..],
        ] {
            let e = decode::<pb::SignRequest>("SignRequest", bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidParameter);
            assert!(
                e.message()
                    .starts_with("the request body is not a valid SignRequest protobuf message"),
                "{}",
                e.message()
            );
        }
        // Verify's numbering: a Sign body read as Verify puts the algorithm in Signature and
        // the message in Algorithm.
        let v = decode::<pb::VerifyRequest>("VerifyRequest", &good).unwrap();
        assert_eq!(v.signature, b"ECDSA_SHA_256");
        assert_eq!(v.algorithm, "hello");
    }
}
