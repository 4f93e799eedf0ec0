//! systemd's notify protocol (issue 15 item 6), against a datagram socket standing in for
//! systemd's: `READY=1` by the time the ready line is printed, watchdog pings while the token
//! probe answers, none while a probe call hangs in the module (through the fault shim), pings
//! again once it returns, and `STOPPING=1` on SIGTERM.

mod common;

use common::faultshim::Shim;
use common::{Launch, TestToken};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// `WatchdogSec=` as the test's systemd sets it.
const WATCHDOG: Duration = Duration::from_millis(600);

fn next(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

/// Waits until `message` arrives, skipping others, for at most `limit`.
fn expect(socket: &UnixDatagram, message: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if next(socket, limit - started.elapsed()).is_some_and(|m| m.trim_end() == message) {
            return;
        }
    }
    panic!("no {message} within {limit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_watchdog_tied_to_the_token_probe_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let token = TestToken::dev();
    token.set_hsm("probe_interval_ms", 100);
    let mut shim = Shim::install(&token);
    let mut daemon = Launch::serve(&token)
        .envs(shim.env())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .start();
    // Sent right after the ready line: it is queued on the socket already or about to be.
    assert_eq!(
        next(&socket, Duration::from_secs(10)).as_deref(),
        Some("READY=1\n")
    );
    expect(&socket, "WATCHDOG=1", Duration::from_secs(10));

    // Every token-info call (the probe's) now hangs for longer than the watchdog allows.
    shim.set_control("delay_ms.C_GetTokenInfo = 4000");
    shim.wait_applied_async().await;
    let started = Instant::now();
    let mut silence = false;
    while started.elapsed() < Duration::from_secs(20) {
        // Pings come every WATCHDOG/2 while the probe answers; a gap of twice the limit is
        // a stop, not a late ping.
        if next(&socket, 2 * WATCHDOG).is_none() {
            silence = true;
            break;
        }
    }
    assert!(silence, "watchdog pings went on while the token probe hung");
    shim.set_control("");
    shim.wait_applied_async().await;
    // The hung call returns after its delay; the next probe answers and pings resume.
    expect(&socket, "WATCHDOG=1", Duration::from_secs(20));

    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );
    expect(&socket, "STOPPING=1", Duration::from_secs(10));
}
