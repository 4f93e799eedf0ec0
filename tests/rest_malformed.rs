//! Malformed REST input (issue 6): broken JSON, wrong types, huge bodies, bad base64, unknown
//! fields, wrong content types, wrong methods, unknown verbs and path traversal in key ids.
//! Every case gets a 4xx with the Yandex error body and a message that says what is wrong
//! (never a 5xx), and the daemon stays healthy: health SERVING, signing works, nothing panicked,
//! no file descriptors left behind.

mod common;
mod rest_support;

use common::{dev_key_id, Daemon, ServingStatus, TestToken};
use p11kms::crypto::Algorithm;
use reqwest::Method;
use rest_support::{key_path, Http, Rest};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<Vec<u8>>,
    code: Code,
    needles: Vec<&'static str>,
}

impl Case {
    fn new(name: &'static str, method: Method, path: impl AsRef<str>) -> Self {
        Self {
            name,
            method,
            path: path.as_ref().to_string(),
            headers: Vec::new(),
            body: None,
            code: Code::Ok,
            needles: Vec::new(),
        }
    }

    fn json(self) -> Self {
        self.content_type("application/json")
    }

    fn content_type(mut self, value: &'static str) -> Self {
        self.headers.push(("content-type", value));
        self
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = Some(body.as_ref().to_vec());
        self
    }

    fn expect(mut self, code: Code, needles: &[&'static str]) -> Self {
        self.code = code;
        self.needles = needles.to_vec();
        self
    }
}

/// Sends raw bytes on a fresh HTTP/1.1 connection (for what `reqwest` would not send) and
/// returns the status and body. The server may answer and close before it read everything:
/// the write may then fail, and whatever arrived is the answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    drop(writing.await);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_precise_4xx_and_the_daemon_stays_healthy() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let rest = Rest::new(&daemon);
    let key = dev_key_id(Algorithm::EcdsaP256Sha256);
    let sign = key_path(&key, ":sign");
    let sign_hash = key_path(&key, ":signHash");
    let keys = "/kms/v1/asymmetricSignatureKeys".to_string();
    let fds_before = daemon.open_fds();
    let huge = format!(r#"{{"message":"{}"}}"#, "A".repeat(1 << 20)).into_bytes();
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let deep = format!(r#"{{"message":"aGk=","keyId":{deep}}}"#).into_bytes();
    use Code::{InvalidArgument as IA, NotFound as NF, OutOfRange as OOR};

    let cases = vec![
        // Broken JSON.
        Case::new("truncated JSON", Method::POST, &sign)
            .json()
            .body(br#"{"message":"#)
            .expect(IA, &["not valid JSON", "EOF"]),
        Case::new("trailing garbage", Method::POST, &sign)
            .json()
            .body(br#"{"message":"aGk="} x"#)
            .expect(IA, &["not valid JSON", "trailing"]),
        Case::new("not JSON at all", Method::POST, &sign)
            .json()
            .body(b"message=aGk=")
            .expect(IA, &["not valid JSON"]),
        Case::new("invalid UTF-8", Method::POST, &sign)
            .json()
            .body(b"{\"message\":\"\xff\xfe\"}")
            .expect(IA, &["not valid JSON"]),
        Case::new("an array, not an object", Method::POST, &sign)
            .json()
            .body(b"[\"aGk=\"]")
            .expect(IA, &["a JSON object"]),
        Case::new("a string, not an object", Method::POST, &sign)
            .json()
            .body(br#""aGk=""#)
            .expect(IA, &["a JSON object"]),
        Case::new("nested 300 deep", Method::POST, &sign)
            .json()
            .body(&deep)
            .expect(IA, &["field keyId", "invalid type: sequence"]),
        Case::new("duplicate field", Method::POST, &sign)
            .json()
            .body(br#"{"message":"aGk=","message":"aGk="}"#)
            .expect(IA, &["duplicate field `message`"]),
        // Wrong types.
        Case::new("message is a number", Method::POST, &sign)
            .json()
            .body(br#"{"message":5}"#)
            .expect(IA, &["field message", "invalid type: integer `5`"]),
        Case::new("keyId is an object", Method::POST, &sign)
            .json()
            .body(br#"{"message":"aGk=","keyId":{}}"#)
            .expect(IA, &["field keyId", "invalid type: map"]),
        Case::new("bool as a string", Method::POST, &keys)
            .json()
            .body(br#"{"folderId":"f","signatureAlgorithm":"ECDSA_NIST_P256_SHA_256","deletionProtection":"yes"}"#)
            .expect(IA, &["field deletionProtection", "expected a boolean"]),
        Case::new("labels as a list", Method::POST, &keys)
            .json()
            .body(br#"{"folderId":"f","labels":["a"]}"#)
            .expect(IA, &["field labels", "invalid type: sequence"]),
        Case::new("unknown algorithm name", Method::POST, &keys)
            .json()
            .body(br#"{"folderId":"f","signatureAlgorithm":"RSA_1024"}"#)
            .expect(IA, &["field signatureAlgorithm", "\"RSA_1024\"", "ECDSA_NIST_P256_SHA_256"]),
        Case::new("unknown algorithm number", Method::POST, &keys)
            .json()
            .body(br#"{"folderId":"f","signatureAlgorithm":99}"#)
            .expect(IA, &["signature_algorithm 99 is not supported"]),
        Case::new("updateMask as a list", Method::PATCH, key_path(&key, ""))
            .json()
            .body(br#"{"updateMask":["name"]}"#)
            .expect(IA, &["field updateMask", "invalid type: sequence"]),
        Case::new("pageSize not a number", Method::GET, format!("{keys}?folderId=f&pageSize=ten"))
            .expect(IA, &["query parameter pageSize", "\"ten\""]),
        Case::new("pageSize beyond int64", Method::GET, format!("{keys}?folderId=f&pageSize=99999999999999999999"))
            .expect(IA, &["query parameter pageSize"]),
        Case::new("pageSize out of range", Method::GET, format!("{keys}?folderId=f&pageSize=1001"))
            .expect(IA, &["page_size is 1001"]),
        // Bad base64.
        Case::new("not base64", Method::POST, &sign)
            .json()
            .body(br#"{"message":"***"}"#)
            .expect(IA, &["field message", "not base64"]),
        Case::new("mixed alphabets", Method::POST, &sign_hash)
            .json()
            .body(br#"{"hash":"ab+_"}"#)
            .expect(IA, &["field hash", "not base64"]),
        Case::new("a newline inside", Method::POST, &sign)
            .json()
            .body(br#"{"message":"aGVs\nbG8="}"#)
            .expect(IA, &["not base64"]),
        Case::new("too much padding", Method::POST, &sign)
            .json()
            .body(br#"{"message":"aGk=="}"#)
            .expect(IA, &["not base64"]),
        // Unknown fields.
        Case::new("unknown field", Method::POST, &sign)
            .json()
            .body(br#"{"message":"aGk=","msg":"x"}"#)
            .expect(IA, &["unknown field `msg`", "`message`"]),
        Case::new("unknown nested field", Method::POST, key_path(&key, ":setAccessBindings"))
            .json()
            .body(br#"{"accessBindings":[{"roleId":"kms.viewer","subject":{"id":"a","type":"userAccount","name":"x"}}]}"#)
            .expect(IA, &["accessBindings[0].subject", "unknown field `name`"]),
        Case::new("unknown query parameter", Method::GET, key_path(&key, "/publicKey?format=der"))
            .expect(IA, &["unknown field `format`"]),
        Case::new("query on a body method", Method::POST, format!("{sign}?message=aGk="))
            .json()
            .body(b"{}")
            .expect(IA, &["unknown field `message`"]),
        Case::new("repeated query parameter", Method::GET, format!("{keys}?folderId=a&folderId=b"))
            .expect(IA, &["folderId", "more than once"]),
        // Content types and sizes.
        Case::new("text/plain", Method::POST, &sign)
            .content_type("text/plain")
            .body(br#"{"message":"aGk="}"#)
            .expect(IA, &["\"text/plain\" is not supported", "application/json"]),
        Case::new("a form, as curl -d sends", Method::POST, &sign)
            .content_type("application/x-www-form-urlencoded")
            .body(br#"{"message":"aGk="}"#)
            .expect(IA, &["application/x-www-form-urlencoded", "application/json"]),
        Case::new("no content type", Method::POST, &sign)
            .body(br#"{"message":"aGk="}"#)
            .expect(IA, &["no Content-Type"]),
        Case::new("another charset", Method::POST, &sign)
            .content_type("application/json; charset=latin1")
            .body(br#"{"message":"aGk="}"#)
            .expect(IA, &["not supported"]),
        Case::new("1 MiB body", Method::POST, &sign)
            .json()
            .body(&huge)
            .expect(OOR, &["over the limit", "bytes", ":signHash"]),
        Case::new("message over 32768 bytes", Method::POST, &sign)
            .json()
            .body(format!(r#"{{"message":"{}"}}"#, rest_support::b64(&[7; 32769])).as_bytes())
            .expect(IA, &["message is 32769 bytes", "limit is 32768"]),
        Case::new("hash of the wrong length", Method::POST, &sign_hash)
            .json()
            .body(br#"{"hash":"AAAA"}"#)
            .expect(IA, &["hash is 3 bytes", "exactly 32 bytes"]),
        // Paths and methods.
        Case::new("unknown verb", Method::POST, key_path(&key, ":frobnicate"))
            .json()
            .body(b"{}")
            .expect(NF, &["no REST method", ":frobnicate"]),
        Case::new("unknown path", Method::GET, "/kms/v2/asymmetricSignatureKeys")
            .expect(NF, &["no REST method"]),
        Case::new("gRPC path over REST", Method::POST, "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign")
            .json()
            .body(b"{}")
            .expect(NF, &["no REST method"]),
        Case::new("key id too long", Method::POST, key_path(&"k".repeat(51), ":sign"))
            .json()
            .body(br#"{"message":"aGk="}"#)
            .expect(IA, &["key_id is 51 characters", "limit is 50"]),
        Case::new("empty key id", Method::POST, "/kms/v1/asymmetricSignatureKeys/:sign")
            .json()
            .body(br#"{"message":"aGk="}"#)
            .expect(IA, &["key_id is required"]),
        Case::new("encoded traversal", Method::GET, "/kms/v1/asymmetricSignatureKeys/..%2F..%2Fetc%2Fpasswd/publicKey")
            .expect(NF, &["../../etc/passwd", "not found"]),
        Case::new("NUL and newline in a key id", Method::GET, "/kms/v1/asymmetricSignatureKeys/a%00b%0Ac/publicKey")
            .expect(IA, &["key_id has a control character (U+0000) at character 2"]),
        Case::new("not UTF-8 in a key id", Method::GET, "/kms/v1/asymmetricSignatureKeys/%FF%FE/publicKey")
            .expect(IA, &["key_id in the URL path", "UTF-8"]),
        Case::new("operation id too long", Method::GET, format!("/operations/{}", "o".repeat(51)))
            .expect(IA, &["operation_id is 51 characters"]),
    ];
    assert!(cases.len() >= 20);

    for c in &cases {
        let r = rest
            .send(c.method.clone(), &c.path, &c.headers, c.body.clone())
            .await;
        assert!(
            (400..500).contains(&r.status),
            "{}: {} {}",
            c.name,
            r.status,
            r.text
        );
        let message = r.error(c.code, &c.needles);
        assert!(
            message.len() < 2000,
            "{}: an unwieldy message: {message}",
            c.name
        );
    }

    // Wrong methods: 405 with Allow, code UNIMPLEMENTED.
    for (method, path, allow) in [
        (Method::GET, sign.clone(), "POST"),
        (Method::PUT, key_path(&key, ""), "GET, PATCH, DELETE"),
        (Method::DELETE, keys.clone(), "GET, POST"),
        (
            Method::POST,
            "/operations/abcdefghij0123456789:cancel".to_string(),
            "GET",
        ),
        (Method::HEAD, "/endpoints".to_string(), "GET"),
    ] {
        let r = rest.send(method.clone(), &path, &[], None).await;
        if method == Method::HEAD {
            assert_eq!(r.status, 405, "HEAD {path}");
        } else {
            r.error_with_status(Code::Unimplemented, 405, &[method.as_str(), "not allowed"]);
        }
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }

    // A huge body without Content-Length (chunked) is cut off at the limit.
    let mut chunked = format!(
        "POST {sign} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        daemon.admin_token()
    )
    .into_bytes();
    for piece in huge.chunks(1000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw(daemon.addr(), &chunked).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"code\":11"), "{body}");

    // What reqwest would normalise away, sent raw: dot segments never reach a key lookup.
    let auth = format!("Authorization: Bearer {}\r\n", daemon.admin_token());
    for path in [
        "/kms/v1/asymmetricSignatureKeys/../../../etc/passwd",
        "/kms/v1/asymmetricSignatureKeys/./../asymmetricSignatureKeys/x/publicKey",
        "/kms/v1/../v1/asymmetricSignatureKeys",
    ] {
        let (status, body) = raw(
            daemon.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body.contains("\"code\":5") && body.contains("no REST method"),
            "{path}: {body}"
        );
    }
    // Not HTTP at all: hyper answers 400 and closes.
    let (status, _) = raw(daemon.addr(), b"NONSENSE\r\n\r\n").await;
    assert_eq!(status, 400);

    // Healthy after all of it.
    assert_eq!(daemon.health("").await.unwrap(), ServingStatus::Serving);
    let sig = rest
        .sign(&key, b"still here")
        .await
        .expect("signing after the abuse");
    assert!(!sig.is_empty());
    let mut kms = daemon.kms().await;
    kms.sign(&key, b"gRPC too")
        .await
        .expect("gRPC signing after the abuse");
    assert!(
        !daemon.stderr().contains("panicked"),
        "{}",
        daemon.describe()
    );
    drop(rest);
    // Connections closed by now or soon: allow the few the clients above still hold.
    assert!(
        daemon.open_fds() <= fds_before + 8,
        "file descriptors grew from {fds_before} to {}",
        daemon.open_fds()
    );
}

/// A request refused before its body was read (too large, unauthenticated, unrouted, wrong
/// method) must still reach the client as that precise error. HTTP/1.1 clients write the whole
/// body before they read, so a server that closes with the body unread resets the connection
/// and the client sees "connection reset" or "broken pipe" instead of the answer. Every
/// refusal here is repeated on one pooled client and on fresh connections, and the pooled
/// connection must stay usable afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn requests_refused_before_their_body_is_read_still_get_the_answer() {
    const ROUNDS: usize = 40;
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let key = dev_key_id(Algorithm::EcdsaP256Sha256);
    let sign = key_path(&key, ":sign");
    let body = |bytes: usize| format!(r#"{{"message":"{}"}}"#, "A".repeat(bytes)).into_bytes();
    let pooled = Rest::new(&daemon);
    let anonymous = pooled.with_token(None);

    let refused =
        |name, method, path: &str, bytes| Case::new(name, method, path).json().body(body(bytes));
    let cases: Vec<(&Rest, Case, u16)> = vec![
        (
            &pooled,
            refused("1 MiB over the limit", Method::POST, &sign, 1 << 20)
                .expect(Code::OutOfRange, &[]),
            400,
        ),
        (
            &pooled,
            refused("4 MiB over the limit", Method::POST, &sign, 4 << 20)
                .expect(Code::OutOfRange, &[]),
            400,
        ),
        (
            &anonymous,
            refused("no credentials", Method::POST, &sign, 512 << 10)
                .expect(Code::Unauthenticated, &[]),
            401,
        ),
        (
            &pooled,
            refused(
                "unknown verb",
                Method::POST,
                &key_path(&key, ":frobnicate"),
                512 << 10,
            )
            .expect(Code::NotFound, &[]),
            404,
        ),
        (
            &pooled,
            refused("wrong method", Method::PUT, &sign, 512 << 10).expect(Code::Unimplemented, &[]),
            405,
        ),
    ];
    for (rest, c, status) in &cases {
        for round in 0..ROUNDS {
            let fresh = Rest::plain(daemon.addr(), Http::One, rest.token.as_deref());
            for client in [*rest, &fresh] {
                let r = client
                    .try_send(c.method.clone(), &c.path, &c.headers, c.body.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{}, round {round}: no answer: {e:?}", c.name));
                r.error_with_status(c.code, *status, &c.needles);
            }
        }
    }

    // A body declared beyond what is worth draining is not waited for: the answer comes and
    // the connection closes at once, though the client never sends the body.
    let started = std::time::Instant::now();
    let (status, answer) = raw(
        daemon.addr(),
        format!(
            "POST {sign} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"message\":\"",
            daemon.admin_token(),
            p11kms::api::linger::MAX_DRAIN_BYTES + 1
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("\"code\":11"), "{answer}");
    assert!(
        started.elapsed() < p11kms::api::linger::MAX_DRAIN_TIME / 2,
        "the connection lingered {:?} for a body it would never finish",
        started.elapsed()
    );

    // The pooled connection was kept alive through all of that, and still signs.
    let sig = pooled
        .sign(&key, b"after the refusals")
        .await
        .expect("signing after the refusals");
    assert!(!sig.is_empty());
    assert!(
        !daemon.stderr().contains("panicked"),
        "{}",
        daemon.describe()
    );
}
