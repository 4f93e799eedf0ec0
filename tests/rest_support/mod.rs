//! Shared by the `rest*` tests: a REST client on `reqwest` (a real HTTP/1.1 client; HTTP/2 and
//! TLS on request) that sends the daemon's admin token unless told otherwise, and checks of the
//! Yandex REST error shape.
//!
//! Include next to `mod common;`: `mod rest_support;`.
// `Result<_, Reply>`: the error is the whole answer, for the test to inspect.
#![allow(dead_code, unreachable_pub, clippy::result_large_err)]

use crate::common::tls::{Ca, Issued};
use crate::common::Daemon;
use base64::Engine as _;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use std::net::SocketAddr;
use tonic::Code;

/// The Yandex REST table: gRPC code → HTTP status (written out here, independently of the
/// daemon's own mapping).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
    }
}

/// Standard padded base64, as the API emits it.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard padded base64, and nothing else (what the API must emit).
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not standard padded base64 ({e}): {text:?}"))
}

/// One answer.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
    /// The HTTP version it came over.
    pub version: reqwest::Version,
}

impl Reply {
    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.text))
    }

    /// The `x-request-id` header.
    pub fn request_id(&self) -> Option<&str> {
        self.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
    }

    /// The gRPC code the answer stands for: OK for 200, else the error body's `code`.
    #[track_caller]
    pub fn code(&self) -> Code {
        if self.status == 200 {
            return Code::Ok;
        }
        let code = self.json()["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no numeric code: {}", self.text));
        Code::from(i32::try_from(code).expect("a gRPC code"))
    }

    /// The error message.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The body of a 200 answer.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.text
        );
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{self:?}"
        );
        self.json()
    }

    /// Asserts a Yandex REST error: the HTTP status of the table for `code`, a JSON
    /// `google.rpc.Status` with the numeric code, a message containing every needle, and the
    /// request id both in a `RequestInfo` detail and in `x-request-id`. Returns the message.
    #[track_caller]
    pub fn error(&self, code: Code, needles: &[&str]) -> String {
        self.error_with_status(code, http_status(code), needles)
    }

    /// [`Reply::error`] with an HTTP status outside the table (405).
    #[track_caller]
    pub fn error_with_status(&self, code: Code, status: u16, needles: &[&str]) -> String {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "wrong status/code: {}",
            self.text
        );
        let body = self.json();
        let message = body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {}", self.text));
        for needle in needles {
            assert!(
                message.contains(needle),
                "{code:?} message {message:?} lacks {needle:?}"
            );
        }
        let details = body["details"].as_array().expect("details");
        assert_eq!(
            details[0]["@type"], "type.googleapis.com/google.rpc.RequestInfo",
            "{}",
            self.text
        );
        let id = details[0]["requestId"].as_str().expect("requestId");
        assert!(!id.is_empty(), "{}", self.text);
        assert_eq!(self.request_id(), Some(id), "x-request-id vs the body");
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(3),
            "only code, message, details: {}",
            self.text
        );
        message.to_string()
    }
}

/// A REST client for one daemon address.
#[derive(Clone, Debug)]
pub struct Rest {
    /// The client.
    pub client: reqwest::Client,
    /// `http://addr` or `https://name:port`.
    pub base: String,
    /// The bearer token sent, if any.
    pub token: Option<String>,
}

/// The protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 only.
    One,
    /// HTTP/2 (prior knowledge on plaintext, ALPN over TLS).
    Two,
}

fn builder(http: Http) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder().no_proxy();
    match http {
        Http::One => b.http1_only(),
        Http::Two => b.http2_prior_knowledge(),
    }
}

impl Rest {
    /// HTTP/1.1 to the daemon's listener, with its admin token.
    pub fn new(daemon: &Daemon) -> Self {
        Self::plain(daemon.addr(), Http::One, Some(daemon.admin_token()))
    }

    /// Plaintext to `addr`.
    pub fn plain(addr: SocketAddr, http: Http, token: Option<&str>) -> Self {
        Self {
            client: builder(http).build().expect("a reqwest client"),
            base: format!("http://{addr}"),
            token: token.map(str::to_string),
        }
    }

    /// TLS to `addr` as `localhost`, trusting `ca`, presenting `identity` (mTLS) if given.
    pub fn tls(
        addr: SocketAddr,
        ca: &Ca,
        identity: Option<&Issued>,
        http: Http,
        token: Option<&str>,
    ) -> Self {
        let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("the CA PEM");
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(root)
            .resolve("localhost", addr);
        if let Some(issued) = identity {
            let pem = format!("{}\n{}", issued.key_pem(), issued.cert_pem);
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("a client identity"));
        }
        let b = match http {
            Http::One => b.http1_only(),
            // ALPN offers h2 and http/1.1; the server picks h2.
            Http::Two => b,
        };
        Self {
            client: b.build().expect("a reqwest client"),
            base: format!("https://localhost:{}", addr.port()),
            token: token.map(str::to_string),
        }
    }

    /// The same client with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// Sends `method path` with raw headers and body; `path` may carry a query.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.try_send(method.clone(), path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
    }

    /// [`Rest::send`], with connection failures as errors.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok(Reply {
            status,
            headers,
            text,
            version,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.json(Method::POST, path, body).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.json(Method::PATCH, path, body).await
    }

    /// `method path` with a JSON body.
    pub async fn json(&self, method: Method, path: &str, body: &Value) -> Reply {
        self.send(
            method,
            path,
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `:sign`; the signature, or the error reply.
    pub async fn sign(&self, key_id: &str, message: &[u8]) -> Result<Vec<u8>, Reply> {
        let r = self
            .post(
                &key_path(key_id, ":sign"),
                &serde_json::json!({ "message": b64(message) }),
            )
            .await;
        signature(r, key_id)
    }

    /// `:signHash`; the signature, or the error reply.
    pub async fn sign_hash(&self, key_id: &str, hash: &[u8]) -> Result<Vec<u8>, Reply> {
        let r = self
            .post(
                &key_path(key_id, ":signHash"),
                &serde_json::json!({ "hash": b64(hash) }),
            )
            .await;
        signature(r, key_id)
    }

    /// `/publicKey`; the PEM, or the error reply.
    pub async fn public_key(&self, key_id: &str) -> Result<String, Reply> {
        let r = self.get(&key_path(key_id, "/publicKey")).await;
        if r.status != 200 {
            return Err(r);
        }
        let v = r.ok();
        assert_eq!(v["keyId"], key_id, "{v}");
        Ok(v["publicKey"].as_str().expect("publicKey").to_string())
    }
}

fn signature(r: Reply, key_id: &str) -> Result<Vec<u8>, Reply> {
    if r.status != 200 {
        return Err(r);
    }
    let v = r.ok();
    assert_eq!(v["keyId"], key_id, "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
    Ok(unb64(v["signature"].as_str().expect("signature")))
}

/// `/kms/v1/asymmetricSignatureKeys/<key id, percent-encoded><suffix>`.
pub fn key_path(key_id: &str, suffix: &str) -> String {
    format!("/kms/v1/asymmetricSignatureKeys/{}{suffix}", encode(key_id))
}

/// Percent-encodes a path segment (everything but unreserved characters).
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
