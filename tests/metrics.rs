//! Prometheus metrics on the admin listener (issue 15 item 1): traffic, a verify-after-sign
//! failure, a rate-limited burst and a token outage (all through the fault shim on the real
//! token) show in `/metrics`; Debian's `promtool check metrics` accepts the output; a real
//! Prometheus scrapes the admin listener and answers PromQL queries with the same values.
//! `/healthz` and `/readyz` answer as orchestrators expect, and no label carries a key id.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package; ./scripts/test installs
//! it). Without them the test fails and says what to install.

mod common;

use common::faultshim::Shim;
use common::{dev_key_id, verify, Daemon, Launch, TestToken};
use p11kms::crypto::Algorithm;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const SIGN: &str = "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign";

fn tool(name: &str) -> &str {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs {name} (Debian package prometheus): run ./scripts/test, or apt-get \
         install prometheus"
    );
    name
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Every sample of the exposition, by its series (`name{labels}` as printed).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
            (
                series.to_string(),
                value.parse().unwrap_or_else(|e| panic!("{l}: {e}")),
            )
        })
        .collect()
}

fn value(all: &BTreeMap<String, f64>, series: &str) -> f64 {
    *all.get(series)
        .unwrap_or_else(|| panic!("no series {series} in:\n{all:#?}"))
}

/// What the traffic below must have produced.
struct Driven {
    signed: usize,
}

/// Signs (verified with RustCrypto), asks for a missing key and an unknown method, has one
/// signature corrupted by the token (withheld), a burst past the rate limit, and a token
/// outage on `C_Sign` that the daemon recovers from.
async fn drive(daemon: &Daemon, shim: &mut Shim) -> Driven {
    let mut kms = daemon.kms().await;
    let key = dev_key_id(P256);
    let public = verify::parse_public_key(&kms.public_key(&key).await.unwrap(), P256).unwrap();
    let signed = 5;
    for i in 0..signed {
        let message = format!("metrics {i}");
        let sig = kms.sign(&key, message.as_bytes()).await.unwrap();
        public
            .verify_message(P256, message.as_bytes(), &sig)
            .unwrap();
    }
    let missing = kms.sign("no-such-key", b"x").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let conn = common::h2raw::H2Conn::connect(daemon.addr()).await;
    let unknown = conn
        .unary(
            "/no.such.Service/Method",
            Some(daemon.admin_token()),
            &[],
            vec![common::h2raw::grpc_frame(&[])],
        )
        .await;
    assert_eq!(unknown.code(), Some(12), "{unknown:?}");

    shim.set_control("corrupt_every = 1");
    shim.wait_applied_async().await;
    let withheld = kms.sign(&key, b"corrupted").await.unwrap_err();
    assert_eq!(withheld.code(), Code::Internal, "{withheld:?}");

    // Requests without credentials from one address: its bucket (2, then 1 a second) is soon
    // empty.
    let anonymous =
        common::h2raw::H2Conn::connect_from("127.0.0.2".parse().unwrap(), daemon.addr())
            .await
            .expect("connect from 127.0.0.2");
    let mut refused = 0;
    for _ in 0..6 {
        let answer = anonymous
            .unary(SIGN, None, &[], vec![common::h2raw::grpc_frame(&[])])
            .await;
        match answer.code() {
            Some(8) => refused += 1,
            Some(16) => {}
            other => panic!("{other:?}: {answer:?}"),
        }
    }
    assert!(refused >= 3, "only {refused} of 6 were rate-limited");

    shim.set_control("fault.C_Sign = CKR_DEVICE_REMOVED");
    shim.wait_applied_async().await;
    let down = kms.sign(&key, b"outage").await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    shim.set_control("");
    shim.wait_applied_async().await;
    // Back once a request signs again (the recovery runs on its own schedule).
    let started = Instant::now();
    loop {
        match kms.sign(&key, b"after").await {
            Ok(sig) => {
                public.verify_message(P256, b"after", &sig).unwrap();
                break;
            }
            Err(e) => assert!(
                e.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(60),
                "{e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driven { signed: signed + 1 }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_traffic_faults_and_limits_and_a_real_prometheus_scrapes_them() {
    let promtool = tool("promtool");
    let prometheus = tool("prometheus");
    let token = TestToken::dev();
    token.set_config("rate_limit", "anonymous_per_ip_rps", 1.0);
    token.set_config("rate_limit", "anonymous_burst", 2);
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let admin = daemon.admin_addr();
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);

    let driven = drive(&daemon, &mut shim).await;

    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for secret in [daemon.admin_token(), "no-such-key", &dev_key_id(P256)] {
        assert!(!text.contains(secret), "{secret} appears in the metrics");
    }

    let all = samples(&text);
    let ok = format!("p11kms_requests_total{{front=\"grpc\",method=\"{SIGN}\",code=\"OK\"}}");
    assert_eq!(value(&all, &ok), driven.signed as f64);
    let nf =
        format!("p11kms_requests_total{{front=\"grpc\",method=\"{SIGN}\",code=\"NOT_FOUND\"}}");
    assert_eq!(value(&all, &nf), 1.0);
    let other = "p11kms_requests_total{front=\"grpc\",method=\"other\",code=\"UNIMPLEMENTED\"}";
    assert_eq!(value(&all, other), 1.0);
    assert_eq!(value(&all, "p11kms_verify_after_sign_failures_total"), 1.0);
    assert!(value(&all, "p11kms_rate_limited_total{bucket=\"anonymous\"}") >= 3.0);
    assert!(value(&all, "p11kms_hsm_recovery_attempts_total") >= 1.0);
    assert!(value(&all, "p11kms_hsm_recoveries_total") >= 1.0);
    assert_eq!(
        value(&all, "p11kms_hsm_epoch"),
        value(&all, "p11kms_hsm_recoveries_total") + 1.0
    );
    assert_eq!(value(&all, "p11kms_hsm_token_up"), 1.0);
    assert_eq!(value(&all, "p11kms_keys{state=\"ACTIVE\"}"), 13.0);
    assert_eq!(value(&all, "p11kms_hsm_pool_size"), 4.0);
    // Signatures made, the corrupted one and the failed one included.
    assert!(
        value(
            &all,
            "p11kms_hsm_sign_duration_seconds_count{mechanism=\"CKM_ECDSA\"}"
        ) >= (driven.signed + 1) as f64
    );
    assert!(value(&all, "p11kms_audit_records_written_total") >= driven.signed as f64);
    assert_eq!(value(&all, "p11kms_audit_outage"), 0.0);
    assert_eq!(
        value(
            &all,
            &format!(
                "p11kms_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );

    // A real Prometheus scraping the admin listener sees the same.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: p11kms\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = format!("127.0.0.1:{port}");
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let client = reqwest::Client::new();
    let query = |q: String| {
        let client = client.clone();
        let web = web.clone();
        async move {
            let r = client
                .get(format!("http://{web}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?;
            let body: serde_json::Value = r.json().await.ok()?;
            let v = body["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()?;
            Some(v)
        }
    };
    let expected = [
        (
            format!("p11kms_requests_total{{front=\"grpc\",method=\"{SIGN}\",code=\"OK\"}}"),
            driven.signed as f64,
        ),
        ("p11kms_verify_after_sign_failures_total".to_string(), 1.0),
        ("p11kms_hsm_token_up".to_string(), 1.0),
        ("p11kms_keys{state=\"ACTIVE\"}".to_string(), 13.0),
        ("up{job=\"p11kms\"}".to_string(), 1.0),
    ];
    let started = Instant::now();
    let mut last = Vec::new();
    loop {
        last.clear();
        for (q, want) in &expected {
            last.push((q.clone(), *want, query(q.clone()).await));
        }
        if last.iter().all(|(_, want, got)| *got == Some(*want)) {
            break;
        }
        // Prometheus scrapes every second; give it a generous number of scrapes.
        if started.elapsed() > Duration::from_secs(60) {
            let _ = server.kill();
            panic!("Prometheus did not report the expected values: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rate_limited = query("p11kms_rate_limited_total{bucket=\"anonymous\"}".into()).await;
    assert!(rate_limited.is_some_and(|v| v >= 3.0), "{rate_limited:?}");
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_answers_503_while_the_token_is_down() {
    let token = TestToken::dev();
    token.set_hsm("probe_interval_ms", 100);
    let mut shim = Shim::install(&token);
    let daemon = Launch::serve(&token).envs(shim.env()).start();
    let admin = daemon.admin_addr();
    assert_eq!(get(admin, "/readyz").await.0, 200);
    // Every probe and every recovery attempt fails while this is set.
    shim.set_control(
        "fault.C_GetTokenInfo = CKR_DEVICE_REMOVED\nfault.C_OpenSession = CKR_DEVICE_REMOVED",
    );
    shim.wait_applied_async().await;
    let started = Instant::now();
    while get(admin, "/readyz").await.0 != 503 {
        assert!(started.elapsed() < Duration::from_secs(30), "still ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Alive all the same: an orchestrator must not restart it for a token outage.
    assert_eq!(get(admin, "/healthz").await.0, 200);
    let down = samples(&get(admin, "/metrics").await.1);
    assert_eq!(value(&down, "p11kms_hsm_token_up"), 0.0);
    shim.set_control("");
    shim.wait_applied_async().await;
    while get(admin, "/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
