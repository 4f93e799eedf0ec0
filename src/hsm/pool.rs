//! The bounded session pool. Every PKCS#11 call of a request runs on one of at most
//! `capacity` session threads, each holding one session exclusively for its whole
//! `C_SignInit`→`C_Sign` unit; idle sessions wait for reuse.
//!
//! Requests queue their work for the session threads instead of taking a permit and spawning a
//! blocking task: under load a thread that finishes one call takes the next queued one at once,
//! without going to sleep and being woken again (`p11kms bench` measured the futex wake-ups and
//! context switches of the permit-and-`spawn_blocking` hand-off as the largest CPU cost outside
//! the token; see BENCHMARKS.md). The semantics are the permit's:
//!
//! * waiting for a thread is bounded by the pool wait and by the request's deadline; work still
//!   queued then is abandoned and never runs;
//! * once started, a call cannot be interrupted: past the deadline the caller gets
//!   `DeadlineExceeded` while the thread keeps its session until the call returns, so a
//!   cancelled request never gives a session back mid-call.

use cryptoki::session::Session;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::HsmError;
use std::sync::Arc;

struct Pooled {
    generation: u64,
    session: Session,
}

/// A bounded pool of logged-in sessions and the threads that use them.
pub(crate) struct SessionPool {
    dispatch: Arc<Dispatch>,
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
            dispatch: Arc::new(Dispatch {
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
                running: AtomicUsize::new(0),
                capacity,
            }),
            idle: Mutex::new(Vec::with_capacity(capacity)),
            generation: AtomicU64::new(generation),
            capacity,
            wait,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sessions currently in use by a call.
    pub(crate) fn in_use(&self) -> usize {
        self.dispatch.running.load(Ordering::Relaxed)
    }

    /// Sessions open and idle.
    pub(crate) fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` on a session thread and returns its result. Waiting for a thread is bounded
    /// by the pool wait and by `deadline`; once `work` has started, only by `deadline` (the call
    /// goes on, holding its session, and its result is dropped).
    pub(crate) async fn execute<R, F>(
        &self,
        deadline: Option<Instant>,
        work: F,
    ) -> Result<R, HsmError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let ticket = Arc::new(AtomicU8::new(QUEUED));
        let (tx, rx) = oneshot::channel();
        // One waiter until a thread starts the work or the caller abandons it.
        crate::metrics::pool_waiters(1.0);
        self.dispatch
            .submit(Job {
                ticket: Arc::clone(&ticket),
                work: Box::new(move || {
                    let _ = tx.send(work());
                }),
            })
            .inspect_err(|_| crate::metrics::pool_waiters(-1.0))?;
        // Dropped when the caller is cancelled or gives up: queued work is then never run.
        let _abandon = Abandon(&ticket);
        let wait_until = Instant::now() + self.wait;
        let limit = deadline.map_or(wait_until, |d| d.min(wait_until));
        tokio::pin!(rx);
        let lost = |_| self.dispatch.lost();
        match tokio::time::timeout_at(limit, &mut rx).await {
            Ok(done) => done.map_err(lost),
            Err(_) if abandon(&ticket) => Err(if deadline.is_some_and(|d| d <= wait_until) {
                HsmError::DeadlineExceeded
            } else {
                crate::metrics::pool_wait_timeout();
                HsmError::PoolExhausted(self.wait)
            }),
            // Started: it finishes whatever the caller does; the deadline bounds the wait.
            Err(_) => match deadline {
                Some(d) => tokio::time::timeout_at(d, rx)
                    .await
                    .map_err(|_| HsmError::DeadlineExceeded)?
                    .map_err(lost),
                None => rx.await.map_err(lost),
            },
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

    /// Refuses new work: queued and future work fails at once with `ShuttingDown`. Running
    /// calls finish; idle session threads exit.
    pub(crate) fn close(&self) {
        self.dispatch.close();
    }
}

impl Drop for SessionPool {
    fn drop(&mut self) {
        self.dispatch.close();
    }
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const ABANDONED: u8 = 2;

/// Marks queued work as abandoned; false if a thread has already started it.
fn abandon(ticket: &AtomicU8) -> bool {
    let abandoned = ticket
        .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if abandoned {
        crate::metrics::pool_waiters(-1.0);
    }
    abandoned
}

struct Abandon<'a>(&'a AtomicU8);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        abandon(self.0);
    }
}

/// Work for a session thread; it sends its own result.
struct Job {
    ticket: Arc<AtomicU8>,
    work: Box<dyn FnOnce() + Send>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads started and not exited.
    threads: usize,
    /// Threads waiting for work, and how many of them have been woken already.
    waiting: usize,
    woken: usize,
    closed: bool,
}

/// The work queue and its threads: started on demand, up to `capacity`, and kept.
struct Dispatch {
    queue: Mutex<Queue>,
    work: Condvar,
    running: AtomicUsize,
    capacity: usize,
}

impl Dispatch {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(self: &Arc<Self>, job: Job) -> Result<(), HsmError> {
        let mut q = self.lock();
        if q.closed {
            return Err(HsmError::ShuttingDown);
        }
        q.jobs.push_back(job);
        if q.waiting > q.woken {
            // A waiting thread takes it. With every thread busy nobody is woken at all: the
            // first to finish its call takes the job without sleeping.
            q.woken += 1;
            self.work.notify_one();
        } else if q.threads < self.capacity {
            q.threads += 1;
            let dispatch = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("p11kms-session".into())
                .spawn(move || dispatch.serve());
            if let Err(e) = spawned {
                q.threads -= 1;
                tracing::error!(error = %e, "cannot start a session thread; the request waits for a running one");
            }
        }
        Ok(())
    }

    /// A session thread: runs queued work until the pool closes.
    fn serve(&self) {
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    if q.closed {
                        q.threads -= 1;
                        return;
                    }
                    q.waiting += 1;
                    q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.waiting -= 1;
                    q.woken = q.woken.saturating_sub(1);
                }
            };
            if job
                .ticket
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue; // its caller gave up while it was queued
            }
            crate::metrics::pool_waiters(-1.0);
            self.running.fetch_add(1, Ordering::Relaxed);
            // A panicking call drops its result sender, so its caller gets a `Worker` error;
            // the thread lives on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work));
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn close(&self) {
        let abandoned = {
            let mut q = self.lock();
            q.closed = true;
            std::mem::take(&mut q.jobs)
        };
        for job in &abandoned {
            abandon(&job.ticket);
        }
        // Dropping the jobs drops their result senders: their callers get `ShuttingDown`.
        drop(abandoned);
        self.work.notify_all();
    }

    /// Why a result never came.
    fn lost(&self) -> HsmError {
        if self.lock().closed {
            HsmError::ShuttingDown
        } else {
            HsmError::Worker("a PKCS#11 call panicked".into())
        }
    }
}

fn forget_stale(p: Pooled) {
    tracing::debug!(
        generation = p.generation,
        "forgetting a session of an old library generation"
    );
    std::mem::forget(p.session);
}
