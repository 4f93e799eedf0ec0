//! The bounded session pool. Each request takes one session exclusively for its whole
//! `C_SignInit`→`C_Sign` unit, on a blocking thread, and gives it back only when the call has
//! returned — even if the request was cancelled or timed out meanwhile.

use super::error::{ErrorClass, HsmError};
use super::Epoch;
use cryptoki::session::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

struct Pooled {
    epoch: u64,
    session: Session,
}

/// Idle sessions plus the epoch they must belong to.
struct Idle {
    sessions: Mutex<Vec<Pooled>>,
    /// Sessions from another epoch are never closed by handle: after a re-initialisation the
    /// same handle number may name a session that now belongs to someone else.
    current_epoch: AtomicU64,
}

impl Idle {
    fn checkout(&self, epoch: u64) -> Option<Session> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(p) = sessions.pop() {
            if p.epoch == epoch {
                return Some(p.session);
            }
            forget_stale(p);
        }
        None
    }

    fn checkin(&self, epoch: u64, session: Session) {
        if epoch == self.current_epoch.load(Ordering::Acquire) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Pooled { epoch, session });
        } else {
            forget_stale(Pooled { epoch, session });
        }
    }

    fn discard(&self, epoch: u64, session: Session) {
        if epoch == self.current_epoch.load(Ordering::Acquire) {
            drop(session); // C_CloseSession on a handle that is still ours
        } else {
            forget_stale(Pooled { epoch, session });
        }
    }
}

fn forget_stale(p: Pooled) {
    tracing::debug!(
        epoch = p.epoch,
        "forgetting a session from an old token epoch"
    );
    std::mem::forget(p.session);
}

/// A bounded pool of logged-in sessions.
pub(crate) struct SessionPool {
    permits: Arc<Semaphore>,
    idle: Arc<Idle>,
    capacity: usize,
    wait: Duration,
}

impl SessionPool {
    pub(crate) fn new(capacity: usize, wait: Duration, epoch: u64) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            idle: Arc::new(Idle {
                sessions: Mutex::new(Vec::with_capacity(capacity)),
                current_epoch: AtomicU64::new(epoch),
            }),
            capacity,
            wait,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sessions currently checked out.
    pub(crate) fn in_use(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Closes every idle session (they belong to the current epoch).
    pub(crate) fn close_idle(&self) {
        let drained: Vec<Pooled> =
            std::mem::take(&mut *self.idle.sessions.lock().unwrap_or_else(|p| p.into_inner()));
        drop(drained);
    }

    /// Refuses new work: waiting and future requests fail at once.
    pub(crate) fn close(&self) {
        self.permits.close();
    }

    /// Runs `op` on a pooled session on a blocking thread.
    ///
    /// Waiting for a session is bounded by the pool wait and by `deadline`; the blocking call
    /// itself cannot be cancelled, so past `deadline` the caller gets `DeadlineExceeded` while the
    /// session stays out of the pool until the call returns.
    pub(crate) async fn run<R, F>(
        &self,
        epoch: Arc<Epoch>,
        deadline: Option<Instant>,
        op: F,
    ) -> Result<R, HsmError>
    where
        R: Send + 'static,
        F: FnOnce(&Session, &Epoch) -> Result<R, HsmError> + Send + 'static,
    {
        let wait_until = Instant::now() + self.wait;
        let limit = deadline.map_or(wait_until, |d| d.min(wait_until));
        let permit =
            match tokio::time::timeout_at(limit, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => return Err(HsmError::ShuttingDown),
                Err(_) if deadline.is_some_and(|d| d <= wait_until) => {
                    return Err(HsmError::DeadlineExceeded)
                }
                Err(_) => return Err(HsmError::PoolExhausted(self.wait)),
            };

        let idle = Arc::clone(&self.idle);
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _entered = span.enter();
            let session = match idle.checkout(epoch.number) {
                Some(s) => s,
                None => epoch.open_session()?,
            };
            let result = op(&session, &epoch);
            match &result {
                Err(e) if e.class().is_some_and(ErrorClass::poisons_session) => {
                    tracing::debug!(error = %e, "discarding a session after a session-class error");
                    idle.discard(epoch.number, session);
                }
                _ => idle.checkin(epoch.number, session),
            }
            result
        });
        let joined = match deadline {
            Some(d) => tokio::time::timeout_at(d, task)
                .await
                .map_err(|_| HsmError::DeadlineExceeded)?,
            None => task.await,
        };
        joined.map_err(|e| HsmError::Worker(e.to_string()))?
    }
}
