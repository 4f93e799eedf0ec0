//! Dev mode's TLS: a private CA (`ca.pem`, key in `ca.key`) made once per state directory, and a
//! server certificate for `127.0.0.1`, `::1` and `localhost` issued by it (`tls.crt`,
//! `tls.key`). Clients trust `ca.pem`: the Alibaba SDKs default to HTTPS and take a CA file
//! (`ca=`, `ca_file_path=`), grpcurl and curl take `-cacert`.

use super::{io, write_secret_file, DevError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The CA certificate clients trust.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
/// The server certificate and key `[server.tls]` names.
pub const CERT_FILE: &str = "tls.crt";
/// The server key.
pub const KEY_FILE: &str = "tls.key";

/// Where the dev TLS files are.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> DevError + '_ {
    move |e| DevError(format!("cannot make the dev {what}: {e}"))
}

/// Makes the CA and server certificate in `dir` unless they exist; a CA is never replaced, so
/// clients that trust `ca.pem` keep working across runs.
///
/// # Errors
/// When a file cannot be read or written.
pub fn ensure(dir: &Path) -> Result<DevTls, DevError> {
    let files = DevTls {
        ca: dir.join(CA_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    let ca_key_path = dir.join(CA_KEY_FILE);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let (ca_params, ca_key) = if files.ca.exists() && ca_key_path.exists() {
        let key_pem =
            std::fs::read_to_string(&ca_key_path).map_err(io("cannot read", &ca_key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rc("CA key"))?;
        (ca_params(), key)
    } else {
        let key = KeyPair::generate().map_err(rc("CA key"))?;
        let cert = ca_params().self_signed(&key).map_err(rc("CA"))?;
        remove_if_present(&ca_key_path)?;
        write_secret_file(&ca_key_path, &key.serialize_pem())?;
        std::fs::write(&files.ca, cert.pem()).map_err(io("cannot write", &files.ca))?;
        (ca_params(), key)
    };
    let issuer = ca_params.self_signed(&ca_key).map_err(rc("CA"))?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).map_err(rc("certificate"))?;
    params.subject_alt_names.extend([
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]);
    params
        .distinguished_name
        .push(DnType::CommonName, "p11kms dev server");
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let key = KeyPair::generate().map_err(rc("server key"))?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(rc("server certificate"))?;
    remove_if_present(&files.key)?;
    write_secret_file(&files.key, &key.serialize_pem())?;
    std::fs::write(&files.cert, cert.pem()).map_err(io("cannot write", &files.cert))?;
    Ok(files)
}

/// The CA's parameters; the same every run, so that a kept CA key re-signs as the same issuer.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "p11kms dev CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params
}

fn remove_if_present(path: &Path) -> Result<(), DevError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DevError(format!("cannot replace {}: {e}", path.display()))),
    }
}
