//! Process-global shim state: the active rules, counters, the session table, the control-file
//! watcher and the stats writer. Nothing in here touches raw pointers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use cryptoki_sys::{
    CKR_OK, CKR_OPERATION_ACTIVE, CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CK_RV,
    CK_SESSION_HANDLE, CK_SLOT_ID,
};

use crate::control::{self, Rules};
use crate::funcs::Func;

/// Env var: path of the control file (absent file = no faults).
pub(crate) const ENV_CONTROL: &str = "P11KMS_FAULTSHIM_CONTROL";
/// Env var: path of the stats file (optional).
pub(crate) const ENV_STATS: &str = "P11KMS_FAULTSHIM_STATS";

/// How often the background thread polls the control file and refreshes the stats file.
const POLL: Duration = Duration::from_millis(5);

/// Functions whose use of a poisoned session handle is counted in `poisoned_session_reuse`.
const REUSE_CHECKED: [Func; 4] = [
    Func::C_SignInit,
    Func::C_Sign,
    Func::C_FindObjectsInit,
    Func::C_GetAttributeValue,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sessions opened through the shim, and per-handle bookkeeping.
#[derive(Debug, Default)]
struct Sessions {
    /// Open session handle → slot it was opened on.
    open: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    /// `C_OpenSession` calls in flight that passed the `max_sessions` check.
    reserved: usize,
    /// Handle → number of calls currently inside the shim on it.
    in_use: HashMap<CK_SESSION_HANDLE, u32>,
    /// Handles that saw a session/operation-state error or an injected sign fault.
    poisoned: HashSet<CK_SESSION_HANDLE>,
}

impl Sessions {
    fn forget(&mut self, handle: CK_SESSION_HANDLE) {
        self.open.remove(&handle);
        self.poisoned.remove(&handle);
    }
}

/// Identity of one version of the control file (`None` = file absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino_ctime: (u64, i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = fs::metadata(path).ok()?;
        #[cfg(unix)]
        let ino_ctime = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        #[cfg(not(unix))]
        let ino_ctime = (0, 0, 0);
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            ino_ctime,
        })
    }
}

#[derive(Debug, Default)]
struct Watch {
    path: Option<PathBuf>,
    /// `None` until something was loaded; then the stamp of what was loaded.
    loaded: Option<Option<Stamp>>,
}

#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct StatsOut {
    path: Option<PathBuf>,
    last_written: Option<String>,
}

/// All process-global shim state.
#[derive(Debug)]
pub(crate) struct Shim {
    rules: RwLock<Arc<Rules>>,
    calls: Vec<AtomicU64>,
    faults: Vec<AtomicU64>,
    corrupted: AtomicU64,
    initialize_calls: AtomicU64,
    initialize_without_os_locking: AtomicU64,
    login_calls: AtomicU64,
    login_failures: AtomicU64,
    poisoned_session_reuse: AtomicU64,
    concurrent_session_use: AtomicU64,
    sessions: Mutex<Sessions>,
    watch: Mutex<Watch>,
    stats: Mutex<StatsOut>,
    worker: Mutex<Option<Worker>>,
    reported: Mutex<HashSet<String>>,
}

static SHIM: LazyLock<Shim> = LazyLock::new(Shim::new);

/// The global shim state.
pub(crate) fn shim() -> &'static Shim {
    &SHIM
}

/// One call passing through the shim, between [`Shim::enter`] and [`Shim::leave`].
#[derive(Debug)]
pub(crate) struct Call {
    func: Func,
    session: Option<CK_SESSION_HANDLE>,
    /// The rules in force when the call was admitted.
    pub(crate) rules: Arc<Rules>,
    /// The CKR to return instead of calling the real module, if any.
    pub(crate) injected: Option<CK_RV>,
}

impl Shim {
    fn new() -> Shim {
        let counters = || (0..Func::COUNT).map(|_| AtomicU64::new(0)).collect();
        Shim {
            rules: RwLock::new(Arc::new(Rules::default())),
            calls: counters(),
            faults: counters(),
            corrupted: AtomicU64::new(0),
            initialize_calls: AtomicU64::new(0),
            initialize_without_os_locking: AtomicU64::new(0),
            login_calls: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
            poisoned_session_reuse: AtomicU64::new(0),
            concurrent_session_use: AtomicU64::new(0),
            sessions: Mutex::default(),
            watch: Mutex::default(),
            stats: Mutex::default(),
            worker: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    /// Prints `msg` on stderr the first time it is seen.
    pub(crate) fn report_once(&self, msg: &str) {
        if lock(&self.reported).insert(msg.to_owned()) {
            eprintln!("p11kms-faultshim: {msg}");
        }
    }

    /// The rules currently in force.
    pub(crate) fn rules(&self) -> Arc<Rules> {
        Arc::clone(&self.rules.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Counts a call that does not go through the enter/leave protocol.
    pub(crate) fn count_call(&self, func: Func) {
        self.calls[func.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Admits a call: counts it, tracks session use, applies the delay, decides on a fault.
    pub(crate) fn enter(&self, func: Func, session: Option<CK_SESSION_HANDLE>) -> Call {
        self.count_call(func);
        if let Some(handle) = session {
            let mut s = lock(&self.sessions);
            let users = s.in_use.entry(handle).or_insert(0);
            if *users > 0 {
                self.concurrent_session_use.fetch_add(1, Ordering::Relaxed);
            }
            *users += 1;
            if REUSE_CHECKED.contains(&func) && s.poisoned.contains(&handle) {
                self.poisoned_session_reuse.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.delay(func);
        let rules = self.rules();
        let injected = rules.decide_fault(func);
        if injected.is_some() {
            self.count_fault(func);
        }
        Call {
            func,
            session,
            rules,
            injected,
        }
    }

    /// Finishes a call admitted by [`Shim::enter`]; returns `rv` unchanged.
    pub(crate) fn leave(&self, call: Call, rv: CK_RV) -> CK_RV {
        let Some(handle) = call.session else {
            return rv;
        };
        let mut s = lock(&self.sessions);
        if let Some(users) = s.in_use.get_mut(&handle) {
            *users = users.saturating_sub(1);
            if *users == 0 {
                s.in_use.remove(&handle);
            }
        }
        if call.func == Func::C_CloseSession {
            // The real module closed it (or it was already gone). An injected close fault leaves
            // the real session open, so it stays tracked (and poisoned, if it was).
            let closed = matches!(rv, CKR_OK | CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED);
            if call.injected.is_none() && closed {
                s.forget(handle);
            }
            return rv;
        }
        let session_error = matches!(
            rv,
            CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED | CKR_OPERATION_ACTIVE
        );
        let sign_fault =
            call.injected.is_some() && matches!(call.func, Func::C_Sign | Func::C_SignInit);
        if session_error || sign_fault {
            s.poisoned.insert(handle);
        }
        rv
    }

    /// Counts an injected fault on `func`.
    pub(crate) fn count_fault(&self, func: Func) {
        self.faults[func.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps for `delay_ms.<func>`. The delay is re-read while sleeping, so lifting or
    /// shortening it in the control file releases calls that are already waiting.
    fn delay(&self, func: Func) {
        let start = Instant::now();
        loop {
            let Some(ms) = self.rules().rule(func).delay_ms else {
                return;
            };
            let remaining = Duration::from_millis(ms).saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return;
            }
            std::thread::sleep(remaining.min(POLL));
        }
    }

    /// Reserves room for one more session under `max_sessions`; false if the limit is reached.
    pub(crate) fn reserve_session(&self, rules: &Rules) -> bool {
        let mut s = lock(&self.sessions);
        if let Some(max) = rules.max_sessions.filter(|m| *m > 0) {
            let in_use = u64::try_from(s.open.len() + s.reserved).unwrap_or(u64::MAX);
            if in_use >= max {
                return false;
            }
        }
        s.reserved += 1;
        true
    }

    /// Completes a reservation made by [`Shim::reserve_session`].
    pub(crate) fn session_opened(&self, slot: CK_SLOT_ID, handle: Option<CK_SESSION_HANDLE>) {
        let mut s = lock(&self.sessions);
        s.reserved = s.reserved.saturating_sub(1);
        if let Some(handle) = handle {
            s.poisoned.remove(&handle);
            s.open.insert(handle, slot);
        }
    }

    /// `C_CloseAllSessions(slot)` succeeded.
    pub(crate) fn all_sessions_closed(&self, slot: CK_SLOT_ID) {
        let mut s = lock(&self.sessions);
        let gone: Vec<_> = s
            .open
            .iter()
            .filter(|(_, sl)| **sl == slot)
            .map(|(h, _)| *h)
            .collect();
        for handle in gone {
            s.forget(handle);
        }
    }

    /// `C_Finalize` succeeded: every session is gone.
    pub(crate) fn finalized(&self) {
        let mut s = lock(&self.sessions);
        s.open.clear();
        s.poisoned.clear();
    }

    /// Counts a `C_Initialize` call.
    pub(crate) fn initialize_called(&self, os_locking: bool) {
        self.initialize_calls.fetch_add(1, Ordering::Relaxed);
        if !os_locking {
            self.initialize_without_os_locking
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a `C_Login` call and its outcome (the PIN is never looked at).
    pub(crate) fn login_done(&self, rv: CK_RV) {
        self.login_calls.fetch_add(1, Ordering::Relaxed);
        if rv != CKR_OK {
            self.login_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a corrupted signature.
    pub(crate) fn corrupted_one(&self) {
        self.corrupted.fetch_add(1, Ordering::Relaxed);
    }

    /// Re-reads the control/stats paths from the environment.
    pub(crate) fn refresh_paths(&self) {
        let control = std::env::var_os(ENV_CONTROL).map(PathBuf::from);
        {
            let mut w = lock(&self.watch);
            if w.path != control {
                w.path = control;
                w.loaded = None;
            }
        }
        let stats = std::env::var_os(ENV_STATS).map(PathBuf::from);
        let mut out = lock(&self.stats);
        if out.path != stats {
            out.path = stats;
            out.last_written = None;
        }
    }

    /// Reloads the control file if it changed (or was never loaded). New rules get fresh counters.
    pub(crate) fn reload_if_changed(&self) {
        let mut w = lock(&self.watch);
        let stamp = w.path.as_deref().and_then(Stamp::of);
        if w.loaded.as_ref() == Some(&stamp) {
            return;
        }
        let text = match (&w.path, &stamp) {
            (Some(path), Some(_)) => match fs::read_to_string(path) {
                Ok(text) => Some(text),
                Err(e) => {
                    self.report_once(&format!("cannot read control file {}: {e}", path.display()));
                    // Leave `loaded` alone so the next poll tries again.
                    return;
                }
            },
            _ => None,
        };
        let rules = match text {
            Some(text) => {
                let (rules, problems) = control::parse(&text);
                for p in problems {
                    let path = w.path.as_deref().map(Path::display);
                    self.report_once(&format!(
                        "control file {}: {p} (ignored)",
                        path.map(|d| d.to_string()).unwrap_or_default()
                    ));
                }
                rules
            }
            None => Rules::default(),
        };
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        w.loaded = Some(stamp);
    }

    /// Renders the stats file contents (sorted `key = value` lines).
    pub(crate) fn render_stats(&self) -> String {
        let mut map: BTreeMap<String, u64> = BTreeMap::new();
        for func in Func::ALL {
            let calls = self.calls[func.index()].load(Ordering::Relaxed);
            if calls > 0 {
                map.insert(format!("calls.{}", func.name()), calls);
            }
            let faults = self.faults[func.index()].load(Ordering::Relaxed);
            if faults > 0 {
                map.insert(format!("faults.{}", func.name()), faults);
            }
        }
        let open = u64::try_from(lock(&self.sessions).open.len()).unwrap_or(u64::MAX);
        let scalars = [
            ("open_sessions", open),
            ("corrupted", self.corrupted.load(Ordering::Relaxed)),
            (
                "initialize_calls",
                self.initialize_calls.load(Ordering::Relaxed),
            ),
            (
                "initialize_without_os_locking",
                self.initialize_without_os_locking.load(Ordering::Relaxed),
            ),
            ("login_calls", self.login_calls.load(Ordering::Relaxed)),
            (
                "login_failures",
                self.login_failures.load(Ordering::Relaxed),
            ),
            (
                "poisoned_session_reuse",
                self.poisoned_session_reuse.load(Ordering::Relaxed),
            ),
            (
                "concurrent_session_use",
                self.concurrent_session_use.load(Ordering::Relaxed),
            ),
            ("generation", self.rules().generation),
        ];
        for (k, v) in scalars {
            map.insert(k.to_owned(), v);
        }
        let mut out = String::new();
        for (k, v) in map {
            let _ = writeln!(out, "{k} = {v}");
        }
        out
    }

    /// Writes the stats file atomically if its contents changed (or `force`).
    pub(crate) fn write_stats(&self, force: bool) {
        let mut out = lock(&self.stats);
        let Some(path) = out.path.clone() else {
            return;
        };
        let text = self.render_stats();
        if !force && out.last_written.as_deref() == Some(text.as_str()) {
            return;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = fs::write(&tmp, &text).and_then(|()| fs::rename(&tmp, &path));
        match result {
            Ok(()) => out.last_written = Some(text),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                self.report_once(&format!("cannot write stats file {}: {e}", path.display()));
            }
        }
    }

    /// Starts the control/stats thread if it is not running (and there is a file to watch or
    /// write).
    pub(crate) fn start_worker(&'static self) {
        let configured = lock(&self.watch).path.is_some() || lock(&self.stats).path.is_some();
        if !configured {
            return;
        }
        let mut worker = lock(&self.worker);
        if worker.as_ref().is_some_and(|w| !w.handle.is_finished()) {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("p11kms-faultshim".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    self.reload_if_changed();
                    self.write_stats(false);
                    std::thread::sleep(POLL);
                }
            });
        match spawned {
            Ok(handle) => *worker = Some(Worker { stop, handle }),
            Err(e) => self.report_once(&format!("cannot start the control thread: {e}")),
        }
    }

    /// Stops the control/stats thread (if running) and waits for it.
    pub(crate) fn stop_worker(&self) {
        let worker = lock(&self.worker).take();
        if let Some(w) = worker {
            w.stop.store(true, Ordering::SeqCst);
            if w.handle.join().is_err() {
                self.report_once("the control thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_sorted_and_complete() {
        let s = shim();
        s.count_call(Func::C_Sign);
        s.count_fault(Func::C_Sign);
        let text = s.render_stats();
        let keys: Vec<&str> = text
            .lines()
            .map(|l| l.split(" = ").next().unwrap_or(""))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        for k in [
            "calls.C_Sign",
            "faults.C_Sign",
            "open_sessions",
            "corrupted",
            "initialize_calls",
            "initialize_without_os_locking",
            "login_calls",
            "login_failures",
            "poisoned_session_reuse",
            "concurrent_session_use",
            "generation",
        ] {
            assert!(keys.contains(&k), "{k} missing from {text}");
        }
    }

    #[test]
    fn session_limit_reservations() {
        let s = Shim::new();
        let (rules, _) = control::parse("max_sessions = 2\n");
        assert!(s.reserve_session(&rules));
        assert!(s.reserve_session(&rules));
        assert!(!s.reserve_session(&rules));
        s.session_opened(1, Some(10));
        s.session_opened(1, None);
        assert!(s.reserve_session(&rules));
        s.session_opened(2, Some(11));
        assert!(!s.reserve_session(&rules));
        s.all_sessions_closed(1);
        assert!(s.reserve_session(&rules));
    }
}
