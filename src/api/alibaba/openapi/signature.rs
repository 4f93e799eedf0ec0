//! The two request signatures of the OpenAPI (contract §2.3, §2.4), as pure functions over
//! what arrived: no clock, no key store. [`super::auth`] decides which applies and what is
//! required around them.
//!
//! **ACS3-HMAC-SHA256** (the current SDKs' default):
//!
//! ```text
//! CanonicalRequest = Method \n Path \n CanonicalQuery \n CanonicalHeaders \n SignedHeaders \n HashedPayload
//! StringToSign     = "ACS3-HMAC-SHA256" \n hex(SHA-256(CanonicalRequest))
//! Signature        = hex(HMAC-SHA256(secret, StringToSign))
//! ```
//!
//! The canonical query is every query parameter, decoded, sorted by name, RFC 3986-encoded.
//! The canonical headers are exactly those named in `SignedHeaders`, in its order, each
//! `name:value\n` with the value trimmed; a repeated header's trimmed values are sorted and
//! joined with `,` (as the Python SDK builds them). SDKs sign different subsets (Python every
//! header it set, Node `host` and `x-acs-*`), so the server must take the list as sent.
//!
//! **RPC v1 HMAC-SHA1** (the legacy Python core SDK, npm `@alicloud/kms20160120`,
//! `signature_algorithm='v2'`): every query and form-body parameter but `Signature`, sorted,
//! `enc(name)=enc(value)` joined with `&`; `StringToSign = Method&%2F&enc(that)`;
//! `Signature = base64(HMAC-SHA1(secret + "&", StringToSign))`.
//!
//! Comparisons go through `Mac::verify_slice`, which is constant-time.

use super::encoding::enc;
use super::error::OpenApiError;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use secrecy::{ExposeSecret as _, SecretSlice};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;

/// The ACS3 algorithm this gateway verifies.
pub const ACS3_HMAC_SHA256: &str = "ACS3-HMAC-SHA256";
/// Signature algorithms that exist and are refused, each with what it is.
const REFUSED_ALGORITHMS: &[(&str, &str)] = &[
    ("ACS4-HMAC-SHA256", "signature_version='v4'"),
    ("ACS3-HMAC-SM3", "signature_algorithm='ACS3-HMAC-SM3'"),
    ("ACS3-RSA-SHA256", "signature_algorithm='ACS3-RSA-SHA256'"),
];
/// What to use instead, in every refusal.
const SUPPORTED: &str = "this gateway verifies ACS3-HMAC-SHA256 (the SDKs' default) and RPC \
                         v1 HMAC-SHA1 (signature_algorithm='v2', the legacy core SDK, the npm \
                         SDK)";

/// The parts of an ACS3 `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acs3Authorization {
    /// `Credential`: the bare AccessKeyId.
    pub access_key_id: String,
    /// `SignedHeaders`, exactly as sent.
    pub signed_headers: String,
    /// `Signature`, decoded from hex.
    pub signature: Vec<u8>,
}

impl Acs3Authorization {
    /// The signed header names, in the order sent.
    pub fn signed_header_names(&self) -> impl Iterator<Item = &str> {
        self.signed_headers.split(';')
    }
}

/// Parses `ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<h1;h2>,Signature=<hex>`.
///
/// # Errors
/// `IncompleteSignature` naming what is wrong: another algorithm (with what is supported), a
/// missing, repeated, unknown or empty part, a signature that is not 64 hex digits.
pub fn parse_acs3_authorization(value: &str) -> Result<Acs3Authorization, OpenApiError> {
    let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ACS3_HMAC_SHA256 {
        if let Some((name, how)) = REFUSED_ALGORITHMS.iter().find(|(n, _)| *n == algorithm) {
            return Err(OpenApiError::incomplete_signature(format!(
                "the {name} signature ({how}) is not supported; {SUPPORTED}"
            )));
        }
        return Err(OpenApiError::incomplete_signature(format!(
            "the Authorization header is not an ACS3-HMAC-SHA256 signature; {SUPPORTED}"
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=').ok_or_else(|| {
            OpenApiError::incomplete_signature(
                "the Authorization header's parts must be name=value, separated by commas",
            )
        })?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(OpenApiError::incomplete_signature(format!(
                    "the Authorization header has an unknown part {:?}; it has Credential, \
                     SignedHeaders and Signature",
                    super::error::shown(name)
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(OpenApiError::incomplete_signature(format!(
                "the Authorization header gives {name} more than once"
            )));
        }
    }
    fn need<'a>(part: Option<&'a str>, name: &str) -> Result<&'a str, OpenApiError> {
        part.filter(|v| !v.is_empty()).ok_or_else(|| {
            OpenApiError::incomplete_signature(format!("the Authorization header has no {name}"))
        })
    }
    let access_key_id = need(credential, "Credential")?.to_string();
    let signed_headers = need(signed_headers, "SignedHeaders")?.to_string();
    let signature = hex::decode(need(signature, "Signature")?)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| {
            OpenApiError::incomplete_signature(
                "the Signature of an ACS3-HMAC-SHA256 Authorization header is 64 hex digits",
            )
        })?;
    Ok(Acs3Authorization {
        access_key_id,
        signed_headers,
        signature,
    })
}

/// Sorted by name, `enc(name)=enc(value)` joined with `&`.
pub fn canonical_query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut sorted: Vec<(&str, &str)> = pairs.into_iter().collect();
    sorted.sort_unstable();
    let mut out = String::new();
    for (i, (name, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{}={}", enc(name), enc(value));
    }
    out
}

/// The ACS3 canonical request. `authority` stands in for a signed `host` header that HTTP/2
/// carried as `:authority`.
///
/// # Errors
/// `IncompleteSignature` when `SignedHeaders` names a header twice, an empty or upper-case
/// name, or a header the request does not have.
pub fn acs3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    authority: Option<&str>,
    signed_headers: &str,
    hashed_payload: &str,
) -> Result<String, OpenApiError> {
    let mut canonical_headers = String::new();
    let mut seen = Vec::new();
    for name in signed_headers.split(';') {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) || seen.contains(&name) {
            return Err(OpenApiError::incomplete_signature(format!(
                "SignedHeaders must be distinct lower-case header names separated by ';', not \
                 {:?}",
                super::error::shown(signed_headers)
            )));
        }
        seen.push(name);
        let mut values: Vec<&[u8]> = headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().trim_ascii())
            .collect();
        if values.is_empty() && name == "host" {
            values.extend(authority.map(str::as_bytes));
        }
        if values.is_empty() {
            return Err(OpenApiError::incomplete_signature(format!(
                "the signed header {:?} is not in the request",
                super::error::shown(name)
            )));
        }
        values.sort_unstable();
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                canonical_headers.push(',');
            }
            // Header values are visible ASCII from every SDK; anything else is kept byte for
            // byte (lossily shown), and then simply does not match.
            canonical_headers.push_str(&String::from_utf8_lossy(v));
        }
        canonical_headers.push('\n');
    }
    let query = canonical_query(query.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    Ok(format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{hashed_payload}"
    ))
}

/// The ACS3 string to sign of a canonical request.
pub fn acs3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{ACS3_HMAC_SHA256}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn acs3_mac(secret: &[u8], string_to_sign: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

/// Whether `signature` is the ACS3 signature of `string_to_sign` (constant-time).
pub fn acs3_verify(secret: &[u8], string_to_sign: &str, signature: &[u8]) -> bool {
    acs3_mac(secret, string_to_sign)
        .verify_slice(signature)
        .is_ok()
}

/// The ACS3 signature, lower-case hex (for clients and tests).
pub fn acs3_sign(secret: &[u8], string_to_sign: &str) -> String {
    hex::encode(acs3_mac(secret, string_to_sign).finalize().into_bytes())
}

/// The v1 string to sign over `params` (which must not include `Signature`).
pub fn v1_string_to_sign<'a>(
    method: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let canonical = canonical_query(params);
    format!("{method}&%2F&{}", enc(&canonical))
}

fn v1_mac(secret: &[u8], string_to_sign: &str) -> Hmac<Sha1> {
    // The key is the secret followed by "&" (the empty token secret of the old scheme); the
    // copy is wiped when dropped.
    let key = SecretSlice::from([secret, b"&"].concat());
    let mut mac =
        Hmac::<Sha1>::new_from_slice(key.expose_secret()).expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

/// Whether `signature` (decoded) is the v1 signature of `string_to_sign` (constant-time).
pub fn v1_verify(secret: &[u8], string_to_sign: &str, signature: &[u8]) -> bool {
    v1_mac(secret, string_to_sign)
        .verify_slice(signature)
        .is_ok()
}

/// The v1 signature, base64 (for clients and tests).
pub fn v1_sign(secret: &[u8], string_to_sign: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(v1_mac(secret, string_to_sign).finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::alibaba::openapi::encoding::form_pairs;

    const DIGEST: &str = "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// Contract §2.3's inputs.
    fn acs3_vector() -> (Vec<(String, String)>, HeaderMap) {
        let query = pairs(&[
            ("Algorithm", "RSA_PSS_SHA_256"),
            ("Digest", DIGEST),
            ("KeyId", "key-hzz65f1d8f8w9q6atnc1a"),
            ("KeyVersionId", "7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab"),
        ]);
        let h = headers(&[
            ("host", "kms.cn-hangzhou.aliyuncs.com"),
            ("x-acs-action", "AsymmetricSign"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2016-01-20"),
            // Present but not signed: must not count.
            ("user-agent", "AlibabaCloud (Linux; x86_64) Python/3.11.7"),
            ("accept", "application/json"),
        ]);
        (query, h)
    }

    const VECTOR_SIGNED: &str =
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version";

    #[test]
    fn acs3_worked_example_of_the_contract() {
        let (query, h) = acs3_vector();
        let canonical =
            acs3_canonical_request("POST", "/", &query, &h, None, VECTOR_SIGNED, EMPTY_SHA256)
                .unwrap();
        assert_eq!(
            canonical,
            "POST\n/\n\
             Algorithm=RSA_PSS_SHA_256&Digest=uU0nuZNNPgilLlLX2n2r%2BsSE7%2BN6U4DukIj3rOLvzek%3D&KeyId=key-hzz65f1d8f8w9q6atnc1a&KeyVersionId=7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab\n\
             host:kms.cn-hangzhou.aliyuncs.com\n\
             x-acs-action:AsymmetricSign\n\
             x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-acs-date:2024-01-01T00:00:00Z\n\
             x-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n\
             x-acs-version:2016-01-20\n\
             \n\
             host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = acs3_string_to_sign(&canonical);
        assert_eq!(
            sts,
            "ACS3-HMAC-SHA256\n956383dae17609dde087592521ca8da559b20e8d865a666936d62d0335dc89a6"
        );
        let expected = "e17c90a0eebdd69410d1bac9a8c4b2f41f4e3e1a7fecb83a205a7331b29d96d3";
        assert_eq!(acs3_sign(b"testsecret", &sts), expected);
        let auth = parse_acs3_authorization(&format!(
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={VECTOR_SIGNED},Signature={expected}"
        ))
        .unwrap();
        assert_eq!(auth.access_key_id, "testid");
        assert_eq!(auth.signed_headers, VECTOR_SIGNED);
        assert!(acs3_verify(b"testsecret", &sts, &auth.signature));
        assert!(!acs3_verify(b"testsecreT", &sts, &auth.signature));
        assert!(!acs3_verify(b"testsecret", &sts, &auth.signature[..31]));
    }

    #[test]
    fn each_sdks_query_spelling_canonicalises_to_what_it_signed() {
        // Python (urlencode: `+`, `%2A`) and Node (`%20`, literal `*`) for the same values;
        // `/`, `~`, `=` and `+` inside values too.
        let python = "Description=a+b%2Bc%2Fd%2Ae~f&Digest=uU0nuZNNPgilLlLX2n2r%2BsSE7%2BN6U4DukIj3rOLvzek%3D&KeyUsage=SIGN%2FVERIFY";
        let node = "KeyUsage=SIGN%2FVERIFY&Digest=uU0nuZNNPgilLlLX2n2r%2BsSE7%2BN6U4DukIj3rOLvzek%3D&Description=a%20b%2Bc%2Fd*e~f";
        let canon = |raw: &str| {
            let p = form_pairs(raw).unwrap();
            canonical_query(p.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        };
        let expected = "Description=a%20b%2Bc%2Fd%2Ae~f&Digest=uU0nuZNNPgilLlLX2n2r%2BsSE7%2BN6U4DukIj3rOLvzek%3D&KeyUsage=SIGN%2FVERIFY";
        assert_eq!(canon(python), expected);
        assert_eq!(canon(node), expected);
        // Empty values stay as `k=`; names sort by bytes (upper case before lower case).
        assert_eq!(
            canonical_query([("b", ""), ("B", "x"), ("a", "é")]),
            "B=x&a=%C3%A9&b="
        );
    }

    #[test]
    fn acs3_canonicalises_exactly_the_signed_headers_as_sent() {
        let (query, h) = acs3_vector();
        let canon = |signed: &str, h: &HeaderMap| {
            acs3_canonical_request("POST", "/", &query, h, None, signed, EMPTY_SHA256)
        };
        // Python signs every header it set; Node only host and x-acs-*.
        let python = "accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version";
        let full = canon(python, &h).unwrap();
        assert!(full.contains("\naccept:application/json\nhost:"), "{full}");
        assert!(full.contains("\nuser-agent:AlibabaCloud (Linux; x86_64) Python/3.11.7\n"));
        let subset = canon(VECTOR_SIGNED, &h).unwrap();
        assert!(!subset.contains("user-agent"));
        // An unsigned header may change freely; a signed one may not.
        let mut changed = h.clone();
        changed.insert("user-agent", "curl/8".parse().unwrap());
        assert_eq!(canon(VECTOR_SIGNED, &changed).unwrap(), subset);
        assert_ne!(canon(python, &changed).unwrap(), full);
        // The order is SignedHeaders' own.
        let reordered = canon(
            "x-acs-version;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce",
            &h,
        )
        .unwrap();
        assert!(
            reordered.contains("\nx-acs-version:2016-01-20\nhost:"),
            "{reordered}"
        );
    }

    #[test]
    fn repeated_headers_join_sorted_trimmed_values_and_http2_host_is_the_authority() {
        let h = headers(&[("x-acs-extra", " zeta "), ("x-acs-extra", "alpha")]);
        let c = acs3_canonical_request(
            "GET",
            "/",
            &[],
            &h,
            Some("127.0.0.1:8080"),
            "host;x-acs-extra",
            EMPTY_SHA256,
        )
        .unwrap();
        assert_eq!(
            c,
            format!("GET\n/\n\nhost:127.0.0.1:8080\nx-acs-extra:alpha,zeta\n\nhost;x-acs-extra\n{EMPTY_SHA256}")
        );
    }

    #[test]
    fn malformed_signed_headers_are_refused() {
        let (query, h) = acs3_vector();
        for bad in [
            "host;x-acs-missing",
            "host;host",
            "host;;x-acs-date",
            "Host;x-acs-date",
        ] {
            let e = acs3_canonical_request("POST", "/", &query, &h, None, bad, EMPTY_SHA256)
                .unwrap_err();
            assert_eq!(e.code(), "IncompleteSignature", "{bad}");
        }
    }

    #[test]
    fn authorization_parts_missing_repeated_unknown_or_malformed_are_refused() {
        let sig = "e17c90a0eebdd69410d1bac9a8c4b2f41f4e3e1a7fecb83a205a7331b29d96d3";
        let ok = parse_acs3_authorization(&format!(
            "ACS3-HMAC-SHA256 Credential=id, SignedHeaders=host, Signature={}",
            sig.to_uppercase()
        ))
        .unwrap();
        assert_eq!(
            (ok.access_key_id.as_str(), ok.signed_headers.as_str()),
            ("id", "host")
        );
        let cases = [
            (format!("ACS3-HMAC-SHA256 SignedHeaders=host,Signature={sig}"), "no Credential"),
            (format!("ACS3-HMAC-SHA256 Credential=id,Signature={sig}"), "no SignedHeaders"),
            ("ACS3-HMAC-SHA256 Credential=id,SignedHeaders=host".into(), "no Signature"),
            (format!("ACS3-HMAC-SHA256 Credential=,SignedHeaders=host,Signature={sig}"), "no Credential"),
            (format!("ACS3-HMAC-SHA256 Credential=a,Credential=b,SignedHeaders=host,Signature={sig}"), "Credential more than once"),
            (format!("ACS3-HMAC-SHA256 Credential=id,SignedHeaders=host,Signature={sig},Signature={sig}"), "Signature more than once"),
            (format!("ACS3-HMAC-SHA256 Credential=id,Scope=x,SignedHeaders=host,Signature={sig}"), "unknown part"),
            ("ACS3-HMAC-SHA256 Credential=id,SignedHeaders=host,Signature=zz".into(), "64 hex digits"),
            (format!("ACS3-HMAC-SHA256 Credential=id,SignedHeaders=host,Signature={}", &sig[..62]), "64 hex digits"),
            ("ACS3-HMAC-SHA256 garbage".into(), "name=value"),
            ("ACS3-HMAC-SHA256".into(), "name=value"),
        ];
        for (value, why) in cases {
            let e = parse_acs3_authorization(&value).unwrap_err();
            assert_eq!(e.code(), "IncompleteSignature", "{value}");
            assert!(e.message().contains(why), "{value}: {}", e.message());
        }
    }

    #[test]
    fn other_algorithms_are_refused_naming_what_is_supported() {
        for (value, name) in [
            ("ACS4-HMAC-SHA256 Credential=id/20261203/cn-hangzhou/Kms/aliyun_v4_request,SignedHeaders=host,Signature=a548", "ACS4-HMAC-SHA256"),
            ("ACS3-HMAC-SM3 Credential=id,SignedHeaders=host,Signature=00", "ACS3-HMAC-SM3"),
            ("ACS3-RSA-SHA256 Credential=id,SignedHeaders=host,Signature=00", "ACS3-RSA-SHA256"),
            ("Bearer abc", "not an ACS3-HMAC-SHA256 signature"),
        ] {
            let e = parse_acs3_authorization(value).unwrap_err();
            assert_eq!(e.code(), "IncompleteSignature");
            assert!(e.message().contains(name), "{}", e.message());
            assert!(
                e.message().contains("ACS3-HMAC-SHA256 (the SDKs' default)")
                    && e.message().contains("HMAC-SHA1"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn v1_worked_example_of_the_contract() {
        let params = [
            ("Action", "AsymmetricSign"),
            ("Format", "json"),
            ("Version", "2016-01-20"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
            ("SignatureNonce", "3156853299f313e23d1673dc12e1703d"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("AccessKeyId", "testid"),
            ("Algorithm", "RSA_PSS_SHA_256"),
            ("Digest", DIGEST),
            ("KeyId", "key-hzz65f1d8f8w9q6atnc1a"),
            ("KeyVersionId", "7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab"),
        ];
        let sts = v1_string_to_sign("POST", params);
        assert_eq!(
            sts,
            "POST&%2F&AccessKeyId%3Dtestid%26Action%3DAsymmetricSign%26Algorithm%3DRSA_PSS_SHA_256%26Digest%3DuU0nuZNNPgilLlLX2n2r%252BsSE7%252BN6U4DukIj3rOLvzek%253D%26Format%3Djson%26KeyId%3Dkey-hzz65f1d8f8w9q6atnc1a%26KeyVersionId%3D7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3156853299f313e23d1673dc12e1703d%26SignatureVersion%3D1.0%26Timestamp%3D2024-01-01T00%253A00%253A00Z%26Version%3D2016-01-20"
        );
        assert_eq!(v1_sign(b"testsecret", &sts), "5Q5LWgO6d8i9WYX3btE7rkDJ3HY=");
        let raw = base64::engine::general_purpose::STANDARD
            .decode("5Q5LWgO6d8i9WYX3btE7rkDJ3HY=")
            .unwrap();
        assert!(v1_verify(b"testsecret", &sts, &raw));
        assert!(!v1_verify(b"testsecret&", &sts, &raw));
        // Empty values are signed as `name=` (the core SDK's `SignatureType=`).
        let with_empty = v1_string_to_sign("POST", [("SignatureType", ""), ("A", "1")]);
        assert_eq!(with_empty, "POST&%2F&A%3D1%26SignatureType%3D");
    }

    #[test]
    fn the_documentation_trap_is_not_followed() {
        // [docs21] Signature.md: its printed string to sign leaves the inner `&` unescaped,
        // and its printed signature is the HMAC of that string; the SDKs escape them (%26)
        // and send 41wk2SSX1GJh7fwnc5eqOfiJPFg=, as its own signed URL shows.
        let params = [
            ("Action", "CreateKey"),
            ("SignatureVersion", "1.0"),
            ("Format", "json"),
            ("Version", "2016-01-20"),
            ("AccessKeyId", "testid"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("Timestamp", "2016-03-28T03:13:08Z"),
        ];
        let doc_sts = "GET&%2F&AccessKeyId%3Dtestid&Action%3DCreateKey&Format%3Djson&SignatureMethod%3DHMAC-SHA1&SignatureVersion%3D1.0&Timestamp%3D2016-03-28T03%253A13%253A08Z&Version%3D2016-01-20";
        assert_eq!(
            v1_sign(b"testsecret", doc_sts),
            "s/OdVWMTmNGagvWlljdAJ7Itsew="
        );
        let ours = v1_string_to_sign("GET", params);
        assert_eq!(
            ours,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DCreateKey%26Format%3Djson%26SignatureMethod%3DHMAC-SHA1%26SignatureVersion%3D1.0%26Timestamp%3D2016-03-28T03%253A13%253A08Z%26Version%3D2016-01-20"
        );
        assert_eq!(
            v1_sign(b"testsecret", &ours),
            "41wk2SSX1GJh7fwnc5eqOfiJPFg="
        );
    }
}
