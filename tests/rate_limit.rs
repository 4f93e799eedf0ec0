//! The per-subject rate limit (issue 5, item 6): an abusive subject gets RESOURCE_EXHAUSTED
//! while another subject keeps at least 99% success; callers without credentials share a bucket
//! per client IP; health checks are exempt.

mod common;

use common::{dev_key_id, CryptoClient, Launch, ServingStatus, TestToken};
use p11kms::api::yandex::grpc::pb::kms::AsymmetricGetPublicKeyRequest;
use p11kms::crypto::Algorithm;
use std::time::{Duration, Instant};
use tonic::Code;

const SA: &str = "serviceAccount";
const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const RPS: u32 = 50;
const BURST: u32 = 50;
const ABUSERS: usize = 8;
/// The victim's pace (20 requests per second, well inside its own limit) and how many requests
/// it makes: the run lasts as long as they take on this machine (about 3 s), rather than a
/// fixed time in which a loaded machine might fit too few to judge.
const VICTIM_EVERY: Duration = Duration::from_millis(50);
const VICTIM_REQUESTS: u32 = 60;

#[tokio::test(flavor = "multi_thread")]
async fn an_abusive_subject_is_throttled_while_another_keeps_working() {
    let _cpu = common::load::cpu_shared();
    let token = TestToken::dev();
    token.set_config("rate_limit", "per_subject_rps", f64::from(RPS));
    token.set_config("rate_limit", "burst", i64::from(BURST));
    let abuser = format!("abuser-{}", hex::encode(rand::random::<[u8; 16]>()));
    let victim = format!("victim-{}", hex::encode(rand::random::<[u8; 16]>()));
    token.add_api_token(&abuser, "abuser", SA);
    token.add_api_token(&victim, "victim", SA);
    token.add_binding(SIGNER, "abuser", SA, "*");
    token.add_binding(SIGNER, "victim", SA, "*");
    let daemon = Launch::serve(&token).start();
    let key = dev_key_id(Algorithm::EcdsaP256Sha256);

    // The abuser: ABUSERS connections, each as fast as it can, until the victim is done.
    let started = Instant::now();
    let victim_done = tokio_util::sync::CancellationToken::new();
    let mut hammers = tokio::task::JoinSet::new();
    for _ in 0..ABUSERS {
        let mut c = CryptoClient::new(daemon.auth_channel_as(Some(&abuser)).await);
        let key = key.clone();
        let done = victim_done.clone();
        hammers.spawn(async move {
            let (mut ok, mut exhausted, mut other, mut message) = (0u32, 0u32, 0u32, None);
            while !done.is_cancelled() {
                match c
                    .get_public_key(AsymmetricGetPublicKeyRequest {
                        key_id: key.clone(),
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        exhausted += 1;
                        message.get_or_insert_with(|| s.message().to_string());
                    }
                    Err(_) => other += 1,
                }
            }
            (ok, exhausted, other, message)
        });
    }

    // The victim: Sign at a steady pace, well inside its own limit.
    let mut kms = daemon.kms_as(Some(&victim)).await;
    let mut tick = tokio::time::interval(VICTIM_EVERY);
    let (mut v_ok, mut v_total, mut v_codes) = (0u32, 0u32, Vec::new());
    while v_total < VICTIM_REQUESTS {
        tick.tick().await;
        v_total += 1;
        match kms.sign(&key, b"steady").await {
            Ok(_) => v_ok += 1,
            Err(s) => v_codes.push(s.code()),
        }
    }
    victim_done.cancel();

    // Health stays available to anyone, throttled or not.
    assert_eq!(daemon.health("").await.unwrap(), ServingStatus::Serving);

    let (mut a_ok, mut a_exhausted, mut a_other, mut message) = (0, 0, 0, None);
    while let Some(r) = hammers.join_next().await {
        let (ok, ex, other, m) = r.unwrap();
        a_ok += ok;
        a_exhausted += ex;
        a_other += other;
        message = message.or(m);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let victim_rate = f64::from(v_ok) / f64::from(v_total);
    println!(
        "{elapsed:.1} s at {RPS} rps (burst {BURST}) per subject: abuser {a_ok} OK, \
         {a_exhausted} RESOURCE_EXHAUSTED, {a_other} other; victim {v_ok}/{v_total} OK \
         ({:.1}%), failures {v_codes:?}",
        victim_rate * 100.0
    );
    assert!(a_exhausted > 0, "the abuser was never throttled");
    assert_eq!(
        a_other, 0,
        "the abuser got codes other than OK and RESOURCE_EXHAUSTED"
    );
    let allowed = f64::from(BURST) + f64::from(RPS) * elapsed;
    assert!(
        f64::from(a_ok) <= allowed * 1.1 + 5.0,
        "the abuser got {a_ok} answers, the bucket allows about {allowed:.0}"
    );
    let message = message.unwrap();
    assert!(message.contains("back off"), "{message}");
    assert!(
        victim_rate >= 0.99,
        "the victim kept only {:.1}%",
        victim_rate * 100.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_credentials_share_a_bucket_per_address() {
    let token = TestToken::dev();
    token.set_config("rate_limit", "per_subject_rps", 5.0);
    token.set_config("rate_limit", "burst", 5);
    let daemon = Launch::serve(&token).start();
    let key = dev_key_id(Algorithm::EcdsaP256Sha256);
    let mut anonymous = daemon.kms_as(None).await;
    let mut wrong = daemon.kms_as(Some("no-such-token")).await;
    // Alternating, until the shared bucket has refused 20 (a loaded machine just takes longer);
    // what it let through (UNAUTHENTICATED) is bounded by the bucket over the time it took.
    let started = Instant::now();
    let mut codes = Vec::new();
    let mut i = 0;
    while codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count()
        < 20
    {
        assert!(codes.len() < 1000, "the bucket refused too few: {codes:?}");
        let c = if i % 2 == 0 {
            &mut anonymous
        } else {
            &mut wrong
        };
        codes.push(c.sign(&key, b"x").await.unwrap_err().code());
        i += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let unauthenticated = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    assert_eq!(unauthenticated + 20, codes.len(), "{codes:?}");
    let allowed = 5.0 + 5.0 * elapsed;
    assert!(
        unauthenticated as f64 <= allowed + 1.0,
        "{unauthenticated} unauthenticated calls got past a bucket of 5 + 5/s in {elapsed:.2} s: {codes:?}"
    );
    // A subject with credentials from the same address has its own bucket.
    let mut admin = daemon.kms().await;
    for _ in 0..5 {
        admin.public_key(&key).await.unwrap();
    }
}
