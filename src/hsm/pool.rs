//! The bounded session pool: permits bound how many sessions are in use, and idle sessions wait
//! for reuse. Each request holds one session exclusively for its whole `C_SignInit`→`C_Sign`
//! unit; the permit travels with the blocking call, so a cancelled request does not give its
//! session back until the call has returned.

use cryptoki::session::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::HsmError;
use std::sync::Arc;

struct Pooled {
    generation: u64,
    session: Session,
}

/// A bounded pool of logged-in sessions.
pub(crate) struct SessionPool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Pooled>>,
    /// The library generation (one per `C_Initialize`) whose sessions may be pooled. Sessions
    /// of an older generation are never closed by handle: after a re-initialisation the same
    /// handle number may name a session that now belongs to someone else.
    generation: AtomicU64,
    capacity: usize,
    wait: Duration,
}

impl SessionPool {
    pub(crate) fn new(capacity: usize, wait: Duration, generation: u64) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            idle: Mutex::new(Vec::with_capacity(capacity)),
            generation: AtomicU64::new(generation),
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

    /// Sessions open and idle.
    pub(crate) fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a permit, bounded by the pool wait and by `deadline`.
    pub(crate) async fn acquire(
        &self,
        deadline: Option<Instant>,
    ) -> Result<OwnedSemaphorePermit, HsmError> {
        let wait_until = Instant::now() + self.wait;
        let limit = deadline.map_or(wait_until, |d| d.min(wait_until));
        match tokio::time::timeout_at(limit, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(HsmError::ShuttingDown),
            Err(_) if deadline.is_some_and(|d| d <= wait_until) => Err(HsmError::DeadlineExceeded),
            Err(_) => Err(HsmError::PoolExhausted(self.wait)),
        }
    }

    /// An idle session of `generation`, if any. Call under the library gate.
    pub(crate) fn checkout(&self, generation: u64) -> Option<Session> {
        let mut idle = self.lock();
        while let Some(p) = idle.pop() {
            if p.generation == generation {
                return Some(p.session);
            }
            forget_stale(p);
        }
        None
    }

    /// Returns a healthy session. Call under the library gate.
    pub(crate) fn checkin(&self, generation: u64, session: Session) {
        if generation == self.generation.load(Ordering::Acquire) {
            self.lock().push(Pooled {
                generation,
                session,
            });
        } else {
            forget_stale(Pooled {
                generation,
                session,
            });
        }
    }

    /// Drops a broken session, closing it only if its handle is still ours. Call under the gate.
    pub(crate) fn discard(&self, generation: u64, session: Session) {
        if generation == self.generation.load(Ordering::Acquire) {
            drop(session);
        } else {
            forget_stale(Pooled {
                generation,
                session,
            });
        }
    }

    /// Starts a new library generation: idle sessions of the old one are forgotten, not closed
    /// (`C_Finalize` closes them). Call under the exclusive gate.
    pub(crate) fn begin_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        for p in std::mem::take(&mut *self.lock()) {
            forget_stale(p);
        }
    }

    /// Closes every idle session. Call under the gate, before `C_Finalize`.
    pub(crate) fn close_idle(&self) {
        drop(std::mem::take(&mut *self.lock()));
    }

    /// Refuses new work: waiting and future acquisitions fail at once.
    pub(crate) fn close(&self) {
        self.permits.close();
    }
}

fn forget_stale(p: Pooled) {
    tracing::debug!(
        generation = p.generation,
        "forgetting a session of an old library generation"
    );
    std::mem::forget(p.session);
}
