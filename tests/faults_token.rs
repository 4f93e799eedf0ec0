//! Faults on the SoftHSM token itself, under verified load (issue 3, criteria a, b, g):
//! the token's files vanish and come back; the token is re-created with a different key under
//! the same id and label; the user PIN changes while the daemon runs. Plus `pin_sha256` in the
//! config (b).
//!
//! The start-up half of g (a wrong PIN fails closed after one `C_Login`, and neither the wrong
//! nor the right PIN is printed) is `config_errors.rs`,
//! `a_wrong_pin_fails_closed_without_retry_or_echo`.

mod common;

use common::faultshim::Shim;
use common::load::{
    self, fd_count, get_public_key, health_of, raw_crypto_client, raw_health_client, Load,
    LoadConfig, LoadKey, Outcome,
};
use common::pkcs11::{self, KeyGen, PrivateAttrs};
use common::{dev_ck_id, dev_key_id, verify, Daemon, Launch, ServingStatus, TestToken};
use p11kms::crypto::Algorithm;
use sha2::Digest as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const RSA: Algorithm = Algorithm::Rsa2048PssSha256;

/// a. Under verified load the token's files are moved away (root ignores `chmod`, E12) and
/// restored a few seconds later. During the outage clients see only UNAVAILABLE or
/// DEADLINE_EXCEEDED and health is NOT_SERVING; service resumes within
/// [`load::recovery_bound`] of the restore (the next recovery attempt plus what start-up took)
/// without a restart, health is SERVING again, and no invalid signature is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_files_removed_and_restored_under_load() {
    let _cpu = load::cpu_shared();
    const OUTAGE: Duration = Duration::from_secs(5);
    let token = TestToken::dev();
    let shim = Shim::install(&token); // counters only: no faults are injected
    let mut daemon = Launch::serve(&token).envs(shim.env()).start();
    let pid = daemon.pid();
    let keys = vec![
        LoadKey::fetch(&daemon, P256).await,
        LoadKey::fetch(&daemon, RSA).await,
    ];
    let load = Load::start(&daemon, keys, LoadConfig::default()).await;
    load.wait_valid_run_after(Instant::now(), 100, Duration::from_secs(30))
        .await;
    let fds_before = fd_count(pid);
    assert_eq!(shim.stat("initialize_calls"), 1);

    // Remove: the token's directory (its `token.object` and every object file) moves away in
    // one rename.
    let files = token.token_files_dir();
    let away = token.state_dir().join("away");
    std::fs::create_dir(&away).unwrap();
    let parked = away.join(files.file_name().unwrap());
    std::fs::rename(&files, &parked).unwrap();
    let removed = Instant::now();

    let first_failure = load
        .wait_failure_after(removed, Duration::from_secs(10))
        .await;
    let not_serving_after =
        load::wait_health(&daemon, ServingStatus::NotServing, Duration::from_secs(10)).await;
    // Health through the rest of the outage, every 100 ms.
    let mut health = raw_health_client(daemon.addr());
    let mut samples = 0;
    while removed.elapsed() < OUTAGE {
        let got = health_of(&mut health, "").await;
        assert_eq!(
            got,
            Some(ServingStatus::NotServing),
            "health during the outage ({:?} after removal)",
            removed.elapsed()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::rename(&parked, &files).unwrap();
    let restored = Instant::now();
    let recovery = load
        .wait_valid_run_after(restored, 100, Duration::from_secs(30))
        .await;
    let serving_after =
        load::wait_health(&daemon, ServingStatus::Serving, Duration::from_secs(10)).await;
    // With the same connections open as before the outage.
    let fds_after = fd_count(pid);
    let report = load.stop().await;

    report.assert_no_invalid();
    for r in &report.records {
        assert!(
            matches!(r.outcome, Outcome::Valid)
                || matches!(
                    r.outcome.code(),
                    Some(Code::Unavailable | Code::DeadlineExceeded)
                ),
            "during the outage clients may see only UNAVAILABLE or DEADLINE_EXCEEDED: {:?}\n{}",
            r.outcome,
            report.summary()
        );
    }
    let recovery_bound = load::recovery_bound(&daemon);
    assert!(
        recovery <= recovery_bound,
        "service resumed {recovery:?} after the restore (at most {recovery_bound:?}: start-up \
         took {:?})",
        daemon.startup()
    );
    assert!(daemon.try_status().is_none(), "the daemon exited");
    assert_eq!(daemon.pid(), pid);
    let stats = shim.stats();
    let reinits = stats["initialize_calls"] - 1;
    assert!(
        reinits >= 1,
        "recovered without re-initialising? {stats:#?}"
    );
    let open_sessions = stats["open_sessions"];
    let pool = token.config()["hsm"]["pool_size"].as_integer().unwrap() as u64;
    assert!(
        open_sessions <= pool + 1,
        "{open_sessions} sessions open after recovery; the pool is {pool} + 1 anchor"
    );
    assert!(
        fds_after <= fds_before + 5,
        "fds grew from {fds_before} to {fds_after} over the outage"
    );
    let outage = restored - removed;
    eprintln!(
        "a. token files away for {outage:?}: first failure {:?} after removal; health \
         NOT_SERVING {not_serving_after:?} after removal, {samples} samples NOT_SERVING during \
         the outage; answers during it {:?}; service resumed {recovery:?} after the restore \
         (bound {recovery_bound:?}) \
         (health SERVING {serving_after:?} after it); same process ({pid}), {reinits} library \
         re-initialisations; open sessions {open_sessions}; fds {fds_before} before, \
         {fds_after} after\n{}",
        first_failure.finished - removed,
        report.counts_finished_in(removed, restored),
        report.summary()
    );
    assert_eq!(
        daemon.sigterm().await.code(),
        Some(0),
        "{}",
        daemon.describe()
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn softhsm2_util(token: &TestToken) -> Command {
    let mut cmd = Command::new("softhsm2-util");
    cmd.env("SOFTHSM2_CONF", token.softhsm_conf());
    cmd
}

/// The only token directory under `tokens`.
fn only_token_dir(tokens: &Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// b. The token is re-created (same label, same PINs, a new serial) with a NEW P-256 key pair
/// under the P-256 key's `CKA_ID` and label, while the daemon runs under load. No signature is
/// made with the new key: every OK signature verifies under the old key and none under the new
/// one; the key answers FAILED_PRECONDITION; GetPublicKey never returns the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_recreated_with_another_key_under_the_same_id_is_refused() {
    let _cpu = load::cpu_shared();
    let token = TestToken::dev();
    token.retain_keys(|id| id == dev_key_id(P256) || id == dev_key_id(RSA));
    let daemon = Daemon::serve(&token, &[]);
    let p256 = dev_key_id(P256);
    let ck_id = dev_ck_id(P256);
    let label = token
        .list_public_keys()
        .into_iter()
        .find(|k| k.id == ck_id)
        .expect("the P-256 public key")
        .label;
    let old_spki = token.public_key_der(&ck_id);

    // The replacement token, built aside so that the swap below is two renames: delete the
    // token, init a new one with the same label and PINs, generate a new pair under the id.
    let staging = TestToken::dev();
    run(softhsm2_util(&staging).args(["--delete-token", "--token", staging.label()]));
    run(softhsm2_util(&staging).args([
        "--init-token",
        "--free",
        "--label",
        staging.label(),
        "--so-pin",
        &staging.so_pin(),
        "--pin",
        &staging.user_pin(),
    ]));
    assert_eq!(staging.user_pin(), token.user_pin());
    pkcs11::with_user_session(&staging, |s| {
        pkcs11::generate_key_pair(
            s,
            KeyGen::Ec("1.2.840.10045.3.1.7"),
            &ck_id,
            &label,
            PrivateAttrs::default(),
        );
    });
    let new_spki = staging.public_key_der(&ck_id);
    assert_ne!(new_spki, old_spki);
    let new_serial = staging.serial();
    assert_ne!(new_serial, token.serial(), "the new token has a new serial");

    let keys = vec![
        LoadKey::fetch(&daemon, P256).await.keeping_signatures(),
        LoadKey::fetch(&daemon, RSA).await,
    ];
    let old_pem = get_public_key(&mut raw_crypto_client(&daemon), &p256)
        .await
        .unwrap();
    let load = Load::start(&daemon, keys, LoadConfig::default()).await;
    load.wait_valid_run_after(Instant::now(), 100, Duration::from_secs(30))
        .await;

    // GetPublicKey for the key, every 20 ms, throughout.
    let stop = CancellationToken::new();
    let watcher = {
        let stop = stop.clone();
        let mut client = raw_crypto_client(&daemon);
        let p256 = p256.clone();
        tokio::spawn(async move {
            let mut seen: Vec<Result<String, Code>> = Vec::new();
            while !stop.is_cancelled() {
                let got = get_public_key(&mut client, &p256)
                    .await
                    .map_err(|s| s.code());
                if !seen.contains(&got) {
                    seen.push(got);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };

    // Swap: the old token is deleted, the new one appears.
    let old_dir = token.token_files_dir();
    std::fs::remove_dir_all(&old_dir).unwrap();
    let new_dir = only_token_dir(&staging.token_dir());
    std::fs::rename(
        &new_dir,
        token.token_dir().join(new_dir.file_name().unwrap()),
    )
    .unwrap();
    let swapped = Instant::now();

    // The daemon finds the new token by its label, logs in and refuses the key.
    let report = load
        .wait_until(
            "the P-256 key answering FAILED_PRECONDITION",
            Duration::from_secs(30),
            |r| {
                r.records.iter().any(|x| {
                    x.finished > swapped
                        && r.key_of(x).id == p256
                        && x.outcome.code() == Some(Code::FailedPrecondition)
                })
            },
        )
        .await;
    let refused_at = report
        .records
        .iter()
        .find(|x| {
            x.finished > swapped
                && report.key_of(x).id == p256
                && x.outcome.code() == Some(Code::FailedPrecondition)
        })
        .unwrap()
        .finished;
    // Keep the load on the refused key for another 200 answers.
    let n = report.total();
    load.wait_until("200 more answers", Duration::from_secs(30), |r| {
        r.total() >= n + 200
    })
    .await;
    let mut kms = daemon.kms().await;
    let direct = kms.sign(&p256, b"after the swap").await;
    let status = direct.expect_err("the refused key signed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    stop.cancel();
    let seen = watcher.await.unwrap();
    let report = load.stop().await;

    // 0 invalid under the old key; 0 that verify under the new key.
    report.assert_no_invalid();
    let new_key = verify::parse_public_key(&spki_pem(&new_spki), P256).unwrap();
    let mut checked = 0;
    let mut under_new = 0;
    for r in &report.records {
        if let Some((digest, sig)) = &r.signed {
            checked += 1;
            if new_key.verify_digest(P256, digest, sig).is_ok() {
                under_new += 1;
            }
        }
    }
    assert!(checked >= 50, "only {checked} P-256 signatures were kept");
    assert_eq!(
        under_new, 0,
        "{under_new} signatures were made with the NEW key"
    );
    // After the refusal the key answers only FAILED_PRECONDITION.
    let after: Vec<_> = report
        .records
        .iter()
        .filter(|r| report.key_of(r).id == p256 && r.started > refused_at)
        .collect();
    assert!(after.len() >= 50, "{}", report.summary());
    for r in &after {
        assert_eq!(
            r.outcome.code(),
            Some(Code::FailedPrecondition),
            "the refused key: {:?}",
            r.outcome
        );
    }
    // GetPublicKey: the pinned key or an error, never the new key.
    for pem in seen.iter().flatten() {
        assert_eq!(
            pem, &old_pem,
            "GetPublicKey returned a key other than the pinned one"
        );
    }
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("PUBLIC KEY PIN MISMATCH") && stderr.contains(&p256),
        "no loud pin-mismatch line for {p256}\n{stderr}"
    );
    // Not even a withheld one: the new key was never used to sign.
    assert!(
        !stderr.contains("verify-after-sign FAILED"),
        "the daemon signed with a key that does not match its pin\n{stderr}"
    );
    let mut codes_after_swap = report.counts_finished_in(swapped, Instant::now());
    codes_after_swap.retain(|_, n| *n > 0);
    eprintln!(
        "b. token re-created (serial {new_serial}) with a new P-256 key under the same id: \
         refused {:?} after the swap; {checked} P-256 signatures kept, 0 invalid under the old \
         key, {under_new} verify under the new key; {} P-256 requests after the refusal, all \
         FAILED_PRECONDITION; GetPublicKey answers seen: {:?}; answers after the swap {:?}\n{}",
        refused_at - swapped,
        after.len(),
        seen.iter()
            .map(|g| match g {
                Ok(p) if p == &old_pem => "the pinned key".to_string(),
                Ok(_) => "ANOTHER KEY".to_string(),
                Err(c) => format!("{c:?}"),
            })
            .collect::<Vec<_>>(),
        codes_after_swap,
        report.summary()
    );
}

fn spki_pem(der: &[u8]) -> String {
    der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, der).unwrap()
}

/// b. `pin_sha256` in the config: a wrong fingerprint refuses the key at start-up (the daemon
/// exits non-zero naming the key); the right one serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_sha256_refuses_a_wrong_key_at_startup_and_serves_the_right_one() {
    let token = TestToken::dev();
    let id = dev_key_id(P256);
    let spki = token.public_key_der(&dev_ck_id(P256));
    let right: [u8; 32] = sha2::Sha256::digest(&spki).into();
    let mut wrong = right;
    wrong[0] ^= 0x01;

    token.set_key_field(&id, "pin_sha256", hex::encode(wrong));
    Daemon::serve_expecting_failure(&token, &[])
        .assert_failed()
        .assert_stderr_has(&[&id, "pin_sha256", &hex::encode(wrong)]);

    token.set_key_field(&id, "pin_sha256", hex::encode(right));
    let mut daemon = Daemon::serve(&token, &[]);
    let mut kms = daemon.kms().await;
    let pem = kms.public_key(&id).await.unwrap();
    let key = verify::parse_public_key(&pem, P256).unwrap();
    assert_eq!(key.spki_der, spki);
    let sig = kms.sign(&id, b"pinned").await.unwrap();
    key.verify_message(P256, b"pinned", &sig).unwrap();
    assert_eq!(daemon.sigterm().await.code(), Some(0));
}

/// g. The user PIN is changed on the token while the daemon runs (the existing login keeps
/// working, E14); a device fault then makes the daemon re-initialise, so it must log in again.
/// It tries the old PIN once, then stays down: health NOT_SERVING, requests UNAVAILABLE, no
/// further `C_Login` for several seconds, and neither PIN in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_changed_while_running_logs_in_once_then_stays_down() {
    let _cpu = load::cpu_shared();
    const OBSERVE: Duration = Duration::from_secs(5);
    const NEW_PIN: &str = "6e6577205049e4e2b7f1c0d9";
    let token = TestToken::dev();
    let old_pin = token.user_pin();
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

    // Another process changes the PIN; the daemon's login keeps working.
    run(token.pkcs11_tool().args([
        "--token-label",
        token.label(),
        "--login",
        "--pin",
        &old_pin,
        "--change-pin",
        "--new-pin",
        NEW_PIN,
    ]));
    let changed = Instant::now();
    load.wait_valid_run_after(changed, 50, Duration::from_secs(30))
        .await;
    let logins_before = shim.stat("login_calls");
    assert_eq!(logins_before, 1);

    // One device error: the daemon re-initialises and must log in again.
    shim.set_control("fault.C_Sign = CKR_DEVICE_ERROR\nnth.C_Sign = 1");
    shim.wait_applied_async().await;
    let faulted = Instant::now();
    shim.wait_stat("login_failures", 1).await;
    let login_failed = Instant::now();
    let not_serving =
        load::wait_health(&daemon, ServingStatus::NotServing, Duration::from_secs(10)).await;

    // Observe: still down, no more logins.
    let mut health = raw_health_client(daemon.addr());
    let mut samples = 0;
    while login_failed.elapsed() < OBSERVE {
        assert_eq!(
            health_of(&mut health, "").await,
            Some(ServingStatus::NotServing)
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.stop().await;
    let stats = shim.stats();

    report.assert_no_invalid();
    assert_eq!(
        stats["login_calls"],
        logins_before + 1,
        "the daemon must try the old PIN exactly once: {stats:#?}"
    );
    assert_eq!(stats["login_failures"], 1, "{stats:#?}");
    let after: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.started > login_failed)
        .collect();
    assert!(after.len() >= 10, "{}", report.summary());
    for r in &after {
        assert_eq!(
            r.outcome.code(),
            Some(Code::Unavailable),
            "after the refused login: {:?}",
            r.outcome
        );
    }
    daemon.assert_never_printed(&old_pin);
    daemon.assert_never_printed(NEW_PIN);
    assert!(
        daemon.stderr().contains("refused the PIN"),
        "no log line saying the PIN was refused\n{}",
        daemon.stderr()
    );
    eprintln!(
        "g. PIN changed while running: the old login kept working ({} valid after the change); \
         after one device fault the daemon logged in once more (failed {:?} after the fault), \
         health NOT_SERVING {not_serving:?} after that; {samples} health samples over \
         {OBSERVE:?} all NOT_SERVING; C_Login {} in total, login failures {}; {} requests after \
         the refusal, all UNAVAILABLE; neither PIN printed\n{}",
        report
            .records
            .iter()
            .filter(|r| r.started > changed && r.outcome == Outcome::Valid)
            .count(),
        login_failed - faulted,
        stats["login_calls"],
        stats["login_failures"],
        after.len(),
        report.summary()
    );
}
