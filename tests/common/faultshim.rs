//! Running the daemon through the fault-injection shim (`faultshim/`, see its README): the
//! daemon loads `libp11kms_faultshim.so` as its PKCS#11 module, which forwards to SoftHSM,
//! counts every call in a stats file and injects faults from a control file.
//!
//! ```ignore
//! let token = TestToken::dev();
//! let shim = Shim::install(&token);           // hsm.module = the shim
//! let daemon = Launch::serve(&token).envs(shim.env()).start();
//! shim.wait_stat_at_least("calls.C_Login", 1);
//! ```
//!
//! [`Shim::settled_stats`] waits until the stats stop changing, for final counts after a load.

use super::{softhsm_module, write_atomic, TestToken};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a stats value may take to show up (the shim writes every 5 ms when it changed).
pub const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The built shim library: `$P11KMS_FAULTSHIM_LIB`, else `libp11kms_faultshim.so` next to this
/// test executable (`target/<profile>/deps/`, built because the shim is a dev-dependency) or in
/// the profile directory, whichever is newer.
pub fn shim_path() -> PathBuf {
    if let Some(p) = std::env::var_os("P11KMS_FAULTSHIM_LIB") {
        return PathBuf::from(p);
    }
    let file = format!(
        "{}p11kms_faultshim{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test executable has a parent dir");
    let candidates: Vec<PathBuf> = [Some(deps.join(&file)), deps.parent().map(|p| p.join(&file))]
        .into_iter()
        .flatten()
        .collect();
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| {
            panic!(
                "cannot find the fault shim; looked for {candidates:?}. Build it with \
                 `cargo build -p p11kms-faultshim` or set P11KMS_FAULTSHIM_LIB"
            )
        })
}

/// The shim's control and stats files for one token copy.
#[derive(Debug)]
pub struct Shim {
    /// The control file (missing = no faults).
    pub control: PathBuf,
    /// The stats file the shim rewrites.
    pub stats: PathBuf,
    generation: u64,
}

impl Shim {
    /// Points the token copy's `hsm.module` at the shim; control and stats files live in the
    /// token's state dir. Pass [`Shim::env`] to the daemon.
    pub fn install(token: &TestToken) -> Shim {
        token.set_module(&shim_path());
        Shim::at(token.state_dir())
    }

    /// Control and stats files in `dir`, without touching any config.
    pub fn at(dir: &Path) -> Shim {
        Shim {
            control: dir.join("faultshim.control"),
            stats: dir.join("faultshim.stats"),
            generation: 0,
        }
    }

    /// Environment for the process that loads the shim.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![
            (
                "P11KMS_FAULTSHIM_MODULE".into(),
                softhsm_module().into_os_string(),
            ),
            (
                "P11KMS_FAULTSHIM_CONTROL".into(),
                self.control.clone().into_os_string(),
            ),
            (
                "P11KMS_FAULTSHIM_STATS".into(),
                self.stats.clone().into_os_string(),
            ),
        ]
    }

    /// Installs a new control file atomically, tagged with a fresh `generation`, and returns
    /// the generation. With a daemon running, follow with [`Shim::wait_applied`].
    pub fn set_control(&mut self, text: &str) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        write_atomic(
            &self.control,
            &format!("{text}\ngeneration = {generation}\n"),
        );
        generation
    }

    /// Waits until the running shim has applied the last control file.
    pub fn wait_applied(&self) {
        self.wait_stat_at_least("generation", self.generation);
    }

    /// The current stats (empty before the first write).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        fs::read_to_string(&self.stats)
            .map(|t| parse_stats(&t))
            .unwrap_or_default()
    }

    /// One counter (missing = 0).
    pub fn stat(&self, key: &str) -> u64 {
        self.stats().get(key).copied().unwrap_or(0)
    }

    /// Waits (up to [`STATS_TIMEOUT`]) until `key >= min`; returns the full stats then. Blocks
    /// the thread: in async tests use [`Shim::wait_stat`].
    pub fn wait_stat_at_least(&self, key: &str, min: u64) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + STATS_TIMEOUT;
        loop {
            let stats = self.stats();
            if stats.get(key).copied().unwrap_or(0) >= min {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "stats {key} did not reach {min} within {STATS_TIMEOUT:?}; stats:\n{stats:#?}"
            );
            // The shim rewrites the file every 5 ms; this polls a counter, not readiness.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Shim {
    /// [`Shim::wait_stat_at_least`] for async tests: polls without blocking the runtime.
    pub async fn wait_stat(&self, key: &str, min: u64) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + STATS_TIMEOUT;
        loop {
            let stats = self.stats();
            if stats.get(key).copied().unwrap_or(0) >= min {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "stats {key} did not reach {min} within {STATS_TIMEOUT:?}; stats:\n{stats:#?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Shim::wait_applied`] for async tests.
    pub async fn wait_applied_async(&self) {
        self.wait_stat("generation", self.generation).await;
    }

    /// The stats once they have settled: the file is unchanged for 50 ms (the shim rewrites it
    /// within 5 ms of any change). For a final count when the caller knows the calls are over
    /// but not how many there were. Panics after [`STATS_TIMEOUT`].
    pub async fn settled_stats(&self) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + STATS_TIMEOUT;
        let mut last = self.stats();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = self.stats();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= Duration::from_millis(50) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "the shim's stats kept changing for {STATS_TIMEOUT:?}"
            );
        }
    }
}

/// Parses a stats file (`key = value` lines).
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
        .collect()
}
