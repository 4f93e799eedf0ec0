//! TLS for the listener: the certificate from files, swapped in place on reload; optional mTLS;
//! and who the verified client is.
//!
//! # Reload design
//!
//! Every handshake asks [`CertResolver`] (a rustls [`ResolvesServerCert`]) for the current
//! [`CertifiedKey`], which sits behind a lock that only a reload writes. Replacing it affects
//! only handshakes that start afterwards: an established connection keeps the keys it
//! negotiated, so nothing in flight is dropped. The client CA bundle lives inside the rustls
//! [`ServerConfig`] (its verifier), so a changed bundle builds a new `ServerConfig` around the
//! same resolver, swapped the same way.
//!
//! A reload re-reads all files. Anything wrong with them (unreadable, not PEM, key not matching
//! the certificate, empty CA bundle) is logged and the previous certificate stays in service: a
//! half-written file during a rotation never takes the listener down. [`ServerTls::watch`]
//! reloads on the app's reload signal (SIGHUP) and when a file's size, mtime, ctime or inode
//! changes (polled; a rotation by rename, as Kubernetes does with secret volumes, changes the
//! inode). A failed attempt is not retried until a file changes again or SIGHUP arrives, so a
//! bad file is reported once, not every poll.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// ALPN protocols offered: gRPC needs `h2`; `http/1.1` is for the REST API on the same port.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS files could not be used. The message names the config key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The listener's TLS state: current certificate, current rustls config, and what the files
/// looked like at the last (re)load.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    config: RwLock<Arc<ServerConfig>>,
    /// The client CA bundle in service, to tell whether a reload must rebuild `config`.
    client_ca_pem: Mutex<Option<Vec<u8>>>,
    /// File fingerprints at the last reload attempt, successful or not.
    seen: Mutex<Vec<Option<FileStamp>>>,
    handshake_timeout: Duration,
    watch_interval: Option<Duration>,
}

#[derive(Clone, Debug)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn all(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(self.client_ca.as_deref());
        files
    }
}

/// What a reload produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// New certificate (or CA bundle) in service.
    Changed,
    /// The files hold what is already in service.
    Unchanged,
}

impl ServerTls {
    /// Reads the certificate, key and client CA bundle named in `[server.tls]`.
    ///
    /// # Errors
    /// Any file that cannot be read or used, named with its config key.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let files = TlsFiles {
            cert: cfg.cert_file.clone(),
            key: cfg.key_file.clone(),
            client_ca: cfg.client_ca_file.clone(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = stamps(&files);
        let certified = load_certified_key(&files, &provider)?;
        warn_if_key_file_is_readable_by_others(&files.key);
        log_certificate("TLS certificate loaded", &files.cert, &certified);
        let ca_pem = match &files.client_ca {
            Some(path) => Some(read(path, "server.tls.client_ca_file")?),
            None => None,
        };
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let config = build_config(&provider, &resolver, ca_pem.as_deref(), &files)?;
        if let Some(path) = &files.client_ca {
            tracing::info!(file = %path.display(), "mTLS: client certificates required");
        }
        Ok(Arc::new(Self {
            files,
            provider,
            resolver,
            config: RwLock::new(config),
            client_ca_pem: Mutex::new(ca_pem),
            seen: Mutex::new(seen),
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
            watch_interval: (cfg.watch_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.watch_interval_ms)),
        }))
    }

    /// An acceptor on the current config; one per connection, so a reload applies to the next.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.config.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    /// From TCP accept to a finished handshake and the start of HTTP.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Whether clients must present a certificate.
    pub fn mtls(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Re-reads every file and puts what changed into service for new handshakes. On any error
    /// the previous state stays in service.
    ///
    /// # Errors
    /// What was wrong with the files.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&self.files);
        let certified = load_certified_key(&self.files, &self.provider)?;
        let ca_pem = match &self.files.client_ca {
            Some(path) => Some(read(path, "server.tls.client_ca_file")?),
            None => None,
        };
        let mut current_ca = self.client_ca_pem.lock().unwrap_or_else(|p| p.into_inner());
        // Build everything before swapping anything, so a bad CA bundle cannot leave a new
        // certificate in service next to the old bundle.
        let new_config = if *current_ca == ca_pem {
            None
        } else {
            Some(build_config(
                &self.provider,
                &self.resolver,
                ca_pem.as_deref(),
                &self.files,
            )?)
        };
        let cert_changed = {
            let current = self.resolver.current();
            current.cert != certified.cert || current.key.public_key() != certified.key.public_key()
        };
        if cert_changed {
            log_certificate("TLS certificate reloaded", &self.files.cert, &certified);
            self.resolver.replace(certified);
        }
        if let Some(config) = new_config {
            tracing::info!(
                file = %self.files.client_ca.as_deref().unwrap_or(Path::new("")).display(),
                "mTLS client CA bundle reloaded"
            );
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
            *current_ca = ca_pem;
            return Ok(Reloaded::Changed);
        }
        Ok(if cert_changed {
            Reloaded::Changed
        } else {
            Reloaded::Unchanged
        })
    }

    /// Whether any file looks different from the last reload attempt.
    fn files_changed(&self) -> bool {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamps(&self.files)
    }

    fn reload_logged(&self, trigger: Trigger) {
        match self.reload() {
            Ok(Reloaded::Changed) => {}
            // Asked for explicitly: say so. After a file change it means the files were
            // touched or rewritten with the same content; not worth a line.
            Ok(Reloaded::Unchanged) if trigger == Trigger::Signal => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    "TLS files unchanged; nothing to reload"
                );
            }
            Ok(Reloaded::Unchanged) => {
                tracing::debug!(trigger = trigger.as_str(), "TLS files unchanged");
            }
            Err(e) => tracing::error!(
                trigger = trigger.as_str(),
                error = %e,
                "TLS reload failed; the previous certificate stays in service"
            ),
        }
    }

    /// Reloads on every change of `reload` (SIGHUP) and, if `server.tls.watch_interval_ms` is
    /// set, whenever the files change. Runs until `stop`.
    pub async fn watch(self: Arc<Self>, mut reload: watch::Receiver<u64>, stop: CancellationToken) {
        let mut poll = self.watch_interval.map(|every| {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        reload.borrow_and_update();
        let mut signals_open = true;
        loop {
            tokio::select! {
                changed = reload.changed(), if signals_open => {
                    if changed.is_err() {
                        // The app dropped its reload signal; polling (if any) carries on.
                        signals_open = false;
                        continue;
                    }
                    let this = Arc::clone(&self);
                    // File reads and key parsing are blocking work.
                    let _ = tokio::task::spawn_blocking(move || this.reload_logged(Trigger::Signal))
                        .await;
                }
                _ = async { poll.as_mut().expect("guarded").tick().await }, if poll.is_some() => {
                    let this = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || {
                        if this.files_changed() {
                            this.reload_logged(Trigger::FileChange);
                        }
                    })
                    .await;
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// What started a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Signal,
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "reload signal",
            Trigger::FileChange => "file change",
        }
    }
}

/// Hands every handshake the certificate currently in service.
#[derive(Debug)]
struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn replace(&self, certified: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn build_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<CertResolver>,
    client_ca_pem: Option<&[u8]>,
    files: &TlsFiles,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS: {e}")))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let path = files.client_ca.as_deref().unwrap_or(Path::new(""));
            let what = || format!("server.tls.client_ca_file: {}", path.display());
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError(format!("{}: not PEM: {e}", what())))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("{}: unusable CA certificate: {e}", what())))?;
            }
            if roots.is_empty() {
                return Err(TlsError(format!("{}: no CERTIFICATE in the file", what())));
            }
            // Client certificates are required: with mTLS configured, a client without one is
            // refused in the handshake, before any request is read.
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| TlsError(format!("{}: {e}", what())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{key}: cannot read {}: {e}", path.display())))
}

fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(&files.cert, "server.tls.cert_file")?;
    let key_pem = read(&files.key, "server.tls.key_file")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "server.tls.cert_file: {}: not PEM: {e}",
                files.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "server.tls.cert_file: {}: no CERTIFICATE in the file",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        TlsError(format!(
            "server.tls.key_file: {}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            files.key.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError(format!(
            "server.tls.key_file: {} does not fit server.tls.cert_file {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })
}

fn log_certificate(what: &'static str, path: &Path, certified: &CertifiedKey) {
    use der::Decode as _;
    let Some(leaf) = certified.cert.first() else {
        return;
    };
    let Ok(cert) = x509_cert::Certificate::from_der(leaf) else {
        tracing::info!(file = %path.display(), "{what}");
        return;
    };
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    let now = SystemTime::now();
    tracing::info!(
        file = %path.display(),
        subject = %cert.tbs_certificate.subject,
        serial = %hex::encode(cert.tbs_certificate.serial_number.as_bytes()),
        not_after = %validity.not_after,
        "{what}"
    );
    if now > not_after || now < not_before {
        tracing::warn!(
            file = %path.display(),
            not_before = %validity.not_before,
            not_after = %validity.not_after,
            "the TLS certificate is not valid now; clients will refuse it"
        );
    }
}

fn warn_if_key_file_is_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    // A warning, not an error: Kubernetes secret volumes default to 0644 inside a pod that
    // only runs p11kms.
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:o}"),
                "server.tls.key_file is readable by group or others; chmod 600 it"
            );
        }
    }
}

/// What identifies a file's content without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
    inode: (u64, u64),
}

fn stamps(files: &TlsFiles) -> Vec<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt as _;
    files
        .all()
        .into_iter()
        // metadata() follows symlinks: a Kubernetes `..data` symlink swap shows as a new inode.
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| FileStamp {
                len: m.len(),
                modified: m.modified().ok(),
                ctime: (m.ctime(), m.ctime_nsec()),
                inode: (m.dev(), m.ino()),
            })
        })
        .collect()
}

/// The caller identity in a verified client certificate: its first `spiffe://` URI SAN, else
/// its first URI SAN, else its subject CN. `None` if it has none of these or does not parse.
pub fn client_subject(cert: &CertificateDer<'_>) -> Option<String> {
    use der::Decode as _;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;

    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    let tbs = &cert.tbs_certificate;
    let mut uris = Vec::new();
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != <SubjectAltName as der::oid::AssociatedOid>::OID {
            continue;
        }
        let Ok(san) = SubjectAltName::from_der(ext.extn_value.as_bytes()) else {
            continue;
        };
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                uris.push(uri.to_string());
            }
        }
    }
    if let Some(spiffe) = uris.iter().find(|u| u.starts_with("spiffe://")) {
        return Some(spiffe.clone());
    }
    if let Some(uri) = uris.into_iter().next() {
        return Some(uri);
    }
    common_name(&tbs.subject)
}

/// id-at-commonName (RFC 4519).
const COMMON_NAME: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    use der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != COMMON_NAME {
                continue;
            }
            let value = &atv.value;
            let text = value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    value
                        .decode_as::<TeletexStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                });
            if let Ok(text) = text {
                return Some(text);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("self-signed").der().clone()
    }

    #[test]
    fn subject_is_the_spiffe_uri_san_before_other_uris_and_the_cn() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-cn");
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("billing.example".try_into().expect("dns")),
            rcgen::SanType::URI("https://example.com/billing".try_into().expect("uri")),
            rcgen::SanType::URI(
                "spiffe://prod.example/ns/billing/sa/signer"
                    .try_into()
                    .expect("uri"),
            ),
        ];
        assert_eq!(
            client_subject(&cert_der(params)).as_deref(),
            Some("spiffe://prod.example/ns/billing/sa/signer")
        );
    }

    #[test]
    fn subject_is_the_first_uri_san_without_a_spiffe_one() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "urn:example:billing".try_into().expect("uri"),
        )];
        assert_eq!(
            client_subject(&cert_der(params)).as_deref(),
            Some("urn:example:billing")
        );
    }

    #[test]
    fn subject_falls_back_to_the_common_name() {
        let mut params =
            rcgen::CertificateParams::new(vec!["client.example".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "release-bot");
        assert_eq!(
            client_subject(&cert_der(params)).as_deref(),
            Some("release-bot")
        );
    }

    #[test]
    fn no_uri_and_no_cn_is_no_subject() {
        let params =
            rcgen::CertificateParams::new(vec!["client.example".to_string()]).expect("params");
        let mut params = params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        assert_eq!(client_subject(&cert_der(params)), None);
    }
}
