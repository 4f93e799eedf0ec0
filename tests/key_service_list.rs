//! Listing 2,500 keys (EC P-256, to keep creation fast): every page size pages through all of
//! them in id order with no duplicates or gaps, also while other keys are being created. Prints
//! the per-key create time, the List latency per page size, and how long a replica takes to load
//! that many keys at start-up (the numbers go into the closing note).
//!
//! `P11KMS_TEST_LIST_KEYS` overrides the number of keys (default 2500).

mod common;
mod key_service_support;

use common::Daemon;
use key_service_support::{managed_token, Clients};
use p11kms::crypto::Algorithm;
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

const FOLDER: &str = "many";
/// Client-side concurrency of the bulk create (the daemon's generation budget is 2).
const CREATORS: usize = 4;

fn key_count() -> usize {
    std::env::var("P11KMS_TEST_LIST_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2500)
}

fn summary(label: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let n = samples.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = samples.iter().sum::<Duration>() / u32::try_from(n).unwrap();
    format!(
        "{label}: n={n} mean={:.1} ms p50={:.1} ms p95={:.1} ms max={:.1} ms",
        ms(mean),
        ms(samples[n / 2]),
        ms(samples[(n * 95 / 100).min(n - 1)]),
        ms(samples[n - 1])
    )
}

/// Keys created one at a time at the start and at the end, for an unqueued per-key time.
const SEQUENTIAL: usize = 50;

/// Creates `n` keys with `clients` concurrent clients; returns their ids and each call's time.
async fn create_many(c: &Clients, n: usize, clients: usize) -> (Vec<String>, Vec<Duration>) {
    let mut tasks = Vec::new();
    for w in 0..clients {
        let mut c = c.clone();
        let share = n / clients + usize::from(w < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                let started = Instant::now();
                let key = c.create_key(FOLDER, Algorithm::EcdsaP256Sha256).await;
                out.push((key.id, started.elapsed()));
            }
            out
        }));
    }
    let mut ids = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for t in tasks {
        for (id, took) in t.await.unwrap() {
            ids.push(id);
            times.push(took);
        }
    }
    (ids, times)
}

/// Pages through the folder; checks order and uniqueness; returns the ids and page latencies.
async fn page_through(c: &mut Clients, page_size: i64) -> (Vec<String>, Vec<Duration>) {
    let mut ids: Vec<String> = Vec::new();
    let mut latencies = Vec::new();
    let mut token = String::new();
    loop {
        let started = Instant::now();
        let page = c.list_page(FOLDER, page_size, &token).await.expect("List");
        latencies.push(started.elapsed());
        assert!(
            page.keys.len() <= usize::try_from(page_size).unwrap(),
            "a page has {} keys, more than page_size {page_size}",
            page.keys.len()
        );
        for k in page.keys {
            if let Some(last) = ids.last() {
                assert!(
                    *last < k.id,
                    "List is not in id order: {last} then {}",
                    k.id
                );
            }
            ids.push(k.id);
        }
        if page.next_page_token.is_empty() {
            return (ids, latencies);
        }
        assert!(page.next_page_token.len() <= 256);
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_thousands_of_keys_pages_without_duplicates_or_gaps() {
    let n = key_count();
    let token = managed_token(&[("max_concurrent_generations", 2.into())]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;

    let sequential = SEQUENTIAL.min(n / 4);
    let started = Instant::now();
    let (mut ids, first) = create_many(&c, sequential, 1).await;
    let bulk_started = Instant::now();
    let (more, bulk) = create_many(&c, n - 2 * sequential, CREATORS).await;
    let bulk_wall = bulk_started.elapsed();
    let (last_ids, last) = create_many(&c, sequential, 1).await;
    let create_wall = started.elapsed();
    ids.extend(more);
    ids.extend(last_ids);
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(expected.len(), n, "key ids are unique");

    let mut report = vec![
        format!(
            "created {n} EC P-256 keys in {create_wall:.1?} ({:.1} keys/s overall)",
            n as f64 / create_wall.as_secs_f64()
        ),
        summary(
            &format!("  Create, one at a time, token holding 0..{sequential} API keys"),
            first,
        ),
        summary(
            &format!(
                "  Create, one at a time, token holding {}..{n} API keys",
                n - sequential
            ),
            last,
        ),
        format!(
            "  bulk: {} keys with {CREATORS} concurrent clients (generation budget 2) in {bulk_wall:.1?}, {:.1} keys/s",
            n - 2 * sequential,
            (n - 2 * sequential) as f64 / bulk_wall.as_secs_f64()
        ),
        summary("  Create call in the bulk phase (client-observed, includes queueing)", bulk),
    ];

    for page_size in [1, 7, 100, 1000] {
        if page_size == 1 && n > 500 {
            continue; // 2,500 round trips say nothing the others do not
        }
        let (listed, latencies) = page_through(&mut c, page_size).await;
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "page size {page_size}: duplicates"
        );
        assert_eq!(unique, expected, "page size {page_size}: gaps or strangers");
        report.push(summary(
            &format!("  List page_size={page_size} ({} pages)", latencies.len()),
            latencies,
        ));
    }
    let (default_page, _) = {
        let page = c.list_page(FOLDER, 0, "").await.unwrap();
        (page.keys.len(), page.next_page_token)
    };
    assert_eq!(default_page, 100.min(n), "page_size 0 means 100");

    // Paging while other keys are created: every key that existed before the first page is
    // listed exactly once, nothing twice, order kept.
    let extra = (n / 10).clamp(10, 250);
    let creating = {
        let c = c.clone();
        tokio::spawn(async move { create_many(&c, extra, CREATORS).await })
    };
    let mut rounds = 0;
    let mut seen_new = 0;
    while !creating.is_finished() || rounds == 0 {
        rounds += 1;
        let (listed, _) = page_through(&mut c, 50).await;
        let unique: HashSet<&String> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "duplicates while creating");
        for id in &expected {
            assert!(
                unique.contains(id),
                "{id} existed throughout but was not listed"
            );
        }
        seen_new = seen_new.max(listed.len() - n);
    }
    let (new_ids, _) = creating.await.unwrap();
    let (listed, _) = page_through(&mut c, 1000).await;
    let all: BTreeSet<String> = expected.iter().chain(&new_ids).cloned().collect();
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), all);
    report.push(format!(
        "  {rounds} full listings (page_size 50) during {extra} concurrent creates: no duplicates, no gaps (up to {seen_new} new keys seen mid-way)"
    ));

    // A replica starting on this token loads every key from the token.
    let started = Instant::now();
    let other = Daemon::serve(&token, &[]);
    let load = started.elapsed();
    let mut co = Clients::connect(&other).await;
    let (listed, _) = page_through(&mut co, 1000).await;
    assert_eq!(listed.len(), all.len());
    report.push(format!(
        "  a second replica started (process start to ready, loading {} keys) in {load:.1?}",
        all.len()
    ));
    let some = co.get(&ids[n / 2]).await.unwrap();
    co.sign_verified(&some).await.unwrap();

    println!("\n{}\n", report.join("\n"));
}
