//! Issue 11, item 3: a purge killed at random points leaves nothing behind.
//!
//! Four replicas on one token copy:
//! * `K`, the purger: the only one whose purge runs often. Its fault shim slows every
//!   `C_DestroyObject`, so a purge takes a while, and it is SIGKILLed at a random moment of
//!   each purge, then started again (25 cycles).
//! * `W1` and `W2`, writers: each cycle they create keys and then, at the same moment, delete
//!   each key (`W1`) and change its description (`W2`). When the two race, the key has two
//!   documents, one of which does not say it is deleted: the case an interrupted purge used to
//!   leave half done.
//! * `S`, an observer that never writes, and re-scans only when asked (a lookup of an unknown
//!   key). It is asked at random moments, so it sees the half-purged states.
//!
//! Afterwards nothing of any key is left on the token (`C_FindObjects` by our label and by the
//! keys' `CKA_ID`, from a fresh process), and re-scans on `S` read the token exactly as much
//! as on a replica started on the clean token (the fault shim counts the calls).

mod common;
mod key_service_support;

use common::faultshim::Shim;
use common::{Daemon, Launch};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use key_service_support::{managed_token, Clients};
use p11kms::crypto::Algorithm;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::Code;

const CYCLES: usize = 25;
const KEYS_PER_CYCLE: usize = 3;
/// How long a deleted key stays restorable.
const RETENTION: Duration = Duration::from_millis(1500);
/// The purger's purge interval.
const PURGE_MS: u64 = 200;
/// Every `C_DestroyObject` of the purger waits this long, so that the test can stop it at a
/// chosen call.
const DESTROY_DELAY_MS: u64 = 40;
/// The destroy calls a cycle's purge makes are about: per key two key objects, one or two
/// documents and a nonce per pass over the documents. Kill points are drawn up to this.
const MAX_KILL_POINT: u64 = KEYS_PER_CYCLE as u64 * 7;
/// Holds every destroy call of the purger until it is killed.
const HOLD_DESTROYS: &str = "delay_ms.C_DestroyObject = 600000";
/// Long enough never to run during the test.
const NEVER_MS: &str = "3600000";
const MISSING: &str = "nosuchkey00000000000";
/// Re-scans measured on each idle replica.
const MEASURED_SCANS: usize = 4;
/// Token reads: what a re-scan costs.
const READS: [&str; 4] = [
    "calls.C_FindObjectsInit",
    "calls.C_FindObjects",
    "calls.C_FindObjectsFinal",
    "calls.C_GetAttributeValue",
];

/// A replica that loads the fault shim with its own control and stats files.
fn start(
    token: &common::TestToken,
    dir: &Path,
    env: &[(&str, &str)],
    control: &str,
) -> (Daemon, Shim) {
    std::fs::create_dir_all(dir).unwrap();
    let mut shim = Shim::at(dir);
    shim.set_control(control);
    let daemon = Launch::serve(token)
        .envs(shim.env())
        .envs(env.iter().copied())
        .start();
    (daemon, shim)
}

/// Makes `S` re-scan the token once (an unknown key id misses; the caller has a global role)
/// and waits for the scan.
async fn rescan(c: &mut Clients) {
    assert_eq!(c.get(MISSING).await.unwrap_err().code(), Code::NotFound);
}

fn reads(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    READS
        .iter()
        .map(|k| {
            let get = |m: &BTreeMap<String, u64>| m.get(*k).copied().unwrap_or(0);
            ((*k).to_string(), get(after) - get(before))
        })
        .collect()
}

/// The token reads of `MEASURED_SCANS` re-scans of an idle replica.
async fn idle_scan_reads(c: &mut Clients, shim: &Shim) -> BTreeMap<String, u64> {
    // The first scan may find a nonce changed by the others' last writes: not measured.
    rescan(c).await;
    let before = shim.settled_stats().await;
    for _ in 0..MEASURED_SCANS {
        rescan(c).await;
    }
    reads(&before, &shim.settled_stats().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_killed_at_random_points_leaves_nothing_behind() {
    let retention_hours = RETENTION.as_secs_f64() / 3600.0;
    let token = managed_token(&[
        ("refresh_interval_ms", 200.into()),
        ("deletion_retention_hours", retention_hours.into()),
        ("purge_interval_ms", NEVER_MS.parse::<i64>().unwrap().into()),
    ]);
    // Every replica loads the shim; those without its variables just pass through.
    token.set_module(&common::faultshim::shim_path());
    let dirs = token.state_dir().to_path_buf();
    let quiet = [
        ("P11KMS__MANAGED_KEYS__REFRESH_INTERVAL_MS", NEVER_MS),
        ("P11KMS__MANAGED_KEYS__PURGE_INTERVAL_MS", NEVER_MS),
    ];
    let purge_ms = PURGE_MS.to_string();
    let purger_env = [("P11KMS__MANAGED_KEYS__PURGE_INTERVAL_MS", purge_ms.as_str())];
    let slow_destroys = format!("delay_ms.C_DestroyObject = {DESTROY_DELAY_MS}");

    let (s, s_shim) = start(&token, &dirs.join("shim-s"), &quiet, "");
    let w1 = Daemon::serve(&token, &[]);
    let w2 = Daemon::serve(&token, &[]);
    let (mut cs, mut c1, c2) = (
        Clients::connect(&s).await,
        Clients::connect(&w1).await,
        Clients::connect(&w2).await,
    );
    let mut purger = Some(start(
        &token,
        &dirs.join("shim-k0"),
        &purger_env,
        &slow_destroys,
    ));

    let mut created: Vec<String> = Vec::new();
    let mut raced = 0;
    let mut killed_after: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_delete = Instant::now();
    let started = Instant::now();
    for cycle in 0..CYCLES {
        let mut keys = Vec::new();
        for _ in 0..KEYS_PER_CYCLE {
            keys.push(c1.create_key("purge", Algorithm::EcdsaP256Sha256).await.id);
        }
        // Destroy calls are counted from before the deletes: the first key of a cycle is due
        // before the last one is deleted, so a purger may start (or even finish) this cycle's
        // purge before the test could look (cycle 14 of a run: all destroyed before a count
        // taken when the last key was due, then "0 destroy calls in 30 s"). What it destroys
        // in between (leftovers of the last kill) counts too: the kill still lands at a random
        // point of its purging.
        let base = purger
            .as_ref()
            .expect("a purger runs")
            .1
            .stat("calls.C_DestroyObject");
        for id in &keys {
            let barrier = Arc::new(Barrier::new(2));
            let (b1, b2) = (Arc::clone(&barrier), Arc::clone(&barrier));
            let (mut d, mut u) = (c1.clone(), c2.clone());
            let (i1, i2) = (id.clone(), id.clone());
            let delete = tokio::spawn(async move {
                b1.wait().await;
                d.keys
                    .delete(
                        p11kms::api::yandex::grpc::pb::kms::DeleteAsymmetricSignatureKeyRequest {
                            key_id: i1,
                        },
                    )
                    .await
            });
            let describe = tokio::spawn(async move {
                b2.wait().await;
                u.update(&i2, &["description"], |r| r.description = "raced".into())
                    .await
            });
            delete.await.unwrap().expect("Delete");
            match describe.await.unwrap() {
                Ok(_) => raced += 1,
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => panic!("cycle {cycle}: Update: {s}"),
            }
            created.push(id.clone());
        }
        last_delete = Instant::now();
        rescan(&mut cs).await;

        // Kill the purger just before a random one of its destroy calls: once that call has
        // entered the shim, its delay is raised so that it cannot go on, then SIGKILL. A purge
        // shorter than the chosen point is killed once it has finished.
        let (mut k, mut k_shim) = purger.take().expect("a purger runs");
        let target = rand::random_range(1..=MAX_KILL_POINT);
        let observe_at = Duration::from_millis(rand::random_range(0..1000));
        let mut observer = cs.clone();
        let observing = tokio::spawn(async move {
            tokio::time::sleep(observe_at).await;
            rescan(&mut observer).await;
        });
        // Every key of this cycle is due from `due` on, and a purger whose purge runs makes a
        // destroy call every `DESTROY_DELAY_MS` and a little: from a second after `due`, a second
        // without one means its purge has finished.
        let due = last_delete + RETENTION;
        let waiting = Instant::now();
        let (mut seen, mut changed) = (0, Instant::now());
        let completed = loop {
            let n = k_shim.stat("calls.C_DestroyObject") - base;
            if n != seen {
                (seen, changed) = (n, Instant::now());
            }
            if n >= target {
                k_shim.set_control(HOLD_DESTROYS);
                k_shim.wait_applied_async().await;
                break k_shim.stat("calls.C_DestroyObject") - base - 1;
            }
            if n > 0
                && Instant::now() > due + Duration::from_secs(1)
                && changed.elapsed() > Duration::from_secs(1)
            {
                break n;
            }
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "cycle {cycle}: the purger made {n} destroy calls in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        k.kill();
        *killed_after.entry(completed).or_default() += 1;
        observing.await.unwrap();
        rescan(&mut cs).await;
        purger = Some(start(
            &token,
            &dirs.join(format!("shim-k{}", cycle + 1)),
            &purger_env,
            &slow_destroys,
        ));
    }
    println!(
        "{CYCLES} kill cycles of {KEYS_PER_CYCLE} keys in {:?}; a change raced the Delete for \
         {raced} of {} keys; kills after n completed destroy calls of that purger: {killed_after:?}",
        started.elapsed(),
        created.len()
    );

    // The last purger runs undisturbed until it is idle: once the last keys are due, it has
    // scanned the token several times without destroying anything more. Whatever is left then
    // would stay for good.
    tokio::time::sleep_until((last_delete + RETENTION).into()).await;
    let (mut k, k_shim) = purger.take().expect("a purger runs");
    let waited = Instant::now();
    let mut last = (u64::MAX, 0);
    loop {
        let stats = k_shim.stats();
        let now = (
            stats.get("calls.C_DestroyObject").copied().unwrap_or(0),
            stats.get("calls.C_FindObjectsInit").copied().unwrap_or(0),
        );
        if now.0 != last.0 {
            last = now;
        } else if now.1 >= last.1 + 10 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the last purger did not settle: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the last purger settled {:?} after the last key was due",
        waited.elapsed()
    );
    k.sigterm().await;
    drop((c1, c2));
    let (mut w1, mut w2) = (w1, w2);
    w1.sigterm().await;
    w2.sigterm().await;

    // Idle re-scans: the observer against a replica started on the clean token.
    let (fresh, f_shim) = start(&token, &dirs.join("shim-f"), &quiet, "");
    let mut cf = Clients::connect(&fresh).await;
    let observed = idle_scan_reads(&mut cs, &s_shim).await;
    let clean = idle_scan_reads(&mut cf, &f_shim).await;
    println!(
        "token reads of {MEASURED_SCANS} idle re-scans: observer {observed:?}, fresh replica {clean:?}"
    );
    drop((cs, cf, s, fresh));

    // Nothing of any key is left, as a fresh process sees the token.
    let leftovers = common::pkcs11::with_user_session(&token, |session| {
        let mut found = Vec::new();
        let ours = session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(b"p11kms".to_vec()),
            ])
            .unwrap();
        for h in ours {
            let label = session
                .get_attributes(h, &[AttributeType::Label])
                .unwrap()
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            if label.starts_with("p11kms/key/") {
                found.push(label);
            }
        }
        for id in &created {
            let objects = session
                .find_objects(&[Attribute::Id(id.as_bytes().to_vec())])
                .unwrap();
            if !objects.is_empty() {
                found.push(format!("{} object(s) with CKA_ID {id}", objects.len()));
            }
        }
        found
    });
    assert!(
        leftovers.is_empty(),
        "left on the token after the purges: {leftovers:#?}"
    );
    assert_eq!(
        observed, clean,
        "re-scans of the replica that saw the interrupted purges read the token more than a \
         clean replica's"
    );
}
