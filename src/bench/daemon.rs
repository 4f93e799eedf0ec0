//! The daemon under test: this same binary, started as a separate process (`p11kms dev` on the
//! bench's token, or `p11kms serve` for scale runs), so that its CPU time and RSS are its own
//! and readable from `/proc`.

use super::procfs::Proc;
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the daemon prints on stdout, followed by its address, once it accepts connections.
const READY_PREFIX: &str = "p11kms listening on ";

/// A running daemon; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
    /// From spawn to the ready line.
    startup: Duration,
}

/// How to start one.
#[derive(Debug)]
pub(crate) struct Launch {
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    log: PathBuf,
    timeout: Duration,
}

impl Launch {
    /// `p11kms dev --state-dir <dir> --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0`, sized by
    /// `P11KMS__*` overrides.
    pub(crate) fn dev(
        state_dir: &Path,
        module: Option<&Path>,
        pool_size: usize,
        verify_ecdsa: bool,
    ) -> Self {
        let mut args: Vec<OsString> = vec![
            "dev".into(),
            "--state-dir".into(),
            state_dir.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tls-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(m) = module {
            args.push("--module".into());
            args.push(m.into());
        }
        let tag = if verify_ecdsa {
            "verify-on"
        } else {
            "verify-off"
        };
        Self {
            args,
            env: vec![
                (
                    "P11KMS__HSM__POOL_SIZE".into(),
                    pool_size.to_string().into(),
                ),
                (
                    "P11KMS__SIGNING__VERIFY_ECDSA".into(),
                    verify_ecdsa.to_string().into(),
                ),
            ],
            log: state_dir.join(format!("bench-daemon-{tag}.log")),
            // The first run generates 13 keys, RSA-4096 among them.
            timeout: Duration::from_secs(30 * 60),
        }
    }

    /// `p11kms serve --config <config>` on the SoftHSM config `softhsm_conf`.
    pub(crate) fn serve(config: &Path, softhsm_conf: &Path, log: PathBuf) -> Self {
        Self {
            args: vec!["serve".into(), "--config".into(), config.into()],
            env: vec![("SOFTHSM2_CONF".into(), softhsm_conf.into())],
            log,
            timeout: Duration::from_secs(10 * 60),
        }
    }

    /// Starts the daemon and waits for its ready line.
    pub(crate) fn start(self) -> Result<Daemon, String> {
        let exe = super::SELF_EXE;
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("cannot create {}: {e}", self.log.display()))?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Reads the ready line, then keeps draining stdout so the daemon never blocks on it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: self.log,
            startup: Duration::ZERO,
        };
        match rx.recv_timeout(self.timeout) {
            Ok(addr) => {
                daemon.startup = started.elapsed();
                daemon.addr = addr
                    .parse()
                    .map_err(|e| format!("the daemon printed a bad address {addr:?}: {e}"))?;
                Ok(daemon)
            }
            Err(_) => {
                daemon.stop();
                Err(format!(
                    "the daemon did not become ready; its log ({}):\n{}",
                    daemon.log.display(),
                    daemon.log_tail()
                ))
            }
        }
    }
}

impl Daemon {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn proc(&self) -> Proc {
        Proc::Pid(self.pid)
    }

    /// From spawn to the ready line: module initialisation, login, key resolution, bind.
    pub(crate) fn startup(&self) -> Duration {
        self.startup
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM (it drains and finalises the module), then SIGKILL after 30 s.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // No signal API without `unsafe` or another dependency: kill(1) does it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
