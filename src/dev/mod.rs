//! `p11kms dev`: a private SoftHSM token with one key per algorithm, and the config that serves
//! it. The first run creates everything through PKCS#11 itself; later runs reuse it.
//!
//! Authentication stays on in dev mode: the first run generates an admin token, writes it to
//! `<state-dir>/admin.token` (mode 0600) and puts its SHA-256 in the generated config with a
//! global `kms.admin` binding; the banner prints it with examples that use it. The same admin
//! gets Alibaba credentials ([`alibaba`]: an AccessKey pair and a client key), and the APIs are
//! served over TLS too, with a certificate from a private dev CA ([`tls`]).

pub mod alibaba;
pub mod tls;

use crate::cli::DevArgs;
use crate::config::Config;
use crate::crypto::Algorithm;
use crate::hsm::{self, Hsm, HsmError, KeySpec};
use secrecy::SecretString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Label of the dev token.
pub const TOKEN_LABEL: &str = "p11kms-dev";
/// Session pool size of the dev config.
pub const POOL_SIZE: usize = 4;
/// The file in the state directory holding the dev admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The subject the dev admin token authenticates as.
pub const ADMIN_SUBJECT: &str = "dev-admin";

/// Where SoftHSMv2 usually lives on Debian/Ubuntu, Fedora, and source builds.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A dev-mode failure, in words a developer can act on.
#[derive(Debug, thiserror::Error)]
#[error("dev mode: {0}")]
pub struct DevError(String);

impl From<HsmError> for DevError {
    fn from(e: HsmError) -> Self {
        DevError(e.to_string())
    }
}

impl From<crate::config::ConfigError> for DevError {
    fn from(e: crate::config::ConfigError) -> Self {
        DevError(e.to_string())
    }
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    let what = what.to_string();
    move |e| DevError(format!("{what} {}: {e}", path.display()))
}

/// The dev key id for an algorithm, e.g. `dev-ecdsa-nist-p256-sha-256`.
pub fn key_id(algorithm: Algorithm) -> String {
    format!("dev-{}", algorithm.kebab_name())
}

/// The prepared state directory.
#[derive(Debug)]
pub struct DevState {
    dir: PathBuf,
    module: PathBuf,
    listen: SocketAddr,
    tls_listen: SocketAddr,
    admin_token: SecretString,
    tls: tls::DevTls,
    alibaba: alibaba::DevAlibaba,
}

impl DevState {
    /// The generated config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("p11kms.toml")
    }

    /// The file holding the admin token.
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join(ADMIN_TOKEN_FILE)
    }
}

/// Creates the state directory, SoftHSM config and PINs, and points `SOFTHSM2_CONF` at them.
///
/// Call before any thread exists: it sets an environment variable, which the module reads at
/// `C_Initialize`.
///
/// # Errors
/// When the directory cannot be written or SoftHSMv2 is not installed.
pub fn prepare(args: &DevArgs) -> Result<DevState, DevError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let module = match &args.module {
        Some(m) => m.clone(),
        None => MODULE_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                DevError(
                    "SoftHSMv2 is not installed: run ./scripts/dev (it installs it), or `sudo apt-get install softhsm2`, or pass --module".into(),
                )
            })?,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(args.state_dir.join("tokens"))
        .map_err(io("cannot create", &args.state_dir))?;
    let dir = std::fs::canonicalize(&args.state_dir).map_err(io("cannot open", &args.state_dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot restrict", &dir))?;

    let conf = dir.join("softhsm2.conf");
    if !conf.exists() {
        let text = format!(
            "# SoftHSMv2 config of the p11kms dev token (generated).\n\
             directories.tokendir = {}\n\
             objectstore.backend = file\n\
             log.level = ERROR\n\
             slots.removable = false\n",
            dir.join("tokens").display()
        );
        std::fs::write(&conf, text).map_err(io("cannot write", &conf))?;
    }
    for name in ["user.pin", "so.pin"] {
        let path = dir.join(name);
        if !path.exists() {
            write_secret_file(&path, &random_pin())?;
        }
    }
    let token_path = dir.join(ADMIN_TOKEN_FILE);
    if !token_path.exists() {
        write_secret_file(&token_path, &random_token())?;
    }
    let admin_token = read_secret(&token_path)?;
    let tls = tls::ensure(&dir)?;
    let alibaba = alibaba::ensure(&dir)?;
    // Safe to mutate the environment: no other thread exists yet (see the doc comment).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    Ok(DevState {
        dir,
        module,
        listen: args.listen,
        tls_listen: args.tls_listen,
        admin_token,
        tls,
        alibaba,
    })
}

fn random_pin() -> String {
    let mut bytes = [0u8; 12];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// A bearer token: 32 random bytes, hex, with a recognisable prefix (secret scanners and people
/// can tell what it is).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("p11kms-dev-{}", hex::encode(bytes))
}

fn write_secret_file(path: &Path, secret: &str) -> Result<(), DevError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("cannot create", path))?;
    f.write_all(secret.as_bytes())
        .map_err(io("cannot write", path))
}

fn read_secret(path: &Path) -> Result<SecretString, DevError> {
    let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    Ok(SecretString::from(text.trim_end()))
}

/// Writes the config that serves the dev token: every algorithm, under its dev key id.
fn write_config(state: &DevState) -> Result<(), DevError> {
    let mut text = format!(
        "# p11kms config for the dev token (generated by `p11kms dev`; rewritten on every run).\n\
         # To serve it without dev mode: SOFTHSM2_CONF={conf} p11kms serve --config {cfg}\n\n\
         [server]\nlisten = \"{listen}\"\ntls_listen = \"{tls_listen}\"\n\n\
         [server.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n\
         [hsm]\nmodule = \"{module}\"\ntoken_label = \"{TOKEN_LABEL}\"\npin_file = \"user.pin\"\npool_size = {POOL_SIZE}\n",
        conf = state.dir.join("softhsm2.conf").display(),
        cfg = state.config_path().display(),
        listen = state.listen,
        tls_listen = state.tls_listen,
        cert = state.tls.cert.display(),
        key = state.tls.key.display(),
        module = state.module.display(),
    );
    let token_hash = {
        use secrecy::ExposeSecret as _;
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(
            state.admin_token.expose_secret().as_bytes(),
        ))
    };
    let _ = write!(
        text,
        "\n# The admin token in {file} (its SHA-256 only), with kms.admin on every folder.\n\
         [[auth.tokens]]\nsha256 = \"{token_hash}\"\nsubject_id = \"{ADMIN_SUBJECT}\"\nsubject_type = \"userAccount\"\n\n\
         [[auth.bindings]]\nrole = \"kms.admin\"\nsubject_id = \"{ADMIN_SUBJECT}\"\nsubject_type = \"userAccount\"\nfolder_id = \"*\"\n",
        file = state.admin_token_path().display(),
    );
    let _ = write!(
        text,
        "\n# The Alibaba APIs: the dev admin's AccessKey ({access_key_file}) and client key \
         ({client_key_file}).\n\
         [alibaba]\nmin_key_version_interval_secs = 0\n\n\
         [[alibaba.access_keys]]\nid = \"{access_key_id}\"\nsecret_file = \"{secret_file}\"\n\
         subject_id = \"{ADMIN_SUBJECT}\"\nsubject_type = \"userAccount\"\n\n\
         [[alibaba.client_keys]]\nid = \"{client_key_id}\"\npublic_key_file = \"{client_cert}\"\n\
         subject_id = \"{ADMIN_SUBJECT}\"\nsubject_type = \"userAccount\"\n",
        access_key_file = state.alibaba.access_key_file.display(),
        client_key_file = state.alibaba.client_key_file.display(),
        access_key_id = state.alibaba.access_key_id,
        secret_file = state.alibaba.access_key_secret_file.display(),
        client_key_id = state.alibaba.client_key_id,
        client_cert = state.alibaba.client_key_certificate.display(),
    );
    for algorithm in Algorithm::ALL {
        let id = key_id(algorithm);
        let _ = write!(
            text,
            "\n[[keys]]\nid = \"{id}\"\nobject_id = \"{}\"\nalgorithm = \"{}\"\n",
            hex::encode(id.as_bytes()),
            algorithm.name()
        );
    }
    let path = state.config_path();
    std::fs::write(&path, text).map_err(io("cannot write", &path))
}

/// Creates the token and any missing keys, writes the config, and returns it with the
/// connected HSM.
///
/// # Errors
/// When the token cannot be created or a key cannot be generated.
pub async fn provision(state: &DevState) -> Result<(Config, Hsm), DevError> {
    write_config(state)?;
    let config = Config::load(&state.config_path())?;
    let module_path = state.module.clone();
    let hsm_cfg = config.hsm.clone();
    let so_pin = read_secret(&state.dir.join("so.pin"))?;
    let hsm = tokio::task::spawn_blocking(move || -> Result<Hsm, DevError> {
        let module = hsm::load(&module_path)?;
        match Hsm::attach(module.clone(), &hsm_cfg) {
            Ok(hsm) => Ok(hsm),
            Err(HsmError::TokenSelection(_)) => {
                tracing::info!("creating the dev token {TOKEN_LABEL:?}");
                let user_pin = hsm_cfg.pin.clone().expect("loaded with the config");
                hsm::init_token(&module, TOKEN_LABEL, &so_pin, &user_pin)?;
                Ok(Hsm::attach(module, &hsm_cfg)?)
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
    .map_err(|e| DevError(e.to_string()))??;

    let specs: Vec<KeySpec> = config.keys.iter().map(KeySpec::from_config).collect();
    let resolved = {
        let hsm = hsm.clone();
        tokio::task::spawn_blocking(move || hsm.resolve_keys(&specs))
            .await
            .map_err(|e| DevError(e.to_string()))??
    };
    let mut missing = Vec::new();
    for ((id, outcome), key) in resolved.into_iter().zip(&config.keys) {
        match outcome {
            Ok(_) => {}
            Err(HsmError::KeyMissing { .. }) => missing.push((id, key.algorithm())),
            Err(e) => return Err(e.into()),
        }
    }
    if !missing.is_empty() {
        tracing::info!(
            keys = missing.len(),
            "generating dev keys on the token (RSA-4096 takes a while)"
        );
        // At most one job per pooled session: a job waiting longer than the pool wait for a
        // session (RSA-4096 generation takes seconds) would fail with PoolExhausted.
        let parallel = hsm.pool_capacity().max(1);
        let mut jobs = tokio::task::JoinSet::new();
        for (id, algorithm) in missing {
            if jobs.len() >= parallel {
                if let Some(outcome) = jobs.join_next().await {
                    outcome.map_err(|e| DevError(format!("key generation task failed: {e}")))??;
                }
            }
            let hsm = hsm.clone();
            jobs.spawn(async move {
                hsm.generate_key_pair(&id, algorithm, id.as_bytes().to_vec(), id.clone())
                    .await
            });
        }
        while let Some(outcome) = jobs.join_next().await {
            outcome.map_err(|e| DevError(format!("key generation task failed: {e}")))??;
        }
    }
    Ok((config, hsm))
}

/// What `p11kms dev` prints once it is serving.
pub fn banner(state: &DevState, addr: SocketAddr, tls_addr: Option<SocketAddr>) -> String {
    use secrecy::ExposeSecret as _;
    let token = state.admin_token.expose_secret();
    let token_file = state.admin_token_path();
    let mut out = format!(
        "\np11kms dev is serving the Yandex KMS API on {addr} (gRPC and REST, plaintext, local only)\n\
         state: {}  (token {TOKEN_LABEL:?}; config {})\n\n\
         admin token (kms.admin on every folder; dev only): {token}\n  \
         saved in {}; send it as `authorization: Bearer <token>`\n\nkeys:\n",
        state.dir.display(),
        state.config_path().display(),
        token_file.display(),
    );
    for algorithm in Algorithm::ALL {
        let _ = writeln!(out, "  {:<34} {}", key_id(algorithm), algorithm.name());
    }
    let _ = write!(
        out,
        "\ntry it (message is base64 of \"hello\"):\n  \
         grpcurl -plaintext -H \"authorization: Bearer $(cat {file})\" \\\n    \
         -d '{{\"key_id\":\"dev-ecdsa-nist-p256-sha-256\",\"message\":\"aGVsbG8=\"}}' \\\n    \
         {addr} yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign\n\n\
         or over REST:\n  \
         curl -H \"Authorization: Bearer $(cat {file})\" -H 'Content-Type: application/json' \\\n    \
         -d '{{\"message\":\"aGVsbG8=\"}}' \\\n    \
         http://{addr}/kms/v1/asymmetricSignatureKeys/dev-ecdsa-nist-p256-sha-256:sign\n\n\
         or from Python (pip install yandexcloud):\n  \
         import grpc\n  \
         from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_crypto_service_pb2 as pb, asymmetric_signature_crypto_service_pb2_grpc as svc\n  \
         stub = svc.AsymmetricSignatureCryptoServiceStub(grpc.insecure_channel(\"{addr}\"))\n  \
         auth = ((\"authorization\", \"Bearer {token}\"),)\n  \
         print(stub.Sign(pb.AsymmetricSignRequest(key_id=\"dev-ecdsa-nist-p256-sha-256\", message=b\"hello\"), metadata=auth).signature.hex())\n\n\
         create more keys on the token (the keys above are read-only, listed in folder {folder}):\n  \
         p11kms keys --endpoint http://{addr} --token-file {file} create --folder-id dev --algorithm ecdsa-nist-p256-sha-256\n  \
         p11kms keys --endpoint http://{addr} --token-file {file} list --folder-id dev\n",
        file = token_file.display(),
        folder = crate::config::DEFAULT_CONFIG_FOLDER_ID,
    );
    out.push_str(&alibaba_banner(state, addr, tls_addr));
    out
}

/// The banner's Alibaba part: endpoints, credentials and copy-paste Python examples.
fn alibaba_banner(state: &DevState, addr: SocketAddr, tls_addr: Option<SocketAddr>) -> String {
    let a = &state.alibaba;
    let https = tls_addr.map_or_else(|| "(no TLS listener)".to_string(), |t| t.to_string());
    format!(
        "\nthe Alibaba Cloud KMS APIs (OpenAPI 2016-01-20 and the KMS instance API) are served on \
         the same addresses:\n  \
         https://{https} (CA: {ca}) and http://{addr}\n  \
         AccessKey of the dev admin: {ak_file} (AccessKeyId {ak_id})\n  \
         client key of the dev admin: {ck_file}, password in {ck_password}\n\n\
         OpenAPI from Python (pip install alibabacloud-kms20160120):\n  \
         import json, hashlib, base64\n  \
         from alibabacloud_kms20160120.client import Client\n  \
         from alibabacloud_kms20160120 import models as kms\n  \
         from alibabacloud_tea_openapi.models import Config\n  \
         ak = json.load(open(\"{ak_file}\"))\n  \
         client = Client(Config(access_key_id=ak[\"AccessKeyId\"], access_key_secret=ak[\"AccessKeySecret\"],\n                         endpoint=\"{https}\", ca=\"{ca}\"))\n  \
         key = client.create_key(kms.CreateKeyRequest(key_spec=\"EC_P256\", key_usage=\"SIGN/VERIFY\")).body.key_metadata\n  \
         digest = base64.b64encode(hashlib.sha256(b\"hello\").digest()).decode()\n  \
         print(client.asymmetric_sign(kms.AsymmetricSignRequest(key_id=key.key_id, key_version_id=key.primary_key_version,\n                                                       algorithm=\"ECDSA_SHA_256\", digest=digest)).body.value)\n\n\
         instance API from Python (pip install alibabacloud-dkms-gcs):\n  \
         from openapi.models import Config\n  \
         from sdk.client import Client\n  \
         from sdk.models import SignRequest\n  \
         client = Client(Config(endpoint=\"{https}\", client_key_file=\"{ck_file}\",\n                         password=open(\"{ck_password}\").read(), ca_file_path=\"{ca}\"))\n  \
         print(client.sign(SignRequest(key_id=\"dev-ecdsa-nist-p256-sha-256\", algorithm=\"ECDSA_SHA_256\",\n                                message=b\"hello\", message_type=\"RAW\")).signature.hex())\n",
        ca = state.tls.ca.display(),
        ak_file = a.access_key_file.display(),
        ak_id = a.access_key_id,
        ck_file = a.client_key_file.display(),
        ck_password = a.client_key_password_file.display(),
    )
}
