//! The bench's client of the Alibaba KMS instance API: `Sign` with MessageType DIGEST, one
//! HTTP/2 connection per client (as the gRPC clients), each request signed with a client key
//! the way the official SDK signs it (contract §3.1).
//!
//! A request's signature covers its `date` (one-second resolution) and its body's hash, so a
//! signed request stays valid, byte for byte, for the rest of its second: each connection signs
//! a new request (a new digest) when the second changes and re-sends it until then. The RSA
//! signing is then a few milliseconds of client CPU per connection and second, included in the
//! client CPU per request that the run reports; an application that signed every request would
//! pay one RSA-2048 signature per request on top.

use super::stats::Sample;
use crate::api::alibaba::instance::pb;
use crate::api::alibaba::names;
use crate::crypto::{Algorithm, HashAlg};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The Alibaba name of the scheme a dev key of `algorithm` signs with through the instance
/// API, if the Alibaba APIs serve it with SHA-256 (P-256, secp256k1, RSA-2048/3072 PSS).
pub(crate) fn algorithm_name(algorithm: Algorithm) -> Option<&'static str> {
    let served = names::served("", algorithm.spec()).is_ok();
    (served && algorithm.hash() == HashAlg::Sha256).then(|| names::scheme_name(algorithm.scheme()))
}

/// A client key, ready to sign requests.
pub(crate) struct RequestSigner {
    id: HeaderValue,
    key: rsa::pkcs1v15::SigningKey<Sha256>,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestSigner {
    /// Loads Alibaba's ClientKey file `key_file` with the password in `password_file`.
    pub(crate) fn load(key_file: &Path, password_file: &Path) -> Result<Self, String> {
        let password = std::fs::read_to_string(password_file)
            .map_err(|e| format!("cannot read {}: {e}", password_file.display()))?;
        let password = SecretString::from(password.trim_end());
        let loaded = crate::alibaba_client_key::load(key_file, &password)?;
        Ok(Self {
            id: HeaderValue::from_str(&loaded.id)
                .map_err(|_| format!("{}: KeyId is not a header value", key_file.display()))?,
            key: rsa::pkcs1v15::SigningKey::new(loaded.private),
        })
    }

    /// The headers of a `Sign` request with `body`, dated `date`, signed.
    fn headers(&self, body: &[u8], date: SystemTime) -> HeaderMap {
        let text = |s: &str| HeaderValue::from_str(s).expect("ASCII");
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("application/x-protobuf"));
        h.insert("date", text(&httpdate::fmt_http_date(date)));
        h.insert("x-kms-apiversion", HeaderValue::from_static("dkms-gcs-0.2"));
        h.insert("x-kms-apiname", HeaderValue::from_static("Sign"));
        h.insert(
            "x-kms-signaturemethod",
            HeaderValue::from_static("RSA_PKCS1_SHA_256"),
        );
        h.insert("x-kms-acccesskeyid", self.id.clone());
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-protobuf"),
        );
        h.insert(
            "content-sha256",
            text(&hex::encode_upper(Sha256::digest(body))),
        );
        let signature = self.key.sign(string_to_sign(&h).as_bytes()).to_vec();
        h.insert(
            "authorization",
            text(&format!(
                "Bearer {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signature)
            )),
        );
        h
    }
}

/// What the client signs (contract §3.1). A client's own copy: the daemon's parser is what
/// these requests test, so it does not build them.
fn string_to_sign(h: &HeaderMap) -> String {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut kms: Vec<(&str, &str)> = h
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-kms-"))
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or_default().trim()))
        .collect();
    kms.sort_unstable();
    let mut s = format!(
        "POST\n{}\n{}\n{}\n",
        get("content-sha256"),
        get("content-type"),
        get("date")
    );
    for (name, value) in kms {
        s.push_str(name);
        s.push(':');
        s.push_str(value);
        s.push('\n');
    }
    s.push('/');
    s
}

/// A signed request, valid until its second is over.
struct Prepared {
    second: u64,
    key: usize,
    digest: Vec<u8>,
    body: Bytes,
    headers: HeaderMap,
}

/// One HTTP/2 connection to the instance API.
pub(crate) struct Connection {
    send: http2::SendRequest<Full<Bytes>>,
    uri: http::Uri,
    signer: Arc<RequestSigner>,
    /// Tells this connection's digests from the other connections'.
    index: usize,
    prepared: Option<Prepared>,
}

impl Connection {
    /// Opens a connection to `addr`.
    pub(crate) async fn connect(
        addr: SocketAddr,
        signer: Arc<RequestSigner>,
        index: usize,
    ) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            send,
            uri: format!("http://{addr}/")
                .parse()
                .map_err(|e| format!("{addr}: {e}"))?,
            signer,
            index,
            prepared: None,
        })
    }

    /// The request of this second for `key_id` (the `key`th of the run), signing a new one
    /// when the second or the key changed.
    fn prepared(&mut self, key: usize, key_id: &str, algorithm: &str) -> &Prepared {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let stale = self
            .prepared
            .as_ref()
            .is_none_or(|p| p.second != second || p.key != key);
        if stale {
            let digest = Sha256::digest(format!("p11kms bench {} {second}", self.index)).to_vec();
            let body = pb::SignRequest {
                key_id: key_id.to_string(),
                algorithm: algorithm.to_string(),
                message: digest.clone(),
                message_type: "DIGEST".into(),
                ..Default::default()
            }
            .encode_to_vec();
            let headers = self.signer.headers(&body, now);
            self.prepared = Some(Prepared {
                second,
                key,
                digest,
                body: Bytes::from(body),
                headers,
            });
        }
        self.prepared.as_ref().expect("set above")
    }

    /// Signs this second's digest with `key_id`: the sample (digest and DER or PSS signature),
    /// or the error's kind (the `ErrorCode`) and text.
    pub(crate) async fn sign_digest(
        &mut self,
        key: usize,
        key_id: &str,
        algorithm: &str,
    ) -> Result<Sample, (String, String)> {
        let uri = self.uri.clone();
        let (digest, request) = {
            let p = self.prepared(key, key_id, algorithm);
            let mut request = http::Request::post(uri)
                .body(Full::new(p.body.clone()))
                .expect("a valid request");
            *request.headers_mut() = p.headers.clone();
            (p.digest.clone(), request)
        };
        let transport = |e: &dyn std::fmt::Display| ("transport".to_string(), e.to_string());
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(&e))?
            .to_bytes();
        if status != http::StatusCode::OK {
            let error = pb::Error::decode(body).unwrap_or_default();
            return Err((
                error.error_code.clone(),
                format!(
                    "HTTP {status} {}: {}",
                    error.error_code, error.error_message
                ),
            ));
        }
        let signed = pb::SignResponse::decode(body)
            .map_err(|e| ("malformed".to_string(), format!("SignResponse: {e}")))?;
        Ok(Sample {
            key,
            digest,
            signature: signed.signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_algorithms_the_instance_api_serves() {
        assert_eq!(
            algorithm_name(Algorithm::EcdsaP256Sha256),
            Some("ECDSA_SHA_256")
        );
        assert_eq!(
            algorithm_name(Algorithm::EcdsaSecp256k1Sha256),
            Some("ECDSA_SHA_256")
        );
        assert_eq!(
            algorithm_name(Algorithm::Rsa3072PssSha256),
            Some("RSA_PSS_SHA_256")
        );
        for other in [
            Algorithm::Rsa2048PssSha384,
            Algorithm::Rsa4096PssSha256,
            Algorithm::EcdsaP384Sha384,
            Algorithm::EcdsaP521Sha512,
        ] {
            assert_eq!(algorithm_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_string_to_sign_is_the_contracts() {
        // The recorded request of contract §3.1.
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("accept", "application/x-protobuf"),
            ("date", "Thu, 03 Dec 2026 15:54:43 GMT"),
            ("x-kms-apiversion", "dkms-gcs-0.2"),
            ("x-kms-apiname", "Sign"),
            ("x-kms-signaturemethod", "RSA_PKCS1_SHA_256"),
            (
                "x-kms-acccesskeyid",
                "KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab",
            ),
            ("content-type", "application/x-protobuf"),
            (
                "content-sha256",
                "1D508A2B1134FA7074CFEE586BD28303E909D651DE48F4C68394E2229A9CDEE3",
            ),
        ] {
            h.insert(n, HeaderValue::from_static(v));
        }
        assert_eq!(
            string_to_sign(&h),
            "POST\n1D508A2B1134FA7074CFEE586BD28303E909D651DE48F4C68394E2229A9CDEE3\n\
             application/x-protobuf\nThu, 03 Dec 2026 15:54:43 GMT\n\
             x-kms-acccesskeyid:KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab\n\
             x-kms-apiname:Sign\nx-kms-apiversion:dkms-gcs-0.2\n\
             x-kms-signaturemethod:RSA_PKCS1_SHA_256\n/"
        );
    }
}
