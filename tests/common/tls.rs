//! TLS for the tests: a throw-away PKI made with `rcgen`, the `[server.tls]` config table, and a
//! rustls client that reports what the server presented.
//!
//! ```ignore
//! let ca = Ca::new("p11kms test CA");
//! let pki = TlsDir::new(&ca);                 // server cert (SAN 127.0.0.1, localhost) + CA files
//! token.set_server("tls", pki.config(Mtls::Required));
//! let daemon = Daemon::serve(&token, &[]);
//! let client = TlsClient::new(&ca).with_identity(&ca.client_cert(ClientId::spiffe("spiffe://t/x")));
//! let conn = client.channel(daemon.addr()).await.unwrap();
//! let mut kms = Kms { client: CryptoClient::new(conn.channel.clone()) };
//! ```
//!
//! [`TlsClient::channel`] builds a tonic `Channel` on top of our own rustls handshake so that a
//! test can see the server certificate and count (re)connections: an established HTTP/2
//! connection that silently reconnected would not prove anything about reloads.

use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The HTTP/2 client preface plus an empty SETTINGS frame: what a client sends first.
pub const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate with its key.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its DER.
    pub der: CertificateDer<'static>,
    /// The private key.
    pub key: KeyPair,
}

/// Who a client certificate names.
#[derive(Clone, Debug)]
pub enum ClientId {
    /// A URI SAN (e.g. a SPIFFE id), with a CN beside it that must lose.
    Uri(String),
    /// Only a subject CN.
    Cn(String),
}

impl ClientId {
    /// `ClientId::Uri`.
    pub fn spiffe(uri: &str) -> Self {
        ClientId::Uri(uri.to_string())
    }
}

fn random_serial() -> rcgen::SerialNumber {
    // Positive and non-zero: the top bit clear, the low bit set.
    let n = (rand::random::<u64>() >> 1) | 1;
    rcgen::SerialNumber::from(n)
}

fn valid_now(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        valid_now(&mut params);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn sign(&self, params: CertificateParams, key: KeyPair) -> Issued {
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign a certificate");
        Issued {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            key,
        }
    }

    /// A server certificate for `127.0.0.1`, `::1` and `localhost`, with a new key.
    pub fn server_cert(&self) -> Issued {
        self.server_cert_with_key(KeyPair::generate().expect("server key"))
    }

    /// A server certificate as [`Ca::server_cert`] for an existing key (a renewal that keeps
    /// the key).
    pub fn server_cert_with_key(&self, key: KeyPair) -> Issued {
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .expect("server params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "p11kms test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        valid_now(&mut params);
        self.sign(params, key)
    }

    fn client_params(id: &ClientId) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        match id {
            ClientId::Uri(uri) => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, "cn-that-must-not-win");
                params.subject_alt_names =
                    vec![SanType::URI(uri.as_str().try_into().expect("URI SAN"))];
            }
            ClientId::Cn(cn) => params.distinguished_name.push(DnType::CommonName, cn),
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        valid_now(&mut params);
        params
    }

    /// A valid client certificate naming `id`.
    pub fn client_cert(&self, id: &ClientId) -> Issued {
        self.sign(
            Self::client_params(id),
            KeyPair::generate().expect("client key"),
        )
    }

    /// A client certificate naming `id` that expired in 2021.
    pub fn expired_client_cert(&self, id: &ClientId) -> Issued {
        let mut params = Self::client_params(id);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(params, KeyPair::generate().expect("client key"))
    }
}

impl Issued {
    /// The private key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The certificate's serial number bytes, as the server presents it.
    pub fn serial(&self) -> Vec<u8> {
        serial_of(&self.der)
    }

    /// A copy of the key (to renew with the same key).
    pub fn key_copy(&self) -> KeyPair {
        KeyPair::try_from(self.key.serialize_der()).expect("re-read the key")
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).expect("PKCS#8 key")
    }
}

/// The serial number of a DER certificate.
pub fn serial_of(der: &CertificateDer<'_>) -> Vec<u8> {
    use der::Decode as _;
    x509_cert::Certificate::from_der(der)
        .expect("a certificate")
        .tbs_certificate
        .serial_number
        .as_bytes()
        .to_vec()
}

/// Whether the server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtls {
    /// No client certificates.
    Off,
    /// Client certificates from the test CA are required.
    Required,
}

/// Server certificate, key and client CA bundle as files in a temp dir.
pub struct TlsDir {
    dir: TempDir,
}

impl TlsDir {
    /// Writes a fresh server certificate from `ca`, and `ca` as the client CA bundle.
    pub fn new(ca: &Ca) -> (Self, Issued) {
        let dir = tempfile::Builder::new()
            .prefix("p11kms-tls-")
            .tempdir()
            .expect("temp dir");
        let this = Self { dir };
        let server = ca.server_cert();
        this.install(&server);
        std::fs::write(this.client_ca_path(), ca.pem()).expect("write the client CA");
        (this, server)
    }

    /// The certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The client CA bundle.
    pub fn client_ca_path(&self) -> PathBuf {
        self.dir.path().join("client-ca.pem")
    }

    /// Replaces certificate and key, each by an atomic rename (as cert-manager and Kubernetes
    /// secret volumes do); the key first, so that a poll between the two sees a mismatch.
    pub fn install(&self, issued: &Issued) {
        write_replace(&self.key_path(), &issued.key_pem(), 0o600);
        write_replace(&self.cert_path(), &issued.cert_pem, 0o644);
    }

    /// The `[server.tls]` table.
    pub fn config(&self, mtls: Mtls) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert(
            "cert_file".into(),
            self.cert_path().display().to_string().into(),
        );
        t.insert(
            "key_file".into(),
            self.key_path().display().to_string().into(),
        );
        if mtls == Mtls::Required {
            t.insert(
                "client_ca_file".into(),
                self.client_ca_path().display().to_string().into(),
            );
        }
        t
    }
}

/// Writes `text` to a temp file with `mode` and renames it over `path`.
pub fn write_replace(path: &Path, text: &str, mode: u32) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp-replace");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    f.write_all(text.as_bytes()).expect("write");
    drop(f);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// A rustls client trusting one CA, optionally with a client certificate.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    /// The name to verify (`127.0.0.1` by default; the certificate also has `localhost`).
    pub server_name: String,
}

/// A tonic channel over our own TLS connection.
pub struct TlsChannel {
    /// The channel.
    pub channel: Channel,
    /// The certificate the server presented on the first connection.
    pub server_cert: CertificateDer<'static>,
    connects: Arc<AtomicUsize>,
}

impl TlsChannel {
    /// How many TCP+TLS connections the channel has made (1 while the first one lives).
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }
}

impl TlsClient {
    /// A client trusting `ca`, with no client certificate, offering ALPN `h2`.
    pub fn new(ca: &Ca) -> Self {
        Self::build(ca, None)
    }

    /// The same client presenting `identity` as its certificate.
    pub fn with_identity(ca: &Ca, identity: &Issued) -> Self {
        Self::build(ca, Some(identity))
    }

    fn build(ca: &Ca, identity: Option<&Issued>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).expect("add the CA");
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(vec![id.der.clone()], id.key_der())
                .expect("client certificate"),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Every connection does a full handshake: a resumed session reports the certificate of
        // the session it resumed, not the one the server has now.
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            config: Arc::new(config),
            server_name: "127.0.0.1".to_string(),
        }
    }

    /// The same client verifying `name` instead.
    pub fn verifying(mut self, name: &str) -> Self {
        self.server_name = name.to_string();
        self
    }

    /// TCP connect plus TLS handshake (as the client sees it: with TLS 1.3 a refused client
    /// certificate shows only on the first read, see [`TlsClient::probe`]).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TlsStream<TcpStream>> {
        tls_connect(Arc::clone(&self.config), &self.server_name, addr).await
    }

    /// Connects and starts HTTP/2; `Ok` once the server answered with its SETTINGS, `Err` with
    /// the reason otherwise (e.g. `received fatal alert: CertificateExpired`). Gives up after
    /// 10 s.
    pub async fn probe(&self, addr: SocketAddr) -> Result<CertificateDer<'static>, String> {
        let attempt = async {
            let mut stream = self.connect(addr).await.map_err(|e| e.to_string())?;
            let server_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .cloned()
                .ok_or("no server certificate")?;
            stream
                .write_all(H2_PREFACE_AND_SETTINGS)
                .await
                .map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut head = [0u8; 9];
            stream
                .read_exact(&mut head)
                .await
                .map_err(|e| e.to_string())?;
            // Frame type 0x4: the server's SETTINGS, its first HTTP/2 frame.
            if head[3] != 0x4 {
                return Err(format!("unexpected first frame {head:02x?}"));
            }
            Ok(server_cert)
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()))
    }

    /// A tonic channel whose connections are made by this client. Connects once now.
    pub async fn channel(&self, addr: SocketAddr) -> Result<TlsChannel, tonic::transport::Error> {
        let config = Arc::clone(&self.config);
        let name = self.server_name.clone();
        let connects = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Option<CertificateDer<'static>>>> = Arc::default();
        let (counter, first_cert) = (Arc::clone(&connects), Arc::clone(&seen));
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let (config, name) = (Arc::clone(&config), name.clone());
            let (counter, first_cert) = (Arc::clone(&counter), Arc::clone(&first_cert));
            async move {
                let stream = tls_connect(config, &name, addr).await?;
                counter.fetch_add(1, Ordering::SeqCst);
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .cloned();
                first_cert
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| cert.expect("a server certificate"));
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        });
        // The scheme only labels requests; the bytes go through the TLS stream above.
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_with_connector(connector)
            .await?;
        let server_cert = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("connected once");
        Ok(TlsChannel {
            channel,
            server_cert,
            connects,
        })
    }
}

async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    name: &str,
    addr: SocketAddr,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

// ------------------------------------------------------------------------------------------
// mTLS identities as callers (the daemon denies by default; bearer tokens: `admin_token`)
// ------------------------------------------------------------------------------------------

fn push_to(config: &mut toml::Table, section: &str, list: &str, entry: toml::Table) {
    config
        .entry(section)
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .unwrap_or_else(|| panic!("[{section}] is a table"))
        .entry(list)
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .unwrap_or_else(|| panic!("{section}.{list} is an array"))
        .push(entry.into());
}

fn bind(config: &mut toml::Table, subject_id: &str, role: &str) {
    let mut binding = toml::Table::new();
    binding.insert("role".into(), role.into());
    binding.insert("subject_id".into(), subject_id.into());
    binding.insert("subject_type".into(), "serviceAccount".into());
    binding.insert("folder_id".into(), "*".into());
    push_to(config, "auth", "bindings", binding);
}

/// Maps a verified client certificate's identity (URI SAN or CN) to a subject of the same
/// name (`[[auth.mtls]]`) with `role` on every folder.
pub fn grant_mtls(token: &super::TestToken, cert_subject: &str, role: &str) {
    token.edit_config(|config| {
        let mut entry = toml::Table::new();
        entry.insert("subject".into(), cert_subject.into());
        entry.insert("subject_type".into(), "serviceAccount".into());
        push_to(config, "auth", "mtls", entry);
        bind(config, cert_subject, role);
    });
}

/// The role that may call `Sign`, `SignHash` and `GetPublicKey`.
pub const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
