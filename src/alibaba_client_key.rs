//! `p11kms alibaba client-key create`: a client credential for the Alibaba KMS instance API,
//! in Alibaba's ClientKey format, made in software.
//!
//! A client key is the caller's credential, like an API token: it is not an HSM key and never
//! touches the token. The command writes, into the output directory:
//!
//! * `clientKey_KAAP.<uuid>.json`: `{"KeyId": "KAAP.<uuid>", "PrivateKeyData": "<base64>"}`,
//!   the private key and its self-signed certificate in a password-protected PKCS#12 (PBES2
//!   AES-256-CBC, HMAC-SHA-256 MAC), as the official SDKs load it (`client_key_file=`);
//! * `clientKey_KAAP.<uuid>.password`: its random password (`password=`);
//! * `clientKey_KAAP.<uuid>.cert.pem`: the certificate, the only part the gateway needs
//!   (`[[alibaba.client_keys]] public_key_file`),
//!
//! and prints the `[[alibaba.client_keys]]` entry to paste into the config. The first two are
//! created mode 0600 and go to the client; the daemon never sees the private key.

use crate::cli::ClientKeyCreateArgs;
use crate::config::{CALLER_SUBJECT_TYPES, MAX_SUBJECT_ID_LEN};
use base64::Engine as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Size of the generated client keys: what Alibaba's console issues.
pub const CLIENT_KEY_BITS: usize = 2048;
/// How long the self-signed certificate is valid. The gateway does not look at it (the
/// certificate only carries the public key); clients that do get a long-lived credential, as
/// from Alibaba's console, and rotate it by making a new one.
const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// PBKDF2 iterations for the PKCS#12 encryption and MAC (OpenSSL 3's default is 2048).
const PKCS12_ITERATIONS: u64 = 10_000;

/// What [`create`] wrote.
#[derive(Debug)]
pub struct Created {
    /// `KAAP.<uuid>`.
    pub id: String,
    /// The ClientKey JSON file (for the client).
    pub key_file: PathBuf,
    /// Its password file (for the client).
    pub password_file: PathBuf,
    /// The certificate (for the gateway's config).
    pub certificate_file: PathBuf,
    /// The `[[alibaba.client_keys]]` entry.
    pub config_entry: String,
}

/// The CLI entry point: creates the files and prints the config entry on stdout.
pub fn main(args: ClientKeyCreateArgs) -> ExitCode {
    match create(&args.out, &args.subject, &args.subject_type) {
        Ok(created) => {
            eprintln!(
                "p11kms: wrote client key {id} (RSA-{CLIENT_KEY_BITS}, made in software: a client \
                 credential, not an HSM key)\n  \
                 for the client:  {key} and its password in {password}\n  \
                 for the gateway: {cert}, with this entry in the config:",
                id = created.id,
                key = created.key_file.display(),
                password = created.password_file.display(),
                cert = created.certificate_file.display(),
            );
            print!("{}", created.config_entry);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p11kms: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes a client key for `subject_id` (of `subject_type`) and writes its files into `out`
/// (created if missing). Existing files are never overwritten.
///
/// # Errors
/// A bad subject, or a file that cannot be written; the message says which.
pub fn create(out: &Path, subject_id: &str, subject_type: &str) -> Result<Created, String> {
    create_as(out, None, subject_id, subject_type)
}

/// Like [`create`], with the files named `<stem>.json`, `<stem>.password` and `<stem>.cert.pem`
/// (default stem: `clientKey_<id>`, as Alibaba's console names them).
///
/// # Errors
/// As [`create`].
pub fn create_as(
    out: &Path,
    stem: Option<&str>,
    subject_id: &str,
    subject_type: &str,
) -> Result<Created, String> {
    if subject_id.is_empty() || subject_id.chars().count() > MAX_SUBJECT_ID_LEN {
        return Err(format!(
            "--subject must be 1 to {MAX_SUBJECT_ID_LEN} characters"
        ));
    }
    if !CALLER_SUBJECT_TYPES.contains(&subject_type) {
        return Err(format!(
            "--subject-type {subject_type:?} is not one of {}",
            CALLER_SUBJECT_TYPES.join(", ")
        ));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create --out {}: {e}", out.display()))?;
    let out = out
        .canonicalize()
        .map_err(|e| format!("cannot resolve --out {}: {e}", out.display()))?;

    let id = format!("KAAP.{}", uuid_v4());
    let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, CLIENT_KEY_BITS)
        .map_err(|e| format!("RSA key generation failed: {e}"))?;
    let certificate = self_signed_certificate(&private, &id)?;
    let password = SecretString::from(hex::encode(rand::random::<[u8; 16]>()));
    let pkcs12 = pkcs12(&private, &certificate, password.expose_secret())?;
    let client_key = serde_json::json!({
        "KeyId": id,
        "PrivateKeyData": base64::engine::general_purpose::STANDARD.encode(pkcs12),
    });

    let stem = stem.map_or_else(|| format!("clientKey_{id}"), str::to_string);
    let key_file = out.join(format!("{stem}.json"));
    let password_file = out.join(format!("{stem}.password"));
    let certificate_file = out.join(format!("{stem}.cert.pem"));
    let certificate_path = certificate_file.to_str().ok_or_else(|| {
        format!(
            "{} is not UTF-8, so a TOML config cannot name it; choose another --out",
            certificate_file.display()
        )
    })?;
    write_new(&key_file, client_key.to_string().as_bytes(), 0o600)?;
    write_new(&password_file, password.expose_secret().as_bytes(), 0o600)?;
    write_new(&certificate_file, certificate.as_bytes(), 0o644)?;

    let value = |s: &str| toml::Value::from(s).to_string();
    let config_entry = format!(
        "[[alibaba.client_keys]]\nid = {}\npublic_key_file = {}\nsubject_id = {}\nsubject_type = {}\n",
        value(&id),
        value(certificate_path),
        value(subject_id),
        value(subject_type),
    );
    Ok(Created {
        id,
        key_file,
        password_file,
        certificate_file,
        config_entry,
    })
}

/// A self-signed certificate (PEM) for `private`, with `CN=<id>`: the form in which Alibaba
/// hands out a client key's public half.
///
/// # Errors
/// When the certificate cannot be built (an id that is not a valid name).
pub fn self_signed_certificate(private: &RsaPrivateKey, id: &str) -> Result<String, String> {
    use der::EncodePem as _;
    use std::str::FromStr as _;
    use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
    let fail = |e: &dyn std::fmt::Display| format!("cannot build the certificate: {e}");
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(private.clone());
    let spki =
        spki::SubjectPublicKeyInfoOwned::from_key(private.to_public_key()).map_err(|e| fail(&e))?;
    // A positive 16-byte serial (RFC 5280: at most 20 octets, unpredictable).
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let name = x509_cert::name::Name::from_str(&format!("CN={id}")).map_err(|e| fail(&e))?;
    // A self-signed end-entity certificate (not a CA): digitalSignature, as a TLS client
    // certificate too (the Go SDK presents it when a server asks for one).
    let profile = Profile::Leaf {
        issuer: name.clone(),
        enable_key_agreement: false,
        enable_key_encipherment: false,
    };
    let builder = CertificateBuilder::new(
        profile,
        x509_cert::serial_number::SerialNumber::new(&serial).map_err(|e| fail(&e))?,
        x509_cert::time::Validity::from_now(CERTIFICATE_VALIDITY).map_err(|e| fail(&e))?,
        name,
        spki,
        &signer,
    )
    .map_err(|e| fail(&e))?;
    let certificate = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(|e| fail(&e))?;
    certificate
        .to_pem(der::pem::LineEnding::LF)
        .map_err(|e| fail(&e))
}

/// The password-protected PKCS#12 of the key and its certificate.
fn pkcs12(
    private: &RsaPrivateKey,
    certificate_pem: &str,
    password: &str,
) -> Result<Vec<u8>, String> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let fail = |e: &dyn std::fmt::Display| format!("cannot build the PKCS#12: {e}");
    let (_, certificate_der) =
        der::pem::decode_vec(certificate_pem.as_bytes()).map_err(|e| fail(&e))?;
    let key = private.to_pkcs8_der().map_err(|e| fail(&e))?;
    // The local key id ties the key bag to its certificate bag: a digest of the public key.
    let public = private
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| fail(&e))?;
    let local_key_id = &Sha256::digest(public.as_bytes())[..20];
    let chain = PrivateKeyChain::new(
        key.as_bytes(),
        local_key_id,
        [Certificate::from_der(&certificate_der).map_err(|e| fail(&e))?],
    );
    let mut store = KeyStore::new();
    store.add_entry("client key", KeyStoreEntry::PrivateKeyChain(chain));
    store
        .writer(password)
        .encryption_iterations(PKCS12_ITERATIONS)
        .mac_iterations(PKCS12_ITERATIONS)
        .write()
        .map_err(|e| fail(&e))
}

/// Creates `path` with `mode` and writes `data`; an existing file is an error, never replaced.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A random (version 4) UUID, lowercase 8-4-4-4-12.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_files_hold_a_loadable_pkcs12_and_the_config_entry_loads() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let created = create(&out, "billing \"app\"", "serviceAccount").unwrap();
        assert!(crate::config::alibaba::is_client_key_id(&created.id));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&created.key_file), 0o600);
        assert_eq!(mode(&created.password_file), 0o600);

        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&created.key_file).unwrap()).unwrap();
        assert_eq!(json["KeyId"], created.id.as_str());
        let p12 = base64::engine::general_purpose::STANDARD
            .decode(json["PrivateKeyData"].as_str().unwrap())
            .unwrap();
        let password = std::fs::read_to_string(&created.password_file).unwrap();
        assert_eq!(password.len(), 32, "hex of 16 random bytes, no newline");
        let store = p12_keystore::KeyStore::from_pkcs12(&p12, &password).unwrap();
        let (_, chain) = store.private_key_chain().unwrap();
        let private = {
            use rsa::pkcs8::DecodePrivateKey as _;
            RsaPrivateKey::from_pkcs8_der(chain.key()).unwrap()
        };
        assert!(p12_keystore::KeyStore::from_pkcs12(&p12, "wrong").is_err());

        // The config entry, pasted under a config, names the certificate of that very key.
        #[derive(serde::Deserialize)]
        struct Wrapper {
            alibaba: crate::config::AlibabaConfig,
        }
        let mut parsed: Wrapper = toml::from_str(&created.config_entry).unwrap();
        parsed.alibaba.validate(Path::new("/")).unwrap();
        let entry = &parsed.alibaba.client_keys[0];
        assert_eq!(entry.id, created.id);
        assert_eq!(entry.subject_id, "billing \"app\"");
        assert_eq!(entry.public_key(), &private.to_public_key());
        let cert_der = der::pem::decode_vec(
            std::fs::read_to_string(&created.certificate_file)
                .unwrap()
                .as_bytes(),
        )
        .unwrap()
        .1;
        assert_eq!(chain.chain()[0].as_der(), cert_der.as_slice());

        // A second key in the same directory gets its own files; nothing is overwritten.
        let second = create(&out, "other", "userAccount").unwrap();
        assert_ne!(second.id, created.id);
    }

    #[test]
    fn bad_subjects_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let e = create(&out, "", "serviceAccount").unwrap_err();
        assert!(e.contains("--subject must be 1 to 100"), "{e}");
        let e = create(&out, "app", "robot").unwrap_err();
        assert!(e.contains("--subject-type \"robot\" is not one of"), "{e}");
        assert!(!out.exists());
    }
}
