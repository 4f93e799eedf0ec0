//! How late this machine runs timers right now: the slack a deadline check may add to its
//! configured tolerance, measured in the same run instead of tuned on a quiet machine.
//!
//! [`Lateness::start`] runs a task that sleeps [`TICK`] over and over and keeps the largest
//! overrun. What delays it (other processes on the CPUs, a CPU hog, a busy runtime) delays the
//! daemon's timers and the test's clock reads alike, so a check of "closed at the timeout" or
//! "answered at the deadline" allows [`Lateness::slack`] on top of what it is testing. On a quiet
//! machine that is about a millisecond and the check keeps its precision; on a loaded one it
//! grows with the load instead of failing by chance.
//!
//! ```ignore
//! let lateness = Lateness::start();
//! let took = /* something the daemon should end at TIMEOUT */;
//! assert!(took <= TIMEOUT + TOLERANCE + lateness.slack());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The sampler's sleep.
const TICK: Duration = Duration::from_millis(5);

/// A running sampler; stops on drop.
#[derive(Debug)]
pub struct Lateness {
    max_ns: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Lateness {
    /// Starts sampling on the current tokio runtime.
    pub fn start() -> Self {
        let max_ns = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (max, stopped) = (Arc::clone(&max_ns), stop.clone());
        tokio::spawn(async move {
            while !stopped.is_cancelled() {
                let started = Instant::now();
                tokio::time::sleep(TICK).await;
                let over = started.elapsed().saturating_sub(TICK);
                max.fetch_max(
                    u64::try_from(over.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        });
        Self { max_ns, stop }
    }

    /// The largest overrun of a timer so far.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    /// What a timing check allows on top of its own tolerance: a late timer on each side of the
    /// connection (the daemon's and the test's).
    pub fn slack(&self) -> Duration {
        2 * self.max()
    }
}

impl Drop for Lateness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
