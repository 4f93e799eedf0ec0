//! Dev mode's Alibaba credentials for the dev admin, made on the first run and reused:
//!
//! * `alibaba-access-key.json` = `{"AccessKeyId": …, "AccessKeySecret": …}` for the OpenAPI SDKs
//!   (the secret also alone in `alibaba-access-key.secret`, which the config names);
//! * `alibaba-client-key.json` and `alibaba-client-key.password`, a client key in Alibaba's
//!   format for the instance-API SDKs (`alibaba-client-key.cert.pem` for the config).

use super::{io, read_secret, write_secret_file, DevError, ADMIN_SUBJECT};
use secrecy::{ExposeSecret as _, SecretString};
use std::path::{Path, PathBuf};

/// The AccessKey file.
pub const ACCESS_KEY_FILE: &str = "alibaba-access-key.json";
const ACCESS_KEY_SECRET_FILE: &str = "alibaba-access-key.secret";
/// The client key files' stem.
pub const CLIENT_KEY_STEM: &str = "alibaba-client-key";

/// The dev admin's Alibaba credentials.
#[derive(Debug)]
pub struct DevAlibaba {
    /// The AccessKeyId.
    pub access_key_id: String,
    /// The file holding the AccessKey secret alone.
    pub access_key_secret_file: PathBuf,
    /// The AccessKey JSON file.
    pub access_key_file: PathBuf,
    /// The client key id (`KAAP.…`).
    pub client_key_id: String,
    /// The client key file.
    pub client_key_file: PathBuf,
    /// Its password file.
    pub client_key_password_file: PathBuf,
    /// Its certificate.
    pub client_key_certificate: PathBuf,
}

fn alphanumeric(n: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// Makes the credentials in `dir` unless they exist.
///
/// # Errors
/// When a file cannot be read or written.
pub fn ensure(dir: &Path) -> Result<DevAlibaba, DevError> {
    let access_key_file = dir.join(ACCESS_KEY_FILE);
    let access_key_secret_file = dir.join(ACCESS_KEY_SECRET_FILE);
    if !access_key_file.exists() || !access_key_secret_file.exists() {
        let id = format!("LTAIp11kmsdev{}", alphanumeric(12));
        let secret = SecretString::from(alphanumeric(30));
        for path in [&access_key_file, &access_key_secret_file] {
            if path.exists() {
                std::fs::remove_file(path).map_err(io("cannot replace", path))?;
            }
        }
        write_secret_file(&access_key_secret_file, secret.expose_secret())?;
        let json = serde_json::json!({
            "AccessKeyId": id,
            "AccessKeySecret": secret.expose_secret(),
        });
        write_secret_file(&access_key_file, &json.to_string())?;
    }
    let text = read_secret(&access_key_file)?;
    let parsed: serde_json::Value = serde_json::from_str(text.expose_secret())
        .map_err(|e| DevError(format!("{} is not JSON: {e}", access_key_file.display())))?;
    let access_key_id = parsed["AccessKeyId"]
        .as_str()
        .ok_or_else(|| DevError(format!("{} has no AccessKeyId", access_key_file.display())))?
        .to_string();

    let client_key_file = dir.join(format!("{CLIENT_KEY_STEM}.json"));
    let client_key_password_file = dir.join(format!("{CLIENT_KEY_STEM}.password"));
    let client_key_certificate = dir.join(format!("{CLIENT_KEY_STEM}.cert.pem"));
    if !(client_key_file.exists()
        && client_key_password_file.exists()
        && client_key_certificate.exists())
    {
        for path in [
            &client_key_file,
            &client_key_password_file,
            &client_key_certificate,
        ] {
            if path.exists() {
                std::fs::remove_file(path).map_err(io("cannot replace", path))?;
            }
        }
        crate::alibaba_client_key::create_as(
            dir,
            Some(CLIENT_KEY_STEM),
            ADMIN_SUBJECT,
            "userAccount",
        )
        .map_err(DevError)?;
    }
    let text =
        std::fs::read_to_string(&client_key_file).map_err(io("cannot read", &client_key_file))?;
    let parsed: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DevError(format!("{} is not JSON: {e}", client_key_file.display())))?;
    let client_key_id = parsed["KeyId"]
        .as_str()
        .ok_or_else(|| DevError(format!("{} has no KeyId", client_key_file.display())))?
        .to_string();
    Ok(DevAlibaba {
        access_key_id,
        access_key_secret_file,
        access_key_file,
        client_key_id,
        client_key_file,
        client_key_password_file,
        client_key_certificate,
    })
}
