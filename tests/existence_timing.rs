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
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const SA: &str = "serviceAccount";
const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const EDITOR: &str = "kms.editor";
const MISSING: &str = "nosuchkey00000000000";
/// Requests per side and caller kind.
const REQUESTS: usize = 200;
/// Callers per kind, each its own identity with the same roles, each sending its share of the
/// requests one after the other, alternating the two keys in a random order. Several
/// identities keep every caller within its budget of re-scans (`auth::authz::SCAN_BURST`), so
/// the measured route is the one with the wait where a kind of caller has one.
const IDENTITIES: usize = 10;
/// Most a median may exceed the other by.
const MAX_RATIO: f64 = 1.2;
/// The refresh interval; forced re-scans do not wait for it.
const REFRESH_MS: i64 = 1000;
/// A request slower than this waited for a re-scan.
const WAITED: Duration = Duration::from_millis(50);

struct Kind {
    name: &'static str,
    secrets: Vec<String>,
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

/// `REQUESTS` timed requests for each of the two keys, from every identity at once.
async fn measure(
    daemon: &Daemon,
    secrets: &[String],
    existing: &str,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut tasks = Vec::new();
    for secret in secrets {
        let mut kms = daemon.kms_as(Some(secret)).await;
        let existing = existing.to_string();
        let rounds = REQUESTS / secrets.len();
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
    let mut secrets: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for kind in ["nobody", "feditor", "gsigner", "kbinder"] {
        for i in 0..IDENTITIES {
            let subject = format!("{kind}{i}");
            let secret = format!("tok-{subject}-{}", hex::encode(rand::random::<[u8; 12]>()));
            token.add_api_token(&secret, &subject, SA);
            match kind {
                "feditor" => token.add_binding(EDITOR, &subject, SA, "fa"),
                "gsigner" => token.add_binding(SIGNER, &subject, SA, "*"),
                _ => {}
            }
            secrets.entry(kind).or_default().push(secret);
        }
    }
    let daemon = Daemon::serve(&token, &[]);
    let mut admin = Clients::connect(&daemon).await;
    let key_a = admin.create_key("fa", P256).await.id;
    let key_b = admin.create_key("fb", P256).await.id;
    let deleted = admin.create_key("fb", P256).await.id;
    admin.delete(&deleted).await.unwrap();
    let per_key: Vec<AccessBinding> = (0..IDENTITIES)
        .map(|i| AccessBinding {
            role_id: SIGNER.into(),
            subject: Some(Subject {
                id: format!("kbinder{i}"),
                r#type: SA.into(),
            }),
        })
        .collect();
    admin
        .keys
        .set_access_bindings(SetAccessBindingsRequest {
            resource_id: key_a.clone(),
            access_bindings: per_key,
        })
        .await
        .unwrap();
    // The roles work: each kind of caller can sign with a key it has a role on.
    for (kind, key) in [
        ("feditor", &key_a),
        ("gsigner", &key_b),
        ("kbinder", &key_a),
    ] {
        for secret in &secrets[kind] {
            daemon
                .kms_as(Some(secret))
                .await
                .sign(key, b"ok")
                .await
                .unwrap();
        }
    }

    let mut take = |kind: &str| secrets.remove(kind).expect("made above");
    let kinds = [
        Kind {
            name: "no role anywhere",
            secrets: take("nobody"),
            existing: key_b.clone(),
            code: Code::PermissionDenied,
        },
        Kind {
            name: "role on another folder",
            secrets: take("feditor"),
            existing: key_b.clone(),
            code: Code::PermissionDenied,
        },
        Kind {
            name: "global role (a deleted key)",
            secrets: take("gsigner"),
            existing: deleted,
            code: Code::NotFound,
        },
        Kind {
            name: "key-binding role on another key",
            secrets: take("kbinder"),
            existing: key_b,
            code: Code::PermissionDenied,
        },
    ];

    // Latencies of a few milliseconds: no load test of the suite may run meanwhile.
    let _cpu = common::load::cpu_exclusive();
    let mut failures = Vec::new();
    for kind in &kinds {
        let mut kms = daemon.kms_as(Some(&kind.secrets[0])).await;
        let on_existing = answer(&mut kms, &kind.existing).await;
        let on_missing = answer(&mut kms, MISSING).await;
        assert_eq!(on_existing.0, kind.code, "{}: {on_existing:?}", kind.name);
        assert_eq!(
            on_existing, on_missing,
            "{}: an existing key answers differently from a missing one",
            kind.name
        );
        let (existing, missing) = measure(&daemon, &kind.secrets, &kind.existing).await;
        let waited = |v: &[Duration]| v.iter().filter(|d| **d >= WAITED).count();
        let (w_existing, w_missing) = (waited(&existing), waited(&missing));
        let (a, b) = (median(existing), median(missing));
        let ratio = a.max(b).as_secs_f64() / a.min(b).as_secs_f64().max(1e-9);
        println!(
            "{}: {:?} ({}): median existing {a:?}, missing {b:?}, ratio {ratio:.2} over \
             {REQUESTS} requests each; {w_existing} and {w_missing} of them took over {WAITED:?}",
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
