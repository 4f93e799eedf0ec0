//! The authentication flow: the contract's worked requests end to end, then each refusal.
//! Requests other than the worked ones are signed here with the canonicalisation that
//! `signature.rs` pins to the contract's vectors, the way an SDK signs them.

use super::*;
use crate::auth::AuthMethod;
use axum::body::Bytes;
use std::time::{Duration, UNIX_EPOCH};

const T0: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z, the vectors' signing time
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const VECTOR_QUERY: &str = "Algorithm=RSA_PSS_SHA_256&Digest=uU0nuZNNPgilLlLX2n2r%2BsSE7%2BN6U4DukIj3rOLvzek%3D&KeyId=key-hzz65f1d8f8w9q6atnc1a&KeyVersionId=7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab";
const VECTOR_SIGNED: &str =
    "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version";
const VECTOR_SIGNATURE: &str = "e17c90a0eebdd69410d1bac9a8c4b2f41f4e3e1a7fecb83a205a7331b29d96d3";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn auth_with(capacity: usize) -> OpenApiAuth {
    let caller = Caller {
        subject_id: "alice".into(),
        subject_type: "userAccount".into(),
        method: AuthMethod::AccessKey,
    };
    OpenApiAuth::new(
        AccessKeys::new([(
            "testid".to_string(),
            AccessKey::new("testsecret".into(), caller, "folder-a"),
        )]),
        NonceCache::new(capacity),
    )
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> OpenApiRequest {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let parts = b.body(()).unwrap().into_parts().0;
    OpenApiRequest::from_parts(parts, Bytes::copy_from_slice(body)).unwrap()
}

/// Contract §2.3's request, exactly.
fn acs3_vector(signature: &str) -> OpenApiRequest {
    let authorization = format!(
        "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={VECTOR_SIGNED},Signature={signature}"
    );
    request(
        "POST",
        &format!("/?{VECTOR_QUERY}"),
        &[
            ("host", "kms.cn-hangzhou.aliyuncs.com"),
            ("x-acs-action", "AsymmetricSign"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2016-01-20"),
            ("authorization", &authorization),
        ],
        b"",
    )
}

/// Contract §2.4's request, exactly (parameters in the query, POST).
fn v1_vector(extra: &str) -> OpenApiRequest {
    request(
        "POST",
        &format!(
            "/?Action=AsymmetricSign&Format=json&Version=2016-01-20&Timestamp=2024-01-01T00%3A00%3A00Z\
             &SignatureNonce=3156853299f313e23d1673dc12e1703d&{VECTOR_QUERY}&SignatureMethod=HMAC-SHA1\
             &SignatureVersion=1.0&AccessKeyId=testid&Signature=5Q5LWgO6d8i9WYX3btE7rkDJ3HY%3D{extra}"
        ),
        &[("x-acs-action", "AsymmetricSign"), ("x-acs-version", "2016-01-20")],
        b"",
    )
}

/// What an ACS3 client sends: `headers` plus the signature over `signed` (names, sorted or
/// not), with the id, secret, date and nonce given.
struct Acs3 {
    id: &'static str,
    secret: &'static [u8],
    date: String,
    nonce: &'static str,
    signed: &'static str,
    query: &'static str,
    body: &'static [u8],
    content_type: Option<&'static str>,
    extra: Vec<(&'static str, &'static str)>,
}

impl Acs3 {
    fn new(nonce: &'static str) -> Self {
        Self {
            id: "testid",
            secret: b"testsecret",
            date: "2024-01-01T00:00:00Z".into(),
            nonce,
            signed: VECTOR_SIGNED,
            query: VECTOR_QUERY,
            body: b"",
            content_type: None,
            extra: Vec::new(),
        }
    }

    fn build(&self) -> OpenApiRequest {
        let hash = hex::encode(Sha256::digest(self.body));
        let mut headers: Vec<(&str, String)> = vec![
            ("host", "127.0.0.1:18080".into()),
            ("x-acs-action", "AsymmetricSign".into()),
            ("x-acs-content-sha256", hash.clone()),
            ("x-acs-date", self.date.clone()),
            ("x-acs-signature-nonce", self.nonce.into()),
            ("x-acs-version", "2016-01-20".into()),
        ];
        if let Some(ct) = self.content_type {
            headers.push(("content-type", ct.into()));
        }
        headers.extend(self.extra.iter().map(|(n, v)| (*n, v.to_string())));
        let list: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let unsigned = request("POST", &format!("/?{}", self.query), &list, self.body);
        let canonical = signature::acs3_canonical_request(
            "POST",
            "/",
            unsigned.query_pairs(),
            unsigned.headers(),
            None,
            self.signed,
            &hash,
        )
        .unwrap();
        let sig = signature::acs3_sign(self.secret, &signature::acs3_string_to_sign(&canonical));
        let authorization = format!(
            "ACS3-HMAC-SHA256 Credential={},SignedHeaders={},Signature={sig}",
            self.id, self.signed
        );
        let mut all = list;
        all.push(("authorization", &authorization));
        request("POST", &format!("/?{}", self.query), &all, self.body)
    }
}

fn refused(auth: &OpenApiAuth, r: &OpenApiRequest, now: SystemTime) -> OpenApiError {
    auth.authenticate(r, None, now).unwrap_err()
}

#[test]
fn the_contracts_acs3_request_authenticates_once() {
    let auth = auth_with(100);
    let now = at(T0 + 60);
    let ok = auth
        .authenticate(&acs3_vector(VECTOR_SIGNATURE), None, now)
        .unwrap();
    assert_eq!(ok.caller.subject_id, "alice");
    assert_eq!(ok.caller.method, AuthMethod::AccessKey);
    assert_eq!(
        (ok.access_key_id.as_str(), ok.folder_id.as_str(), ok.scheme),
        ("testid", "folder-a", Scheme::Acs3HmacSha256)
    );
    let e = refused(&auth, &acs3_vector(VECTOR_SIGNATURE), now);
    assert_eq!((e.code(), e.status().as_u16()), ("SignatureNonceUsed", 400));
    assert!(
        e.message().contains("x-acs-signature-nonce"),
        "{}",
        e.message()
    );
    assert_eq!(auth.keys().total_failures(), 1);
}

#[test]
fn the_contracts_v1_request_authenticates_once() {
    let auth = auth_with(100);
    let now = at(T0 - 60);
    let ok = auth.authenticate(&v1_vector(""), None, now).unwrap();
    assert_eq!(ok.scheme, Scheme::RpcV1HmacSha1);
    assert_eq!(ok.folder_id, "folder-a");
    let e = refused(&auth, &v1_vector(""), now);
    assert_eq!(e.code(), "SignatureNonceUsed");
    assert!(e.message().contains("SignatureNonce"), "{}", e.message());
}

#[test]
fn wrong_secret_gets_signature_does_not_match_with_our_string_to_sign() {
    let auth = auth_with(100);
    let mut c = Acs3::new("n-wrong");
    c.secret = b"not-the-secret";
    let e = refused(&auth, &c.build(), at(T0));
    assert_eq!(
        (e.code(), e.status().as_u16()),
        ("SignatureDoesNotMatch", 400)
    );
    let sts = e.message().split(':').nth(1).unwrap();
    assert!(
        sts.starts_with("ACS3-HMAC-SHA256\n") && sts.len() == 17 + 64,
        "{sts:?}"
    );
    // The v1 vector with one bit of the query changed: our string to sign is the SDK's.
    let e = refused(&auth, &v1_vector("&Extra=1"), at(T0));
    assert_eq!(e.code(), "SignatureDoesNotMatch");
    let sts = e.message().split(':').nth(1).unwrap();
    assert!(sts.starts_with("POST&%2F&AccessKeyId%3Dtestid%26Action%3DAsymmetricSign"));
    assert!(sts.contains("%26Extra%3D1%26"), "{sts}");
    // A refused signature leaves no nonce behind: the right request still goes through.
    assert!(auth.nonces().is_empty());
}

#[test]
fn unknown_access_key_id_is_not_found_and_counted() {
    let auth = auth_with(100);
    let mut c = Acs3::new("n-unknown");
    c.id = "LTAI-nobody";
    let peer = Peer {
        addr: "10.1.2.3:4000".parse().unwrap(),
        tls: false,
        client_subject: None,
        health_only: false,
    };
    let e = auth
        .authenticate(&c.build(), Some(&peer), at(T0))
        .unwrap_err();
    assert_eq!(
        (e.code(), e.status().as_u16()),
        ("InvalidAccessKeyId.NotFound", 404)
    );
    assert_eq!(auth.keys().failures_from(peer.addr.ip()), 1);
}

#[test]
fn skewed_time_is_refused_before_the_nonce_is_spent() {
    let auth = auth_with(100);
    let r = Acs3::new("n-skew").build();
    for now in [at(T0 + 901), at(T0 - 901)] {
        let e = refused(&auth, &r, now);
        assert_eq!(
            (e.code(), e.status().as_u16()),
            ("InvalidTimeStamp.Expired", 400)
        );
    }
    auth.authenticate(&r, None, at(T0 + 900)).unwrap();
    let mut bad = Acs3::new("n-bad-date");
    bad.date = "Mon, 01 Jan 2024 00:00:00 GMT".into();
    assert_eq!(
        refused(&auth, &bad.build(), at(T0)).code(),
        "IllegalTimestamp"
    );
    let e = refused(&auth, &v1_vector(""), at(T0 + 3600));
    assert_eq!(e.code(), "InvalidTimeStamp.Expired");
}

#[test]
fn sts_tokens_are_not_supported() {
    let auth = auth_with(100);
    let mut c = Acs3::new("n-sts");
    c.extra = vec![
        ("x-acs-security-token", "sts-token-value"),
        ("x-acs-accesskey-id", "testid"),
    ];
    c.signed = "host;x-acs-accesskey-id;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-security-token;x-acs-signature-nonce;x-acs-version";
    let e = refused(&auth, &c.build(), at(T0));
    assert_eq!(
        (e.code(), e.status().as_u16()),
        ("Unsupported.SecurityToken", 400)
    );
    assert!(e.message().contains("not supported"), "{}", e.message());
    let e = refused(&auth, &v1_vector("&SecurityToken=sts-token-value"), at(T0));
    assert_eq!(e.code(), "Unsupported.SecurityToken");
    assert!(e.message().contains("SecurityToken"));
}

#[test]
fn the_body_must_be_what_x_acs_content_sha256_says() {
    let auth = auth_with(100);
    let mut c = Acs3::new("n-body");
    c.body = b"KeyId=key-1";
    c.content_type = Some("application/x-www-form-urlencoded");
    c.query = "Algorithm=ECDSA_SHA_256";
    let good = c.build();
    assert_eq!(good.params().get("KeyId"), Some("key-1"));
    // The same headers (hash of the original body, valid signature) over another body.
    let mut list: Vec<(String, String)> = good
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    list.retain(|(n, _)| n != "content-length");
    let list: Vec<(&str, &str)> = list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let tampered = request("POST", "/?Algorithm=ECDSA_SHA_256", &list, b"KeyId=key-2");
    let e = refused(&auth, &tampered, at(T0));
    assert_eq!(e.code(), "InvalidParameter");
    assert!(e.message().contains("x-acs-content-sha256") && e.message().contains("11 bytes"));
    auth.authenticate(&good, None, at(T0)).unwrap();
}

#[test]
fn signed_headers_are_honoured_as_sent_but_must_cover_freshness_and_routing() {
    let auth = auth_with(100);
    // Python's full set, and an unsorted list: both verify as signed.
    let mut python = Acs3::new("n-python");
    python.extra = vec![
        ("accept", "application/json"),
        ("user-agent", "AlibabaCloud Python"),
    ];
    python.signed = "accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version";
    auth.authenticate(&python.build(), None, at(T0)).unwrap();
    let mut unsorted = Acs3::new("n-unsorted");
    unsorted.signed =
        "x-acs-version;host;x-acs-signature-nonce;x-acs-date;x-acs-content-sha256;x-acs-action";
    auth.authenticate(&unsorted.build(), None, at(T0)).unwrap();
    for (signed, missing) in [
        (
            "host;x-acs-action;x-acs-content-sha256;x-acs-signature-nonce;x-acs-version",
            "x-acs-date",
        ),
        (
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-version",
            "x-acs-signature-nonce",
        ),
        (
            "host;x-acs-action;x-acs-date;x-acs-signature-nonce;x-acs-version",
            "x-acs-content-sha256",
        ),
        (
            "host;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version",
            "x-acs-action",
        ),
        (
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce",
            "x-acs-version",
        ),
    ] {
        let mut c = Acs3::new("n-subset");
        c.signed = signed;
        let e = refused(&auth, &c.build(), at(T0));
        assert_eq!(e.code(), "IncompleteSignature", "{signed}");
        assert!(
            e.message().contains(&format!("include {missing}")),
            "{}",
            e.message()
        );
    }
    // A signature over other headers than those sent: a signed value changed in transit.
    let r = Acs3::new("n-changed").build();
    let mut list: Vec<(String, String)> = r
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    for (n, v) in &mut list {
        if n == "host" {
            *v = "proxy.example:443".into();
        }
    }
    let list: Vec<(&str, &str)> = list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let e = refused(
        &auth,
        &request("POST", &format!("/?{VECTOR_QUERY}"), &list, b""),
        at(T0),
    );
    assert_eq!(e.code(), "SignatureDoesNotMatch");
}

#[test]
fn missing_duplicate_or_mixed_signatures_are_incomplete() {
    let auth = auth_with(100);
    let unsigned = request(
        "POST",
        "/?Action=DescribeKey&Version=2016-01-20&KeyId=k",
        &[],
        b"",
    );
    let e = refused(&auth, &unsigned, at(T0));
    assert_eq!(e.code(), "IncompleteSignature");
    assert!(e.message().contains("not signed"));
    let r = Acs3::new("n-twice").build();
    let auth_value = r.headers()["authorization"].to_str().unwrap().to_string();
    let mut list: Vec<(String, String)> = r
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    list.push(("authorization".into(), auth_value));
    let list: Vec<(&str, &str)> = list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let e = refused(
        &auth,
        &request("POST", &format!("/?{VECTOR_QUERY}"), &list, b""),
        at(T0),
    );
    assert!(e.message().contains("more than once"), "{}", e.message());
    let mut both = r
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect::<Vec<_>>();
    both.retain(|(n, _)| n != "content-length");
    let both: Vec<(&str, &str)> = both.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mixed = request(
        "POST",
        &format!("/?{VECTOR_QUERY}&Signature=abc"),
        &both,
        b"",
    );
    assert!(refused(&auth, &mixed, at(T0)).message().contains("both"));
}

#[test]
fn v1_parameters_are_required_and_checked() {
    let auth = auth_with(100);
    let base = "/?Action=DescribeKey&Version=2016-01-20&Timestamp=2024-01-01T00%3A00%3A00Z\
                &SignatureNonce=n1&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0\
                &AccessKeyId=testid&Signature=5Q5LWgO6d8i9WYX3btE7rkDJ3HY%3D";
    let cases = [
        (
            "SignatureMethod=HMAC-SHA1",
            "SignatureMethod=HMAC-SHA256",
            "IncompleteSignature",
            "HMAC-SHA256",
        ),
        (
            "SignatureVersion=1.0",
            "SignatureVersion=2.0",
            "IncompleteSignature",
            "2.0",
        ),
        (
            "&SignatureNonce=n1",
            "",
            "MissingParameter",
            "SignatureNonce",
        ),
        (
            "Timestamp=2024-01-01T00%3A00%3A00Z",
            "Timestamp=",
            "IllegalTimestamp",
            "Timestamp",
        ),
        (
            "AccessKeyId=testid",
            "AccessKeyId=",
            "MissingParameter",
            "AccessKeyId",
        ),
        (
            "Signature=5Q5LWgO6d8i9WYX3btE7rkDJ3HY%3D",
            "Signature=AAAA",
            "IncompleteSignature",
            "20 bytes",
        ),
    ];
    for (from, to, code, word) in cases {
        let r = request("POST", &base.replace(from, to), &[], b"");
        let e = refused(&auth, &r, at(T0));
        assert_eq!(e.code(), code, "{to}");
        assert!(e.message().contains(word), "{to}: {}", e.message());
    }
    // The action must come signed: only the (unsigned) header is refused.
    let header_only = request(
        "POST",
        &base.replace("Action=DescribeKey&", ""),
        &[("x-acs-action", "DescribeKey")],
        b"",
    );
    let e = refused(&auth, &header_only, at(T0));
    assert_eq!(e.code(), "MissingParameter");
    assert!(e.message().contains("\"Action\""));
}

#[test]
fn v1_signs_form_body_parameters_too() {
    let auth = auth_with(100);
    let query = "Action=DescribeKey&Version=2016-01-20&Timestamp=2024-01-01T00%3A00%3A00Z\
                 &SignatureNonce=form-1&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=testid";
    let body = b"KeyId=key%2F1&Description=a+b";
    let unsigned = request(
        "POST",
        &format!("/?{query}"),
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    );
    let sts = signature::v1_string_to_sign(
        "POST",
        unsigned
            .query_pairs()
            .iter()
            .chain(unsigned.form_pairs())
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    assert!(
        sts.contains("KeyId%3Dkey%252F1") && sts.contains("Description%3Da%2520b"),
        "{sts}"
    );
    let sig = signature::v1_sign(b"testsecret", &sts);
    let signed_uri = format!("/?{query}&Signature={}", super::super::encoding::enc(&sig));
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    auth.authenticate(&request("POST", &signed_uri, &ct, body), None, at(T0))
        .unwrap();
    let e = refused(
        &auth,
        &request("POST", &signed_uri, &ct, b"KeyId=key%2F2&Description=a+b"),
        at(T0),
    );
    assert_eq!(e.code(), "SignatureDoesNotMatch");
}

#[test]
fn a_full_nonce_memory_throttles_fresh_requests_and_still_refuses_replays() {
    let auth = auth_with(1);
    auth.authenticate(&acs3_vector(VECTOR_SIGNATURE), None, at(T0))
        .unwrap();
    let fresh = Acs3::new("n-fresh").build();
    let e = refused(&auth, &fresh, at(T0));
    assert_eq!(
        (e.code(), e.status().as_u16()),
        ("Rejected.Throttling", 429)
    );
    assert!(e.message().contains("retry in 900 s"), "{}", e.message());
    let e = refused(&auth, &acs3_vector(VECTOR_SIGNATURE), at(T0 + 10));
    assert_eq!(e.code(), "SignatureNonceUsed");
    // Once the first nonce's window is over, there is room again.
    let mut later = Acs3::new("n-later");
    later.date = "2024-01-01T00:15:01Z".into();
    auth.authenticate(&later.build(), None, at(T0 + 901))
        .unwrap();
    assert_eq!(auth.nonces().len(), 1);
}
