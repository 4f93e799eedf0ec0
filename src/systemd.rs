//! systemd's notify protocol (`Type=notify`): `READY=1` once the listeners accept, `STOPPING=1`
//! when a drain begins, and watchdog pings (`WatchdogSec=`) tied to the token probe. Outside
//! systemd (`NOTIFY_SOCKET` unset) every call is a no-op.
//!
//! The watchdog is pinged only while the token probe keeps getting answers (or recovery is in
//! charge, which retries on its own): a PKCS#11 call that never returns cannot be cancelled,
//! and a module wedged in one is freed only by a restart, which systemd then does. A token that
//! is merely down is recovered in-process and does not stop the pings.

use crate::hsm::Hsm;
use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn send(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The listeners accept connections.
pub fn ready() {
    send(NotifyState::Ready);
}

/// A graceful stop has begun.
pub fn stopping() {
    send(NotifyState::Stopping);
}

/// Pings the watchdog every half `WatchdogSec` while the token probe is alive, until `stop`.
/// Returns at once when systemd set no watchdog.
pub async fn watchdog(hsm: Hsm, stop: CancellationToken) {
    let Some(limit) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (limit / 2).max(Duration::from_millis(10));
    let mut stuck = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let since = hsm.probe_heartbeat().elapsed();
        if since < limit {
            if stuck {
                tracing::info!("the token probe answers again; watchdog pings resumed");
                stuck = false;
            }
            send(NotifyState::Watchdog);
        } else if !stuck {
            stuck = true;
            tracing::error!(
                ?since,
                ?limit,
                "the token probe has not returned for longer than WatchdogSec: the PKCS#11 module \
                 seems wedged in a call; watchdog pings stopped, so systemd restarts p11kms"
            );
        }
    }
}
