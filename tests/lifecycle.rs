//! The binary as a process: it binds an ephemeral port, serves, and stops cleanly with exit 0 on
//! SIGTERM and SIGINT, letting in-flight requests finish first.

mod common;

use common::faultshim::Shim;
use common::{dev_key_id, verify, Daemon, Launch, TestToken};
use p11kms::crypto::Algorithm;
use std::net::TcpStream;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

async fn sign_and_verify(daemon: &Daemon) {
    let mut kms = daemon.kms().await;
    let id = dev_key_id(P256);
    let key = verify::parse_public_key(&kms.public_key(&id).await.unwrap(), P256).unwrap();
    let sig = kms.sign(&id, b"lifecycle").await.expect("Sign");
    key.verify_message(P256, b"lifecycle", &sig).unwrap();
}

#[tokio::test]
async fn serves_on_an_ephemeral_port_and_sigterm_exits_zero() {
    let token = TestToken::dev();
    let mut daemon = Daemon::serve(&token, &[]);
    assert!(daemon.addr().ip().is_loopback());
    assert_ne!(
        daemon.addr().port(),
        0,
        "the ready line shows the bound port"
    );
    sign_and_verify(&daemon).await;

    let status = daemon.sigterm().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.describe());
    assert!(
        TcpStream::connect(daemon.addr()).is_err(),
        "the port is closed after exit"
    );
}

#[tokio::test]
async fn sigint_exits_zero() {
    let token = TestToken::dev();
    let mut daemon = Daemon::serve(&token, &[]);
    sign_and_verify(&daemon).await;
    let status = daemon.sigint().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.describe());
}

/// Whoever starts the daemon may stop it the moment it reads the ready line: the SIGTERM
/// handler is in place by then (its default action would kill the process, exit by signal).
/// The window was narrow, so a few rounds.
#[test]
fn sigterm_right_after_the_ready_line_exits_zero() {
    let token = TestToken::dev();
    for round in 0..3 {
        let mut daemon = Daemon::serve(&token, &[]);
        let status = daemon.sigterm_blocking();
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {status}\n{}",
            daemon.describe()
        );
    }
}

#[tokio::test]
async fn sigterm_while_idle_with_open_connections_exits_zero() {
    // Long, so that an exit that waited for it stands out on any machine.
    const GRACE: std::time::Duration = std::time::Duration::from_secs(30);
    let token = TestToken::dev();
    token.set_server(
        "shutdown_grace_ms",
        i64::try_from(GRACE.as_millis()).unwrap(),
    );
    let mut daemon = Daemon::serve(&token, &[]);
    sign_and_verify(&daemon).await;
    // Idle keep-alive connections get GOAWAY; they must not hold the exit for the shutdown
    // grace period.
    let _kms = daemon.kms().await;
    let _kms2 = daemon.kms().await;
    let started = std::time::Instant::now();
    let status = daemon.sigterm().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.describe());
    assert!(
        started.elapsed() < GRACE / 2,
        "idle connections delayed the exit by {:?} (grace {GRACE:?})",
        started.elapsed()
    );
}

/// Requests that are in flight (on the token) when SIGTERM arrives all complete with valid
/// signatures; then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_during_sigterm() {
    const REQUESTS: usize = 12;
    let token = TestToken::dev();
    // A session per request, so that every request is observably inside the token (its
    // C_SignInit counted) before the signal: a request the server has not read yet may be
    // refused by the shutdown, which is correct and not what this test is about.
    token.set_hsm("pool_size", 16);
    let mut shim = Shim::install(&token);
    // Every C_Sign call (cryptoki makes two per signature) takes 150 ms, so requests stay in
    // flight while the signal arrives.
    shim.set_control("delay_ms.C_Sign = 150");
    let mut daemon = Launch::serve(&token).envs(shim.env()).start();
    let id = dev_key_id(P256);
    let key = {
        let mut kms = daemon.kms().await;
        verify::parse_public_key(&kms.public_key(&id).await.unwrap(), P256).unwrap()
    };

    // Start-up signs too (one trial signature per EC key proves each key pair), so count from
    // here.
    let baseline = shim.settled_stats().await["calls.C_SignInit"];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        // A connection each.
        let mut kms = daemon.kms().await;
        let id = id.clone();
        tasks.spawn(async move {
            let message = format!("in flight {i}").into_bytes();
            let sig = kms.sign(&id, &message).await;
            (message, sig)
        });
    }
    // Readiness, not a sleep: wait until every request is on the token.
    shim.wait_stat("calls.C_SignInit", baseline + REQUESTS as u64)
        .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);

    let mut completed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (message, sig) = joined.expect("request task");
        let sig = sig.unwrap_or_else(|s| {
            panic!(
                "an in-flight request failed during shutdown: {s:?}\n{}",
                daemon.describe()
            )
        });
        key.verify_message(P256, &message, &sig).unwrap();
        completed += 1;
    }
    assert_eq!(completed, REQUESTS);
    let status = daemon.wait_exit(common::EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.describe());
    assert_eq!(
        shim.stat("calls.C_SignInit") - baseline,
        REQUESTS as u64,
        "each request signed exactly once"
    );
}
