//! The audit trail and request ids (issue 5, items 4–5): one record per request under
//! concurrent load (matched by request id), `x-request-id` accepted or generated and returned,
//! a canary scan of every output for secrets and message bytes, and a required audit sink that
//! fails closed and is reopened on SIGHUP.

mod common;

use base64::Engine as _;
use common::faultshim::Shim;
use common::{dev_key_id, CryptoClient, Daemon, Launch, TestToken};
use p11kms::api::yandex::grpc::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricSignHashRequest, AsymmetricSignRequest,
};
use p11kms::crypto::Algorithm;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const SA: &str = "serviceAccount";
const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";

/// A token copy whose audit trail goes to `<state>/audit.jsonl`.
fn audited_token(required: bool) -> (TestToken, PathBuf) {
    let token = TestToken::dev();
    let path = token.state_dir().join("audit.jsonl");
    token.set_config("audit", "sink", "file");
    token.set_config("audit", "file", path.display().to_string());
    token.set_config("audit", "required", required);
    (token, path)
}

fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn code_name(code: Code) -> String {
    // google.rpc.Code names: PermissionDenied -> PERMISSION_DENIED.
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    if code == Code::Ok {
        "OK".into()
    } else {
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sign,
    SignHash,
    PublicKey,
    Denied,
    WrongToken,
    NoToken,
    BadKeyId,
    MissingKey,
    Impatient,
}

struct Sent {
    id: String,
    kind: Kind,
    code: Code,
    echoed: Option<String>,
    message: Vec<u8>,
    digest: Vec<u8>,
}

fn with_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("x-request-id", id.parse().expect("a sane id"));
    r
}

fn echoed(md: &tonic::metadata::MetadataMap) -> Option<String> {
    md.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_exactly_one_audit_record_and_no_secret_is_written_anywhere() {
    const CLIENTS: usize = 32;
    const PER_CLIENT: usize = 25;
    let _cpu = common::load::cpu_shared();
    let (token, audit) = audited_token(true);
    // Hundreds of the load's requests carry no valid credential, from one address within a
    // second or two; the per-address limit on those (tests/rate_limit.rs) would answer some
    // with RESOURCE_EXHAUSTED instead of the outcome each request is checked for.
    token.set_config("rate_limit", "anonymous_per_ip_rps", 0.0);
    let canary = hex::encode(rand::random::<[u8; 8]>());
    let signer_token = format!("CANARYTOKEN{canary}");
    let wrong_token = format!("CANARYWRONG{canary}");
    let nobody_token = format!("CANARYNOBODY{canary}");
    let message_canary = format!("CANARYMSG{canary}");
    token.add_api_token(&signer_token, "canary-signer", SA);
    token.add_api_token(&nobody_token, "canary-nobody", SA);
    token.add_binding(SIGNER, "canary-signer", SA, "p11kms-config");
    // Debug logs: the strictest place for a secret to hide.
    let mut daemon = Launch::serve(&token).env("RUST_LOG", "debug").start();
    let key = dev_key_id(P256);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let signer = CryptoClient::new(daemon.auth_channel_as(Some(&signer_token)).await);
        let nobody = CryptoClient::new(daemon.auth_channel_as(Some(&nobody_token)).await);
        let wrong = CryptoClient::new(daemon.auth_channel_as(Some(&wrong_token)).await);
        let anonymous = CryptoClient::new(daemon.auth_channel_as(None).await);
        let key = key.clone();
        let message_canary = message_canary.clone();
        tasks.spawn(async move {
            let (mut signer, mut nobody, mut wrong, mut anonymous) =
                (signer, nobody, wrong, anonymous);
            let mut sent = Vec::new();
            for i in 0..PER_CLIENT {
                let id = format!("load-{client}-{i}");
                let message = format!("{message_canary} from {client}/{i}").into_bytes();
                // A SignHash digest that is the hash of no message sent in the run: a Sign
                // record carries SHA-256(message) by design, so a digest equal to it could not
                // tell a leaked digest from that field.
                let digest =
                    Sha256::digest([b"digest-canary:".as_slice(), &message].concat()).to_vec();
                let kind = if i % 10 == 9 {
                    Kind::Impatient
                } else {
                    [
                        Kind::Sign,
                        Kind::SignHash,
                        Kind::PublicKey,
                        Kind::Denied,
                        Kind::WrongToken,
                        Kind::NoToken,
                        Kind::BadKeyId,
                        Kind::MissingKey,
                    ][(client + i) % 8]
                };
                let sign = |key: &str| AsymmetricSignRequest {
                    key_id: key.to_string(),
                    message: message.clone(),
                };
                let result = match kind {
                    Kind::Sign => signer
                        .sign(with_id(sign(&key), &id))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::SignHash => signer
                        .sign_hash(with_id(
                            AsymmetricSignHashRequest {
                                key_id: key.clone(),
                                hash: digest.clone(),
                            },
                            &id,
                        ))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::PublicKey => signer
                        .get_public_key(with_id(
                            AsymmetricGetPublicKeyRequest {
                                key_id: key.clone(),
                            },
                            &id,
                        ))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::Denied => nobody
                        .sign(with_id(sign(&key), &id))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::WrongToken => wrong
                        .sign(with_id(sign(&key), &id))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::NoToken => anonymous
                        .sign(with_id(sign(&key), &id))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::BadKeyId => signer
                        .sign(with_id(sign(&"k".repeat(51)), &id))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::MissingKey => signer
                        .sign(with_id(sign("nosuchkey0000000000"), &id))
                        .await
                        .map(|r| echoed(r.metadata())),
                    Kind::Impatient => {
                        // Gives up after 1 ms: the server may finish, fail or be cancelled.
                        let mut r = with_id(sign(&dev_key_id(Algorithm::Rsa4096PssSha512)), &id);
                        r.set_timeout(Duration::from_millis(1));
                        signer.sign(r).await.map(|r| echoed(r.metadata()))
                    }
                };
                let (code, echoed) = match result {
                    Ok(e) => (Code::Ok, e),
                    Err(s) => (s.code(), echoed(s.metadata())),
                };
                sent.push(Sent {
                    id,
                    kind,
                    code,
                    echoed,
                    message,
                    digest,
                });
            }
            sent
        });
    }
    let mut sent: Vec<Sent> = Vec::new();
    while let Some(batch) = tasks.join_next().await {
        sent.extend(batch.expect("a load client"));
    }
    let load_time = started.elapsed();

    // No client id: one is made up and returned; an unusable one is replaced.
    let mut signer = CryptoClient::new(daemon.auth_channel_as(Some(&signer_token)).await);
    let generated = echoed(
        signer
            .get_public_key(AsymmetricGetPublicKeyRequest {
                key_id: key.clone(),
            })
            .await
            .unwrap()
            .metadata(),
    )
    .expect("an x-request-id comes back");
    assert_eq!(generated.len(), 36, "{generated}");
    let mut bad = tonic::Request::new(AsymmetricGetPublicKeyRequest {
        key_id: key.clone(),
    });
    bad.metadata_mut()
        .insert("x-request-id", "bad id!".parse().unwrap());
    let replaced = echoed(signer.get_public_key(bad).await.unwrap().metadata()).unwrap();
    assert_ne!(replaced, "bad id!");

    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );
    let recs = records(&audit);
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &recs {
        by_id
            .entry(r["request_id"].as_str().expect("request_id").to_string())
            .or_default()
            .push(r);
    }
    // An impatient request's 1 ms deadline can expire inside the client, before the request
    // is on the wire: the daemon never saw it, so there is nothing to record. Every other
    // request reached the daemon and must have exactly one record.
    let never_sent = sent
        .iter()
        .filter(|s| s.kind == Kind::Impatient && !by_id.contains_key(&s.id))
        .count();
    let impatient = sent.iter().filter(|s| s.kind == Kind::Impatient).count();
    assert!(
        never_sent < impatient,
        "no impatient request reached the daemon: the cancellation path went untested"
    );
    let total = sent.len() - never_sent + 2;
    println!(
        "{} requests from {CLIENTS} clients in {load_time:.1?}; {} audit records; {never_sent} of \
         {impatient} impatient requests gave up before they were sent",
        sent.len() + 2,
        recs.len()
    );
    assert_eq!(recs.len(), total, "one record per request");
    assert_eq!(by_id.len(), total, "every request id once");
    assert!(by_id.contains_key(&generated) && by_id.contains_key(&replaced));
    for s in &sent {
        if s.kind != Kind::Impatient {
            assert!(
                by_id.contains_key(&s.id),
                "no record of {:?} {}",
                s.kind,
                s.id
            );
        }
    }

    let serial = token.serial();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sent {
        if s.kind != Kind::Impatient {
            // (an impatient client's own deadline answers it, without the server's headers)
            assert_eq!(
                s.echoed.as_deref(),
                Some(s.id.as_str()),
                "{:?} {}",
                s.kind,
                s.id
            );
        }
        let Some(r) = by_id.get(&s.id).map(|r| r[0]) else {
            continue; // an impatient request that never left the client (counted above)
        };
        *outcomes
            .entry(format!("{:?} {}", s.kind, r["outcome"]))
            .or_default() += 1;
        for field in [
            "time",
            "request_id",
            "subject",
            "peer",
            "rpc",
            "key_id",
            "algorithm",
            "outcome",
            "latency_ms",
            "token_serial",
        ] {
            assert!(r.get(field).is_some(), "{field} missing: {r}");
        }
        let time = r["time"].as_str().unwrap();
        assert!(time.parse::<prost_types::Timestamp>().is_ok(), "{time}");
        assert_eq!(r["token_serial"], serial.as_str());
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        assert!(r["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(r["rpc"].as_str().unwrap().starts_with(
            "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/"
        ));
        if s.kind == Kind::Impatient {
            continue; // the client gave up first; the record has the server's outcome
        }
        assert_eq!(
            r["outcome"],
            code_name(s.code).as_str(),
            "{:?}: {r}",
            s.kind
        );
        let subject = &r["subject"];
        match s.kind {
            Kind::WrongToken | Kind::NoToken => {
                assert!(subject.is_null(), "{r}");
                assert_eq!(s.code, Code::Unauthenticated);
            }
            Kind::Denied => assert_eq!(subject["id"], "canary-nobody"),
            _ => {
                assert_eq!(subject["id"], "canary-signer");
                assert_eq!(subject["type"], SA);
                assert_eq!(subject["method"], "token");
            }
        }
        match s.kind {
            Kind::Sign => {
                assert_eq!(s.code, Code::Ok);
                assert_eq!(r["event"], "AsymmetricSign");
                assert_eq!(r["algorithm"], "ECDSA_NIST_P256_SHA_256");
                assert_eq!(r["key_id"], key.as_str());
                assert_eq!(r["message_sha256"], hex::encode(Sha256::digest(&s.message)));
            }
            Kind::SignHash => {
                assert_eq!(s.code, Code::Ok);
                assert_eq!(r["event"], "AsymmetricSignHash");
                assert_eq!(r["digest_sha256"], hex::encode(Sha256::digest(&s.digest)));
            }
            Kind::PublicKey => assert_eq!(r["event"], "AsymmetricGetPublicKey"),
            Kind::Denied | Kind::MissingKey => assert_eq!(s.code, Code::PermissionDenied),
            Kind::BadKeyId => assert_eq!(s.code, Code::InvalidArgument),
            _ => {}
        }
    }
    println!("outcomes: {outcomes:#?}");

    // The canary scan: stdout, stderr (debug logs) and the audit trail.
    let outputs = [
        ("stdout", daemon.stdout()),
        ("stderr", daemon.stderr()),
        ("audit", std::fs::read_to_string(&audit).unwrap()),
    ];
    // Any request's bytes are canaries; the digest one must come from a SignHash request,
    // whatever order the clients finished in.
    let sample = &sent[0];
    let hashed = sent
        .iter()
        .find(|s| s.kind == Kind::SignHash)
        .expect("the load sent SignHash requests");
    let canaries = [
        ("user PIN", token.user_pin()),
        ("SO PIN", token.so_pin()),
        ("bearer token", signer_token.clone()),
        ("wrong bearer token", wrong_token.clone()),
        ("denied bearer token", nobody_token.clone()),
        ("message bytes", message_canary.clone()),
        ("message hex", hex::encode(&sample.message)),
        (
            "message base64",
            base64::engine::general_purpose::STANDARD.encode(&sample.message),
        ),
        ("digest as given (hex)", hex::encode(&hashed.digest)),
        (
            "digest as given (base64)",
            base64::engine::general_purpose::STANDARD.encode(&hashed.digest),
        ),
    ];
    let mut scanned = 0;
    for (where_, text) in &outputs {
        scanned += text.len();
        for (what, canary) in &canaries {
            assert!(
                !text.contains(canary.as_str()),
                "the {what} appears in {where_}"
            );
        }
    }
    println!(
        "canary scan: {} canaries, 0 hits in {} bytes of stdout, stderr (RUST_LOG=debug) and audit file",
        canaries.len(),
        scanned
    );
}

/// With `[audit] required = true` a record that cannot be written withholds the answer
/// (UNAVAILABLE) at once, not when the write timeout expires; SIGHUP reopens a rotated file,
/// and a sink that works again serves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_required_audit_sink_fails_closed_and_is_reopened_on_sighup() {
    // Far longer than any request takes on a loaded machine, so that an answer that waited
    // for it cannot be mistaken for one that did not.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
    let (token, audit) = audited_token(true);
    token.set_config(
        "audit",
        "write_timeout_ms",
        i64::try_from(WRITE_TIMEOUT.as_millis()).unwrap(),
    );
    let shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let mut kms = daemon.kms().await;
    let key = dev_key_id(P256);
    let hup = |d: &Daemon| d.signal(nix::sys::signal::Signal::SIGHUP);

    kms.sign(&key, b"first").await.unwrap();
    assert_eq!(records(&audit).len(), 1);

    // Rotation: rename, SIGHUP; new records go to a new file at the same path.
    let rotated = audit.with_extension("jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    kms.sign(&key, b"before the reopen").await.unwrap();
    hup(&daemon);
    daemon
        .wait_for_log("audit sink reopened", 1, Duration::from_secs(10))
        .await;
    kms.sign(&key, b"after the reopen").await.unwrap();
    assert_eq!(records(&rotated).len(), 2);
    assert_eq!(records(&audit).len(), 1);

    // The sink breaks: the path now leads to a device that is always full (ENOSPC).
    std::fs::remove_file(&audit).unwrap();
    std::os::unix::fs::symlink("/dev/full", &audit).unwrap();
    hup(&daemon);
    daemon
        .wait_for_log("audit sink reopened", 2, Duration::from_secs(10))
        .await;
    // Settled, not merely non-zero: the shim writes its stats from a background thread.
    let signs_before = shim.settled_stats().await["calls.C_Sign"];
    let started = Instant::now();
    let refused = kms.sign(&key, b"must not leave").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("audit"), "{refused:?}");
    // The write failed (ENOSPC) and said so: the answer did not wait for the timeout.
    assert!(
        took < WRITE_TIMEOUT / 2,
        "failing closed took {took:?} (write timeout {WRITE_TIMEOUT:?})"
    );
    // The token did sign; the signature was withheld because it could not be audited.
    shim.wait_stat("calls.C_Sign", signs_before + 1).await;
    // Everything fails closed, not just signing.
    assert_eq!(
        kms.public_key(&key).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(
        daemon
            .kms_as(None)
            .await
            .sign(&key, b"x")
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    daemon
        .wait_for_log("AUDIT RECORD NOT WRITTEN", 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        daemon.stderr_count("AUDIT RECORD NOT WRITTEN"),
        1,
        "logged once per outage, not per request"
    );
    println!("fail-closed answer in {took:?}");

    // Another breakage: a directory where the file was. The reopen fails; still closed.
    std::fs::remove_file(&audit).unwrap();
    std::fs::create_dir(&audit).unwrap();
    hup(&daemon);
    daemon
        .wait_for_log("audit sink reopen failed", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        kms.sign(&key, b"still not").await.unwrap_err().code(),
        Code::Unavailable
    );

    // Repaired: a SIGHUP reopens it and requests are answered (and audited) again.
    std::fs::remove_dir(&audit).unwrap();
    hup(&daemon);
    daemon
        .wait_for_log("audit sink reopened", 3, Duration::from_secs(10))
        .await;
    kms.sign(&key, b"again").await.unwrap();
    let recs = records(&audit);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["outcome"], "OK");
    daemon
        .wait_for_log(
            "audit records are being written again",
            1,
            Duration::from_secs(5),
        )
        .await;
}

/// Not required: a broken sink is logged and requests are still answered. The default sink is
/// stdout, one JSON line per request.
#[tokio::test(flavor = "multi_thread")]
async fn an_optional_sink_logs_its_failure_and_the_default_sink_is_stdout() {
    let (token, audit) = audited_token(false);
    std::os::unix::fs::symlink("/dev/full", &audit).unwrap();
    let daemon = Launch::serve(&token).start();
    let mut kms = daemon.kms().await;
    kms.sign(&dev_key_id(P256), b"served anyway").await.unwrap();
    daemon
        .wait_for_log("AUDIT RECORD NOT WRITTEN", 1, Duration::from_secs(5))
        .await;

    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let mut client = daemon.client().await;
    let resp = client
        .get_public_key(with_id(
            AsymmetricGetPublicKeyRequest {
                key_id: dev_key_id(P256),
            },
            "stdout-check",
        ))
        .await
        .unwrap();
    assert_eq!(echoed(resp.metadata()).as_deref(), Some("stdout-check"));
    let start = Instant::now();
    let line = loop {
        if let Some(l) = daemon
            .stdout()
            .lines()
            .find(|l| l.contains("\"request_id\":\"stdout-check\""))
        {
            break l.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            daemon.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["outcome"], "OK");
    assert_eq!(record["subject"]["id"], "dev-admin");
}

/// Answers the transport gives before (or instead of) the request-context layer (issue 11,
/// item 4) each leave one audit record: an oversized header list (HTTP 431, over HTTP/2 and
/// HTTP/1.1; a 20 KB bearer token also counts as a failed authentication), a stream past
/// `max_concurrent_streams` (REFUSED_STREAM), an HTTP/1.1 request that does not parse (400).
/// A protocol error that never became a request gets a counted log line instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_given_by_the_transport_are_audited_and_protocol_errors_are_counted() {
    use common::h2raw::{grpc_frame, Answer, H2Conn, RawH2, REFUSED_STREAM};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const GET_PUBLIC_KEY: &str =
        "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/GetPublicKey";
    let (token, audit) = audited_token(false);
    token.set_server("max_concurrent_streams", 2);
    let mut daemon = Daemon::serve(&token, &[]);
    let admin = daemon.admin_token().to_string();
    let body = || {
        vec![grpc_frame(&prost::Message::encode_to_vec(
            &AsymmetricGetPublicKeyRequest {
                key_id: dev_key_id(P256),
            },
        ))]
    };
    let mut seen = Vec::new();

    // A 20 KB bearer token, over HTTP/2.
    let conn = H2Conn::connect(daemon.addr()).await;
    let big_token = format!("CANARYBIG{}", "x".repeat(20_000));
    let answer = conn
        .unary(
            GET_PUBLIC_KEY,
            Some(&big_token),
            &[("x-request-id", "big-bearer".to_string())],
            body(),
        )
        .await;
    seen.push(format!("20 KB bearer over HTTP/2: {answer:?}"));
    let mut answered_as_expected = vec![answer == Answer::Http(431)];
    // A 100 KB header list, over HTTP/2.
    let answer = conn
        .unary(
            GET_PUBLIC_KEY,
            Some(&admin),
            &[("x-padding", "p".repeat(100_000))],
            body(),
        )
        .await;
    seen.push(format!("100 KB header list over HTTP/2: {answer:?}"));
    answered_as_expected.push(answer == Answer::Http(431));

    // Three streams where two may be open: the third is refused.
    let mut raw = RawH2::connect(daemon.addr()).await;
    let bearer = [("authorization", format!("Bearer {admin}"))];
    for stream in [1, 3] {
        raw.headers(stream, GET_PUBLIC_KEY, &bearer, false).await;
    }
    raw.headers(5, GET_PUBLIC_KEY, &bearer, false).await;
    let refused = raw.answer_on(5).await.expect("an answer on stream 5");
    seen.push(format!(
        "third stream with max_concurrent_streams = 2: frame type {} code {:?}",
        refused.kind,
        refused.error_code()
    ));
    answered_as_expected.push((refused.kind, refused.error_code()) == (3, Some(REFUSED_STREAM)));
    drop(raw);

    // HTTP/1.1: a request line that does not parse; headers over every limit.
    let h1 = |request: Vec<u8>| {
        let addr = daemon.addr();
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = stream.write_all(&request).await;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer)
                .split(' ')
                .nth(1)
                .unwrap_or("none")
                .to_string()
        }
    };
    let garbage = h1(b"GARBAGE / HTTP/9.9 !\r\n\r\n".to_vec()).await;
    seen.push(format!("HTTP/1.1 garbage: {garbage}"));
    answered_as_expected.push(garbage == "400");
    let mut huge = b"GET /endpoints HTTP/1.1\r\nHost: p11kms\r\n".to_vec();
    for i in 0..4 {
        huge.extend_from_slice(format!("x-pad-{i}: {}\r\n", "q".repeat(50_000)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let status = h1(huge).await;
    seen.push(format!("HTTP/1.1 200 KB of headers: {status}"));
    answered_as_expected.push(status == "431");

    // A protocol error: WINDOW_UPDATE with a zero increment on the connection.
    let mut raw = RawH2::connect(daemon.addr()).await;
    raw.frame(8, 0, 0, &[0, 0, 0, 0]).await;
    let goaway = loop {
        match raw.next_frame().await {
            Some(f) if f.kind == 7 => break Some(f),
            Some(_) => {}
            None => break None,
        }
    };
    seen.push(format!(
        "zero WINDOW_UPDATE: GOAWAY {:?}",
        goaway.as_ref().and_then(common::h2raw::Frame::error_code)
    ));
    let counted = tokio::time::timeout(
        Duration::from_secs(10),
        daemon.wait_for_log(
            "connection ended on a protocol error",
            1,
            Duration::from_secs(10),
        ),
    )
    .await;
    let authn_logged = daemon.stderr_count("authentication failed");

    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );
    let recs = records(&audit);
    let transport: Vec<&Value> = recs
        .iter()
        .filter(|r| r.get("transport").is_some())
        .collect();
    let big = recs.iter().find(|r| r["request_id"] == "big-bearer");
    println!(
        "{}\n{} audit records, {} of them transport answers: {:#?}\nbig-bearer record: {big:?}\n\
         'authentication failed' log lines: {authn_logged}",
        seen.join("\n"),
        recs.len(),
        transport.len(),
        transport
    );
    assert!(
        answered_as_expected.iter().all(|ok| *ok),
        "answers as expected: {answered_as_expected:?}"
    );
    let big = big.expect("no record of the request with a 20 KB bearer token");
    assert_eq!(big["outcome"], "RESOURCE_EXHAUSTED", "{big}");
    assert!(big["authentication_failure"].is_string(), "{big}");
    assert!(big["subject"].is_null(), "{big}");
    assert!(
        authn_logged >= 1,
        "the 20 KB bearer token logged no authentication failure"
    );
    let of = |needle: &str| {
        transport
            .iter()
            .filter(|r| r["transport"].as_str().unwrap_or_default().contains(needle))
            .count()
    };
    assert_eq!(of("HTTP/2 431"), 1, "the 100 KB header list");
    assert_eq!(of("REFUSED_STREAM"), 1, "the refused stream");
    assert_eq!(of("HTTP/1.1 400"), 1, "the HTTP/1.1 garbage");
    assert_eq!(of("HTTP/1.1 431"), 1, "the HTTP/1.1 header overflow");
    assert_eq!(transport.len(), 4, "one record per transport answer");
    for r in &transport {
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        assert!(
            r["request_id"].as_str().is_some_and(|id| id.len() == 36),
            "{r}"
        );
    }
    // Every record's request id is unique: no answer was recorded twice.
    let ids: std::collections::BTreeSet<&str> = recs
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), recs.len());
    assert!(
        counted.is_ok(),
        "the protocol error left no counted log line"
    );
    assert!(!std::fs::read_to_string(&audit)
        .unwrap()
        .contains("CANARYBIG"));
    daemon.assert_never_printed("CANARYBIG");
}
