//! Client-key authentication of instance-API requests (contract §3.1).
//!
//! The client signs, with its client key's private key (RSASSA-PKCS1-v1_5, SHA-256), the string
//!
//! ```text
//! POST \n <content-sha256> \n <content-type> \n <date> \n
//! <every x-kms-* header, by name: "name:value\n"> /
//! ```
//!
//! (no newline after the final `/`) and sends it base64 in `authorization: Bearer …`, with its
//! client key's id in `x-kms-acccesskeyid` (three c's). The body is bound through
//! `content-sha256`, the uppercase hex SHA-256 of the body.
//!
//! The checks run in two steps so that no body is buffered for a caller that is not
//! authenticated: [`Presented::from_headers`] checks every header's form and the clock skew,
//! [`Presented::verify`] the signature with the named client key; only then is the body read,
//! and [`Authenticated::check_body`] compares it with the signed `content-sha256`.
//!
//! A signed request can be replayed within the 15-minute window (the protocol has no nonce),
//! as with Alibaba's own service; TLS keeps it from being seen.

use super::api_name::{quoted, ApiName};
use super::error::{Code, InstanceError};
use crate::auth::client_keys::ClientKeyStore;
use crate::auth::Caller;
use base64::Engine as _;
use http::{HeaderMap, Method};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, SystemTime};

/// The only protocol version (`x-kms-apiversion`).
pub const API_VERSION: &str = "dkms-gcs-0.2";
/// The only request signature method (`x-kms-signaturemethod`).
pub const SIGNATURE_METHOD: &str = "RSA_PKCS1_SHA_256";
/// Largest difference between a request's `date` and the server's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Request header names.
pub mod header {
    /// The API called.
    pub const API_NAME: &str = "x-kms-apiname";
    /// The protocol version.
    pub const API_VERSION: &str = "x-kms-apiversion";
    /// How the request is signed.
    pub const SIGNATURE_METHOD: &str = "x-kms-signaturemethod";
    /// The client key's id; the SDKs spell it with three c's.
    pub const ACCESS_KEY_ID: &str = "x-kms-acccesskeyid";
    /// Uppercase hex SHA-256 of the body (no `x-` prefix).
    pub const CONTENT_SHA256: &str = "content-sha256";
    /// RFC 1123 request time.
    pub const DATE: &str = "date";
    /// `Bearer <base64 signature>`.
    pub const AUTHORIZATION: &str = "authorization";
    /// Signed, but only as sent.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Every header with this prefix is signed.
    pub const SIGNED_PREFIX: &str = "x-kms-";
}

/// A request's credentials, checked for form but not yet verified.
#[derive(Debug)]
pub struct Presented {
    api: ApiName,
    key_id: String,
    signature: Vec<u8>,
    string_to_sign: String,
    content_sha256: [u8; 32],
}

/// A request whose signature verified.
#[derive(Debug)]
pub struct Authenticated {
    /// The API called (of the protocol; not yet checked to be one p11kms serves).
    pub api: ApiName,
    /// Who signed it.
    pub caller: Caller,
    /// The client key it was signed with.
    pub client_key_id: String,
    content_sha256: [u8; 32],
}

impl Presented {
    /// Checks the form of every header the signature depends on, and the clock skew against
    /// `now`; builds the string to sign.
    ///
    /// # Errors
    /// `MissingParameter`, `InvalidParam`, `InvalidApiVersion`, `InvalidApiName` or
    /// `RequestTimeTooSkewed`, for the first header at fault.
    pub fn from_headers(
        method: &Method,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Self, InstanceError> {
        let version = required(headers, header::API_VERSION)?;
        if version.trim() != API_VERSION {
            return Err(InstanceError::new(
                Code::InvalidApiVersion,
                format!("The ApiVersion \"{}\" is invalid.", quoted(version)),
            ));
        }
        let api = ApiName::parse(required(headers, header::API_NAME)?.trim())?;
        match single(headers, header::SIGNATURE_METHOD)? {
            None => return Err(InstanceError::invalid_param(header::SIGNATURE_METHOD)),
            Some(m) if m.trim() != SIGNATURE_METHOD => {
                return Err(InstanceError::new(
                    Code::InvalidParam,
                    format!(
                        "The Param {} is invalid. message:\"{}\"",
                        header::SIGNATURE_METHOD,
                        quoted(m)
                    ),
                ))
            }
            Some(_) => {}
        }
        let key_id = required(headers, header::ACCESS_KEY_ID)?.trim().to_string();

        let date = single(headers, header::DATE)
            .ok()
            .flatten()
            .ok_or_else(|| InstanceError::invalid_param("Date"))?;
        let sent =
            httpdate::parse_http_date(date).map_err(|_| InstanceError::invalid_param("Date"))?;
        let skew = now
            .duration_since(sent)
            .or_else(|_| sent.duration_since(now))
            .unwrap_or(Duration::ZERO);
        if skew > MAX_SKEW {
            return Err(InstanceError::new(
                Code::RequestTimeTooSkewed,
                format!(
                    "Request time exceeds server time more than 15 minutes: the request's date is \
                     {date}, the server's is {}; correct the client's clock",
                    httpdate::fmt_http_date(now)
                ),
            ));
        }

        let content_sha256_text = required(headers, header::CONTENT_SHA256)?;
        let mut content_sha256 = [0u8; 32];
        hex::decode_to_slice(content_sha256_text, &mut content_sha256)
            .map_err(|_| InstanceError::invalid_param(header::CONTENT_SHA256))?;
        let content_type = single(headers, header::CONTENT_TYPE)?.unwrap_or_default();

        let signature = single(headers, header::AUTHORIZATION)
            .ok()
            .flatten()
            .and_then(bearer_signature)
            .ok_or_else(|| InstanceError::invalid_param("Authorization"))?;

        let mut string_to_sign =
            format!("{method}\n{content_sha256_text}\n{content_type}\n{date}\n");
        let mut signed: Vec<&str> = headers
            .keys()
            .map(http::HeaderName::as_str)
            .filter(|name| name.starts_with(header::SIGNED_PREFIX))
            .collect();
        signed.sort_unstable();
        for name in signed {
            let value = single(headers, name)?.unwrap_or_default();
            string_to_sign.push_str(name);
            string_to_sign.push(':');
            string_to_sign.push_str(value.trim());
            string_to_sign.push('\n');
        }
        // The resource is always "/": the protocol has no paths or queries.
        string_to_sign.push('/');

        Ok(Self {
            api,
            key_id,
            signature,
            string_to_sign,
            content_sha256,
        })
    }

    /// The API the request calls.
    pub fn api(&self) -> ApiName {
        self.api
    }

    /// What the client must have signed.
    pub fn string_to_sign(&self) -> &str {
        &self.string_to_sign
    }

    /// Verifies the signature with the client key `x-kms-acccesskeyid` names.
    ///
    /// # Errors
    /// `Unauthorized` for an unknown client key, `SignatureNotMatch` for a signature that does
    /// not verify.
    pub fn verify(self, keys: &ClientKeyStore) -> Result<Authenticated, InstanceError> {
        let Some(key) = keys.get(&self.key_id) else {
            return Err(InstanceError::new(
                Code::Unauthorized,
                format!(
                    "The AccessKey ID \"{}\" does not exist in our records.",
                    quoted(&self.key_id)
                ),
            ));
        };
        if !key.verify(self.string_to_sign.as_bytes(), &self.signature) {
            return Err(InstanceError::new(
                Code::SignatureNotMatch,
                "Signature is not matched: authorization must be \"Bearer \" and the base64 \
                 RSA_PKCS1_SHA_256 signature, made with this client key's private key, of the \
                 method, content-sha256, content-type and date lines, the x-kms-* headers and /",
            ));
        }
        Ok(Authenticated {
            api: self.api,
            caller: key.caller().clone(),
            client_key_id: self.key_id,
            content_sha256: self.content_sha256,
        })
    }
}

impl Authenticated {
    /// Checks that `body` is the one the client signed (through `content-sha256`).
    ///
    /// # Errors
    /// `InvalidParam` for a body whose SHA-256 is not `content-sha256`.
    pub fn check_body(&self, body: &[u8]) -> Result<(), InstanceError> {
        let digest: [u8; 32] = Sha256::digest(body).into();
        if digest == self.content_sha256 {
            return Ok(());
        }
        Err(InstanceError::new(
            Code::InvalidParam,
            format!(
                "The Param {} is invalid: it is not the SHA-256 of the request body",
                header::CONTENT_SHA256
            ),
        ))
    }
}

/// The header's one value, if present.
///
/// # Errors
/// `InvalidParam` for a header sent twice or with bytes that are not visible ASCII.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, InstanceError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InstanceError::invalid_param(name));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| InstanceError::invalid_param(name))
}

/// [`single`], and `MissingParameter` when absent or empty.
fn required<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, InstanceError> {
    match single(headers, name)? {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(InstanceError::missing(name)),
    }
}

/// The signature bytes of `Bearer <base64>` (scheme case-insensitive).
fn bearer_signature(value: &str) -> Option<Vec<u8>> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    (!sig.is_empty()).then_some(sig)
}

#[cfg(test)]
mod tests {
    use super::super::test_client::{caller, client_string_to_sign, signed, store, KEY_ID};
    use super::*;
    use rsa::signature::{SignatureEncoding as _, Signer as _};

    /// The recorded Sign (RAW) request of the contract, §3.1 and §6.4.
    const RECORDED_DATE: &str = "Thu, 03 Dec 2026 15:54:43 GMT";
    const RECORDED_BODY: &str = "0a196b65792d687a7a36356631643866387739713661746e6331611a0f5253415f5053535f5348415f323536220b68656c6c6f20776f726c642a03524157";
    const RECORDED_SHA256: &str =
        "1D508A2B1134FA7074CFEE586BD28303E909D651DE48F4C68394E2229A9CDEE3";
    const RECORDED_STRING_TO_SIGN: &str = "POST\n\
        1D508A2B1134FA7074CFEE586BD28303E909D651DE48F4C68394E2229A9CDEE3\n\
        application/x-protobuf\n\
        Thu, 03 Dec 2026 15:54:43 GMT\n\
        x-kms-acccesskeyid:KAAP.0f6e7c8a-1b2c-4d3e-8f9a-0123456789ab\n\
        x-kms-apiname:Sign\n\
        x-kms-apiversion:dkms-gcs-0.2\n\
        x-kms-signaturemethod:RSA_PKCS1_SHA_256\n\
        /";

    fn recorded_time() -> SystemTime {
        httpdate::parse_http_date(RECORDED_DATE).unwrap()
    }

    /// The recorded request's headers, in the SDK's order, without `authorization`.
    fn recorded_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("accept", "application/x-protobuf"),
            ("host", "127.0.0.1:18085"),
            ("date", RECORDED_DATE),
            (
                "user-agent",
                "AlibabaCloud (Linux; x86_64) Python/3.11.7 kms-gcs-python-sdk-version/1.0.2",
            ),
            ("x-kms-apiversion", "dkms-gcs-0.2"),
            ("x-kms-apiname", "Sign"),
            ("x-kms-signaturemethod", "RSA_PKCS1_SHA_256"),
            ("x-kms-acccesskeyid", KEY_ID),
            ("content-type", "application/x-protobuf"),
            ("content-length", "62"),
            ("content-sha256", RECORDED_SHA256),
        ] {
            h.append(name, value.parse().unwrap());
        }
        h
    }

    fn check(headers: &HeaderMap, now: SystemTime) -> Result<Authenticated, InstanceError> {
        Presented::from_headers(&Method::POST, headers, now)?.verify(&store())
    }

    fn refused(headers: &HeaderMap, now: SystemTime) -> (Code, String) {
        let e = check(headers, now).unwrap_err();
        (e.code(), e.message().to_string())
    }

    #[test]
    fn the_recorded_request_gives_the_recorded_string_to_sign() {
        let headers = signed(recorded_headers());
        let presented = Presented::from_headers(&Method::POST, &headers, recorded_time()).unwrap();
        assert_eq!(presented.string_to_sign(), RECORDED_STRING_TO_SIGN);
        assert_eq!(presented.api(), ApiName::Sign);
        assert_eq!(
            client_string_to_sign(&recorded_headers()),
            RECORDED_STRING_TO_SIGN
        );
        let body = hex::decode(RECORDED_BODY).unwrap();
        assert_eq!(
            hex::encode_upper(Sha256::digest(&body)),
            RECORDED_SHA256,
            "the recorded content-sha256 is the body's"
        );
    }

    #[test]
    fn a_signature_made_with_the_client_key_verifies() {
        let headers = signed(recorded_headers());
        let ok = check(&headers, recorded_time()).unwrap();
        assert_eq!(ok.caller, caller());
        assert_eq!(ok.client_key_id, KEY_ID);
        assert_eq!(ok.api, ApiName::Sign);
        ok.check_body(&hex::decode(RECORDED_BODY).unwrap()).unwrap();
        // Within the window either way.
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert!(check(&headers, recorded_time() + minutes(14)).is_ok());
        assert!(check(&headers, recorded_time() - minutes(14)).is_ok());
        // Caller-added x-kms-* headers are signed too (the SDK merges request_headers first).
        let mut extra = recorded_headers();
        extra.insert("x-kms-extra", " padded value ".parse().unwrap());
        assert!(check(&signed(extra), recorded_time()).is_ok());
        // Lowercase hex is the same digest.
        let mut lower = recorded_headers();
        lower.insert(
            "content-sha256",
            RECORDED_SHA256.to_ascii_lowercase().parse().unwrap(),
        );
        let ok = check(&signed(lower), recorded_time()).unwrap();
        ok.check_body(&hex::decode(RECORDED_BODY).unwrap()).unwrap();
    }

    #[test]
    fn every_tampering_is_caught() {
        let good = signed(recorded_headers());
        let now = recorded_time();
        let not_matched = |h: &HeaderMap| {
            let (code, message) = refused(h, now);
            assert_eq!(code, Code::SignatureNotMatch, "{message}");
            assert_eq!(code.status(), 401);
        };
        for (name, value) in [
            ("x-kms-apiname", "Verify"),
            ("content-type", "application/json"),
            ("date", "Thu, 03 Dec 2026 15:54:44 GMT"),
            (
                "content-sha256",
                "0D508A2B1134FA7074CFEE586BD28303E909D651DE48F4C68394E2229A9CDEE3",
            ),
            ("x-kms-added", "1"),
        ] {
            let mut h = good.clone();
            h.insert(name, value.parse().unwrap());
            not_matched(&h);
        }
        let mut h = good.clone();
        h.remove("content-type");
        not_matched(&h);
        // Another client key's signature over the same request.
        let other = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let forged = rsa::pkcs1v15::SigningKey::<Sha256>::new(other)
            .sign(RECORDED_STRING_TO_SIGN.as_bytes())
            .to_vec();
        let mut h = good.clone();
        h.insert(
            "authorization",
            format!(
                "Bearer {}",
                base64::engine::general_purpose::STANDARD.encode(forged)
            )
            .parse()
            .unwrap(),
        );
        not_matched(&h);
        // A flipped bit of the signature.
        let mut sig = bearer_signature(good["authorization"].to_str().unwrap()).unwrap();
        sig[100] ^= 1;
        h.insert(
            "authorization",
            format!(
                "Bearer {}",
                base64::engine::general_purpose::STANDARD.encode(&sig)
            )
            .parse()
            .unwrap(),
        );
        not_matched(&h);

        // An unknown id; the signature is not even looked at.
        let mut h = good.clone();
        h.insert(
            "x-kms-acccesskeyid",
            "KAAP.00000000-0000-4000-8000-000000000000".parse().unwrap(),
        );
        assert_eq!(
            refused(&h, now),
            (
                Code::Unauthorized,
                "The AccessKey ID \"KAAP.00000000-0000-4000-8000-000000000000\" does not exist \
                 in our records."
                    .into()
            )
        );
        assert_eq!(Code::Unauthorized.status(), 404);

        // The body is bound through content-sha256.
        let ok = check(&good, now).unwrap();
        let mut body = hex::decode(RECORDED_BODY).unwrap();
        body[5] ^= 1;
        let e = ok.check_body(&body).unwrap_err();
        assert_eq!(e.code(), Code::InvalidParam);
        assert!(e.message().contains("not the SHA-256 of the request body"));
        assert!(ok.check_body(b"").is_err());
    }

    #[test]
    fn skewed_clocks_are_refused_both_ways() {
        let headers = signed(recorded_headers());
        let minutes = |m: u64| Duration::from_secs(m * 60 + 1);
        for now in [recorded_time() + minutes(15), recorded_time() - minutes(15)] {
            let (code, message) = refused(&headers, now);
            assert_eq!(code, Code::RequestTimeTooSkewed);
            assert!(
                message.starts_with("Request time exceeds server time more than 15 minutes")
                    && message.contains(RECORDED_DATE)
                    && message.contains("correct the client's clock"),
                "{message}"
            );
        }
    }

    #[test]
    fn missing_and_malformed_headers_get_their_codes() {
        let good = signed(recorded_headers());
        let now = recorded_time();
        let without = |name: &str| {
            let mut h = good.clone();
            h.remove(name);
            refused(&h, now)
        };
        let with = |name: &str, value: &str| {
            let mut h = good.clone();
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
            refused(&h, now)
        };
        let missing = |name: &str| {
            (
                Code::MissingParameter,
                format!("Parameter {name} does not exist in http header or body."),
            )
        };
        let invalid = |name: &str| (Code::InvalidParam, format!("The Param {name} is invalid."));

        assert_eq!(without("x-kms-apiversion"), missing("x-kms-apiversion"));
        assert_eq!(
            with("x-kms-apiversion", "dkms-gcs-0.1"),
            (
                Code::InvalidApiVersion,
                "The ApiVersion \"dkms-gcs-0.1\" is invalid.".into()
            )
        );
        assert_eq!(without("x-kms-apiname"), missing("x-kms-apiname"));
        assert_eq!(
            with("x-kms-apiname", "Sing"),
            (
                Code::InvalidApiName,
                "The ApiName \"Sing\" is invalid.".into()
            )
        );
        assert_eq!(
            without("x-kms-signaturemethod"),
            invalid("x-kms-signaturemethod")
        );
        assert_eq!(
            with("x-kms-signaturemethod", "HMAC-SHA1"),
            (
                Code::InvalidParam,
                "The Param x-kms-signaturemethod is invalid. message:\"HMAC-SHA1\"".into()
            )
        );
        assert_eq!(without("x-kms-acccesskeyid"), missing("x-kms-acccesskeyid"));
        assert_eq!(
            with("x-kms-acccesskeyid", " "),
            missing("x-kms-acccesskeyid")
        );
        assert_eq!(without("date"), invalid("Date"));
        assert_eq!(with("date", "2026-12-03T15:54:43Z"), invalid("Date"));
        assert_eq!(without("content-sha256"), missing("content-sha256"));
        assert_eq!(
            with("content-sha256", "1D508A2B"),
            invalid("content-sha256")
        );
        assert_eq!(without("authorization"), invalid("Authorization"));
        for bad in [
            "Basic abc",
            "Bearer",
            "Bearer !!!",
            "Bearer ",
            "u42qelGcqJ==",
        ] {
            assert_eq!(
                with("authorization", bad),
                invalid("Authorization"),
                "{bad}"
            );
        }
        // Non-ASCII bytes in a signed header.
        assert_eq!(
            with("x-kms-apiname", "Sign\u{e9}"),
            invalid("x-kms-apiname")
        );
        // A signed header sent twice is ambiguous.
        for (name, value) in [
            ("x-kms-acccesskeyid", KEY_ID),
            ("x-kms-other", "a"),
            ("content-type", "application/x-protobuf"),
            ("authorization", "Bearer AAAA"),
        ] {
            let mut h = good.clone();
            h.append(name, value.parse().unwrap());
            if name == "x-kms-other" {
                h.append(name, value.parse().unwrap());
            }
            let (code, _) = refused(&h, now);
            assert_eq!(code, Code::InvalidParam, "{name} twice");
        }
    }
}
