//! A test identity provider: an EC P-256 key, its JWKS, and JWTs signed with it (ES256).
//!
//! ```ignore
//! let idp = JwtIssuer::new("kid-1");
//! std::fs::write(token.state_dir().join("jwks.json"), idp.jwks());
//! let jwt = idp.token(&idp.claims("alice", "https://idp.test", "p11kms", 300));
//! ```

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// An ES256 signing key with a key id.
pub struct JwtIssuer {
    kid: String,
    pkcs8: Vec<u8>,
    x: String,
    y: String,
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
    .expect("fits")
}

impl JwtIssuer {
    /// A fresh key.
    pub fn new(kid: &str) -> Self {
        let secret = loop {
            if let Ok(k) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let pkcs8 = secret.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec();
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        Self {
            kid: kid.into(),
            pkcs8,
            x: B64URL.encode(point.x().expect("x")),
            y: B64URL.encode(point.y().expect("y")),
        }
    }

    /// The JWKS holding the public key.
    pub fn jwks(&self) -> String {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        }]})
        .to_string()
    }

    /// Claims for `sub`, issued by `iss` for `aud`, expiring `ttl_s` seconds from now
    /// (negative: already expired).
    pub fn claims(&self, sub: &str, iss: &str, aud: &str, ttl_s: i64) -> Value {
        let now = now();
        json!({"sub": sub, "iss": iss, "aud": aud, "iat": now, "nbf": now - 5, "exp": now + ttl_s})
    }

    /// A JWT with `claims`, signed with this key.
    pub fn token(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("sign a JWT")
    }
}
