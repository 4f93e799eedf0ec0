//! Listing a folder of a few hundred keys created through the API: every page size pages through
//! all of them in id order with no duplicates or gaps, also while other keys are being created,
//! and a replica started on the token lists the same keys and signs with them.
//!
//! Why a few hundred and not 2,500: on SoftHSM's file store every create re-reads the token's
//! directory, and creates take turns, so each costs 0.1–0.3 s (more on a busy machine): 2,500
//! keys took five minutes, well past the suite's time for one test. Paging has no behaviour that
//! appears only past a few hundred keys; what it has is covered here: pages of one key, page
//! sizes that do and do not divide the folder, a last page that ends exactly at the last key (it
//! must carry no token), the largest page size, the default size, keys inserted between two
//! pages, and a replica loading every key from the token. The numbers at 2,500 keys (creates as
//! the token fills, List latency per page size, a replica's start-up) come from `p11kms bench
//! --key-service 2500` (scripts/bench-report, BENCHMARKS.md). A fixture token built once per run
//! was the other option; this is the only test that would use it, and it writes to the token, so
//! it would save nothing.
//!
//! `P11KMS_TEST_LIST_KEYS` overrides the number of keys (default [`KEYS`]).

mod common;
mod key_service_support;

use common::Daemon;
use key_service_support::{managed_token, Clients};
use p11kms::crypto::Algorithm;
use std::collections::{BTreeSet, HashSet};

/// Two default pages (100) exactly; the page sizes below divide it or not, or are one off it.
const KEYS: usize = 200;
const FOLDER: &str = "many";
/// Client-side concurrency of the creates (the daemon's generation budget is 2), so that the
/// daemon always has the next create queued.
const CREATORS: usize = 4;

fn key_count() -> usize {
    std::env::var("P11KMS_TEST_LIST_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KEYS)
}

/// Creates `n` P-256 keys with `clients` concurrent clients; returns their ids.
async fn create_many(c: &Clients, n: usize, clients: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..clients {
        let mut c = c.clone();
        let share = n / clients + usize::from(w < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                out.push(c.create_key(FOLDER, Algorithm::EcdsaP256Sha256).await.id);
            }
            out
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids
}

/// Pages through the folder; checks each page's size, the id order and uniqueness; returns the
/// ids and the number of pages.
async fn page_through(c: &mut Clients, page_size: i64) -> (Vec<String>, usize) {
    let mut ids: Vec<String> = Vec::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = c.list_page(FOLDER, page_size, &token).await.expect("List");
        pages += 1;
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
            return (ids, pages);
        }
        assert!(page.next_page_token.len() <= 256);
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_hundreds_of_keys_pages_without_duplicates_or_gaps() {
    let n = key_count();
    assert!(
        n > 100,
        "P11KMS_TEST_LIST_KEYS={n}: more than one default page is needed"
    );
    let token = managed_token(&[("max_concurrent_generations", 2.into())]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;

    let ids = create_many(&c, n, CREATORS).await;
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(expected.len(), n, "key ids are unique");

    let size = |s: usize| i64::try_from(s).unwrap();
    for page_size in [1, 7, 64, 100, size(n - 1), size(n), size(n + 1), 1000] {
        let (listed, pages) = page_through(&mut c, page_size).await;
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "page size {page_size}: duplicates"
        );
        assert_eq!(unique, expected, "page size {page_size}: gaps or strangers");
        // No empty trailing page: a page that ends at the last key says there is no more.
        assert_eq!(
            pages,
            n.div_ceil(usize::try_from(page_size).unwrap()),
            "page size {page_size}: pages for {n} keys"
        );
    }
    let default_page = c.list_page(FOLDER, 0, "").await.unwrap();
    assert_eq!(default_page.keys.len(), 100, "page_size 0 means 100");
    assert!(!default_page.next_page_token.is_empty());

    // Paging while other keys are created: every key that existed before the first page is
    // listed exactly once, nothing twice, order kept. Small pages, so that many new keys land
    // between two pages of one listing.
    let extra = (n / 10).max(10);
    let creating = {
        let c = c.clone();
        tokio::spawn(async move { create_many(&c, extra, CREATORS).await })
    };
    let mut rounds = 0;
    let mut seen_new = 0;
    while !creating.is_finished() || rounds == 0 {
        rounds += 1;
        let (listed, _) = page_through(&mut c, 7).await;
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
    let new_ids = creating.await.unwrap();
    let (listed, _) = page_through(&mut c, 1000).await;
    let all: BTreeSet<String> = expected.iter().chain(&new_ids).cloned().collect();
    assert_eq!(all.len(), n + extra);
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), all);
    println!(
        "{rounds} full listings (page_size 7) during {extra} concurrent creates: no duplicates, \
         no gaps (up to {seen_new} new keys seen mid-way)"
    );

    // A replica starting on this token loads every key from the token's documents.
    let other = Daemon::serve(&token, &[]);
    let mut co = Clients::connect(&other).await;
    for page_size in [100, 1000] {
        let (listed, _) = page_through(&mut co, page_size).await;
        assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), all);
    }
    for id in [&ids[0], &ids[n / 2], &new_ids[extra - 1]] {
        let key = co.get(id).await.unwrap();
        co.sign_verified(&key).await.unwrap();
    }
}
