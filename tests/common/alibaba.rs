//! A hand-built client of the Alibaba KMS instance API, written from the contract
//! (`shared/reference/alibaba-kms-api.md` §3.1) and independent of `p11kms::api::alibaba`: the
//! client key is read from its ClientKey file (a password-protected PKCS#12), and every request
//! is signed as the official SDK signs it. Requests go over HTTP/1.1, as the SDK's `requests`
//! sends them ([`post`]), or over raw HTTP/2 streams for bodies no client library sends
//! ([`h2_post`]).
//!
//! The protobuf messages are p11kms's own (`p11kms::api::alibaba::instance::pb`), which
//! `tests/alibaba_instance_sdk.rs` checks field for field against the official SDK's.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use p11kms::api::alibaba::instance::pb;
use prost::Message as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The answer header naming the key version used.
pub const MIGRATION_HEADER: &str = "x-kms-migrationkeyversionid";

/// A client key: its id and private key.
#[derive(Clone)]
pub struct ClientKey {
    /// `KAAP.<uuid>`.
    pub id: String,
    key: rsa::RsaPrivateKey,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey").field("id", &self.id).finish()
    }
}

impl ClientKey {
    /// Loads a ClientKey file (`{"KeyId", "PrivateKeyData"}`) with the password in
    /// `password_file`.
    pub fn load(key_file: &Path, password_file: &Path) -> Self {
        let text = std::fs::read_to_string(key_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", key_file.display()));
        let json: serde_json::Value =
            serde_json::from_str(&text).expect("a ClientKey file is JSON");
        let password = std::fs::read_to_string(password_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", password_file.display()));
        let p12 = base64::engine::general_purpose::STANDARD
            .decode(json["PrivateKeyData"].as_str().expect("PrivateKeyData"))
            .expect("PrivateKeyData is base64");
        let store = p12_keystore::KeyStore::from_pkcs12(&p12, password.trim_end())
            .expect("the PKCS#12 opens with its password");
        let (_, chain) = store
            .private_key_chain()
            .expect("a private key in the PKCS#12");
        let key = {
            use rsa::pkcs8::DecodePrivateKey as _;
            rsa::RsaPrivateKey::from_pkcs8_der(chain.key()).expect("an RSA PKCS#8 key")
        };
        Self {
            id: json["KeyId"].as_str().expect("KeyId").to_string(),
            key,
        }
    }

    /// The dev admin's client key of a dev state directory.
    pub fn dev(state_dir: &Path) -> Self {
        Self::load(
            &state_dir.join("alibaba-client-key.json"),
            &state_dir.join("alibaba-client-key.password"),
        )
    }

    /// The same private key under another id.
    pub fn with_id(&self, id: &str) -> Self {
        Self {
            id: id.to_string(),
            key: self.key.clone(),
        }
    }

    /// The headers the SDK sends for `api` with `body`, dated `date`, signed.
    pub fn headers(&self, api: &str, body: &[u8], date: SystemTime) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("accept", "application/x-protobuf".to_string()),
            ("date", httpdate::fmt_http_date(date)),
            ("x-kms-apiversion", "dkms-gcs-0.2".into()),
            ("x-kms-apiname", api.into()),
            ("x-kms-signaturemethod", "RSA_PKCS1_SHA_256".into()),
            ("x-kms-acccesskeyid", self.id.clone()),
            ("content-type", "application/x-protobuf".into()),
            ("content-sha256", hex::encode_upper(Sha256::digest(body))),
        ] {
            h.insert(name, value.parse().expect("a header value"));
        }
        self.sign(&mut h);
        h
    }

    /// Sets `authorization` to this key's signature of `headers` as they are.
    pub fn sign(&self, headers: &mut HeaderMap) {
        let signature = rsa::pkcs1v15::SigningKey::<Sha256>::new(self.key.clone())
            .sign(string_to_sign(headers).as_bytes())
            .to_vec();
        let bearer = format!(
            "Bearer {}",
            base64::engine::general_purpose::STANDARD.encode(signature)
        );
        headers.insert("authorization", bearer.parse().expect("base64 is a header"));
    }
}

/// The string the client signs (contract §3.1): method, content-sha256, content-type and date
/// lines, every `x-kms-*` header by name, then `/`.
pub fn string_to_sign(headers: &HeaderMap) -> String {
    let get = |n: &str| headers.get(n).map_or("", |v| v.to_str().expect("ASCII"));
    let mut kms: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-kms-"))
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                v.to_str().expect("ASCII").trim().to_string(),
            )
        })
        .collect();
    kms.sort();
    let mut s = format!(
        "POST\n{}\n{}\n{}\n",
        get("content-sha256"),
        get("content-type"),
        get("date")
    );
    for (name, value) in kms {
        s.push_str(&format!("{name}:{value}\n"));
    }
    s.push('/');
    s
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The `Error` message of a refusal, with its status; panics on a success.
    #[track_caller]
    pub fn error(&self) -> (u16, pb::Error) {
        assert!(
            self.status >= 400,
            "expected an error, got HTTP {}: {:?}",
            self.status,
            self.headers
        );
        let error = pb::Error::decode(self.body.clone()).expect("the body is an Error protobuf");
        (self.status, error)
    }

    /// The response message of a success; panics on an error.
    #[track_caller]
    pub fn message<M: prost::Message + Default>(&self) -> M {
        if self.status != 200 {
            let detail = pb::Error::decode(self.body.clone())
                .map_or_else(|e| format!("not an Error: {e}"), |e| format!("{e:?}"));
            panic!("HTTP {}: {detail}", self.status);
        }
        M::decode(self.body.clone()).expect("the body is the response message")
    }

    /// The `x-kms-migrationkeyversionid` header.
    pub fn version(&self) -> Option<String> {
        self.headers
            .get(MIGRATION_HEADER)
            .map(|v| v.to_str().expect("ASCII").to_string())
    }
}

/// Asserts that `answer` is the error `code` with HTTP `status` and a message containing every
/// one of `needles`.
#[track_caller]
pub fn assert_error(answer: &Answer, status: u16, code: &str, needles: &[&str]) {
    let (got, error) = answer.error();
    assert_eq!(
        (got, error.error_code.as_str()),
        (status, code),
        "{error:?}"
    );
    assert_eq!(
        error.status_code,
        i32::from(status),
        "StatusCode inside the message"
    );
    for needle in needles {
        assert!(
            error.error_message.contains(needle),
            "{code}: {:?} does not say {needle:?}",
            error.error_message
        );
    }
}

/// POSTs `body` with `headers` to `/` over HTTP/1.1, as the SDK does.
pub async fn post(addr: SocketAddr, headers: HeaderMap, body: Vec<u8>) -> Answer {
    let response = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client")
        .post(format!("http://{addr}/"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("the request is answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("the answer's body");
    Answer {
        status,
        headers,
        body,
    }
}

/// Signs and sends `message` as `api`, dated now.
pub async fn call(
    addr: SocketAddr,
    key: &ClientKey,
    api: &str,
    message: &impl prost::Message,
) -> Answer {
    let body = message.encode_to_vec();
    post(addr, key.headers(api, &body, SystemTime::now()), body).await
}

/// POSTs over a fresh HTTP/2 connection: `headers` (none of the framing ones), then `chunks`
/// as DATA frames, the last ending the stream when `end` (else the stream stays open, as a
/// body still being sent). Returns the answer as soon as it comes, whether or not the server
/// read everything (a refused body is not read to its end).
pub async fn h2_post(
    addr: SocketAddr,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    end: bool,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{addr}/"))
        .body(())
        .expect("a request");
    *request.headers_mut() = headers;
    let mut send = send.ready().await.expect("the connection is ready");
    let (response, mut stream) = send.send_request(request, false).expect("a stream");
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        if stream.send_data(chunk, end && i == last).is_err() {
            break;
        }
    }
    let response = response.await.expect("an answer");
    let (head, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the answer's body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    driver.abort();
    Answer {
        status: head.status.as_u16(),
        headers: head.headers,
        body: Bytes::from(data),
    }
}

/// `headers` with `name` set to `value`.
pub fn with(mut headers: HeaderMap, name: &'static str, value: &str) -> HeaderMap {
    headers.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).expect("a header value"),
    );
    headers
}

/// Serves the token copy's daemon over TLS too, on an ephemeral port, with the dev
/// certificate the template made (its CA in [`dev_ca`]).
pub fn serve_dev_tls(token: &super::TestToken) {
    let state = token.state_dir().to_path_buf();
    token.set_server("tls_listen", "127.0.0.1:0");
    token.edit_config(|t| {
        let mut tls = toml::Table::new();
        tls.insert(
            "cert_file".into(),
            state.join("tls.crt").display().to_string().into(),
        );
        tls.insert(
            "key_file".into(),
            state.join("tls.key").display().to_string().into(),
        );
        t.get_mut("server")
            .and_then(toml::Value::as_table_mut)
            .expect("[server]")
            .insert("tls".into(), tls.into());
    });
}

/// The dev CA certificate of a token copy.
pub fn dev_ca(token: &super::TestToken) -> std::path::PathBuf {
    token.state_dir().join("ca.pem")
}

/// Sends the token copy's audit trail to `<state>/audit.jsonl` and returns its path.
pub fn audit_to_file(token: &super::TestToken) -> std::path::PathBuf {
    let path = token.state_dir().join("audit.jsonl");
    token.set_config("audit", "sink", "file");
    token.set_config("audit", "file", path.display().to_string());
    path
}

/// The audit records written so far.
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The PEM of a DER SubjectPublicKeyInfo.
pub fn spki_pem(der: &[u8]) -> String {
    der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, der).expect("PEM")
}
