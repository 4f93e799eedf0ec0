//! Integration-test harness: the real `p11kms` binary against real SoftHSMv2 tokens.
//!
//! Nothing here mocks PKCS#11, and nothing verifies with `p11kms::crypto`: signatures and public
//! keys are checked with RustCrypto directly ([`verify`]) and against what `pkcs11-tool` reads
//! off the token ([`TestToken::public_key_der`]).
//!
//! # The pieces
//!
//! * **Template.** One dev token (`p11kms dev --init-only`: one key per algorithm, key ids
//!   `dev-<algorithm kebab>`, `CKA_ID` = the key id's bytes) is created per target dir under
//!   `CARGO_TARGET_TMPDIR`, guarded by a file lock because nextest runs every test in its own
//!   process, concurrently. It is reused while complete; when the binary is rebuilt it is
//!   refreshed by re-running `dev --init-only` on it (which reuses the token and rewrites the
//!   config), never regenerated. Bump [`TEMPLATE_VERSION`] when the token itself must be rebuilt.
//! * **[`TestToken`]**: a private copy of the template in a temp dir: token files, PINs, the
//!   generated `p11kms.toml` (rewritten to listen on `127.0.0.1:0`) and a `softhsm2.conf` whose
//!   `directories.tokendir` points at the copy. Tests edit the config copy
//!   ([`TestToken::edit_config`], [`TestToken::add_key`], [`TestToken::set_key_field`]), add
//!   objects to the token ([`pkcs11::with_user_session`]) or damage its files
//!   ([`TestToken::token_files_dir`]).
//! * **[`Daemon`]**: a running `p11kms serve`/`dev` process that printed its ready line. Its
//!   stderr goes to a file ([`Daemon::stderr`]) and its stdout is collected ([`Daemon::stdout`]),
//!   both readable after it exits. [`Daemon::sigterm`]/[`Daemon::sigint`] are async (a blocked
//!   test runtime cannot answer the server's GOAWAY); [`Daemon::health`] asks
//!   `grpc.health.v1`. It is SIGKILLed on drop, and if the test is panicking its output is
//!   printed.
//! * **[`Launch`]**: the command builder behind both, for custom arguments and environment, and
//!   [`Launch::run_to_exit`] for runs that must fail ([`Exited`]).
//! * **[`Kms`]**: a thin gRPC client over the generated `AsymmetricSignatureCryptoService` client.
//! * **Credentials.** Every daemon requires authentication. The template's dev run generated an
//!   admin token (`<state>/admin.token`, global `kms.admin`) that every [`TestToken`] copy
//!   shares; [`Daemon`] reads it when it starts and every client it builds ([`Daemon::kms`],
//!   [`Daemon::client`], [`Daemon::auth_channel`], the load's raw clients) sends it through the
//!   [`Bearer`] interceptor. [`Daemon::kms_as`] and [`Daemon::auth_channel_as`] build clients
//!   with another token or none, for the auth tests.
//! * [`tls`]: a test PKI (`rcgen`), `[server.tls]` tables, and a rustls client that shows
//!   what the server presented; [`Daemon::wait_for_log`], [`Daemon::open_fds`] and
//!   [`Daemon::rss_kib`] watch the process from outside.
//! * [`verify`]: independent signature and SPKI checks; [`pkcs11`]: in-process cryptoki helpers
//!   to create objects on a token copy; [`faultshim`]: run the daemon through the fault shim.
//! * **Timing checks** compare with what the same run measured, never with a figure tuned on a
//!   quiet machine: [`Daemon::startup`] (what a recovery re-does), [`lateness::Lateness`] (how
//!   late timers fire right now), or a baseline the test takes itself.
//!
//! # Example
//!
//! ```ignore
//! let token = TestToken::dev();
//! token.set_key_field("dev-ecdsa-nist-p256-sha-256", "status", "INACTIVE");
//! let mut daemon = Daemon::serve(&token, &[]);
//! let mut kms = daemon.kms().await;
//! let err = kms.sign("dev-ecdsa-nist-p256-sha-256", b"hi").await.unwrap_err();
//! assert_eq!(err.code(), tonic::Code::FailedPrecondition);
//! assert_eq!(daemon.sigterm().await.code(), Some(0));
//!
//! // A start-up that must fail:
//! token.set_hsm("pool_size", 0);
//! Daemon::serve_expecting_failure(&token, &[]).assert_failed().assert_stderr_has(&["pool_size"]);
//! ```
//!
//! Environment: `P11KMS_TEST_SOFTHSM_MODULE` (SoftHSM path), `P11KMS_TEST_RUST_LOG` (daemon log
//! level, default `info`), `P11KMS_FAULTSHIM_LIB` (shim path).
//!
//! Every spawned process gets a clean environment for p11kms: inherited `P11KMS_*` and
//! `SOFTHSM2_CONF` variables are removed, and `NO_COLOR=1` keeps the logs free of ANSI escapes.
#![allow(dead_code, unreachable_pub)]

pub mod alibaba;
pub mod faultshim;
pub mod h2raw;
pub mod interop;
pub mod jwt;
pub mod lateness;
pub mod load;
pub mod pkcs11;
pub mod tls;
pub mod verify;

use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_crypto_service_client::AsymmetricSignatureCryptoServiceClient;
use p11kms::api::yandex::grpc::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricSignHashRequest, AsymmetricSignRequest,
};
use p11kms::crypto::Algorithm;
use std::ffi::{OsStr, OsString};
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Bump when the template token itself must be rebuilt from scratch (new key attributes, new
/// objects the refresh cannot add). A rebuilt binary only refreshes the template.
pub const TEMPLATE_VERSION: u32 = 1;
/// The SoftHSMv2 module; `P11KMS_TEST_SOFTHSM_MODULE` overrides it.
pub const DEFAULT_SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "p11kms-dev";
/// What the daemon prints on stdout, followed by its address, once it accepts connections.
pub const READY_PREFIX: &str = "p11kms listening on ";
/// The line before it that names the TLS listener (`server.tls_listen`).
pub const TLS_READY_PREFIX: &str = "p11kms TLS listening on ";
/// The line before it that names the admin listener (`[admin] listen`).
pub const ADMIN_READY_PREFIX: &str = "p11kms admin listening on ";
/// How long a daemon may take to print its ready line (debug build, loaded 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a process may take to exit after a signal, or a failing start-up to fail.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `p11kms` binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_p11kms"))
}

/// The real SoftHSMv2 module.
pub fn softhsm_module() -> PathBuf {
    std::env::var_os("P11KMS_TEST_SOFTHSM_MODULE")
        .map_or_else(|| PathBuf::from(DEFAULT_SOFTHSM_MODULE), PathBuf::from)
}

/// The dev key id of an algorithm, e.g. `dev-ecdsa-nist-p256-sha-256` (computed here, not taken
/// from `p11kms::dev`).
pub fn dev_key_id(algorithm: Algorithm) -> String {
    format!(
        "dev-{}",
        algorithm.name().to_ascii_lowercase().replace('_', "-")
    )
}

/// The `CKA_ID` of a dev key: the key id's bytes.
pub fn dev_ck_id(algorithm: Algorithm) -> Vec<u8> {
    dev_key_id(algorithm).into_bytes()
}

// ------------------------------------------------------------------------------------------
// Template
// ------------------------------------------------------------------------------------------

const TEMPLATE_MARKER: &str = ".template-complete";

/// Identifies the binary build that last refreshed the template.
fn binary_stamp() -> String {
    let meta = fs::metadata(bin()).unwrap_or_else(|e| panic!("{}: {e}", bin().display()));
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "template v{TEMPLATE_VERSION}\nbinary {} {} {modified}\n",
        bin().display(),
        meta.len()
    )
}

/// Runs `f` on the shared dev template while holding its lock, creating or refreshing it first.
fn with_template<R>(f: impl FnOnce(&Path) -> R) -> R {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(root).expect("create CARGO_TARGET_TMPDIR");
    let lock_path = root.join(format!("p11kms-dev-template-v{TEMPLATE_VERSION}.lock"));
    let lock = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    // Blocks while another test process builds or copies the template; released on drop.
    // (nix's flock rather than std's `File::lock`, which needs Rust 1.89; the MSRV is 1.85.)
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", lock_path.display()));

    let dir = root.join(format!("p11kms-dev-template-v{TEMPLATE_VERSION}"));
    let marker = dir.join(TEMPLATE_MARKER);
    let stamp = binary_stamp();
    match fs::read_to_string(&marker) {
        Ok(found) if found == stamp => {}
        Ok(_) => {
            // Same token, newer binary: let it rewrite its config (and add any missing key).
            fs::remove_file(&marker).expect("remove the stale template marker");
            if let Err(output) = init_dev_state(&dir) {
                eprintln!("refreshing the dev template failed; rebuilding it:\n{output}");
                rebuild_template(&dir);
            }
        }
        Err(_) => rebuild_template(&dir),
    }
    // The marker is written last: a template without it is incomplete and gets rebuilt.
    write_atomic(&marker, &stamp);
    f(&dir)
}

fn rebuild_template(dir: &Path) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
    init_dev_state(dir).unwrap_or_else(|output| {
        panic!(
            "`p11kms dev --init-only --state-dir {}` failed:\n{output}",
            dir.display()
        )
    });
}

/// Runs `p11kms dev --init-only` on `dir`; on failure returns its output.
fn init_dev_state(dir: &Path) -> Result<(), String> {
    let exited = Launch::new(["dev", "--init-only"])
        .arg("--state-dir")
        .arg(dir)
        .arg("--module")
        .arg(softhsm_module())
        .output();
    if exited.status.success() {
        Ok(())
    } else {
        Err(exited.to_string())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let name = entry.file_name();
        if name == OsStr::new(TEMPLATE_MARKER) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&src, &dst);
        } else {
            // fs::copy keeps the permission bits: the PIN files stay 0600.
            fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
    }
    let mode = fs::metadata(from).expect("metadata").permissions();
    fs::set_permissions(to, mode).expect("set permissions");
}

/// Writes `text` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

// ------------------------------------------------------------------------------------------
// TestToken
// ------------------------------------------------------------------------------------------

/// A key entry for the config's `[[keys]]` table.
#[derive(Clone, Debug)]
pub struct KeyDecl {
    /// KMS key id.
    pub id: String,
    /// Where the objects are: `CKA_ID` (hex is done here) or `CKA_LABEL`.
    pub object: ObjectRef,
    /// The algorithm's enum name; a free string so that invalid names can be tested.
    pub algorithm: String,
    /// `ACTIVE`/`INACTIVE`, or absent.
    pub status: Option<String>,
}

/// How a `[[keys]]` entry finds its objects.
#[derive(Clone, Debug)]
pub enum ObjectRef {
    /// `object_id = hex(bytes)`.
    Id(Vec<u8>),
    /// `object_label = "..."`.
    Label(String),
}

impl KeyDecl {
    /// A key found by `CKA_ID`.
    pub fn by_id(id: &str, ck_id: &[u8], algorithm: Algorithm) -> Self {
        Self {
            id: id.to_string(),
            object: ObjectRef::Id(ck_id.to_vec()),
            algorithm: algorithm.name().to_string(),
            status: None,
        }
    }

    fn to_table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("id".into(), self.id.clone().into());
        match &self.object {
            ObjectRef::Id(bytes) => t.insert("object_id".into(), hex::encode(bytes).into()),
            ObjectRef::Label(label) => t.insert("object_label".into(), label.clone().into()),
        };
        t.insert("algorithm".into(), self.algorithm.clone().into());
        if let Some(status) = &self.status {
            t.insert("status".into(), status.clone().into());
        }
        t
    }
}

/// A private copy of the dev template: a SoftHSM token with one key per algorithm, its PINs,
/// `softhsm2.conf` and `p11kms.toml`. Deleted on drop.
///
/// Several `TestToken`s can coexist (each daemon gets its own `SOFTHSM2_CONF`), but in-process
/// PKCS#11 use ([`pkcs11::with_user_session`]) serialises on a process-wide lock.
#[derive(Debug)]
pub struct TestToken {
    dir: TempDir,
}

impl TestToken {
    /// A fresh copy of the shared dev template.
    pub fn dev() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("p11kms-test-")
            .tempdir()
            .expect("create a temp dir");
        with_template(|template| copy_dir(template, dir.path()));
        let token = TestToken { dir };
        token.point_softhsm_at_copy();
        token.set_server("listen", "127.0.0.1:0");
        // Dev mode's admin listener has a fixed port too: an ephemeral one here.
        token.set_config("admin", "listen", "127.0.0.1:0");
        // Dev mode's second, TLS listener has a fixed port and its own certificate; tests that
        // want TLS configure it themselves ([`tls`]).
        token.edit_config(|t| {
            if let Some(server) = t.get_mut("server").and_then(toml::Value::as_table_mut) {
                server.remove("tls_listen");
                server.remove("tls");
            }
        });
        token
    }

    fn point_softhsm_at_copy(&self) {
        let conf = self.softhsm_conf();
        let text = fs::read_to_string(&conf).expect("read softhsm2.conf");
        let mut found = false;
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("directories.tokendir") {
                found = true;
                out.push_str(&format!(
                    "directories.tokendir = {}\n",
                    self.token_dir().display()
                ));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(
            found,
            "no directories.tokendir in {}:\n{text}",
            conf.display()
        );
        fs::write(&conf, out).expect("write softhsm2.conf");
    }

    /// The state directory (what `p11kms dev --state-dir` takes).
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `softhsm2.conf` to pass as `SOFTHSM2_CONF`.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.state_dir().join("softhsm2.conf")
    }

    /// The p11kms config file (`p11kms.toml`).
    pub fn config_path(&self) -> PathBuf {
        self.state_dir().join("p11kms.toml")
    }

    /// SoftHSM's `directories.tokendir`: holds one subdirectory per token.
    pub fn token_dir(&self) -> PathBuf {
        self.state_dir().join("tokens")
    }

    /// The dev token's own directory (`<token_dir>/<uuid>`), holding `token.object` and one
    /// `<uuid>.object` file per object.
    pub fn token_files_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.token_dir())
            .expect("read the token dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "expected one token directory: {dirs:?}");
        dirs.remove(0)
    }

    /// The names of the object files of the token, sorted (changes when objects are created).
    pub fn object_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.token_files_dir())
            .expect("read the token files")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".object") && n != "token.object")
            .collect();
        names.sort();
        names
    }

    /// The user PIN.
    pub fn user_pin(&self) -> String {
        read_trimmed(&self.state_dir().join("user.pin"))
    }

    /// The SO PIN.
    pub fn so_pin(&self) -> String {
        read_trimmed(&self.state_dir().join("so.pin"))
    }

    /// Where the dev admin token is (global `kms.admin` in the config).
    pub fn admin_token_path(&self) -> PathBuf {
        self.state_dir().join(ADMIN_TOKEN_FILE)
    }

    /// The dev admin token.
    pub fn admin_token(&self) -> String {
        read_trimmed(&self.admin_token_path())
    }

    /// The token label.
    pub fn label(&self) -> &'static str {
        DEV_TOKEN_LABEL
    }

    /// The token serial number, as `pkcs11-tool --list-token-slots` reports it.
    pub fn serial(&self) -> String {
        let out = self.pkcs11_tool().arg("--list-token-slots").output();
        let out = out.expect("run pkcs11-tool");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("serial num"))
            .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_string())
            .unwrap_or_else(|| panic!("no serial in pkcs11-tool output:\n{text}"))
    }

    /// Environment a process needs to see this token.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![("SOFTHSM2_CONF".into(), self.softhsm_conf().into_os_string())]
    }

    /// `pkcs11-tool` with `--module` set to SoftHSM and `SOFTHSM2_CONF` set to this token copy.
    pub fn pkcs11_tool(&self) -> Command {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("SOFTHSM2_CONF", self.softhsm_conf())
            .arg("--module")
            .arg(softhsm_module());
        cmd
    }

    /// The DER SubjectPublicKeyInfo of the public key object with `CKA_ID` = `ck_id`, as
    /// `pkcs11-tool` reads it off the token (independent of p11kms).
    ///
    /// `pkcs11-tool --read-object --type pubkey` writes the SPKI for RSA and EC keys. opensc 0.23
    /// fails on P-384 points ("cannot create EVP_PKEY"); for EC keys it cannot read, the SPKI is
    /// assembled here from the `CKA_EC_PARAMS` and `CKA_EC_POINT` that `--list-objects` prints.
    pub fn public_key_der(&self, ck_id: &[u8]) -> Vec<u8> {
        let out_file = self
            .state_dir()
            .join(format!("pubkey-{}.der", hex::encode(ck_id)));
        let out = self
            .pkcs11_tool()
            .args([
                "--token-label",
                DEV_TOKEN_LABEL,
                "--read-object",
                "--type",
                "pubkey",
            ])
            .arg("--id")
            .arg(hex::encode(ck_id))
            .arg("--output-file")
            .arg(&out_file)
            .output()
            .expect("run pkcs11-tool");
        if out.status.success() {
            let der = fs::read(&out_file).expect("read pkcs11-tool output");
            fs::remove_file(&out_file).ok();
            return der;
        }
        let listed = self
            .list_public_keys()
            .into_iter()
            .find(|k| k.id == ck_id)
            .unwrap_or_else(|| panic!("no public key with CKA_ID {}", hex::encode(ck_id)));
        match (&listed.ec_params, &listed.ec_point) {
            (Some(params), Some(point)) => ec_spki(params, point),
            _ => panic!(
                "pkcs11-tool --read-object failed for a non-EC key: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// The token's public key objects as `pkcs11-tool --list-objects --type pubkey` shows them.
    pub fn list_public_keys(&self) -> Vec<ListedPublicKey> {
        let out = self
            .pkcs11_tool()
            .args([
                "--token-label",
                DEV_TOKEN_LABEL,
                "--list-objects",
                "--type",
                "pubkey",
            ])
            .output()
            .expect("run pkcs11-tool");
        assert!(out.status.success(), "pkcs11-tool --list-objects failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut keys: Vec<ListedPublicKey> = Vec::new();
        for line in text.lines() {
            if let Some(kind) = line.strip_prefix("Public Key Object;") {
                keys.push(ListedPublicKey {
                    kind: kind.trim().to_string(),
                    ..Default::default()
                });
                continue;
            }
            let Some(key) = keys.last_mut() else { continue };
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value = value.trim();
            let bytes = || hex::decode(value).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            match name {
                "ID" => key.id = bytes(),
                "label" => key.label = value.to_string(),
                "EC_POINT" => key.ec_point = Some(bytes()),
                "EC_PARAMS" => key.ec_params = Some(bytes()),
                _ => {}
            }
        }
        keys
    }

    // -- config editing ------------------------------------------------------------------

    /// The config file's text.
    pub fn config_text(&self) -> String {
        fs::read_to_string(self.config_path()).expect("read p11kms.toml")
    }

    /// Replaces the config file.
    pub fn write_config_text(&self, text: &str) {
        fs::write(self.config_path(), text).expect("write p11kms.toml");
    }

    /// The config, parsed.
    pub fn config(&self) -> toml::Table {
        self.config_text().parse().expect("p11kms.toml is TOML")
    }

    /// Edits the config as a TOML table and writes it back.
    pub fn edit_config(&self, edit: impl FnOnce(&mut toml::Table)) {
        let mut table = self.config();
        edit(&mut table);
        self.write_config_text(&toml::to_string(&table).expect("serialise the config"));
    }

    fn set_in_section(&self, section: &str, key: &str, value: toml::Value) {
        self.edit_config(|t| {
            t.entry(section)
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .unwrap_or_else(|| panic!("[{section}] is a table"))
                .insert(key.to_string(), value);
        });
    }

    /// Sets `[server] key = value`.
    pub fn set_server(&self, key: &str, value: impl Into<toml::Value>) {
        self.set_in_section("server", key, value.into());
    }

    /// Sets `[hsm] key = value`.
    pub fn set_hsm(&self, key: &str, value: impl Into<toml::Value>) {
        self.set_in_section("hsm", key, value.into());
    }

    /// Removes `[hsm] key`.
    pub fn remove_hsm(&self, key: &str) {
        self.edit_config(|t| {
            t.get_mut("hsm")
                .and_then(toml::Value::as_table_mut)
                .expect("[hsm]")
                .remove(key);
        });
    }

    /// Points `hsm.module` at another PKCS#11 module (e.g. the fault shim).
    pub fn set_module(&self, module: &Path) {
        self.set_hsm("module", module.display().to_string());
    }

    /// The configured key ids, in order.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys_array_of(&self.config())
            .iter()
            .map(|k| k["id"].as_str().expect("key id is a string").to_string())
            .collect()
    }

    fn keys_array_of<'t>(&self, t: &'t toml::Table) -> &'t Vec<toml::Value> {
        t.get("keys")
            .and_then(toml::Value::as_array)
            .expect("[[keys]]")
    }

    /// Appends a `[[keys]]` entry.
    pub fn add_key(&self, key: KeyDecl) {
        self.edit_config(|t| {
            t.entry("keys")
                .or_insert_with(|| toml::Value::Array(Vec::new()))
                .as_array_mut()
                .expect("keys is an array")
                .push(key.to_table().into());
        });
    }

    /// Appends a raw `[[keys]]` table (for invalid entries).
    pub fn add_key_table(&self, key: toml::Table) {
        self.edit_config(|t| {
            t.entry("keys")
                .or_insert_with(|| toml::Value::Array(Vec::new()))
                .as_array_mut()
                .expect("keys is an array")
                .push(key.into());
        });
    }

    /// Sets `field = value` on the `[[keys]]` entry with `id` (panics if there is none).
    pub fn set_key_field(&self, id: &str, field: &str, value: impl Into<toml::Value>) {
        let value = value.into();
        self.edit_config(|t| {
            let key = t
                .get_mut("keys")
                .and_then(toml::Value::as_array_mut)
                .expect("[[keys]]")
                .iter_mut()
                .find(|k| k.get("id").and_then(toml::Value::as_str) == Some(id))
                .unwrap_or_else(|| panic!("no key {id} in the config"));
            key.as_table_mut()
                .expect("key table")
                .insert(field.into(), value);
        });
    }

    /// Sets `[section] key = value` (any section, created if absent).
    pub fn set_config(&self, section: &str, key: &str, value: impl Into<toml::Value>) {
        self.set_in_section(section, key, value.into());
    }

    fn push_auth_entry(&self, array: &str, entry: toml::Table) {
        self.edit_config(|t| {
            t.entry("auth")
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .expect("[auth] is a table")
                .entry(array)
                .or_insert_with(|| toml::Value::Array(Vec::new()))
                .as_array_mut()
                .unwrap_or_else(|| panic!("auth.{array} is an array"))
                .push(entry.into());
        });
    }

    /// Adds an `[[auth.tokens]]` entry: `secret` (stored as its SHA-256) authenticates as
    /// `subject_id` of `subject_type`.
    pub fn add_api_token(&self, secret: &str, subject_id: &str, subject_type: &str) {
        use sha2::Digest as _;
        let mut t = toml::Table::new();
        t.insert(
            "sha256".into(),
            hex::encode(sha2::Sha256::digest(secret.as_bytes())).into(),
        );
        t.insert("subject_id".into(), subject_id.into());
        t.insert("subject_type".into(), subject_type.into());
        self.push_auth_entry("tokens", t);
    }

    /// Adds an `[[auth.bindings]]` entry (`folder_id = "*"` for every folder).
    pub fn add_binding(&self, role: &str, subject_id: &str, subject_type: &str, folder_id: &str) {
        let mut t = toml::Table::new();
        t.insert("role".into(), role.into());
        t.insert("subject_id".into(), subject_id.into());
        t.insert("subject_type".into(), subject_type.into());
        t.insert("folder_id".into(), folder_id.into());
        self.push_auth_entry("bindings", t);
    }

    /// Sets the `[auth.jwt]` table.
    pub fn set_jwt(&self, jwt: toml::Table) {
        self.edit_config(|t| {
            t.entry("auth")
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .expect("[auth] is a table")
                .insert("jwt".into(), jwt.into());
        });
    }

    /// Removes the `[[keys]]` entries whose id `keep` rejects.
    pub fn retain_keys(&self, keep: impl Fn(&str) -> bool) {
        self.edit_config(|t| {
            t.get_mut("keys")
                .and_then(toml::Value::as_array_mut)
                .expect("[[keys]]")
                .retain(|k| keep(k.get("id").and_then(toml::Value::as_str).unwrap_or("")));
        });
    }
}

/// One public key object in `pkcs11-tool --list-objects` output.
#[derive(Clone, Debug, Default)]
pub struct ListedPublicKey {
    /// E.g. `EC  EC_POINT 256 bits` or `RSA 2048 bits`.
    pub kind: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_EC_POINT` (a DER OCTET STRING around the SEC1 point).
    pub ec_point: Option<Vec<u8>>,
    /// `CKA_EC_PARAMS` (the named-curve OID, DER).
    pub ec_params: Option<Vec<u8>>,
}

/// SPKI DER of an EC public key from its `CKA_EC_PARAMS` and `CKA_EC_POINT`.
fn ec_spki(params: &[u8], ec_point: &[u8]) -> Vec<u8> {
    use der::{Decode as _, Encode as _};
    let point = der::asn1::OctetString::from_der(ec_point)
        .expect("CKA_EC_POINT is a DER OCTET STRING")
        .into_bytes();
    spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: verify::ID_EC_PUBLIC_KEY,
            parameters: Some(der::Any::from_der(params).expect("CKA_EC_PARAMS is DER")),
        },
        subject_public_key: der::asn1::BitString::from_bytes(&point).expect("bit string"),
    }
    .to_der()
    .expect("SPKI encodes")
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim_end()
        .to_string()
}

// ------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------

/// A `p11kms` command line with a clean environment, to [`start`](Launch::start) as a daemon
/// or to [`run_to_exit`](Launch::run_to_exit).
#[derive(Debug)]
pub struct Launch {
    cmd: Command,
    /// Where the daemon's admin token is, read once it is ready.
    admin_token_file: Option<PathBuf>,
}

impl Launch {
    /// `p11kms <args>`.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("P11KMS") || n == "SOFTHSM2_CONF" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("NO_COLOR", "1");
        // Tests read the logs, so the level is fixed: `P11KMS_TEST_RUST_LOG` (e.g. `debug`)
        // overrides it; an inherited `RUST_LOG` does not.
        let log = std::env::var_os("P11KMS_TEST_RUST_LOG").unwrap_or_else(|| "info".into());
        cmd.env("RUST_LOG", log);
        Self {
            cmd,
            admin_token_file: None,
        }
    }

    /// `p11kms serve --config <token's config>` with `SOFTHSM2_CONF` set to the token copy.
    pub fn serve(token: &TestToken) -> Self {
        let mut launch = Self::new(["serve", "--config"])
            .arg(token.config_path())
            .envs(token.env());
        launch.admin_token_file = Some(token.admin_token_path());
        launch
    }

    /// `p11kms dev --state-dir <dir> --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --module
    /// <softhsm>` (dev mode's default TLS port is fixed: tests running at once would collide).
    pub fn dev(state_dir: &Path) -> Self {
        let mut launch = Self::new([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state_dir)
        .arg("--module")
        .arg(softhsm_module());
        launch.admin_token_file = Some(state_dir.join(ADMIN_TOKEN_FILE));
        launch
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.cmd.env_remove(key);
        self
    }

    /// Spawns the process and waits for its ready line. Panics, with its output, if it exits
    /// first or stays silent past [`READY_TIMEOUT`].
    pub fn start(self) -> Daemon {
        let admin_token_file = self.admin_token_file;
        let spawned = Instant::now();
        let mut running = Running::spawn(self.cmd);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut tls_addr = None;
        let mut admin_addr = None;
        loop {
            match running.next_line(deadline) {
                Next::Line(line) => {
                    if let Some(addr) = line.strip_prefix(TLS_READY_PREFIX) {
                        tls_addr = Some(addr.trim().parse().unwrap_or_else(|e| {
                            panic!("bad address in the TLS line {line:?}: {e}")
                        }));
                    } else if let Some(addr) = line.strip_prefix(ADMIN_READY_PREFIX) {
                        admin_addr = Some(addr.trim().parse().unwrap_or_else(|e| {
                            panic!("bad address in the admin line {line:?}: {e}")
                        }));
                    } else if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                        let addr = addr.trim().parse().unwrap_or_else(|e| {
                            panic!("bad address in the ready line {line:?}: {e}")
                        });
                        // Dev mode writes its token before it serves: read it now.
                        let admin_token = admin_token_file
                            .as_deref()
                            .and_then(|p| fs::read_to_string(p).ok())
                            .map(|t| t.trim().to_string());
                        return Daemon {
                            running,
                            addr,
                            tls_addr,
                            admin_addr,
                            admin_token,
                            startup: spawned.elapsed(),
                        };
                    }
                }
                Next::Eof => {
                    let status = running.wait_for_exit(EXIT_TIMEOUT);
                    panic!(
                        "p11kms exited ({status}) before printing its ready line\n{}",
                        running.describe()
                    );
                }
                Next::Timeout => {
                    running.kill();
                    panic!(
                        "p11kms printed no ready line within {READY_TIMEOUT:?}\n{}",
                        running.describe()
                    );
                }
            }
        }
    }

    /// Runs a process that is expected to exit on its own (a start-up that must fail). Panics
    /// if it prints the ready line instead, or does not exit within [`EXIT_TIMEOUT`].
    pub fn run_to_exit(self) -> Exited {
        let mut running = Running::spawn(self.cmd);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match running.next_line(deadline) {
                Next::Line(line) if line.starts_with(READY_PREFIX) => {
                    running.kill();
                    panic!(
                        "p11kms started serving but was expected to fail\n{}",
                        running.describe()
                    );
                }
                Next::Line(_) => {}
                Next::Eof => break,
                Next::Timeout => {
                    running.kill();
                    panic!(
                        "p11kms did not exit within {EXIT_TIMEOUT:?}\n{}",
                        running.describe()
                    );
                }
            }
        }
        let status = running.wait_for_exit(EXIT_TIMEOUT);
        Exited {
            status,
            stdout: running.stdout(),
            stderr: running.stderr(),
        }
    }

    /// Runs to completion, whatever it prints (e.g. `--help`).
    pub fn output(mut self) -> Exited {
        let out = self.cmd.output().expect("run p11kms");
        Exited {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

enum Next {
    Line(String),
    Eof,
    Timeout,
}

/// A spawned process: stdout read line by line on a thread, stderr to a file.
#[derive(Debug)]
struct Running {
    child: Child,
    status: Option<ExitStatus>,
    lines: mpsc::Receiver<Option<String>>,
    saw_eof: bool,
    /// Becomes true when stdout closes, i.e. the process is gone; for async waiting.
    closed: tokio::sync::watch::Receiver<bool>,
    stdout: Arc<Mutex<String>>,
    stderr_path: PathBuf,
    _logs: TempDir,
    command: String,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let logs = tempfile::Builder::new()
            .prefix("p11kms-logs-")
            .tempdir()
            .expect("create a log dir");
        let stderr_path = logs.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("create the stderr file");
        let command = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let collected = Arc::clone(&stdout);
        std::thread::spawn(move || {
            // Keeps draining after the ready line, so the daemon never blocks on a full pipe.
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = collected.lock().unwrap_or_else(|p| p.into_inner());
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(Some(line));
            }
            let _ = tx.send(None);
            let _ = closed_tx.send(true);
        });
        Self {
            child,
            status: None,
            lines,
            saw_eof: false,
            closed,
            stdout,
            stderr_path,
            _logs: logs,
            command,
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Next {
        if self.saw_eof {
            return Next::Eof;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(Some(line)) => Next::Line(line),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.saw_eof = true;
                Next::Eof
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Next::Timeout,
        }
    }

    /// Waits for stdout to close (the process is gone), then reaps it.
    fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline) {
                Next::Line(_) => {}
                Next::Eof => break,
                Next::Timeout => {
                    self.kill();
                    panic!(
                        "p11kms did not exit within {timeout:?}; killed it\n{}",
                        self.describe()
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for p11kms");
        self.status = Some(status);
        status
    }

    /// Like [`Running::wait_for_exit`] without blocking the async runtime.
    async fn wait_for_exit_async(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let mut closed = self.closed.clone();
        let waited = tokio::time::timeout(timeout, closed.wait_for(|&c| c)).await;
        if waited.is_err() {
            self.kill();
            panic!(
                "p11kms did not exit within {timeout:?}; killed it\n{}",
                self.describe()
            );
        }
        // Stdout is closed: the process has exited, so this wait returns at once.
        let status = self.child.wait().expect("wait for p11kms");
        self.status = Some(status);
        status
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!(
            "command: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the daemon said; nextest prints it with the failure.
        if std::thread::panicking() {
            eprintln!("--- p11kms at the failure ---\n{}", self.describe());
        }
    }
}

/// A process that exited on its own.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Exited {
    /// Asserts a non-zero exit.
    #[track_caller]
    pub fn assert_failed(&self) -> &Self {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a non-zero exit code, got {}\n{self}",
            self.status
        );
        self
    }

    /// Asserts the exit status.
    #[track_caller]
    pub fn assert_exit_code(&self, code: i32) -> &Self {
        assert_eq!(self.status.code(), Some(code), "exit status\n{self}");
        self
    }

    /// Asserts that stderr contains every needle.
    #[track_caller]
    pub fn assert_stderr_has(&self, needles: &[&str]) -> &Self {
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}\n{self}"
            );
        }
        self
    }

    /// Asserts that neither stdout nor stderr contains `secret`.
    #[track_caller]
    pub fn assert_never_printed(&self, secret: &str) -> &Self {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "the secret {secret:?} was printed\n{self}"
        );
        self
    }
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running `p11kms` that has printed its ready line. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    running: Running,
    addr: SocketAddr,
    /// The TLS listener's address (`server.tls_listen`), printed before the ready line.
    tls_addr: Option<SocketAddr>,
    /// The admin listener's address (`[admin] listen`).
    admin_addr: Option<SocketAddr>,
    admin_token: Option<String>,
    startup: Duration,
}

/// The file in a dev state directory that holds the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Adds `authorization: Bearer <token>` to every request (nothing for `Bearer::none()`).
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token`.
    pub fn token(token: &str) -> Self {
        Self(Some(
            format!("Bearer {token}")
                .parse()
                .expect("a token is header-safe"),
        ))
    }

    /// Sends no credentials.
    pub fn none() -> Self {
        Self(None)
    }

    /// `Some(token)` → [`Bearer::token`], `None` → [`Bearer::none`].
    pub fn from_option(token: Option<&str>) -> Self {
        token.map_or_else(Self::none, Self::token)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry a [`Bearer`].
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// The generated gRPC client of the crypto service (sending the daemon's admin token, unless
/// built with [`Daemon::kms_as`]).
pub type CryptoClient = AsymmetricSignatureCryptoServiceClient<AuthChannel>;

impl Daemon {
    /// `p11kms serve` on the token copy's config, with extra environment variables.
    pub fn serve(token: &TestToken, env: &[(&str, &str)]) -> Daemon {
        Launch::serve(token).envs(env.iter().copied()).start()
    }

    /// `p11kms dev` on `state_dir` (listening on an ephemeral port).
    pub fn dev(state_dir: &Path, env: &[(&str, &str)]) -> Daemon {
        Launch::dev(state_dir).envs(env.iter().copied()).start()
    }

    /// `p11kms serve` that must fail to start: returns its exit status and output.
    pub fn serve_expecting_failure(token: &TestToken, env: &[(&str, &str)]) -> Exited {
        Launch::serve(token).envs(env.iter().copied()).run_to_exit()
    }

    /// The address from the ready line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address (`[admin]`); panics without one.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.expect("this daemon has no admin listener")
    }

    /// The TLS listener's address (dev mode, or `server.tls_listen`); panics without one.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr.expect("this daemon has no TLS listener")
    }

    /// From spawning the process to its ready line: loading the module, logging in and
    /// resolving every key, on this machine under its present load. The yardstick for how long
    /// a recovery (the same work) may take in the same test, instead of a figure tuned on a
    /// quiet machine.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// `http://<addr>`, for tonic.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.running.child.id()
    }

    /// A new HTTP/2 connection to the daemon.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.addr))
    }

    /// The admin token (global `kms.admin`) the daemon was started with.
    pub fn admin_token(&self) -> &str {
        self.admin_token
            .as_deref()
            .expect("this daemon has no admin token (no <state>/admin.token)")
    }

    /// A new connection whose requests carry the admin token.
    pub async fn auth_channel(&self) -> AuthChannel {
        InterceptedService::new(self.channel().await, Bearer::token(self.admin_token()))
    }

    /// A new connection whose requests carry `token` (or no credentials).
    pub async fn auth_channel_as(&self, token: Option<&str>) -> AuthChannel {
        InterceptedService::new(self.channel().await, Bearer::from_option(token))
    }

    /// The generated crypto-service client on a new connection, with the admin token.
    pub async fn client(&self) -> CryptoClient {
        CryptoClient::new(self.auth_channel().await)
    }

    /// A [`Kms`] client on a new connection, with the admin token.
    pub async fn kms(&self) -> Kms {
        Kms {
            client: self.client().await,
        }
    }

    /// A [`Kms`] client on a new connection sending `token` (or no credentials).
    pub async fn kms_as(&self, token: Option<&str>) -> Kms {
        Kms {
            client: CryptoClient::new(self.auth_channel_as(token).await),
        }
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.running.stdout()
    }

    /// Everything written to stderr so far (the logs; also after exit).
    pub fn stderr(&self) -> String {
        self.running.stderr()
    }

    /// The file stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.running.stderr_path
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, signal).expect("send a signal to p11kms");
    }

    /// SIGTERM, then waits for the exit (up to [`EXIT_TIMEOUT`]).
    ///
    /// Async on purpose: blocking the test's runtime would freeze its own gRPC connections,
    /// which then cannot answer the server's graceful GOAWAY and hold the exit for the whole
    /// shutdown grace period. Sync tests use [`Daemon::sigterm_blocking`].
    pub async fn sigterm(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT).await
    }

    /// SIGINT, then waits for the exit (up to [`EXIT_TIMEOUT`]).
    pub async fn sigint(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGINT);
        self.wait_exit(EXIT_TIMEOUT).await
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.running.wait_for_exit_async(timeout).await
    }

    /// [`Daemon::sigterm`] for tests without an async runtime (no open gRPC connections).
    pub fn sigterm_blocking(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit_blocking(EXIT_TIMEOUT)
    }

    /// [`Daemon::wait_exit`] for tests without an async runtime.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> ExitStatus {
        self.running.wait_for_exit(timeout)
    }

    /// The exit status, if it has exited and been reaped.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.running.status.is_none() {
            self.running.status = self.running.child.try_wait().expect("try_wait");
        }
        self.running.status
    }

    /// SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        self.running.kill();
    }

    /// Stdout, stderr and the command, for assertion messages.
    pub fn describe(&self) -> String {
        self.running.describe()
    }

    /// Asserts that neither stdout nor stderr (so far) contains `secret`.
    #[track_caller]
    pub fn assert_never_printed(&self, secret: &str) {
        assert!(
            !self.stdout().contains(secret) && !self.stderr().contains(secret),
            "the secret {secret:?} was printed\n{}",
            self.describe()
        );
    }

    /// How many lines of stderr (the log) contain `needle` so far.
    pub fn stderr_count(&self, needle: &str) -> usize {
        self.stderr().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `count` lines of the log contain `needle`, polling its file every
    /// 20 ms; panics with the log after `timeout`. Returns how long it took.
    pub async fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.stderr_count(needle) >= count {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "the log did not show {needle:?} {count} time(s) within {timeout:?}\n{}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The daemon's open file descriptors (`/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/<pid>/fd")
            .count()
    }

    /// The daemon's resident set size in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/<pid>/status:\n{status}"))
    }

    /// `grpc.health.v1.Health/Check` for `service` (`""` for the server as a whole).
    pub async fn health(&self, service: &str) -> Result<ServingStatus, Status> {
        let mut client = HealthClient::new(self.channel().await);
        let resp = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?
            .into_inner();
        Ok(resp.status())
    }
}

/// The crypto service's full name, as health checks name it.
pub const CRYPTO_SERVICE: &str =
    "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService";

// ------------------------------------------------------------------------------------------
// Client
// ------------------------------------------------------------------------------------------

/// The crypto service, with plain byte-level calls. Responses' `key_id` is checked against the
/// request's.
#[derive(Clone, Debug)]
pub struct Kms {
    /// The generated client, for calls that need metadata or other options.
    pub client: CryptoClient,
}

impl Kms {
    /// `Sign`.
    pub async fn sign(&mut self, key_id: &str, message: &[u8]) -> Result<Vec<u8>, Status> {
        let resp = self
            .client
            .sign(AsymmetricSignRequest {
                key_id: key_id.to_string(),
                message: message.to_vec(),
            })
            .await?
            .into_inner();
        assert_eq!(resp.key_id, key_id, "Sign answered for another key");
        Ok(resp.signature)
    }

    /// `SignHash`.
    pub async fn sign_hash(&mut self, key_id: &str, hash: &[u8]) -> Result<Vec<u8>, Status> {
        let resp = self
            .client
            .sign_hash(AsymmetricSignHashRequest {
                key_id: key_id.to_string(),
                hash: hash.to_vec(),
            })
            .await?
            .into_inner();
        assert_eq!(resp.key_id, key_id, "SignHash answered for another key");
        Ok(resp.signature)
    }

    /// `GetPublicKey`: the PEM text.
    pub async fn public_key(&mut self, key_id: &str) -> Result<String, Status> {
        let resp = self
            .client
            .get_public_key(AsymmetricGetPublicKeyRequest {
                key_id: key_id.to_string(),
            })
            .await?
            .into_inner();
        assert_eq!(resp.key_id, key_id, "GetPublicKey answered for another key");
        Ok(resp.public_key)
    }
}

/// Asserts that `result` failed with `code` and a message containing every needle (so that
/// messages keep saying what to fix). Returns the status.
#[track_caller]
pub fn assert_status<T: Debug>(result: Result<T, Status>, code: Code, needles: &[&str]) -> Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {:?}",
        status.message()
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{code:?} message {:?} lacks {needle:?}",
            status.message()
        );
    }
    status
}
