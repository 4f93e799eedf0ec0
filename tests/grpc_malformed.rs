//! Malformed gRPC requests (issue 11, item 5): a bad varint, a wrong wire type, a non-UTF-8
//! string, a message cut short, a missing message, a stream that ends mid-frame, and a unary
//! call carrying two messages. Each is a deterministic client error, so every gRPC service on
//! the listener (the KMS services, endpoint discovery, health, reflection) must answer
//! INVALID_ARGUMENT, never INTERNAL (which clients retry) and never OK.
//!
//! The frames are built by hand and sent with a bare `h2` client (tonic would not send them).
//! A tally of the answers is printed for the report (`--no-capture`).

mod common;

use bytes::Bytes;
use common::h2raw::{
    first_message, grpc_frame, length_prefix, Answer, H2Conn, ENDPOINTS_LIST, HEALTH_CHECK,
    HEALTH_WATCH, KEY_GET, REFLECTION_V1, SIGN,
};
use common::{dev_key_id, Daemon, TestToken};
use p11kms::api::yandex::grpc::pb::kms::{AsymmetricSignRequest, AsymmetricSignResponse};
use p11kms::crypto::Algorithm;
use prost::Message as _;
use std::collections::BTreeMap;

const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const ENDPOINTS_GET: &str = "/yandex.cloud.endpoint.ApiEndpointService/Get";

/// One way to get a request wrong: its body as DATA frames.
struct Case {
    name: &'static str,
    chunks: Vec<Bytes>,
}

/// The malformed bodies, for a method whose request has a `string` field 1; `valid` is a
/// well-formed request of the method (sent twice for the two-message case).
fn malformed(valid: &Bytes) -> Vec<Case> {
    let valid = valid.clone();
    // Prefix says 10 bytes; 3 arrive; END_STREAM.
    let mut short = length_prefix(0, 10);
    short.extend_from_slice(&[0x0a, 0x01, b'k']);
    vec![
        Case {
            name: "bad varint",
            // A field key whose varint never ends within 10 bytes.
            chunks: vec![grpc_frame(&[0xff; 11])],
        },
        Case {
            name: "wrong wire type",
            // Field 1 (a string) sent as a varint.
            chunks: vec![grpc_frame(&[0x08, 0x01])],
        },
        Case {
            name: "non-UTF-8 string",
            chunks: vec![grpc_frame(&[0x0a, 0x02, 0xc3, 0x28])],
        },
        Case {
            name: "length-delimited field cut short",
            // Field 1 promises 5 bytes inside a message that has 1.
            chunks: vec![grpc_frame(&[0x0a, 0x05, b'k'])],
        },
        Case {
            name: "missing message",
            chunks: vec![],
        },
        Case {
            name: "stream ends mid-frame",
            chunks: vec![short.into()],
        },
        Case {
            name: "stream ends inside the length prefix",
            chunks: vec![Bytes::from_static(&[0, 0, 0])],
        },
        Case {
            name: "two messages on a unary call",
            chunks: vec![valid.clone(), valid],
        },
    ]
}

/// One call; a stream still open after [`PATIENCE`] (an accepted Watch streams forever) is
/// reported as such instead of hanging the test.
async fn call(conn: &H2Conn, path: &str, bearer: Option<&str>, chunks: Vec<Bytes>) -> Answer {
    tokio::time::timeout(PATIENCE, conn.unary(path, bearer, &[], chunks))
        .await
        .unwrap_or_else(|_| Answer::Reset(format!("still streaming after {PATIENCE:?}")))
}

/// Far longer than a refusal takes on a loaded machine.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_gets_invalid_argument_on_every_grpc_service() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let admin = daemon.admin_token().to_string();
    let conn = H2Conn::connect(daemon.addr()).await;

    let key = dev_key_id(Algorithm::EcdsaP256Sha256);
    let sign = AsymmetricSignRequest {
        key_id: key.clone(),
        message: b"well formed".to_vec(),
    }
    .encode_to_vec();
    let string_field_1 = |s: &str| {
        let mut m = vec![0x0a, u8::try_from(s.len()).expect("short")];
        m.extend_from_slice(s.as_bytes());
        grpc_frame(&m)
    };
    // (path, credential, a valid request): unary-request methods of every service on the
    // listener. Each valid request alone would be answered OK.
    let methods: [(&str, Option<&str>, Bytes); 5] = [
        (SIGN, Some(&admin), grpc_frame(&sign)),
        (KEY_GET, Some(&admin), string_field_1(&key)),
        (ENDPOINTS_GET, None, string_field_1("kms")),
        (HEALTH_CHECK, None, grpc_frame(&[])),
        (HEALTH_WATCH, None, grpc_frame(&[])),
    ];
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (path, bearer, valid) in &methods {
        let (path, bearer) = (*path, *bearer);
        if path != HEALTH_WATCH {
            let answer = conn.unary(path, bearer, &[], vec![valid.clone()]).await;
            assert_eq!(answer.code(), Some(OK), "{path}, well formed: {answer:?}");
        }
        for case in malformed(valid) {
            let answer = call(&conn, path, bearer, case.chunks).await;
            let code = answer.code();
            *tally
                .entry(code.map_or_else(|| format!("{answer:?}"), |c| c.to_string()))
                .or_default() += 1;
            match &answer {
                Answer::Grpc { code, message, .. } if *code == INVALID_ARGUMENT => {
                    assert!(!message.is_empty(), "{path} {}: no message", case.name);
                }
                _ => wrong.push(format!("{path} {}: {answer:?}", case.name)),
            }
        }
    }
    // The streaming-request service: reflection. Two messages are fine there; broken ones
    // are not.
    let list = grpc_frame(&[0x3a, 0x01, b'*']);
    for case in malformed(&list)
        .into_iter()
        .filter(|c| !matches!(c.name, "two messages on a unary call" | "missing message"))
    {
        let answer = call(&conn, REFLECTION_V1, None, case.chunks).await;
        *tally
            .entry(
                answer
                    .code()
                    .map_or_else(|| format!("{answer:?}"), |c| c.to_string()),
            )
            .or_default() += 1;
        if answer.code() != Some(INVALID_ARGUMENT) {
            wrong.push(format!("{REFLECTION_V1} {}: {answer:?}", case.name));
        }
    }
    println!("grpc-status of malformed requests (code: count): {tally:?}");
    assert!(
        wrong.is_empty(),
        "{} malformed requests were not answered INVALID_ARGUMENT:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );

    // Well-formed requests still work on the same connection: a Sign (verified with
    // RustCrypto), a list of reflection requests on one stream, discovery.
    let answer = conn
        .unary(SIGN, Some(&admin), &[], vec![grpc_frame(&sign)])
        .await;
    let Answer::Grpc { code: OK, body, .. } = &answer else {
        panic!("a valid Sign failed: {answer:?}");
    };
    let signature = AsymmetricSignResponse::decode(first_message(body))
        .expect("a Sign response")
        .signature;
    let mut kms = daemon.kms().await;
    let pem = kms.public_key(&key).await.expect("public key");
    common::verify::parse_public_key(&pem, Algorithm::EcdsaP256Sha256)
        .expect("the key parses")
        .verify_message(Algorithm::EcdsaP256Sha256, b"well formed", &signature)
        .expect("the signature verifies");
    // list_services (field 7) twice on one reflection stream.
    let answer = conn
        .unary(REFLECTION_V1, None, &[], vec![list.clone(), list])
        .await;
    assert_eq!(answer.code(), Some(OK), "{answer:?}");
    let answer = conn
        .unary(ENDPOINTS_LIST, None, &[], vec![grpc_frame(&[])])
        .await;
    assert_eq!(answer.code(), Some(OK), "{answer:?}");
}
