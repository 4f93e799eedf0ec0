//! Single-flight, rate-limited re-scans on a registry miss.
//!
//! A lookup that misses asks for a scan that *starts after* its request and waits for it to
//! finish. Requests that arrive while a scan is being prepared or running share the next one,
//! so a burst of misses (a client probing unknown ids, or many clients using a key that was just
//! created elsewhere) causes one scan. The refresher starts forced scans at most once per
//! [`MIN_FORCED_SPACING`]; each scan first reads the state nonce and only walks the metadata
//! objects when the nonce changed, so even a steady stream of misses costs one small read per
//! spacing.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Minimum time between the starts of two forced scans.
pub(crate) const MIN_FORCED_SPACING: Duration = Duration::from_millis(250);
/// Longest a lookup waits for its re-scan when the request has no earlier deadline.
const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Rescan {
    /// Scans started so far.
    started: Mutex<u64>,
    /// Scans finished so far (a scan's number once it is done).
    finished: watch::Sender<u64>,
    wake: Notify,
}

impl Rescan {
    pub(crate) fn new() -> Self {
        Self {
            started: Mutex::new(0),
            finished: watch::Sender::new(0),
            wake: Notify::new(),
        }
    }

    /// Asks for a scan that starts after this call and waits until it has finished, or until
    /// `deadline` (at most [`MAX_WAIT`] from now).
    pub(crate) async fn request_and_wait(&self, deadline: Option<Instant>) {
        let target = *self.started.lock().unwrap_or_else(|p| p.into_inner()) + 1;
        let mut finished = self.finished.subscribe();
        self.wake.notify_one();
        let limit = Instant::now() + MAX_WAIT;
        let limit = deadline.map_or(limit, |d| d.min(limit));
        let _ = tokio::time::timeout_at(limit, finished.wait_for(|&n| n >= target)).await;
    }

    /// Resolves when a forced scan was requested.
    pub(crate) async fn requested(&self) {
        self.wake.notified().await;
    }

    /// Marks the start of a scan; returns its number.
    pub(crate) fn begin(&self) -> u64 {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        *started += 1;
        *started
    }

    /// Marks scan `n` finished (successfully or not: waiters then look again either way).
    pub(crate) fn end(&self, n: u64) {
        self.finished.send_modify(|f| *f = (*f).max(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_misses_share_one_scan_that_starts_after_them() {
        let rescan = Arc::new(Rescan::new());
        // A scan already running when the misses arrive does not count for them.
        let running = rescan.begin();
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let r = Arc::clone(&rescan);
                tokio::spawn(async move { r.request_and_wait(None).await })
            })
            .collect();
        tokio::task::yield_now().await;
        rescan.end(running);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(waiters.iter().all(|w| !w.is_finished()));
        rescan.requested().await;
        let n = rescan.begin();
        rescan.end(n);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(n, 2, "one scan served all ten misses");
    }
}
