//! Issue 11, item 6: how long an answer takes must not tell whether a key exists.
//!
//! For four kinds of caller, a request about a key that exists but that the caller may not use
//! and the same request about a key that does not exist get the same code and message (up to
//! the key id where the message names it), and their median latencies over 200 requests each,
//! measured in the same run, interleaved, are within 20% of each other (a ratio, not an
//! absolute time):
//!
//! | caller | existing key | answer |
//! |---|---|---|
//! | no role anywhere | another folder's | PERMISSION_DENIED, from memory |
//! | kms.editor on folder `fa` | folder `fb`'s | PERMISSION_DENIED, after one re-scan |
//! | signer on every folder | a deleted one | NOT_FOUND, after one re-scan |
//! | signer on key A only (per-key binding) | key B | PERMISSION_DENIED, from memory |
//!
//! Before the fix, the folder editor's missing key waited for a forced re-scan (~250 ms) while
//! the existing key was refused at once (~1 ms).

mod common;
mod key_service_support;

use common::{Daemon, Kms};
use key_service_support::{managed_token, Clients};
use p11kms::api::yandex::grpc::pb::yandex::cloud::access::{
    AccessBinding, SetAccessBindingsRequest, Subject,
};
use p11kms::crypto::Algorithm;
use std::time::{Duration, Instant};
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const SA: &str = "serviceAccount";
const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const EDITOR: &str = "kms.editor";
const MISSING: &str = "nosuchkey00000000000";
/// Requests per side and caller kind.
const REQUESTS: usize = 200;
/// Concurrent clients per caller kind; each alternates the two keys in a random order.
const WORKERS: usize = 8;
/// Most a median may exceed the other by.
const MAX_RATIO: f64 = 1.2;
/// Short, so that callers past their forced-scan budget wait for a periodic scan briefly.
const REFRESH_MS: i64 = 200;

struct Kind {
    name: &'static str,
    secret: String,
    existing: String,
    code: Code,
}

/// The code and the message with the key id taken out.
async fn answer(kms: &mut Kms, key: &str) -> (Code, String) {
    match kms.sign(key, b"existence").await {
        Ok(_) => panic!("signing with {key} succeeded"),
        Err(s) => (s.code(), s.message().replace(key, "<key id>")),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `REQUESTS` timed requests for each of the two keys, from `WORKERS` clients at once.
async fn measure(daemon: &Daemon, secret: &str, existing: &str) -> (Vec<Duration>, Vec<Duration>) {
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut kms = daemon.kms_as(Some(secret)).await;
        let existing = existing.to_string();
        let rounds = REQUESTS / WORKERS + usize::from(w < REQUESTS % WORKERS);
        tasks.push(tokio::spawn(async move {
            let (mut t_existing, mut t_missing) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let first_existing = rand::random::<bool>();
                for is_existing in [first_existing, !first_existing] {
                    let key = if is_existing { &existing } else { MISSING };
                    let started = Instant::now();
                    let _ = kms.sign(key, b"timing").await.unwrap_err();
                    let took = started.elapsed();
                    if is_existing {
                        t_existing.push(took);
                    } else {
                        t_missing.push(took);
                    }
                }
            }
            (t_existing, t_missing)
        }));
    }
    let (mut existing, mut missing) = (Vec::new(), Vec::new());
    for t in tasks {
        let (e, m) = t.await.unwrap();
        existing.extend(e);
        missing.extend(m);
    }
    (existing, missing)
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_and_missing_keys_answer_alike_and_in_similar_time() {
    let token = managed_token(&[("refresh_interval_ms", REFRESH_MS.into())]);
    let secret = |name: &str| format!("tok-{name}-{}", hex::encode(rand::random::<[u8; 12]>()));
    let (nobody, feditor, gsigner, kbinder) = (
        secret("nobody"),
        secret("feditor"),
        secret("gsigner"),
        secret("kbinder"),
    );
    token.add_api_token(&nobody, "nobody", SA);
    token.add_api_token(&feditor, "feditor", SA);
    token.add_api_token(&gsigner, "gsigner", SA);
    token.add_api_token(&kbinder, "kbinder", SA);
    token.add_binding(EDITOR, "feditor", SA, "fa");
    token.add_binding(SIGNER, "gsigner", SA, "*");
    let daemon = Daemon::serve(&token, &[]);
    let mut admin = Clients::connect(&daemon).await;
    let key_a = admin.create_key("fa", P256).await.id;
    let key_b = admin.create_key("fb", P256).await.id;
    let deleted = admin.create_key("fb", P256).await.id;
    admin.delete(&deleted).await.unwrap();
    admin
        .keys
        .set_access_bindings(SetAccessBindingsRequest {
            resource_id: key_a.clone(),
            access_bindings: vec![AccessBinding {
                role_id: SIGNER.into(),
                subject: Some(Subject {
                    id: "kbinder".into(),
                    r#type: SA.into(),
                }),
            }],
        })
        .await
        .unwrap();
    // The roles work: each caller can sign with a key it has a role on.
    for (secret, key) in [(&feditor, &key_a), (&gsigner, &key_b), (&kbinder, &key_a)] {
        daemon
            .kms_as(Some(secret))
            .await
            .sign(key, b"ok")
            .await
            .unwrap();
    }

    let kinds = [
        Kind {
            name: "no role anywhere",
            secret: nobody,
            existing: key_b.clone(),
            code: Code::PermissionDenied,
        },
        Kind {
            name: "role on another folder",
            secret: feditor,
            existing: key_b.clone(),
            code: Code::PermissionDenied,
        },
        Kind {
            name: "global role (a deleted key)",
            secret: gsigner,
            existing: deleted,
            code: Code::NotFound,
        },
        Kind {
            name: "key-binding role on another key",
            secret: kbinder,
            existing: key_b,
            code: Code::PermissionDenied,
        },
    ];

    // Latencies of a few milliseconds: no load test of the suite may run meanwhile.
    let _cpu = common::load::cpu_exclusive();
    let mut failures = Vec::new();
    for kind in &kinds {
        let mut kms = daemon.kms_as(Some(&kind.secret)).await;
        let on_existing = answer(&mut kms, &kind.existing).await;
        let on_missing = answer(&mut kms, MISSING).await;
        assert_eq!(on_existing.0, kind.code, "{}: {on_existing:?}", kind.name);
        assert_eq!(
            on_existing, on_missing,
            "{}: an existing key answers differently from a missing one",
            kind.name
        );
        let (existing, missing) = measure(&daemon, &kind.secret, &kind.existing).await;
        let (a, b) = (median(existing), median(missing));
        let ratio = a.max(b).as_secs_f64() / a.min(b).as_secs_f64().max(1e-9);
        println!(
            "{}: {:?} ({}): median existing {a:?}, missing {b:?}, ratio {ratio:.2} over \
             {REQUESTS} requests each",
            kind.name, kind.code, on_existing.1
        );
        if ratio > MAX_RATIO {
            failures.push(format!("{}: {a:?} vs {b:?} (ratio {ratio:.2})", kind.name));
        }
    }
    assert!(
        failures.is_empty(),
        "medians differ by more than {MAX_RATIO}x: {failures:#?}"
    );
}
