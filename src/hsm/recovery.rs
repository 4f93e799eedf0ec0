//! Self-healing: single-flight recovery after login- or device-class faults, and the token
//! probe that drives health.
//!
//! One background task performs every recovery, so a burst of failing requests causes one
//! attempt, not one each. Attempts start at least a second apart. While recovering, requests
//! fail fast with UNAVAILABLE. A refused PIN stops recovery for good: tokens lock after a few
//! wrong tries, so only an operator may try again.

use super::error::{Context as _, ErrorClass, HsmError};
use super::{open_epoch, read, token, Epoch, Hsm, Shared};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::UserType;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Minimum time between the starts of two recovery attempts.
const MIN_ATTEMPT_SPACING: Duration = Duration::from_secs(1);

/// How long the probe waits before asking again after an ambiguous answer. SoftHSM 2.6.1
/// answers `C_GetTokenInfo` with `CKR_GENERAL_ERROR` for up to about a millisecond while one
/// process writes objects and another uses the token (measured: 52 of 178,478 calls, bursts
/// under 1 ms); a token that is really gone (E2) keeps answering so.
const AMBIGUOUS_RECHECK: Duration = Duration::from_millis(50);

/// What recovery must do; `Reinit` includes everything `Relogin` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Need {
    /// Log in again and re-resolve every key.
    Relogin,
    /// `C_Finalize`, `C_Initialize`, find the token, log in, re-resolve every key.
    Reinit,
}

/// Counters describing the HSM runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HsmStats {
    /// The current epoch; it goes up by one on every successful recovery.
    pub epoch: u64,
    /// Whether requests are being served.
    pub up: bool,
    /// Sessions checked out.
    pub sessions_in_use: usize,
    /// Sessions open and idle.
    pub sessions_idle: usize,
    /// Recovery attempts started.
    pub recovery_attempts: u64,
    /// Library re-initialisations performed (`C_Finalize` + `C_Initialize`).
    pub reinits: u64,
    /// Whether the token refused the PIN (recovery stopped until an operator acts).
    pub credential_failed: bool,
}

pub(crate) struct Control {
    wanted: Mutex<Option<Need>>,
    wake: Notify,
    healthy: watch::Sender<bool>,
    credential_failed: AtomicBool,
    /// A probe confirming an ambiguous failure is running (at most one at a time).
    confirming: AtomicBool,
    attempts: AtomicU64,
    reinits: AtomicU64,
    probe_interval: Duration,
    /// When the probe loop last finished a round without a hung token call (see
    /// [`Hsm::probe_heartbeat`]).
    heartbeat: Mutex<std::time::Instant>,
}

impl Control {
    pub(crate) fn new(probe_interval: Duration) -> Self {
        Self {
            wanted: Mutex::new(None),
            wake: Notify::new(),
            healthy: watch::Sender::new(true),
            credential_failed: AtomicBool::new(false),
            confirming: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            reinits: AtomicU64::new(0),
            probe_interval,
            heartbeat: Mutex::new(std::time::Instant::now()),
        }
    }

    fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    pub(crate) fn credential_failed(&self) -> bool {
        self.credential_failed.load(Ordering::Acquire)
    }

    pub(crate) fn counters(&self) -> HsmStats {
        HsmStats {
            recovery_attempts: self.attempts.load(Ordering::Relaxed),
            reinits: self.reinits.load(Ordering::Relaxed),
            credential_failed: self.credential_failed(),
            ..HsmStats::default()
        }
    }

    fn take_wanted(&self) -> Option<Need> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Hsm {
    /// Whether the token answers and requests are served; changes are pushed to subscribers.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.shared.recovery.healthy.subscribe()
    }

    /// When the token probe last got an answer (or found recovery in charge). A probe whose
    /// call into the module never returns stops it: only a restart frees a module wedged in a
    /// call, which is what the systemd watchdog is for (`app::watchdog`).
    pub fn probe_heartbeat(&self) -> std::time::Instant {
        *self
            .shared
            .recovery
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for recovery after a failure seen in `epoch`; a no-op when that epoch is already
    /// gone (someone else's recovery replaced it). Requests fail fast from now on.
    pub(crate) fn request_recovery(&self, need: Need, epoch: u64, cause: &HsmError) {
        let shared = &self.shared;
        if read(&shared.epoch).number != epoch {
            return;
        }
        let was_up = shared.up.swap(false, Ordering::AcqRel);
        {
            let mut wanted = shared
                .recovery
                .wanted
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *wanted = Some(wanted.map_or(need, |w| w.max(need)));
        }
        if was_up {
            tracing::warn!(?need, epoch, error = %cause, "token fault; recovering");
        }
        shared.recovery.healthy.send_replace(false);
        shared.recovery.wake.notify_one();
    }

    /// After an ambiguous failure (`CKR_GENERAL_ERROR`, `CKR_FUNCTION_FAILED`) in `epoch`:
    /// inputs were validated, so it may be the token, or just that one call. A probe decides
    /// (`pkcs11-reliability.md` §1.1): recovery starts only if the token does not answer or is
    /// no longer the same token. One such probe runs at a time; failures meanwhile share it.
    pub(crate) fn confirm_fault(&self, epoch: u64, cause: &HsmError) {
        let control = &self.shared.recovery;
        if control.confirming.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(epoch, error = %cause, "ambiguous token failure; probing the token");
        let hsm = self.clone();
        tokio::spawn(async move {
            let probing = hsm.clone();
            let outcome = tokio::task::spawn_blocking(move || probing.probe()).await;
            match outcome {
                Ok(Ok(())) => {
                    tracing::debug!(epoch, "the token answered the probe; no recovery needed");
                }
                Ok(Err(e)) => {
                    let need = match e.class() {
                        Some(ErrorClass::Login) => Need::Relogin,
                        _ => Need::Reinit,
                    };
                    hsm.request_recovery(need, epoch, &e);
                }
                Err(join) => tracing::warn!(error = %join, "token probe task failed"),
            }
            hsm.shared
                .recovery
                .confirming
                .store(false, Ordering::Release);
        });
    }

    /// Runs the recovery loop and the health probe until `stop` is cancelled.
    pub fn spawn_background(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let hsm = self.clone();
        tokio::spawn(async move {
            tokio::join!(hsm.recovery_loop(stop.clone()), hsm.probe_loop(stop));
        })
    }

    async fn recovery_loop(&self, stop: CancellationToken) {
        let control = &self.shared.recovery;
        let mut last_start: Option<tokio::time::Instant> = None;
        loop {
            let mut need = loop {
                if let Some(need) = control.take_wanted() {
                    break need;
                }
                tokio::select! {
                    () = control.wake.notified() => {}
                    () = stop.cancelled() => return,
                }
            };
            loop {
                if let Some(prev) = last_start {
                    let jitter = Duration::from_millis(rand::random_range(0..200));
                    tokio::select! {
                        () = tokio::time::sleep_until(prev + MIN_ATTEMPT_SPACING + jitter) => {}
                        () = stop.cancelled() => return,
                    }
                }
                last_start = Some(tokio::time::Instant::now());
                if let Some(more) = control.take_wanted() {
                    need = need.max(more);
                }
                control.attempts.fetch_add(1, Ordering::Relaxed);
                let hsm = self.clone();
                let outcome = tokio::task::spawn_blocking(move || hsm.attempt(need))
                    .await
                    .unwrap_or_else(|e| Err(HsmError::Worker(e.to_string())));
                match outcome {
                    Ok(epoch) => {
                        tracing::info!(epoch, ?need, "token recovered");
                        control.healthy.send_replace(true);
                        break;
                    }
                    Err(HsmError::Credential(reason)) => {
                        control.credential_failed.store(true, Ordering::Release);
                        tracing::error!(
                            "the token refused the PIN during recovery: {reason}. Serving stops until an operator fixes the PIN and restarts p11kms; the PIN will not be tried again"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(?need, error = %e, "recovery attempt failed; retrying");
                        need = Need::Reinit;
                    }
                }
            }
        }
    }

    /// One recovery attempt. Blocking. Returns the new epoch number.
    fn attempt(&self, need: Need) -> Result<u64, HsmError> {
        let shared = &self.shared;
        if shared.recovery.credential_failed() {
            return Err(HsmError::Credential("a previous login was refused".into()));
        }
        // Exclusive: no PKCS#11 call is in flight while the login or the library changes.
        let _gate = shared.gate.write().unwrap_or_else(|p| p.into_inner());
        let old = Arc::clone(&read(&shared.epoch));
        let epoch = match need {
            Need::Relogin => relogin(shared, &old)?,
            Need::Reinit => reinit(shared, &old)?,
        };
        let specs = read(&shared.specs).clone();
        let refused = shared
            .resolve_into(&epoch, &specs)?
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .count();
        if refused > 0 {
            tracing::warn!(
                refused,
                "some keys could not be re-resolved and are refused"
            );
        }
        let number = epoch.number;
        *shared.epoch.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(epoch);
        shared.up.store(true, Ordering::Release);
        Ok(number)
    }

    async fn probe_loop(&self, stop: CancellationToken) {
        let interval = self.shared.recovery.probe_interval;
        let mut probe: Option<tokio::task::JoinHandle<Result<(), HsmError>>> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
            if !self.shared.up.load(Ordering::Acquire) {
                // Recovery owns the token now and retries on its own: the process is not stuck.
                self.shared.recovery.beat();
                continue;
            }
            // A probe still running means the token is hanging; never stack another one.
            if let Some(running) = &probe {
                if !running.is_finished() {
                    self.shared.recovery.healthy.send_replace(false);
                    continue;
                }
            }
            let hsm = self.clone();
            let number = read(&self.shared.epoch).number;
            let mut task = tokio::task::spawn_blocking(move || hsm.probe());
            match tokio::time::timeout(interval, &mut task).await {
                Ok(Ok(Ok(()))) => {
                    self.shared.recovery.healthy.send_replace(true);
                    self.shared.recovery.beat();
                    probe = None;
                }
                Ok(Ok(Err(e))) => {
                    probe = None;
                    self.shared.recovery.beat();
                    let need = match e.class() {
                        Some(ErrorClass::Login) => Need::Relogin,
                        _ => Need::Reinit,
                    };
                    self.request_recovery(need, number, &e);
                }
                Ok(Err(join)) => {
                    probe = None;
                    tracing::warn!(error = %join, "token probe task failed");
                }
                Err(_) => {
                    tracing::warn!(?interval, "the token did not answer the probe in time");
                    self.shared.recovery.healthy.send_replace(false);
                    probe = Some(task);
                }
            }
        }
    }

    /// Asks the token for its info and checks it is still the same token; an ambiguous answer
    /// is asked again once before it counts. Blocking.
    fn probe(&self) -> Result<(), HsmError> {
        match self.probe_once() {
            Err(e) if e.class() == Some(ErrorClass::Ambiguous) => {
                tracing::debug!(error = %e, "ambiguous answer to the token probe; asking again");
                std::thread::sleep(AMBIGUOUS_RECHECK);
                self.probe_once()
            }
            other => other,
        }
    }

    fn probe_once(&self) -> Result<(), HsmError> {
        let shared = &self.shared;
        let _gate = read(&shared.gate);
        let epoch = Arc::clone(&read(&shared.epoch));
        check_same_token(shared, &epoch)
    }
}

fn check_same_token(shared: &Shared, epoch: &Epoch) -> Result<(), HsmError> {
    let info = shared
        .pkcs11
        .get_token_info(epoch.slot)
        .context("C_GetTokenInfo")?;
    if info.serial_number().trim_end() != epoch.token.serial {
        return Err(HsmError::TokenSelection(format!(
            "the slot now holds token serial {:?}, not {:?}",
            info.serial_number().trim_end(),
            epoch.token.serial
        )));
    }
    Ok(())
}

/// Logs in again on the same library; handles are re-found in the new epoch. Falls back to a
/// re-initialisation (by failing) when the token itself does not answer.
fn relogin(shared: &Shared, old: &Epoch) -> Result<Epoch, HsmError> {
    check_same_token(shared, old)?;
    let anchor = old.anchor.lock().unwrap_or_else(|p| p.into_inner()).take();
    let anchor = match anchor {
        Some(a) => a,
        None => shared
            .pkcs11
            .open_rw_session(old.slot)
            .context("C_OpenSession")?,
    };
    match anchor.login(UserType::User, Some(&shared.pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(rv, _)) if super::classify(rv) == ErrorClass::Credential => {
            return Err(HsmError::Credential(format!("C_Login returned {rv}")));
        }
        Err(e) => return Err(HsmError::call("C_Login", e)),
    }
    Ok(Epoch {
        number: old.number + 1,
        generation: old.generation,
        slot: old.slot,
        token: old.token.clone(),
        anchor: Mutex::new(Some(anchor)),
        keys: Default::default(),
    })
}

/// Finalises and re-initialises the library, then finds the token again by label or serial
/// (its slot may have changed) and logs in.
fn reinit(shared: &Shared, old: &Epoch) -> Result<Epoch, HsmError> {
    shared.recovery.reinits.fetch_add(1, Ordering::Relaxed);
    let generation = old.generation + 1;
    // C_Finalize closes every session; their handles must never be closed again by us.
    shared.pool.begin_generation(generation);
    if let Some(anchor) = old.anchor.lock().unwrap_or_else(|p| p.into_inner()).take() {
        std::mem::forget(anchor);
    }
    match shared.pkcs11.clone().finalize() {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
        Err(e) => tracing::warn!(error = %e, "C_Finalize failed; initialising anyway"),
    }
    token::initialize(&shared.pkcs11)?;
    open_epoch(
        &shared.pkcs11,
        &shared.selector,
        &shared.pin,
        old.number + 1,
        generation,
    )
}
