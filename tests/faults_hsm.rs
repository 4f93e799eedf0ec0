//! Fault injection through the shim into a running daemon under verified load: a hung
//! `C_Sign` (issue 3, criterion d), corrupted signatures (e) and device errors (f).
//!
//! Every test runs the real binary against a SoftHSM token copy, with the fault-injecting
//! PKCS#11 shim between them (`faultshim/`), and a load whose every `OK` signature is verified
//! against the public key fetched before the fault (`common::load`). Numbers are printed for
//! the record (`cargo nextest run --no-capture`).

mod common;

use common::faultshim::Shim;
use common::lateness::Lateness;
use common::load::{
    self, get_public_key, health_of, raw_crypto_client, raw_health_client, thread_count, Load,
    LoadConfig, LoadKey, Outcome,
};
use common::{Launch, ServingStatus, TestToken, CRYPTO_SERVICE};
use p11kms::crypto::Algorithm;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const RSA: Algorithm = Algorithm::Rsa2048PssSha256;

fn pool_size(token: &TestToken) -> usize {
    let size = token.config()["hsm"]["pool_size"]
        .as_integer()
        .expect("hsm.pool_size is set in the dev config");
    usize::try_from(size).expect("positive pool size")
}

/// The runtime's worker threads: tokio's default is one per CPU the process may use, and the
/// daemon does not change it.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// d. With `C_Sign` hanging for 30 s, clients with a 1 s deadline get DEADLINE_EXCEEDED at the
/// deadline (±200 ms); health and GetPublicKey keep answering in under 50 ms; the daemon's
/// threads stay bounded by the pool; after the hang is lifted, service recovers. The upper
/// bounds add how late timers ran on this machine during the hang ([`Lateness`]), so that a
/// loaded machine makes them wider rather than the test fail by chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_sign_gives_deadline_exceeded_at_the_deadline_while_health_and_public_keys_answer() {
    // Latencies in milliseconds: no other load test of the suite runs meanwhile.
    let _cpu = load::cpu_exclusive();
    const DEADLINE: Duration = Duration::from_secs(1);
    const TOLERANCE: Duration = Duration::from_millis(200);
    const FAST: Duration = Duration::from_millis(50);
    let token = TestToken::dev();
    let pool = pool_size(&token);
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let pid = daemon.pid();
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];

    // The thread bound: the main thread, the runtime's workers, the blocking pool (capped by
    // the daemon at pool size + 4: start-up, shutdown, probe, key generation), and the shim's
    // stats thread. Nothing else in the process starts threads.
    let workers = worker_threads();
    let bound = 1 + workers + (pool + 4) + 1;

    // Before the fault: the load works.
    let warmup = Load::start(&daemon, keys.clone(), LoadConfig::default()).await;
    warmup
        .wait_valid_run_after(Instant::now(), 50, Duration::from_secs(30))
        .await;
    warmup.stop().await.assert_no_invalid();
    let threads_before = thread_count(pid);

    shim.set_control("delay_ms.C_Sign = 30000");
    shim.wait_applied_async().await;
    let hang_start = Instant::now();
    let lateness = Lateness::start();

    // Probes running through the hang: thread count every 10 ms; health (whole server and the
    // crypto service) and GetPublicKey (both keys) every 50 ms, each call timed on an
    // established connection.
    let stop = CancellationToken::new();
    let max_threads = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, max_threads) = (stop.clone(), Arc::clone(&max_threads));
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                max_threads.fetch_max(thread_count(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let prober = {
        let stop = stop.clone();
        let mut health = raw_health_client(daemon.addr());
        let mut crypto = raw_crypto_client(&daemon);
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        let pems: Vec<String> = {
            let mut pems = Vec::new();
            for id in &ids {
                pems.push(get_public_key(&mut crypto, id).await.expect("GetPublicKey"));
            }
            // One health check to open the connection before timing starts.
            health_of(&mut health, "").await.expect("health answers");
            pems
        };
        tokio::spawn(async move {
            let mut samples: Vec<(&'static str, Duration, String)> = Vec::new();
            while !stop.is_cancelled() {
                for service in ["", CRYPTO_SERVICE] {
                    let t = Instant::now();
                    let status = health_of(&mut health, service).await;
                    samples.push(("health", t.elapsed(), format!("{status:?}")));
                }
                for (id, pem) in ids.iter().zip(&pems) {
                    let t = Instant::now();
                    let got = get_public_key(&mut crypto, id).await;
                    let verdict = match got {
                        Ok(p) if &p == pem => "same key".to_string(),
                        Ok(_) => "A DIFFERENT KEY".to_string(),
                        Err(s) => format!("{:?}", s.code()),
                    };
                    samples.push(("GetPublicKey", t.elapsed(), verdict));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    // Three times as many clients as sessions: most wait for a session, the rest hang on the
    // token; all must get DEADLINE_EXCEEDED at their own deadline.
    let clients = 3 * pool;
    let load = Load::start(
        &daemon,
        keys.clone(),
        LoadConfig {
            clients,
            deadline: DEADLINE,
            ..LoadConfig::default()
        },
    )
    .await;
    load.wait_until(
        "four deadlines per client during the hang",
        Duration::from_secs(60),
        |r| r.within(hang_start, Instant::now()).count() >= 4 * clients,
    )
    .await;

    // The probes cover the hang only; then the hang ends when the lift is written (calls
    // already waiting are released at once).
    stop.cancel();
    sampler.await.expect("thread sampler");
    let samples = prober.await.expect("prober");
    let lifted = Instant::now();
    shim.set_control("");
    shim.wait_applied_async().await;
    let recovery = load
        .wait_valid_run_after(lifted, 100, Duration::from_secs(30))
        .await;
    let report = load.stop().await;
    let max_threads = max_threads.load(Ordering::Relaxed);

    // Deadlines: every request sent during the hang and answered before it was lifted.
    let hung: Vec<_> = report.within(hang_start, lifted).collect();
    assert!(hung.len() >= 4 * clients, "{}", report.summary());
    let mut latencies: Vec<Duration> = Vec::new();
    for r in &hung {
        assert_eq!(
            r.outcome.code(),
            Some(Code::DeadlineExceeded),
            "during the hang: {:?}\n{}",
            r.outcome,
            report.summary()
        );
        latencies.push(r.latency());
    }
    latencies.sort();
    let (min, max) = (latencies[0], latencies[latencies.len() - 1]);
    let median = latencies[latencies.len() / 2];
    let slack = lateness.slack();
    assert!(
        min >= DEADLINE - TOLERANCE && max <= DEADLINE + TOLERANCE + slack,
        "DEADLINE_EXCEEDED outside {DEADLINE:?} ± {TOLERANCE:?} (+ {slack:?} of timer lateness): \
         min {min:?}, max {max:?}"
    );

    // Health and GetPublicKey.
    let mut by_kind: std::collections::BTreeMap<&str, (usize, Duration, Vec<String>)> =
        Default::default();
    for (kind, took, verdict) in &samples {
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 = e.1.max(*took);
        if !e.2.contains(verdict) {
            e.2.push(verdict.clone());
        }
        assert!(
            *took < FAST + slack,
            "{kind} took {took:?} (>= {FAST:?} + {slack:?} of timer lateness) during the hang: {verdict}"
        );
        match *kind {
            "health" => assert!(verdict.starts_with("Some("), "health failed: {verdict}"),
            _ => assert_eq!(verdict, "same key", "GetPublicKey during the hang"),
        }
    }
    assert!(by_kind.len() == 2, "both probes ran: {by_kind:?}");

    assert!(
        max_threads <= bound,
        "the daemon had {max_threads} threads during the hang; the bound is {bound} \
         (1 main + {workers} workers + {pool} pool + 4 extra blocking + 1 shim)"
    );
    // After the lift no call hangs, so what still fails are requests sent before it, ending by
    // their own deadline; the requests after them are answered within theirs.
    let recovery_bound = 2 * DEADLINE + TOLERANCE + slack;
    assert!(
        recovery <= recovery_bound,
        "service took {recovery:?} to recover after the hang was lifted (at most {recovery_bound:?})"
    );
    report.assert_no_invalid();

    eprintln!(
        "d. hung C_Sign: {} requests during the hang, all DEADLINE_EXCEEDED after \
         min {min:?} / median {median:?} / max {max:?} (deadline {DEADLINE:?}, timers up to \
         {:?} late); \
         probes (count, max latency, answers): {by_kind:?}; threads: {threads_before} before, \
         max {max_threads} during (bound {bound}); recovery {recovery:?} after the lift\n{}",
        hung.len(),
        lateness.max(),
        report.summary()
    );
}

/// e. With every 10th signature corrupted by the token, no corrupted signature reaches a
/// client: each one is withheld with INTERNAL, as many as the shim corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_signatures_never_reach_clients() {
    let _cpu = load::cpu_shared();
    let token = TestToken::dev();
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];
    shim.set_control("corrupt_every = 10");
    shim.wait_applied_async().await;
    let load = Load::start(
        &daemon,
        keys,
        LoadConfig {
            clients: 8,
            deadline: Duration::from_secs(10),
            ..LoadConfig::default()
        },
    )
    .await;
    load.wait_until("1,000 answers", Duration::from_secs(120), |r| {
        r.total() >= 1000
    })
    .await;
    let report = load.stop().await;
    report.assert_no_invalid();

    let internal: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.outcome.code() == Some(Code::Internal))
        .collect();
    for r in &report.records {
        assert!(
            matches!(r.outcome, Outcome::Valid) || r.outcome.code() == Some(Code::Internal),
            "unexpected {:?}\n{}",
            r.outcome,
            report.summary()
        );
    }
    for algorithm in [P256, RSA] {
        assert!(
            internal
                .iter()
                .any(|r| report.key_of(r).algorithm == algorithm),
            "no corrupted {algorithm} signature was caught"
        );
    }
    // Every request has its answer: the final count.
    let corrupted = shim.settled_stats().await["corrupted"];
    assert_eq!(
        usize::try_from(corrupted).unwrap(),
        internal.len(),
        "the shim corrupted {corrupted} signatures; clients got {} INTERNAL\n{}",
        internal.len(),
        report.summary()
    );
    assert!(
        daemon.stderr().contains("verify-after-sign FAILED"),
        "no loud log line for the withheld signatures"
    );
    eprintln!(
        "e. corrupt_every = 10: shim corrupted {corrupted}, clients got {} INTERNAL, 0 invalid\n{}",
        internal.len(),
        report.summary()
    );
}

/// f. Device-class errors on every `C_Sign` for 10 s: clients see only UNAVAILABLE, the
/// library is re-initialised at most once a second (+1), service recovers within
/// [`load::recovery_bound`] of the end of the fault (the next attempt plus what start-up took),
/// and no invalid signature is returned.
async fn device_fault_for_ten_seconds(ckr: &str) {
    let _cpu = load::cpu_shared();
    const FAULT_FOR: Duration = Duration::from_secs(10);
    let token = TestToken::dev();
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];
    let load = Load::start(&daemon, keys, LoadConfig::default()).await;
    load.wait_valid_run_after(Instant::now(), 100, Duration::from_secs(30))
        .await;
    let init_before = shim.stat("initialize_calls");
    let login_before = shim.stat("login_calls");
    assert_eq!(init_before, 1, "no re-initialisation before the fault");

    shim.set_control(&format!("fault.C_Sign = {ckr}"));
    shim.wait_applied_async().await;
    let fault_start = Instant::now();
    let first = load
        .wait_failure_after(fault_start, Duration::from_secs(10))
        .await;
    let not_serving =
        load::wait_health(&daemon, ServingStatus::NotServing, Duration::from_secs(10)).await;
    // The fault lasts FAULT_FOR: a timed fault window, not a wait for readiness.
    tokio::time::sleep_until((fault_start + FAULT_FOR).into()).await;
    let init_at_end = shim.stat("initialize_calls");
    let fault_end = Instant::now();
    shim.set_control("");
    shim.wait_applied_async().await;
    let window = fault_end - fault_start;

    let recovery = load
        .wait_valid_run_after(fault_end, 100, Duration::from_secs(30))
        .await;
    let recovered_at = fault_end + recovery;
    let serving = load::wait_health(&daemon, ServingStatus::Serving, Duration::from_secs(10)).await;
    let report = load.stop().await;
    let init_total = shim.stat("initialize_calls");
    let logins = shim.stat("login_calls") - login_before;

    report.assert_no_invalid();
    let during = report.counts_finished_in(fault_start, fault_end);
    for r in report.records.iter() {
        if r.outcome != Outcome::Valid {
            assert_eq!(
                r.outcome.code(),
                Some(Code::Unavailable),
                "{ckr}: clients must see only UNAVAILABLE: {:?}\n{}",
                r.outcome,
                report.summary()
            );
        }
    }
    assert!(
        report
            .within(fault_start, fault_end)
            .all(|r| r.outcome.code() == Some(Code::Unavailable)),
        "{ckr}: a request sent and answered during the fault was not UNAVAILABLE: {during:?}"
    );
    let reinits_in_window = init_at_end - init_before;
    let allowed = window.as_secs() + 1;
    assert!(
        reinits_in_window >= 1,
        "{ckr}: the device fault never led to a re-initialisation"
    );
    assert!(
        reinits_in_window <= allowed,
        "{ckr}: {reinits_in_window} C_Initialize calls in {window:?} (at most {allowed})"
    );
    let span = recovered_at - fault_start;
    let reinits_total = init_total - init_before;
    assert!(
        reinits_total <= span.as_secs() + 1,
        "{ckr}: {reinits_total} C_Initialize calls from the fault to recovery ({span:?})"
    );
    let recovery_bound = load::recovery_bound(&daemon);
    assert!(
        recovery <= recovery_bound,
        "{ckr}: service took {recovery:?} to recover after the fault ended (at most \
         {recovery_bound:?}: start-up took {:?})",
        daemon.startup()
    );
    eprintln!(
        "f. {ckr} on C_Sign for {window:?}: first failure {:?} after the start; health \
         NOT_SERVING after {not_serving:?}; answers during the fault {during:?}; \
         C_Initialize +{reinits_in_window} in the window (allowed {allowed}), \
         +{reinits_total} until recovery; C_Login +{logins}; recovery {recovery:?} after the \
         end (bound {recovery_bound:?}; health SERVING after {serving:?})\n{}",
        first.finished - fault_start,
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_error_on_sign_reinitialises_at_most_once_a_second_and_recovers() {
    device_fault_for_ten_seconds("CKR_DEVICE_ERROR").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_removed_on_sign_reinitialises_at_most_once_a_second_and_recovers() {
    device_fault_for_ten_seconds("CKR_DEVICE_REMOVED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_present_on_sign_reinitialises_at_most_once_a_second_and_recovers() {
    device_fault_for_ten_seconds("CKR_TOKEN_NOT_PRESENT").await;
}

/// The token probe behind health: one `CKR_GENERAL_ERROR` from `C_GetTokenInfo` is ambiguous
/// (SoftHSM answers so for about a millisecond while another process uses the token as this one
/// writes to it), so it is asked again before anything drastic: no re-initialisation, no failed
/// request. A token that keeps answering so is recovered, and service resumes after it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ambiguous_probe_answer_is_rechecked_a_persistent_one_recovers() {
    let _cpu = load::cpu_shared();
    let token = TestToken::dev();
    token.set_hsm("probe_interval_ms", 100);
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];
    let load = Load::start(
        &daemon,
        keys,
        LoadConfig {
            clients: 4,
            ..LoadConfig::default()
        },
    )
    .await;
    load.wait_valid_run_after(Instant::now(), 50, Duration::from_secs(30))
        .await;

    // Once: after the start-up, only the probe calls C_GetTokenInfo.
    shim.set_control("fault.C_GetTokenInfo = CKR_GENERAL_ERROR\nnth.C_GetTokenInfo = 1");
    shim.wait_applied_async().await;
    let once = Instant::now();
    let injected = shim.wait_stat("faults.C_GetTokenInfo", 1).await;
    // Five more probes (100 ms apart) after the injected one.
    shim.wait_stat("calls.C_GetTokenInfo", injected["calls.C_GetTokenInfo"] + 5)
        .await;
    assert_eq!(
        shim.stat("initialize_calls"),
        1,
        "one ambiguous probe answer re-initialised the library"
    );
    let after_once = load.report();
    assert!(
        after_once.first_failure_after(once).is_none(),
        "a request failed after one ambiguous probe answer\n{}",
        after_once.summary()
    );
    let mut health = raw_health_client(daemon.addr());
    assert_eq!(
        health_of(&mut health, "").await,
        Some(ServingStatus::Serving)
    );

    // Persistent: the token is taken for gone, then recovered once it answers again.
    shim.set_control("fault.C_GetTokenInfo = CKR_GENERAL_ERROR");
    shim.wait_applied_async().await;
    let persistent = Instant::now();
    let not_serving =
        load::wait_health(&daemon, ServingStatus::NotServing, Duration::from_secs(10)).await;
    shim.wait_stat("initialize_calls", 2).await;
    let lifted = Instant::now();
    shim.set_control("");
    shim.wait_applied_async().await;
    let recovery = load
        .wait_valid_run_after(lifted, 100, Duration::from_secs(30))
        .await;
    let report = load.stop().await;
    report.assert_no_invalid();
    for r in report
        .records
        .iter()
        .filter(|r| r.outcome != Outcome::Valid)
    {
        assert_eq!(r.outcome.code(), Some(Code::Unavailable), "{:?}", r.outcome);
    }
    let recovery_bound = load::recovery_bound(&daemon);
    assert!(
        recovery <= recovery_bound,
        "recovery took {recovery:?} (at most {recovery_bound:?}: start-up took {:?})",
        daemon.startup()
    );
    eprintln!(
        "probe: one GENERAL_ERROR from C_GetTokenInfo: rechecked, no re-initialisation, no \
         failed request; persistent: health NOT_SERVING {not_serving:?} after it began, \
         {} C_Initialize calls until lifted {:?} later, recovery {recovery:?} after the lift \
         (bound {recovery_bound:?})\n{}",
        shim.stat("initialize_calls"),
        lifted - persistent,
        report.summary()
    );
}
