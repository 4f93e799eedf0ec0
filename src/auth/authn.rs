//! Authentication: a bearer token (a static API token from the config, or a JWT from an
//! identity provider) or a verified mTLS client certificate becomes a [`Caller`].
//!
//! * `authorization: Bearer <token>` (scheme case-insensitive). Static tokens are kept as their
//!   SHA-256 only; the presented token is hashed and compared with every configured hash in
//!   constant time (`subtle`). A token that is not a static one is tried as a JWT when
//!   `[auth.jwt]` is configured: signature against the JWKS (asymmetric keys only, the
//!   algorithm pinned by the key), `iss`, `aud`, `exp` and `nbf` (with a small leeway).
//! * Without a bearer token, the transport's verified client-certificate identity
//!   ([`Peer::client_subject`]) is looked up in `[[auth.mtls]]`; an unmapped certificate is
//!   anonymous.
//! * A credential that is present but wrong (unknown token, bad JWT, malformed header) is an
//!   error (UNAUTHENTICATED), never anonymous. Failures are counted per peer IP and logged
//!   without the credential.

use super::failures::FailureCounter;
use crate::api::peer::Peer;
use crate::config::{AuthConfig, JwtConfig};
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq as _;

/// The message for a protected method called without credentials.
pub const MISSING_CREDENTIALS: &str =
    "this method needs credentials: send `authorization: Bearer <token>` (or a client certificate the gateway maps to a subject)";
/// The message for a credential that was presented but is not valid.
pub const INVALID_CREDENTIALS: &str = "the credentials are invalid or have expired";
/// Longest bearer token considered; longer ones are invalid without being parsed.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A static API token from the config.
    Token,
    /// A JWT checked against the JWKS.
    Jwt,
    /// A verified mTLS client certificate.
    Mtls,
    /// An Alibaba instance-API request signed with a client key (`[[alibaba.client_keys]]`).
    ClientKey,
    /// An Alibaba AccessKey pair: a request signature (OpenAPI ACS3 or RPC v1).
    AccessKey,
}

impl AuthMethod {
    /// The name in audit records.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Mtls => "mtls",
            AuthMethod::ClientKey => "client_key",
            AuthMethod::AccessKey => "access_key",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The subject id bindings name.
    pub subject_id: String,
    /// `userAccount`, `serviceAccount` or `federatedUser`.
    pub subject_type: String,
    /// How it authenticated.
    pub method: AuthMethod,
}

/// Why a presented credential was refused; for logs and audit records, never for clients
/// (they get [`INVALID_CREDENTIALS`]) and never containing the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The `authorization` header is not `Bearer <token>`, or appears twice.
    MalformedHeader,
    /// A bearer token longer than any credential this gateway accepts.
    OversizedToken,
    /// Not a configured token, and not a JWT (or JWTs are not configured).
    UnknownToken,
    /// A JWT whose signature, algorithm or key id does not check out.
    JwtSignature,
    /// A JWT past its `exp` (or before its `nbf`).
    JwtExpired,
    /// A JWT for another issuer or audience.
    JwtClaims,
    /// A JWT without the subject claim.
    JwtSubject,
}

impl Failure {
    /// A short reason.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::MalformedHeader => "malformed authorization header",
            Failure::OversizedToken => "bearer token over 16384 bytes",
            Failure::UnknownToken => "unknown bearer token",
            Failure::JwtSignature => "JWT signature or key not accepted",
            Failure::JwtExpired => "JWT expired or not yet valid",
            Failure::JwtClaims => "JWT issuer or audience not accepted",
            Failure::JwtSubject => "JWT has no usable subject claim",
        }
    }
}

struct StaticToken {
    hash: [u8; 32],
    caller: Caller,
}

/// Turns request credentials into callers.
pub struct Authenticator {
    tokens: Vec<StaticToken>,
    mtls: HashMap<String, Caller>,
    jwt: Option<JwtValidator>,
    failures: FailureCounter,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("mtls", &self.mtls.len())
            .field("jwt", &self.jwt.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`Authenticator::authenticate`] found.
pub type Authenticated = Result<Option<Caller>, Failure>;

impl Authenticator {
    /// From `[auth]` (validated at load; the JWKS is read now).
    ///
    /// # Errors
    /// When the JWKS file cannot be read.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, String> {
        let tokens = auth
            .tokens
            .iter()
            .map(|t| StaticToken {
                hash: t.hash(),
                caller: Caller {
                    subject_id: t.subject_id.clone(),
                    subject_type: t.subject_type.clone(),
                    method: AuthMethod::Token,
                },
            })
            .collect();
        let mtls = auth
            .mtls
            .iter()
            .map(|m| {
                (
                    m.subject.clone(),
                    Caller {
                        subject_id: m.id().to_string(),
                        subject_type: m.subject_type.clone(),
                        method: AuthMethod::Mtls,
                    },
                )
            })
            .collect();
        let jwt = auth.jwt.as_ref().map(JwtValidator::new).transpose()?;
        Ok(Self {
            tokens,
            mtls,
            jwt,
            failures: FailureCounter::default(),
        })
    }

    /// The JWT validator, if JWTs are configured.
    pub fn jwt(&self) -> Option<&JwtValidator> {
        self.jwt.as_ref()
    }

    /// Authenticates a request from its headers and its connection. `Ok(None)` is anonymous.
    pub fn authenticate(&self, headers: &HeaderMap, peer: Option<&Peer>) -> Authenticated {
        let result = self.check(headers, peer);
        if let Err(failure) = result {
            self.count_failure(failure, peer);
        }
        result
    }

    fn check(&self, headers: &HeaderMap, peer: Option<&Peer>) -> Authenticated {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Ok(peer
                .and_then(|p| p.client_subject.as_ref())
                .and_then(|s| self.mtls.get(s))
                .cloned());
        };
        if values.next().is_some() {
            return Err(Failure::MalformedHeader);
        }
        let token = bearer_token(value.as_bytes()).ok_or(if value.len() > MAX_TOKEN_LEN {
            Failure::OversizedToken
        } else {
            Failure::MalformedHeader
        })?;
        if let Some(caller) = self.static_token(token) {
            return Ok(Some(caller));
        }
        match &self.jwt {
            Some(jwt) if looks_like_jwt(token) => {
                let token = std::str::from_utf8(token).map_err(|_| Failure::MalformedHeader)?;
                jwt.validate(token).map(Some)
            }
            _ => Err(Failure::UnknownToken),
        }
    }

    /// Compares the token's hash with every configured hash, in constant time and without
    /// stopping at a match.
    fn static_token(&self, token: &[u8]) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.hash.ct_eq(&hash)) {
                found = Some(&t.caller);
            }
        }
        found.cloned()
    }

    fn count_failure(&self, failure: Failure, peer: Option<&Peer>) {
        let ip = peer.map(|p| p.addr.ip());
        let counted = self.failures.count(ip);
        if counted.worth_a_warning() {
            tracing::warn!(
                peer = %ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
                failures = counted.peer,
                total_failures = counted.total,
                reason = failure.reason(),
                "authentication failed"
            );
        } else {
            tracing::debug!(
                failures = counted.peer,
                reason = failure.reason(),
                "authentication failed"
            );
        }
    }

    /// Failed authentications from `ip` so far.
    pub fn failures_from(&self, ip: IpAddr) -> u64 {
        self.failures.from(ip)
    }

    /// Failed authentications so far, from anyone.
    pub fn total_failures(&self) -> u64 {
        self.failures.total()
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, one or more spaces).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && token.len() <= MAX_TOKEN_LEN && !token.contains(&b' ')).then_some(token)
}

fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() == 2
}

// ------------------------------------------------------------------------------------------
// JWT
// ------------------------------------------------------------------------------------------

/// One usable key of the JWKS.
struct JwksKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The public keys of a JWKS file, with the algorithms each may verify.
pub struct Jwks {
    keys: Vec<JwksKey>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Jwks {
    /// Reads and checks a JWKS file.
    ///
    /// # Errors
    /// Unreadable, not a JWKS, no usable key, or a symmetric key (a JWKS is public; HMAC
    /// secrets do not belong in it).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a JWKS document.
    ///
    /// # Errors
    /// As [`Jwks::load`].
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS (JSON Web Key Set): {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let algorithms = algorithms_for(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
            if algorithms.is_empty() {
                continue; // an encryption key, or an algorithm we do not verify
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
            keys.push(JwksKey {
                kid: jwk.common.key_id.clone(),
                algorithms,
                key,
            });
        }
        if keys.is_empty() {
            return Err("no signature verification key (RSA, EC P-256/P-384 or Ed25519)".into());
        }
        Ok(Self { keys })
    }
}

/// The algorithms a JWK may verify: its `alg` if it names one, else every algorithm of its key
/// type. Never HMAC.
fn algorithms_for(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    use jsonwebtoken::jwk::{KeyAlgorithm as K, PublicKeyUse};
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(Vec::new());
    }
    let family: Vec<Algorithm> =
        match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => return Err(
                "symmetric (oct) keys are not accepted: JWTs must be signed with an asymmetric key"
                    .into(),
            ),
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Ok(Vec::new()),
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                _ => return Ok(Vec::new()),
            },
        };
    Ok(match jwk.common.key_algorithm {
        None => family,
        Some(alg) => {
            let named = match alg {
                K::RS256 => Algorithm::RS256,
                K::RS384 => Algorithm::RS384,
                K::RS512 => Algorithm::RS512,
                K::PS256 => Algorithm::PS256,
                K::PS384 => Algorithm::PS384,
                K::PS512 => Algorithm::PS512,
                K::ES256 => Algorithm::ES256,
                K::ES384 => Algorithm::ES384,
                K::EdDSA => Algorithm::EdDSA,
                _ => return Ok(Vec::new()),
            };
            if !family.contains(&named) {
                return Err(format!("alg {alg} does not match the key type"));
            }
            vec![named]
        }
    })
}

/// Validates JWTs against the JWKS file, which it reloads when asked.
pub struct JwtValidator {
    path: PathBuf,
    jwks: RwLock<Arc<Jwks>>,
    fingerprint: Mutex<Option<FileFingerprint>>,
    issuer: String,
    audience: String,
    subject_claim: String,
    subject_type: String,
    leeway_s: u64,
    reload_interval: Option<Duration>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("path", &self.path)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// What tells a file changed: size, mtime, inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileFingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<FileFingerprint> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileFingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

impl JwtValidator {
    fn new(cfg: &JwtConfig) -> Result<Self, String> {
        let fp = fingerprint(&cfg.jwks_file);
        let jwks = Jwks::load(&cfg.jwks_file)?;
        Ok(Self {
            path: cfg.jwks_file.clone(),
            jwks: RwLock::new(Arc::new(jwks)),
            fingerprint: Mutex::new(fp),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            subject_claim: cfg.subject_claim.clone(),
            subject_type: cfg.subject_type.clone(),
            leeway_s: cfg.leeway_s,
            reload_interval: (cfg.reload_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.reload_interval_ms)),
        })
    }

    /// How often the file is checked for changes; `None`: only on SIGHUP.
    pub fn reload_interval(&self) -> Option<Duration> {
        self.reload_interval
    }

    /// Reloads the JWKS if the file changed (or always, with `force`). A file that fails to
    /// load leaves the previous keys in service.
    pub fn reload(&self, force: bool) {
        let fp = fingerprint(&self.path);
        {
            let mut seen = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == fp {
                return;
            }
            *seen = fp;
        }
        match Jwks::load(&self.path) {
            Ok(jwks) => {
                let n = jwks.keys.len();
                *self.jwks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(jwks);
                tracing::info!(path = %self.path.display(), keys = n, "JWKS reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "JWKS reload failed; the previous keys stay in service");
            }
        }
    }

    fn validate(&self, token: &str) -> Result<Caller, Failure> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::JwtSignature)?;
        let jwks = Arc::clone(&self.jwks.read().unwrap_or_else(|p| p.into_inner()));
        let mut last = Failure::JwtSignature;
        let candidates = jwks.keys.iter().filter(|k| {
            k.algorithms.contains(&header.alg)
                && (header.kid.is_none() || k.kid.is_none() || header.kid == k.kid)
        });
        for k in candidates {
            let mut v = Validation::new(header.alg);
            v.leeway = self.leeway_s;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &k.key, &v,
            ) {
                Ok(data) => {
                    let subject = data
                        .claims
                        .get(&self.subject_claim)
                        .and_then(serde_json::Value::as_str)
                        .filter(|s| {
                            !s.is_empty() && s.chars().count() <= crate::config::MAX_SUBJECT_ID_LEN
                        })
                        .ok_or(Failure::JwtSubject)?;
                    return Ok(Caller {
                        subject_id: subject.to_string(),
                        subject_type: self.subject_type.clone(),
                        method: AuthMethod::Jwt,
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                            Failure::JwtExpired
                        }
                        ErrorKind::InvalidIssuer
                        | ErrorKind::InvalidAudience
                        | ErrorKind::MissingRequiredClaim(_) => Failure::JwtClaims,
                        _ => Failure::JwtSignature,
                    };
                    // Claims are only checked once the signature verified: this key is the one.
                    if last != Failure::JwtSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> Authenticator {
        let cfg: AuthConfig = toml::from_str(text).unwrap();
        Authenticator::from_config(&cfg).unwrap()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    fn with_real_hash() -> Authenticator {
        auth(&format!(
            r#"
            [[tokens]]
            sha256 = "{}"
            subject_id = "x"
            subject_type = "userAccount"
            [[mtls]]
            subject = "spiffe://example.org/ci"
            subject_type = "serviceAccount"
            "#,
            hex::encode(Sha256::digest(b"s3cret"))
        ))
    }

    #[test]
    fn static_tokens_and_mtls_subjects() {
        let a = with_real_hash();
        let ok = a
            .authenticate(&headers("Bearer s3cret"), None)
            .unwrap()
            .unwrap();
        assert_eq!(ok.subject_id, "x");
        assert_eq!(ok.method, AuthMethod::Token);
        assert!(a
            .authenticate(&headers("bEaReR   s3cret "), None)
            .unwrap()
            .is_some());
        assert_eq!(
            a.authenticate(&headers("Bearer s3cre"), None),
            Err(Failure::UnknownToken)
        );
        assert_eq!(
            a.authenticate(&headers("Basic s3cret"), None),
            Err(Failure::MalformedHeader)
        );
        assert_eq!(
            a.authenticate(&headers("Bearer"), None),
            Err(Failure::MalformedHeader)
        );
        assert_eq!(a.authenticate(&HeaderMap::new(), None), Ok(None));
        let peer = |s: Option<&str>| Peer {
            addr: "10.0.0.1:1".parse().unwrap(),
            tls: true,
            client_subject: s.map(Into::into),
            health_only: false,
        };
        let m = a
            .authenticate(
                &HeaderMap::new(),
                Some(&peer(Some("spiffe://example.org/ci"))),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.subject_id.as_str(), m.method),
            ("spiffe://example.org/ci", AuthMethod::Mtls)
        );
        assert_eq!(
            a.authenticate(&HeaderMap::new(), Some(&peer(Some("CN=other")))),
            Ok(None),
            "an unmapped certificate is anonymous"
        );
        // A bad bearer token is not rescued by a good certificate.
        assert!(a
            .authenticate(
                &headers("Bearer nope"),
                Some(&peer(Some("spiffe://example.org/ci")))
            )
            .is_err());
        assert_eq!(a.failures_from("10.0.0.1".parse().unwrap()), 1);
        assert_eq!(a.total_failures(), 4);
    }
}
