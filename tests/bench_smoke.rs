//! `p11kms bench` runs, measures what it was asked to, and verifies signatures. Short runs;
//! nothing here asserts a timing (the numbers belong in BENCHMARKS.md, from a quiet machine).

mod common;

use common::load::cpu_shared;
use common::{Launch, TestToken};
use serde_json::Value;

/// Runs `p11kms bench --json <args>` on a copy of the dev token and returns the report.
fn bench(token: &TestToken, args: &[&str]) -> Value {
    let mut launch = Launch::new(["bench", "--json", "--state-dir"]).arg(token.state_dir());
    for a in args {
        launch = launch.arg(a);
    }
    let out = launch.output();
    assert!(out.status.success(), "p11kms bench failed:\n{out}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{out}"))
}

fn runs<'a>(report: &'a Value, algorithm: &str, path: &str) -> Vec<&'a Value> {
    report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["algorithm"] == algorithm && r["path"] == path)
        .collect()
}

#[test]
fn bench_measures_both_paths_and_verifies_signatures() {
    let _cpu = cpu_shared();
    let token = TestToken::dev();
    let report = bench(
        &token,
        &[
            "--algorithm",
            "ecdsa-nist-p256-sha-256,RSA_2048_SIGN_PSS_SHA_256",
            "--duration",
            "700ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "4",
        ],
    );
    for algorithm in ["ECDSA_NIST_P256_SHA_256", "RSA_2048_SIGN_PSS_SHA_256"] {
        let direct = runs(&report, algorithm, "direct");
        let gateway = runs(&report, algorithm, "gateway");
        // Direct: saturation and half load. Gateway: SignHash (saturation and half load),
        // Sign 1 KiB, Sign 32 KiB, GetPublicKey, and for ECDSA SignHash with verify off.
        assert_eq!(direct.len(), 2, "{algorithm} direct runs: {direct:#?}");
        let expected = if algorithm.starts_with("ECDSA") { 6 } else { 5 };
        assert_eq!(
            gateway.len(),
            expected,
            "{algorithm} gateway runs: {gateway:#?}"
        );
        for run in direct.iter().chain(&gateway) {
            let what = format!("{algorithm} {} {}", run["path"], run["operation"]);
            assert!(
                run["ok"].as_u64().unwrap() > 0,
                "{what}: no request succeeded: {run:#}"
            );
            assert!(
                run["verified"].as_u64().unwrap() > 0,
                "{what}: nothing verified: {run:#}"
            );
            assert_eq!(run["invalid"], 0, "{what}: invalid signatures: {run:#}");
            assert!(
                run["latency"]["p99_us"].as_f64().unwrap() > 0.0,
                "{what}: {run:#}"
            );
        }
        let sign_hash = gateway
            .iter()
            .find(|r| r["operation"] == "SignHash" && r["load"] == "saturation")
            .expect("a SignHash run");
        assert!(sign_hash["ratio"].as_f64().unwrap() > 0.0, "{sign_hash:#}");
        assert!(
            sign_hash["cpu_us_per_op"].as_f64().is_some(),
            "{sign_hash:#}"
        );
        assert!(
            sign_hash["peak_rss_kib"].as_u64().unwrap() > 0,
            "{sign_hash:#}"
        );
    }
    let targets = report["targets"].as_array().expect("targets");
    assert!(
        targets.iter().any(|t| t["met"].is_boolean()),
        "no target was checked: {targets:#?}"
    );
}

#[test]
fn bench_scale_starts_serve_with_generated_keys() {
    let _cpu = cpu_shared();
    let token = TestToken::dev();
    let report = bench(
        &token,
        &[
            "--scale",
            "3,20",
            "--duration",
            "500ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "4",
        ],
    );
    let levels = report["scale"].as_array().expect("scale results");
    assert_eq!(levels.len(), 2, "{levels:#?}");
    for (level, keys) in levels.iter().zip([3, 20]) {
        assert_eq!(level["keys"], keys, "{level:#}");
        assert!(level["startup_s"].as_f64().unwrap() > 0.0, "{level:#}");
        assert!(level["throughput"].as_f64().unwrap() > 0.0, "{level:#}");
        assert!(level["verified"].as_u64().unwrap() > 0, "{level:#}");
        assert_eq!(level["invalid"], 0, "{level:#}");
    }
}

#[test]
fn bench_key_service_creates_lists_and_starts_a_replica() {
    let _cpu = cpu_shared();
    let token = TestToken::dev();
    let report = bench(&token, &["--key-service", "12", "--concurrency", "4"]);
    let run = &report["key_service"];
    assert_eq!(run["keys"], 12, "{run:#}");
    // 12 / 4 = 3 one at a time at each end, 6 by the concurrent clients.
    assert_eq!(run["sequential"], 3, "{run:#}");
    assert_eq!(run["bulk_keys"], 6, "{run:#}");
    assert!(
        run["create_last"]["p50_us"].as_f64().unwrap() > 0.0,
        "{run:#}"
    );
    let pages: Vec<(u64, u64)> = run["list"]
        .as_array()
        .expect("list runs")
        .iter()
        .map(|l| {
            (
                l["page_size"].as_u64().unwrap(),
                l["pages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pages, [(1, 12), (7, 2), (100, 1), (1000, 1)], "{run:#}");
    assert!(run["replica_startup_s"].as_f64().unwrap() > 0.0, "{run:#}");
    assert_eq!(run["verified"], 1, "{run:#}");
    assert_eq!(run["invalid"], 0, "{run:#}");
}
