//! Long and terminal runs under verified load (issue 3, criteria h and i): a 60 s soak at 256
//! concurrent clients, and SIGTERM while the load keeps coming.
//!
//! `lifecycle.rs` covers SIGTERM with a fixed batch of requests on the token and idle
//! connections; here the load is continuous, so the signal lands while requests are at every
//! stage (waiting for a session, on the token, being verified).

mod common;

use common::faultshim::Shim;
use common::load::{self, fd_count, thread_count, Load, LoadConfig, LoadKey, Outcome};
use common::{Launch, TestToken, EXIT_TIMEOUT};
use p11kms::crypto::Algorithm;
use std::time::{Duration, Instant};
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const RSA: Algorithm = Algorithm::Rsa2048PssSha256;

/// h. 256 concurrent clients, each on its own connection, for 60 s: no crash, no invalid
/// signature, and afterwards the token's open sessions are back to the baseline (the pool plus
/// the anchor; no growth), as are the daemon's threads and file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_256_clients_for_60_seconds() {
    let _cpu = load::cpu_shared();
    const CLIENTS: usize = 256;
    const RUN_FOR: Duration = Duration::from_secs(60);
    const POOL: usize = 8;
    let token = TestToken::dev();
    token.set_hsm("pool_size", POOL as i64);
    // 256 clients share 8 sessions: let the request deadline, not the pool wait (2 s by
    // default), bound the queueing, so that a slower CI machine measures stability rather
    // than admission control.
    token.set_hsm("pool_wait_ms", 10_000);
    let shim = Shim::install(&token);
    let mut daemon = Launch::serve(&token).envs(shim.env()).start();
    let pid = daemon.pid();
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];

    // Baseline: a short load twice as wide as the pool.
    let warmup = Load::start(
        &daemon,
        keys.clone(),
        LoadConfig {
            clients: 2 * POOL,
            ..LoadConfig::default()
        },
    )
    .await;
    warmup
        .wait_valid_run_after(Instant::now(), 200, Duration::from_secs(30))
        .await;
    warmup.stop().await.assert_no_invalid();
    let baseline_sessions = shim.stat("open_sessions");
    let baseline_fds = fd_count(pid);
    assert!(
        baseline_sessions <= POOL as u64 + 1,
        "{baseline_sessions} sessions open after the warm-up"
    );

    let load = Load::start(
        &daemon,
        keys,
        LoadConfig {
            clients: CLIENTS,
            deadline: Duration::from_secs(10),
            ..LoadConfig::default()
        },
    )
    .await;
    // The soak: sample the daemon once a second for RUN_FOR (a timed run, not a readiness wait).
    let started = Instant::now();
    let (mut max_sessions, mut max_threads, mut max_fds) = (0, 0, 0);
    while started.elapsed() < RUN_FOR {
        assert!(
            daemon.try_status().is_none(),
            "the daemon died during the soak\n{}",
            daemon.describe()
        );
        max_sessions = max_sessions.max(shim.stat("open_sessions"));
        max_threads = max_threads.max(thread_count(pid));
        max_fds = max_fds.max(fd_count(pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = load.stop().await;
    assert!(
        daemon.try_status().is_none(),
        "the daemon died\n{}",
        daemon.describe()
    );
    let stats = shim.stats();
    let sessions_after = stats["open_sessions"];
    // The clients have closed their 256 connections; the daemon releases each one when it
    // reads the close, which on a loaded machine takes a moment. Waited for, not sampled once:
    // a leaked descriptor never goes away, a slow release does.
    let released = Instant::now();
    let fds_after = loop {
        let fds = fd_count(pid);
        if fds <= baseline_fds + 5 || released.elapsed() > Duration::from_secs(30) {
            break fds;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    report.assert_no_invalid();
    assert_eq!(
        report.failed(),
        0,
        "requests failed during the soak\n{}",
        report.summary()
    );
    assert!(
        max_sessions <= POOL as u64 + 1,
        "{max_sessions} sessions open during the soak (pool {POOL} + 1 anchor)"
    );
    // The baseline is the full pool and its anchor (the pool opens sessions lazily, so the
    // warm-up may not have opened all of them).
    assert!(
        sessions_after <= POOL as u64 + 1,
        "{sessions_after} sessions open after the soak (pool {POOL} + 1 anchor)"
    );
    assert!(
        fds_after <= baseline_fds + 5,
        "fds grew from {baseline_fds} to {fds_after} and stayed there {:?} after the clients \
         closed their connections",
        released.elapsed()
    );
    for key in [
        "concurrent_session_use",
        "poisoned_session_reuse",
        "initialize_without_os_locking",
    ] {
        assert_eq!(stats.get(key).copied().unwrap_or(0), 0, "{key}: {stats:#?}");
    }
    assert_eq!(stats["initialize_calls"], 1, "{stats:#?}");
    let p50 = report.latency_percentile(0.5, |_| true).unwrap();
    let p99 = report.latency_percentile(0.99, |_| true).unwrap();
    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );
    assert_eq!(shim.stat("calls.C_Finalize"), 1);
    eprintln!(
        "h. soak: {CLIENTS} clients for {RUN_FOR:?}: {} verified signatures ({:.0}/s), latency \
         p50 {p50:?} p99 {p99:?}; 0 invalid, 0 failed, no crash; open sessions {baseline_sessions} \
         before, max {max_sessions} during, {sessions_after} after (pool {POOL} + anchor); \
         threads max {max_threads}; fds {baseline_fds} before, max {max_fds} during, \
         {fds_after} after; C_Initialize 1, C_Finalize 1 at the SIGTERM that followed\n{}",
        report.valid(),
        report.throughput(),
        report.summary()
    );
}

/// i. SIGTERM while 16 clients keep sending: every request sent before the signal completes
/// OK with a verified signature (every request that reached the token got its signature),
/// new connections are refused after it, and the process exits 0 having finalised once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_continuous_load_completes_in_flight_requests() {
    let _cpu = load::cpu_shared();
    const CLIENTS: usize = 16;
    let token = TestToken::dev();
    // A session per client, and a slow token (each C_Sign call 50 ms, two per signature), so
    // that requests are on the token when the signal lands.
    token.set_hsm("pool_size", CLIENTS as i64);
    let mut shim = Shim::install(&token);
    shim.set_control("delay_ms.C_Sign = 50");
    let mut daemon = Launch::serve(&token).envs(shim.env()).start();
    let addr = daemon.addr();
    // Start-up signs too (a trial signature per EC key): count from here.
    let sign_inits_at_start = shim
        .settled_stats()
        .await
        .get("calls.C_SignInit")
        .copied()
        .unwrap_or(0);
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];
    let load = Load::start(
        &daemon,
        keys,
        LoadConfig {
            clients: CLIENTS,
            deadline: Duration::from_secs(10),
            ..LoadConfig::default()
        },
    )
    .await;
    load.wait_valid_run_after(Instant::now(), 50, Duration::from_secs(30))
        .await;

    let signalled = Instant::now();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    // New connections are refused once the listener is closed.
    let refused = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => break Instant::now(),
            Ok(stream) => drop(stream),
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still accepting connections 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let status = daemon.wait_exit(EXIT_TIMEOUT).await;
    let exited = Instant::now();
    let report = load.stop().await;

    assert_eq!(status.code(), Some(0), "{}", daemon.describe());
    assert!(refused < exited);
    report.assert_no_invalid();
    let in_flight: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.started < signalled && r.finished >= signalled)
        .collect();
    assert!(
        !in_flight.is_empty(),
        "no request was in flight at the signal\n{}",
        report.summary()
    );
    // A request the client had not yet put on a stream the daemon accepted when the drain
    // began is refused by the daemon's HTTP/2 GOAWAY (never processed; safe to retry): the
    // client retries on a new connection, which the closed listener refuses. It never reached
    // the daemon, so it was not in flight. Seen in a soak run: 23 of 88 requests of a 16-client
    // load, the others all completed.
    let never_arrived = |r: &&common::load::Record| matches!(&r.outcome, Outcome::Failed(Code::Unknown, m) if m.contains("client error (Connect)"));
    for r in report
        .records
        .iter()
        .filter(|r| r.started < signalled)
        .filter(|r| !never_arrived(r))
    {
        assert_eq!(
            r.outcome,
            Outcome::Valid,
            "a request sent before SIGTERM did not complete ({:?} after the signal)\n{}",
            r.finished - signalled,
            report.summary()
        );
    }
    let after: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.started >= signalled)
        .collect();
    // Every request that reached the token was answered with its signature.
    let stats = shim.stats();
    let sign_inits = stats["calls.C_SignInit"] - sign_inits_at_start;
    assert_eq!(
        sign_inits,
        report.valid() as u64,
        "signatures started on the token vs verified answers: {stats:#?}\n{}",
        report.summary()
    );
    assert_eq!(stats["calls.C_Finalize"], 1, "{stats:#?}");
    // Requests sent after the signal are refused by the server's GOAWAY or by the closed
    // listener; none reached the token (checked above). Their status is the client's own
    // transport error (UNKNOWN for a refused connection, INTERNAL for a stream past the final
    // GOAWAY's last stream id, as gRPC maps HTTP/2 NO_ERROR), so it is reported, not asserted.
    let mut after_codes = std::collections::BTreeMap::new();
    for r in &after {
        *after_codes.entry(r.outcome.label()).or_insert(0) += 1;
    }
    let last_in_flight = in_flight.iter().map(|r| r.finished).max().unwrap();
    eprintln!(
        "i. SIGTERM under load ({CLIENTS} clients): {} requests in flight at the signal, all \
         OK and verified, the last {:?} after it; new connections refused {:?} after the \
         signal; exit 0 {:?} after the signal; requests sent after the signal: {after_codes:?}; \
         C_SignInit {} = verified answers; C_Finalize 1\n{}",
        in_flight.len(),
        last_in_flight - signalled,
        refused - signalled,
        exited - signalled,
        sign_inits,
        report.summary()
    );
}
