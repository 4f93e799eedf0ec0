//! Two daemon processes in front of the same SoftHSM token (same token directory) share all key
//! state through the token: a key created through one signs through the other at once (a miss
//! triggers a re-scan), and changes made on one are seen by the other within the refresh
//! interval.

mod common;
mod key_service_support;

use common::{assert_status, Daemon};
use key_service_support::{eventually, managed_token, Clients};
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_key::Status as KeyStatus;
use p11kms::api::yandex::grpc::pb::operation::GetOperationRequest;
use p11kms::crypto::Algorithm;
use std::time::{Duration, Instant};
use tonic::Code;

const REFRESH: Duration = Duration::from_millis(500);
/// p11kms's touches after a write (`src/keys/manager.rs`): 0.3 s after it, then 1.5 s and 5 s
/// after the last write, each up to 0.4 s later (jitter). SoftHSM's file store may hide a write
/// from another process until some process writes again; a touch is that write.
const SECOND_TOUCH: Duration = Duration::from_millis(1500 + 400);
const LAST_TOUCH: Duration = Duration::from_millis(5000 + 400);

/// A change on one replica reaches the other: visible by the second touch at the latest, then
/// the next refresh, then a scan. The scan is allowed four times what a forced re-scan (plus a
/// verified signature) took in this run. On a network HSM it is just the refresh interval.
fn seen_within(scan: Duration) -> Duration {
    SECOND_TOUCH + REFRESH + 4 * scan
}

/// After both replicas wrote at the same moments, one may not see the other's last objects
/// until the final touch; then the next refresh and a scan, as in [`seen_within`].
fn converged_within(scan: Duration) -> Duration {
    LAST_TOUCH + REFRESH + 4 * scan
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_keys_and_changes_through_the_token() {
    let token = managed_token(&[("refresh_interval_ms", 500.into())]);
    let a = Daemon::serve(&token, &[]);
    let b = Daemon::serve(&token, &[]);
    let mut ca = Clients::connect(&a).await;
    let mut cb = Clients::connect(&b).await;

    // Created through A, used through B at once: B's miss re-scans the token.
    let op = ca
        .keys
        .create(
            p11kms::api::yandex::grpc::pb::kms::CreateAsymmetricSignatureKeyRequest {
                folder_id: "shared".into(),
                signature_algorithm: Algorithm::EcdsaP384Sha384.to_proto(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_inner();
    let created_at = Instant::now();
    let key = key_service_support::key_of(&op, key_service_support::CREATE_META);
    cb.sign_verified(&key)
        .await
        .expect("B signs with a key created through A");
    let scan = created_at.elapsed();
    let seen = seen_within(scan);
    println!("B signed {scan:?} after A's Create returned; changes must be seen within {seen:?}");
    assert_eq!(cb.get(&key.id).await.unwrap(), key);
    // B answers for A's operation too.
    let got = cb
        .ops
        .get(GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .expect("B knows A's operation")
        .into_inner();
    assert_eq!(got, op);
    assert_eq!(cb.list_all("shared", 100).await, vec![key.clone()]);
    let rsa = cb.create_key("shared", Algorithm::Rsa2048PssSha256).await;
    ca.sign_verified(&rsa).await.expect("and A with B's");

    // An update on A is seen by B within the refresh interval.
    ca.set_status(&key.id, KeyStatus::Inactive).await.unwrap();
    let (_, took) =
        eventually("B sees A's deactivation", seen, || {
            let mut cb = cb.clone();
            let id = key.id.clone();
            async move {
                (cb.get(&id).await.unwrap().status == KeyStatus::Inactive as i32).then_some(())
            }
        })
        .await;
    println!("B saw A's update after {took:?} (refresh interval {REFRESH:?})");
    assert_status(
        cb.kms.sign(&key.id, b"x").await,
        Code::FailedPrecondition,
        &["INACTIVE"],
    );

    // And the other way round.
    cb.update(&key.id, &["name", "status"], |r| {
        r.name = "renamed-on-b".into();
        r.status = KeyStatus::Active as i32;
    })
    .await
    .unwrap();
    eventually("A sees B's update", seen, || {
        let mut ca = ca.clone();
        let id = key.id.clone();
        async move { (ca.get(&id).await.unwrap().name == "renamed-on-b").then_some(()) }
    })
    .await;
    ca.sign_verified(&key).await.unwrap();

    // A delete on A hides the key on B within the interval; B restores it.
    ca.delete(&key.id).await.unwrap();
    eventually("B stops serving the deleted key", seen, || {
        let mut cb = cb.clone();
        let id = key.id.clone();
        async move {
            match cb.kms.sign(&id, b"x").await {
                Err(s) if s.code() == Code::NotFound => Some(()),
                Ok(_) => None,
                Err(s) => panic!("unexpected {s}"),
            }
        }
    })
    .await;
    assert_status(cb.get(&key.id).await, Code::NotFound, &[]);
    cb.undelete(&key.id)
        .await
        .expect("B restores what A deleted");
    eventually("A serves the restored key", seen, || {
        let mut ca = ca.clone();
        let id = key.id.clone();
        async move { ca.kms.sign(&id, b"x").await.ok() }
    })
    .await;
    ca.sign_verified(&key).await.unwrap();

    // The operations recorded by both replicas are one history on the token.
    let ops_a = ca.operations(&key.id).await.unwrap();
    let ops_b = cb.operations(&key.id).await.unwrap();
    assert_eq!(ops_a, ops_b);
    assert_eq!(ops_a.len(), 5, "create, update, update, delete, undelete");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_changes_on_two_replicas_are_not_lost() {
    let token = managed_token(&[("refresh_interval_ms", 500.into())]);
    let a = Daemon::serve(&token, &[]);
    let b = Daemon::serve(&token, &[]);
    let mut ca = Clients::connect(&a).await;
    let mut cb = Clients::connect(&b).await;
    let key = ca.create_key("race", Algorithm::EcdsaP256Sha256).await;
    // B's miss re-scans the token: the yardstick for a scan on this machine now.
    let started = Instant::now();
    cb.sign_verified(&key).await.unwrap();
    let converged = converged_within(started.elapsed());

    // A keeps renaming, B keeps re-describing, at the same time. Each change re-reads the
    // document on the token and writes only over what it read, so neither erases the other.
    const ROUNDS: usize = 15;
    let id = key.id.clone();
    let mut ra = ca.clone();
    let on_a = tokio::spawn(async move {
        for i in 0..ROUNDS {
            let name = format!("a-{i}");
            while retry(ra.update(&id, &["name"], |r| r.name = name.clone()).await) {}
        }
    });
    let id = key.id.clone();
    let mut rb = cb.clone();
    let on_b = tokio::spawn(async move {
        for i in 0..ROUNDS {
            let description = format!("b-{i}");
            while retry(
                rb.update(&id, &["description"], |r| {
                    r.description = description.clone()
                })
                .await,
            ) {}
        }
    });
    on_a.await.unwrap();
    on_b.await.unwrap();

    let last = (format!("a-{}", ROUNDS - 1), format!("b-{}", ROUNDS - 1));
    for c in [&mut ca, &mut cb] {
        let c2 = c.clone();
        let id = key.id.clone();
        let last = last.clone();
        eventually(
            "both replicas converge on both last changes",
            converged,
            move || {
                let mut c = c2.clone();
                let id = id.clone();
                let last = last.clone();
                async move {
                    let k = c.get(&id).await.unwrap();
                    (k.name == last.0 && k.description == last.1).then_some(())
                }
            },
        )
        .await;
        c.sign_verified(&key).await.unwrap();
    }
    let ops = ca.operations(&key.id).await.unwrap();
    assert_eq!(ops.len(), 20, "the last 20 of 31 operations are kept");
    assert_eq!(ops, cb.operations(&key.id).await.unwrap());
}

/// Whether to try again: the change failed with ABORTED (the key kept changing on the other
/// replica). Any other failure fails the test.
fn retry<T>(outcome: Result<T, tonic::Status>) -> bool {
    match outcome {
        Ok(_) => false,
        Err(s) if s.code() == Code::Aborted => true,
        Err(s) => panic!("unexpected {s}"),
    }
}
