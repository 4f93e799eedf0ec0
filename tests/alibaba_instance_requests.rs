//! The KMS instance API with requests built by hand from the contract (§3, §4.2), against the
//! real daemon: what the official SDK never sends.
//!
//! * [`hand_built_refusals_get_their_code_and_never_reach_the_hsm`]: a tampered signature, an
//!   unknown client key, a skewed date, a wrong `content-sha256`, each missing header, a
//!   truncated protobuf, oversized bodies (declared and streamed), bad fields and unusable
//!   keys: each gets its code, HTTP status and a message that says what to fix, with no token
//!   call (the fault shim's counters of every PKCS#11 function; an unknown key id costs the
//!   one state-nonce read of a registry miss, never a signing call), one audit record each,
//!   and the daemon stays healthy.
//! * [`a_key_made_through_the_yandex_key_service_signs_through_the_instance_api`]: one key,
//!   every front: created by the Yandex key service, signed and published by the instance
//!   API, verified under the Yandex GetPublicKey's PEM.

mod common;
mod key_service_support;

use bytes::Bytes;
use common::alibaba::{
    assert_error, audit_records, audit_to_file, call, h2_post, post, spki_pem, with, Answer,
    ClientKey,
};
use common::faultshim::Shim;
use common::verify::parse_public_key;
use common::{dev_ck_id, dev_key_id, Launch, ServingStatus, TestToken};
use http::HeaderMap;
use p11kms::api::alibaba::instance::pb;
use p11kms::crypto::Algorithm;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
/// `[alibaba] max_raw_message_bytes` of the refusal test: small, so that bodies over the limit
/// are cheap to send.
const MAX_RAW: usize = 4096;
/// The body limit that follows from it (the RAW limit plus 16 KiB for the other fields).
const MAX_BODY: usize = MAX_RAW + 16 * 1024;

fn sign_request(
    key_id: &str,
    algorithm: &str,
    message: &[u8],
    message_type: &str,
) -> pb::SignRequest {
    pb::SignRequest {
        key_id: key_id.into(),
        algorithm: algorithm.into(),
        message: message.to_vec(),
        message_type: message_type.into(),
        ..Default::default()
    }
}

/// Signs a digest of `label` with the P-256 dev key and checks the signature under the public
/// key pkcs11-tool read off the token.
async fn assert_signs(addr: SocketAddr, key: &ClientKey, token_pem: &str, label: &str) {
    let digest = Sha256::digest(label.as_bytes());
    let answer = call(
        addr,
        key,
        "Sign",
        &sign_request(&dev_key_id(P256), "ECDSA_SHA_256", &digest, "DIGEST"),
    )
    .await;
    let signed: pb::SignResponse = answer.message();
    assert!(answer.version().is_some(), "no migration header");
    parse_public_key(token_pem, P256)
        .expect("the token's public key")
        .verify_digest(P256, &digest, &signed.signature)
        .unwrap_or_else(|e| panic!("{label}: the signature does not verify: {e}"));
}

/// One refused request: what it is, its answer, and what that must be.
struct Refused {
    what: &'static str,
    request_id: String,
    answer: Answer,
    status: u16,
    code: &'static str,
    needles: Vec<&'static str>,
}

/// Sends `body` with `headers` and an `x-request-id` of its own (not a signed header).
async fn send(
    addr: SocketAddr,
    n: &mut usize,
    headers: HeaderMap,
    body: Vec<u8>,
) -> (String, Answer) {
    *n += 1;
    let id = format!("hand-built-{n}");
    let answer = post(addr, with(headers, "x-request-id", &id), body).await;
    (id, answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_built_refusals_get_their_code_and_never_reach_the_hsm() {
    let token = TestToken::dev();
    let disabled = dev_key_id(Algorithm::EcdsaSecp256k1Sha256);
    token.set_key_field(&disabled, "status", "INACTIVE");
    token.set_config("alibaba", "max_raw_message_bytes", MAX_RAW as i64);
    // No background token calls while the counters are compared: the health probe and the
    // replicas' periodic re-scan and purge would otherwise add calls of their own.
    token.set_config("hsm", "probe_interval_ms", 3_600_000_i64);
    token.set_config("managed_keys", "refresh_interval_ms", 3_600_000_i64);
    token.set_config("managed_keys", "purge_interval_ms", 3_600_000_i64);
    let audit = audit_to_file(&token);
    let shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let addr = daemon.addr();
    let key = ClientKey::dev(token.state_dir());
    let token_pem = spki_pem(&token.public_key_der(&dev_ck_id(P256)));
    let p256 = dev_key_id(P256);

    // What works, first: a signature and random bytes, so that the sessions are open.
    assert_signs(addr, &key, &token_pem, "baseline").await;
    let random: pb::GenerateRandomResponse = call(
        addr,
        &key,
        "GenerateRandom",
        &pb::GenerateRandomRequest { length: 32 },
    )
    .await
    .message();
    assert_eq!(random.random.len(), 32);
    // The shim writes its stats file from a background thread: settled stats include every
    // call made so far.
    let before = shim.settled_stats().await;

    let now = SystemTime::now();
    let good_body = sign_request(&p256, "ECDSA_SHA_256", &[7; 32], "DIGEST").encode_to_vec();
    let signed = |api: &str, body: &[u8]| key.headers(api, body, now);
    let mut n = 0;
    let mut refused: Vec<Refused> = Vec::new();
    macro_rules! expect {
        ($what:expr, $sent:expr, $status:expr, $code:expr, $needles:expr) => {{
            let (request_id, answer) = $sent;
            refused.push(Refused {
                what: $what,
                request_id,
                answer,
                status: $status,
                code: $code,
                needles: $needles.to_vec(),
            });
        }};
    }

    // Credentials.
    let mut tampered = signed("Sign", &good_body);
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let bearer = tampered["authorization"].to_str().unwrap().to_string();
        let mut sig = b64.decode(bearer.trim_start_matches("Bearer ")).unwrap();
        sig[100] ^= 1;
        tampered.insert(
            "authorization",
            format!("Bearer {}", b64.encode(sig)).parse().unwrap(),
        );
    }
    expect!(
        "a tampered signature",
        send(addr, &mut n, tampered, good_body.clone()).await,
        401,
        "SignatureNotMatch",
        &["Signature is not matched", "x-kms-* headers"]
    );
    let stranger = key.with_id("KAAP.00000000-0000-4000-8000-000000000000");
    expect!(
        "an unknown client key",
        send(
            addr,
            &mut n,
            stranger.headers("Sign", &good_body, now),
            good_body.clone()
        )
        .await,
        404,
        "Unauthorized",
        &[
            "KAAP.00000000-0000-4000-8000-000000000000",
            "does not exist"
        ]
    );
    let skew = Duration::from_secs(16 * 60);
    for (what, date) in [
        ("a date 16 minutes late", now - skew),
        ("a date 16 minutes early", now + skew),
    ] {
        expect!(
            what,
            send(
                addr,
                &mut n,
                key.headers("Sign", &good_body, date),
                good_body.clone()
            )
            .await,
            400,
            "RequestTimeTooSkewed",
            &["15 minutes", "clock"]
        );
    }
    let other_body = sign_request(&p256, "ECDSA_SHA_256", &[8; 32], "DIGEST").encode_to_vec();
    expect!(
        "a body that is not the signed one",
        send(addr, &mut n, signed("Sign", &good_body), other_body).await,
        400,
        "InvalidParam",
        &["content-sha256", "SHA-256 of the request body"]
    );
    expect!(
        "a content-sha256 that is not hex",
        send(
            addr,
            &mut n,
            {
                let mut h = with(signed("Sign", &good_body), "content-sha256", "not-hex");
                key.sign(&mut h);
                h
            },
            good_body.clone()
        )
        .await,
        400,
        "InvalidParam",
        &["content-sha256"]
    );
    for (header, code, needle) in [
        (
            "x-kms-acccesskeyid",
            "MissingParameter",
            "x-kms-acccesskeyid does not exist",
        ),
        (
            "x-kms-apiversion",
            "MissingParameter",
            "x-kms-apiversion does not exist",
        ),
        (
            "x-kms-apiname",
            "MissingParameter",
            "x-kms-apiname does not exist",
        ),
        (
            "content-sha256",
            "MissingParameter",
            "content-sha256 does not exist",
        ),
        (
            "x-kms-signaturemethod",
            "InvalidParam",
            "x-kms-signaturemethod is invalid",
        ),
        ("date", "InvalidParam", "The Param Date is invalid."),
        (
            "authorization",
            "InvalidParam",
            "The Param Authorization is invalid.",
        ),
    ] {
        let mut h = signed("Sign", &good_body);
        h.remove(header);
        if header != "authorization" {
            key.sign(&mut h);
        }
        expect!(
            "a missing header",
            send(addr, &mut n, h, good_body.clone()).await,
            400,
            code,
            &[needle]
        );
    }
    expect!(
        "a date that is not RFC 1123",
        send(
            addr,
            &mut n,
            {
                let mut h = with(signed("Sign", &good_body), "date", "2026-12-03T15:54:43Z");
                key.sign(&mut h);
                h
            },
            good_body.clone()
        )
        .await,
        400,
        "InvalidParam",
        &["The Param Date is invalid."]
    );
    expect!(
        "another API version",
        send(
            addr,
            &mut n,
            {
                let mut h = with(
                    signed("Sign", &good_body),
                    "x-kms-apiversion",
                    "dkms-gcs-0.1",
                );
                key.sign(&mut h);
                h
            },
            good_body.clone()
        )
        .await,
        400,
        "InvalidApiVersion",
        &["dkms-gcs-0.1"]
    );
    expect!(
        "an API of no protocol",
        send(
            addr,
            &mut n,
            signed("SignEverything", &good_body),
            good_body.clone()
        )
        .await,
        400,
        "InvalidApiName",
        &["SignEverything"]
    );
    expect!(
        "an API p11kms does not serve",
        send(
            addr,
            &mut n,
            signed("Encrypt", &good_body),
            good_body.clone()
        )
        .await,
        400,
        "UnsupportedOperation",
        &["Encrypt", "Sign, Verify, GetPublicKey and GenerateRandom"]
    );

    // Bodies.
    let truncated = &good_body[..good_body.len() - 1];
    expect!(
        "a truncated protobuf",
        send(addr, &mut n, signed("Sign", truncated), truncated.to_vec()).await,
        400,
        "InvalidParameter",
        &["not a valid SignRequest protobuf message"]
    );
    let garbage = vec![0xff; 11];
    expect!(
        "a varint that never ends",
        send(addr, &mut n, signed("Verify", &garbage), garbage.clone()).await,
        400,
        "InvalidParameter",
        &["not a valid VerifyRequest protobuf message"]
    );
    let big = sign_request(&p256, "ECDSA_SHA_256", &vec![1; MAX_RAW + 1], "RAW").encode_to_vec();
    assert!(
        big.len() < MAX_BODY,
        "a body under the limit, a RAW message over it"
    );
    expect!(
        "a RAW message over max_raw_message_bytes",
        send(addr, &mut n, signed("Sign", &big), big.clone()).await,
        400,
        "InvalidParameter",
        &["hashed up to 4096 bytes", "MessageType DIGEST"]
    );
    // Declared over the limit: refused from Content-Length while the body is still being sent
    // (its first KiB only, the stream left open). Ending the stream there would make the
    // request malformed (RFC 9113 §8.1.1), and reset it, whenever the server sees the end
    // before it answers.
    let oversized = vec![0u8; MAX_BODY + 1];
    {
        n += 1;
        let id = format!("hand-built-{n}");
        let mut h = with(signed("Sign", &oversized), "x-request-id", &id);
        h.insert("content-length", (MAX_BODY + 1).into());
        let answer = h2_post(addr, h, vec![Bytes::from(vec![0u8; 1024])], false).await;
        expect!(
            "a declared body over the limit",
            (id, answer),
            400,
            "InvalidParameter",
            &["over the limit of 20480 bytes (20481 bytes)"]
        );
    }
    // Headers over server.max_header_list_size: never readable, so not Rejected.Throttling
    // (which the SDK retries).
    {
        n += 1;
        let id = format!("hand-built-{n}");
        let mut h = with(signed("Sign", b"m"), "x-request-id", &id);
        h.insert("x-padding", "p".repeat(20_000).parse().unwrap());
        let answer = h2_post(addr, h, vec![Bytes::from_static(b"m")], true).await;
        expect!(
            "headers over the header list limit",
            (id, answer),
            400,
            "InvalidParameter",
            &["server.max_header_list_size"]
        );
    }
    // No Content-Length, streamed past the limit: cut off as it grows.
    {
        n += 1;
        let id = format!("hand-built-{n}");
        let h = with(signed("Sign", &oversized), "x-request-id", &id);
        let chunks = oversized.chunks(4096).map(Bytes::copy_from_slice).collect();
        let answer = h2_post(addr, h, chunks, true).await;
        expect!(
            "a streamed body over the limit",
            (id, answer),
            400,
            "InvalidParameter",
            &["over the limit of 20480 bytes (longer than that)"]
        );
    }

    // Fields and keys.
    for (what, request, code, status, needles) in [
        (
            "a digest of 31 bytes",
            sign_request(&p256, "ECDSA_SHA_256", &[0; 31], "DIGEST"),
            "InvalidParameter",
            400,
            &["Message is 31 bytes", "exactly 32 bytes"][..],
        ),
        (
            "a MessageType that is not RAW or DIGEST",
            sign_request(&p256, "ECDSA_SHA_256", b"m", "HASH"),
            "InvalidParameter",
            400,
            &["\"HASH\" is not RAW or DIGEST"][..],
        ),
        (
            "an algorithm Alibaba does not have",
            sign_request(&p256, "ECDSA_SHA_384", b"m", "RAW"),
            "InvalidParameter",
            400,
            &["ECDSA_SHA_384", "is not a signing algorithm"][..],
        ),
        (
            "an RSA algorithm on an EC key",
            sign_request(&p256, "RSA_PSS_SHA_256", b"m", "RAW"),
            "InvalidParameter",
            400,
            &["does not fit a EC_P256 key"][..],
        ),
        (
            "SM2",
            sign_request(&p256, "SM2DSA", b"m", "RAW"),
            "InvalidParameter",
            400,
            &["SM2"][..],
        ),
        (
            "no KeyId",
            sign_request("", "ECDSA_SHA_256", b"m", "RAW"),
            "InvalidParameter",
            400,
            &["KeyId is required"][..],
        ),
        (
            "an unknown key",
            sign_request("no-such-key", "ECDSA_SHA_256", b"m", "RAW"),
            "Forbidden.KeyNotFound",
            404,
            &["no-such-key"][..],
        ),
        (
            "a key Alibaba does not serve",
            sign_request(
                &dev_key_id(Algorithm::EcdsaP384Sha384),
                "ECDSA_SHA_256",
                b"m",
                "RAW",
            ),
            "UnsupportedOperation",
            400,
            &["EC_P384", "Yandex API"][..],
        ),
        (
            "an INACTIVE key",
            sign_request(&disabled, "ECDSA_SHA_256", b"m", "RAW"),
            "Rejected.Disabled",
            409,
            &["INACTIVE"][..],
        ),
    ] {
        let body = request.encode_to_vec();
        expect!(
            what,
            send(addr, &mut n, signed("Sign", &body), body).await,
            status,
            code,
            needles
        );
    }
    for (what, length) in [("no random bytes", 0), ("too many random bytes", 1 << 20)] {
        let body = pb::GenerateRandomRequest { length }.encode_to_vec();
        expect!(
            what,
            send(addr, &mut n, signed("GenerateRandom", &body), body).await,
            400,
            "InvalidParameter",
            &["Length", "must be from 1 to"]
        );
    }

    for r in &refused {
        eprintln!(
            "{}: HTTP {} {:?}",
            r.what,
            r.answer.status,
            pb::Error::decode(r.answer.body.clone()).map(|e| (e.error_code, e.error_message))
        );
        assert_error(&r.answer, r.status, r.code, &r.needles);
        let (_, error) = r.answer.error();
        assert_eq!(error.request_id, r.request_id, "{}: RequestId", r.what);
        assert_eq!(
            r.answer.headers["content-type"], "application/x-protobuf",
            "{}",
            r.what
        );
        assert!(
            r.answer.version().is_none(),
            "{}: a migration header",
            r.what
        );
    }

    // The barrier: once the stats show this signature's last call (the second C_Sign: size
    // query, then data), they show every call made before it.
    assert_signs(addr, &key, &token_pem, "barrier").await;
    shim.wait_stat("calls.C_Sign", before["calls.C_Sign"] + 2)
        .await;
    let after = shim.settled_stats().await;
    // Every PKCS#11 function, not only the signing ones: a refusal that looked a key up
    // (C_FindObjects*), read an attribute or opened a session would have reached the token too.
    let calls = |stats: &std::collections::BTreeMap<String, u64>| {
        stats
            .iter()
            .filter(|(k, _)| k.starts_with("calls."))
            .map(|(k, v)| (k.clone(), *v))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut expected = calls(&before);
    for (call, n) in [
        // The barrier.
        ("C_SignInit", 1),
        ("C_Sign", 2),
        // The unknown key id: a registry miss re-reads the token's state nonce once (another
        // replica may have created the key), and only that: the nonce is unchanged, so no
        // metadata is walked and nothing is signed. The nonce exists (start-up wrote it when
        // it recorded the config keys' adoption), so reading it is a search and its value
        // (length, then bytes).
        ("C_FindObjectsInit", 1),
        ("C_FindObjects", 1),
        ("C_FindObjectsFinal", 1),
        ("C_GetAttributeValue", 2),
    ] {
        *expected.entry(format!("calls.{call}")).or_default() += n;
    }
    assert_eq!(
        calls(&after),
        expected,
        "the refused requests reached the token (expected: the barrier's signature and the \
         unknown key's nonce read only)"
    );

    // One audit record each, under the request's id, naming the API.
    let records = audit_records(&audit);
    for r in &refused {
        let found: Vec<_> = records
            .iter()
            .filter(|rec| rec["request_id"] == r.request_id.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{}: {found:#?}", r.what);
        assert_eq!(found[0]["protocol"], "alibaba-instance", "{}", r.what);
        assert_ne!(found[0]["outcome"], "OK", "{}", r.what);
    }

    // Still healthy: the health service, the instance API and the Yandex API all answer.
    assert_eq!(daemon.health("").await.unwrap(), ServingStatus::Serving);
    assert_signs(addr, &key, &token_pem, "after the refusals").await;
    let mut kms = daemon.kms().await;
    kms.sign_hash(&p256, &[9; 32])
        .await
        .expect("Yandex SignHash");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_made_through_the_yandex_key_service_signs_through_the_instance_api() {
    let token = TestToken::dev();
    let audit = audit_to_file(&token);
    let daemon = Launch::serve(&token).start();
    let addr = daemon.addr();
    let key = ClientKey::dev(token.state_dir());

    let mut clients = key_service_support::Clients::connect(&daemon).await;
    let created = clients.create_key("cross-front", P256).await;
    let yandex_pem = clients
        .kms
        .public_key(&created.id)
        .await
        .expect("Yandex GetPublicKey");
    let yandex = parse_public_key(&yandex_pem, P256).expect("the Yandex PEM");

    let message = b"one key, every front";
    let digest = Sha256::digest(message);
    let mut versions = Vec::new();
    let mut ids = Vec::new();
    for (body, prehashed) in [(&message[..], false), (&digest[..], true)] {
        let message_type = if prehashed { "DIGEST" } else { "RAW" };
        let answer = call(
            addr,
            &key,
            "Sign",
            &sign_request(&created.id, "ECDSA_SHA_256", body, message_type),
        )
        .await;
        let signed: pb::SignResponse = answer.message();
        assert_eq!(signed.key_id, created.id);
        yandex
            .verify_digest(P256, &digest, &signed.signature)
            .unwrap_or_else(|e| panic!("{message_type}: no match under the Yandex PEM: {e}"));
        versions.push(answer.version().expect("the migration header"));
        ids.push(signed.request_id);

        let verified: pb::VerifyResponse = call(
            addr,
            &key,
            "Verify",
            &pb::VerifyRequest {
                key_id: created.id.clone(),
                signature: signed.signature,
                algorithm: "ECDSA_SHA_256".into(),
                message: body.to_vec(),
                message_type: message_type.into(),
                ..Default::default()
            },
        )
        .await
        .message();
        assert!(verified.value, "{message_type}: Verify");
    }
    let answer = call(
        addr,
        &key,
        "GetPublicKey",
        &pb::GetPublicKeyRequest {
            key_id: created.id.clone(),
        },
    )
    .await;
    let published: pb::GetPublicKeyResponse = answer.message();
    assert_eq!(
        parse_public_key(&published.public_key, P256)
            .expect("the instance API's PEM")
            .spki_der,
        yandex.spki_der,
        "the instance API publishes another key than the Yandex API"
    );
    versions.push(answer.version().expect("the migration header"));
    ids.push(published.request_id);
    assert!(
        versions.iter().all(|v| *v == versions[0] && !v.is_empty()),
        "one version throughout: {versions:?}"
    );

    let records = audit_records(&audit);
    for (id, rpc) in ids.iter().zip(["Sign", "Sign", "GetPublicKey"]) {
        let found: Vec<_> = records
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0]["protocol"], "alibaba-instance");
        assert_eq!(found[0]["rpc"], rpc);
        assert_eq!(found[0]["key_id"], created.id.as_str());
        assert_eq!(found[0]["version_id"], versions[0].as_str());
        assert_eq!(found[0]["outcome"], "OK");
    }
}
