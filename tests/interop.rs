//! Interop: p11kms as other software sees it.
//!
//! - The official Yandex Cloud Python SDK (`yandexcloud`, pinned in
//!   `tests/interop/requirements.txt`) signs with every algorithm against `p11kms dev`, and every
//!   signature is verified with the `cryptography` package (`tests/interop/sdk_sign.py`).
//! - Our `proto/` tree is wire-identical to the SDK's compiled descriptors
//!   (`tests/interop/check_wire_compat.py`).
//! - The `softhsm-setup/` path: a token created and keys provisioned with standard tools
//!   (`softhsm2-util`, `pkcs11-tool`) are served by `p11kms serve` with
//!   `deploy/p11kms.softhsm-sample.toml`, and the SDK signs with every key.
//! - `deploy/p11kms.toml`, the reference config, loads with the real config loader.
//!
//! The Python tests need the interop venv: `./scripts/test` creates `./.venv-interop` and points
//! `P11KMS_INTEROP_PYTHON` at it. They never skip: without it they fail and say what to run.
//!
//! Self-contained on purpose (its own small process helper), so it does not couple to the
//! shared harness in `tests/common/`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a daemon may take to print its ready line (a fresh dev token generates 13 keys,
/// three of them RSA-4096, in a few seconds; this is generous for loaded CI machines).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a daemon may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where SoftHSMv2's module lives (as in `scripts/lib.sh` and `src/dev.rs`).
const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter that has the SDK: `P11KMS_INTEROP_PYTHON`, else `./.venv-interop`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("P11KMS_INTEROP_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = repo().join(".venv-interop/bin/python");
    assert!(
        venv.exists(),
        "the interop tests need the official Yandex Cloud Python SDK: run ./scripts/test to create \
         .venv-interop (or set P11KMS_INTEROP_PYTHON to a python with tests/interop/requirements.txt)"
    );
    venv
}

fn softhsm_module() -> PathBuf {
    SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("SoftHSMv2 is not installed: run ./scripts/test (it installs softhsm2)")
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// A command with no inherited `P11KMS__*` overrides, so the test's own environment cannot
/// change what the daemon or the scripts see.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("P11KMS__") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs a command to completion; panics with its output unless it succeeded.
fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    eprintln!("{what}:\n{text}");
    out
}

/// A running `p11kms`, found ready by its `p11kms listening on ADDR` line and stopped with
/// SIGTERM.
struct Daemon {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` (stderr to `log`) and waits for the ready line on stdout; no sleeps.
    fn start(cmd: &mut Command, log: PathBuf) -> Daemon {
        let stderr = File::create(&log).expect("create the daemon log");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout after the ready line so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("p11kms listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => Daemon { child, addr, log },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "p11kms never printed `p11kms listening on` (waited up to {READY_TIMEOUT:?}; exit: {status:?}); its log:\n{}",
                    read_lossy(&log)
                );
            }
        }
    }

    /// SIGTERM, then the exit status; panics if it does not stop in time.
    fn stop(mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for p11kms") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "p11kms did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                read_lossy(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon and asserts a clean exit (status 0).
    fn stop_cleanly(self) {
        let log = self.log.clone();
        let status = self.stop();
        assert!(
            status.success(),
            "p11kms exited with {status} after SIGTERM; its log:\n{}",
            read_lossy(&log)
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn official_python_sdk_signs_with_every_algorithm_against_dev_mode() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(
        command(env!("CARGO_BIN_EXE_p11kms"))
            .arg("dev")
            .arg("--state-dir")
            .arg(dir.path().join("dev"))
            .args(["--listen", "127.0.0.1:0"]),
        dir.path().join("p11kms.log"),
    );
    // Dev mode keeps authentication on: its admin token is in the state dir.
    let admin_token = std::fs::read_to_string(dir.path().join("dev/admin.token"))
        .expect("dev mode writes <state-dir>/admin.token");
    let out = run_ok(
        "tests/interop/sdk_sign.py (13 dev keys)",
        command(&python)
            .arg(repo().join("tests/interop/sdk_sign.py"))
            .arg(&daemon.addr)
            .env("P11KMS_TOKEN", admin_token.trim()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("13/13 keys OK, 26 signatures verified, 2/2 error cases; all OK"),
        "unexpected summary:\n{stdout}"
    );
    daemon.stop_cleanly();
}

#[test]
fn our_protos_are_wire_identical_to_the_official_python_sdk() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let descriptors = dir.path().join("p11kms_descriptor.bin");
    std::fs::write(
        &descriptors,
        p11kms::api::yandex::grpc::pb::FILE_DESCRIPTOR_SET,
    )
    .expect("write the descriptor set");
    let out = run_ok(
        "tests/interop/check_wire_compat.py",
        command(&python)
            .arg(repo().join("tests/interop/check_wire_compat.py"))
            .arg(&descriptors),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wire-compat OK"),
        "no wire-compat OK line"
    );
}

/// `(id, algorithm)` of every `[[keys]]` entry in a config file.
fn configured_keys(config: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(config).expect("read the config");
    let value: toml::Table = toml::from_str(&text).expect("the config is TOML");
    value["keys"]
        .as_array()
        .expect("[[keys]] is an array")
        .iter()
        .map(|k| {
            (
                k["id"].as_str().expect("id").to_string(),
                k["algorithm"].as_str().expect("algorithm").to_string(),
            )
        })
        .collect()
}

#[test]
fn softhsm_setup_scripts_provision_keys_that_the_sample_config_serves() {
    let python = python();
    for tool in ["softhsm2-util", "pkcs11-tool", "script"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is not installed: run ./scripts/test (it installs softhsm2, opensc)"
        );
    }
    let module = softhsm_module();
    let dir = tempfile::tempdir().expect("temp dir");
    let token_dir = dir.path().join("softhsm");
    let softhsm_conf = token_dir.join("softhsm2.conf");
    let so_pin = hex::encode(rand::random::<[u8; 12]>());
    let user_pin = hex::encode(rand::random::<[u8; 12]>());

    run_ok(
        "softhsm-setup/create-token.sh",
        command(repo().join("softhsm-setup/create-token.sh"))
            .arg("--dir")
            .arg(&token_dir)
            .env_remove("SOFTHSM2_CONF")
            .env("P11KMS_SO_PIN", &so_pin)
            .env("P11KMS_USER_PIN", &user_pin),
    );
    assert!(
        softhsm_conf.exists(),
        "create-token.sh wrote no softhsm2.conf"
    );
    for round in ["first run", "second run (idempotent)"] {
        let out = run_ok(
            &format!("softhsm-setup/provision-keys.sh, {round}"),
            command(repo().join("softhsm-setup/provision-keys.sh"))
                .arg("--module")
                .arg(&module)
                .env("SOFTHSM2_CONF", &softhsm_conf)
                .env("P11KMS_USER_PIN", &user_pin),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains(&user_pin) && !stderr.contains(&so_pin),
            "a PIN appeared in the scripts' output"
        );
    }

    // The sample config binds no roles (the operator adds tokens): serve a copy with one API
    // token that may sign with every key.
    let sample = repo().join("deploy/p11kms.softhsm-sample.toml");
    let token = hex::encode(rand::random::<[u8; 32]>());
    let config = dir.path().join("p11kms.toml");
    {
        use sha2::Digest as _;
        let mut text = std::fs::read_to_string(&sample).expect("read the sample config");
        text.push_str(&format!(
            "\n[[auth.tokens]]\nsha256 = \"{}\"\nsubject_id = \"interop\"\nsubject_type = \"serviceAccount\"\n\n\
             [[auth.bindings]]\nrole = \"kms.asymmetricSignatureKeys.signer\"\nsubject_id = \"interop\"\n\
             subject_type = \"serviceAccount\"\nfolder_id = \"*\"\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        ));
        std::fs::write(&config, text).expect("write the config copy");
    }
    let daemon = Daemon::start(
        command(env!("CARGO_BIN_EXE_p11kms"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("SOFTHSM2_CONF", &softhsm_conf)
            .env("P11KMS_USER_PIN", &user_pin)
            .env("P11KMS__SERVER__LISTEN", "127.0.0.1:0")
            .env("P11KMS__HSM__MODULE", &module),
        dir.path().join("p11kms.log"),
    );
    let keys = configured_keys(&config);
    assert_eq!(keys.len(), 5, "the sample config serves five keys");
    let mut sdk = command(&python);
    sdk.arg(repo().join("tests/interop/sdk_sign.py"))
        .arg(&daemon.addr)
        .env("P11KMS_TOKEN", &token);
    for (id, algorithm) in &keys {
        sdk.arg("--key").arg(format!("{id}={algorithm}"));
    }
    let out = run_ok("tests/interop/sdk_sign.py (softhsm-setup keys)", &mut sdk);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("5/5 keys OK, 10 signatures verified, 2/2 error cases; all OK"),
        "unexpected summary:\n{stdout}"
    );
    let log = read_lossy(&daemon.log);
    assert!(
        !log.contains(&user_pin),
        "the PIN appeared in the daemon's log"
    );
    daemon.stop_cleanly();
}

#[test]
fn reference_config_loads_with_the_real_loader() {
    use p11kms::config::{KeyStatus, ObjectSelector, TokenSelector};
    // The reference config's PIN path only exists under systemd; point it at a real file.
    const PIN_LINE: &str = r#"pin_file = "/run/credentials/p11kms.service/pin""#;
    let path = repo().join("deploy/p11kms.toml");
    let text = std::fs::read_to_string(&path).expect("read deploy/p11kms.toml");
    assert!(
        text.lines().any(|l| l.trim() == PIN_LINE),
        "deploy/p11kms.toml should set `{PIN_LINE}` (deploy/p11kms.service relies on it)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let pin = dir.path().join("pin");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin)
            .expect("create the PIN file");
        f.write_all(b"1234\n").expect("write the PIN file");
    }
    let text = text.replace(
        PIN_LINE,
        &format!("pin_file = {:?}", pin.display().to_string()),
    );
    let config = p11kms::Config::from_toml(&text, dir.path(), "deploy/p11kms.toml")
        .unwrap_or_else(|e| panic!("deploy/p11kms.toml does not load: {e}"));

    assert!(matches!(config.hsm.token(), TokenSelector::Label(_)));
    assert!(
        config.keys.len() >= 3,
        "the reference config shows several keys"
    );
    let selectors: Vec<_> = config.keys.iter().map(|k| k.selector()).collect();
    assert!(selectors.iter().any(|s| matches!(s, ObjectSelector::Id(_))));
    assert!(selectors
        .iter()
        .any(|s| matches!(s, ObjectSelector::Label(_))));
    assert!(config.keys.iter().any(|k| k.status == KeyStatus::Inactive));
}

/// Names of the settings in `src/config/*.rs`: every `pub` field of a struct that derives
/// `Deserialize`, except `#[serde(skip)]` ones.
fn config_setting_names() -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("src/config"))
        .expect("read src/config")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let source: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read a config module"))
        .collect::<Vec<_>>()
        .join("\n");
    let (mut names, mut deserialize, mut in_struct, mut skip) = (Vec::new(), false, false, false);
    for line in source.lines().map(str::trim) {
        if line.starts_with("#[derive(") {
            deserialize = line.contains("Deserialize");
        } else if line.starts_with("pub struct ") && line.ends_with('{') {
            in_struct = deserialize;
        } else if in_struct && line == "}" {
            in_struct = false;
        } else if in_struct && line == "#[serde(skip)]" {
            skip = true;
        } else if let Some(field) = line.strip_prefix("pub ").filter(|_| in_struct) {
            if let Some((name, _)) = field.split_once(':') {
                if !std::mem::take(&mut skip) {
                    names.push(name.trim().to_string());
                }
            }
        }
    }
    names
}

#[test]
fn reference_config_documents_every_setting() {
    let reference = std::fs::read_to_string(repo().join("deploy/p11kms.toml"))
        .expect("read deploy/p11kms.toml");
    let names = config_setting_names();
    assert!(
        names.iter().any(|n| n == "pool_size") && names.iter().any(|n| n == "object_id"),
        "could not read the settings from src/config/: {names:?}"
    );
    let documented = |name: &str| {
        reference.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{name} ="))
                || line.starts_with(&format!("{name}  "))
                || line == format!("[{name}]")
                || line == format!("[[{name}]]")
                // A nested table documents its field: `[server.tls]`, `[[auth.tokens]]`.
                || (line.starts_with('[')
                    && line.trim_end_matches(']').ends_with(&format!(".{name}")))
        })
    };
    let missing: Vec<_> = names.iter().filter(|n| !documented(n)).collect();
    assert!(
        missing.is_empty(),
        "src/config/ has settings that deploy/p11kms.toml does not document: {missing:?}; \
         add each with its purpose, default and security consequences"
    );
}
