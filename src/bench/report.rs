//! The bench's output: the results table (text or Markdown), JSON, and the targets of issue 7
//! checked against the measurements.

use super::stats::{Latency, Load, PathKind, RunResult};
use crate::crypto::Algorithm;
use serde::Serialize;
use std::fmt::Write as _;

/// Where and how the numbers were taken.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// The PKCS#11 module (`C_GetInfo`), when the bench loaded it.
    pub pkcs11_library: Option<String>,
    /// Load averages (1, 5, 15 min) when the bench started.
    pub load_before: Option<[f64; 3]>,
    /// Load averages when it finished.
    pub load_after: Option<[f64; 3]>,
    /// p11kms version.
    pub p11kms: String,
}

/// The run's settings, as the report states them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Settings {
    /// PKCS#11 sessions (direct threads; the daemon's `hsm.pool_size`).
    pub sessions: usize,
    /// Concurrent gRPC clients.
    pub clients: usize,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Warm-up seconds before each run.
    pub warmup_s: f64,
    /// The gateway measured: `bench-started` or the endpoint given.
    pub gateway: String,
}

/// One scale level: start-up and throughput with this many keys on the token.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleResult {
    /// P-256 keys on the token, all declared in the config.
    pub keys: usize,
    /// Seconds this bench spent generating missing keys (0 when the token was reused).
    pub keygen_s: f64,
    /// Seconds from starting `p11kms serve` to its ready line.
    pub startup_s: f64,
    /// Direct signatures per second on the same token, over all the keys round robin.
    pub direct_throughput: Option<f64>,
    /// CPU per direct signature, µs.
    pub direct_cpu_us_per_op: Option<f64>,
    /// Gateway SignHash requests per second, spread round robin over all the keys.
    pub throughput: f64,
    /// Gateway over direct throughput.
    pub ratio: Option<f64>,
    /// Their latency.
    pub latency: Latency,
    /// Failed requests.
    pub errors: u64,
    /// Sampled signatures (direct and gateway) verified independently.
    pub verified: u64,
    /// Sampled signatures that did not verify.
    pub invalid: u64,
    /// Daemon CPU per request, µs.
    pub cpu_us_per_op: Option<f64>,
    /// Daemon peak RSS during the run, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Daemon RSS peak including start-up (before the run's reset), KiB.
    pub startup_peak_rss_kib: Option<u64>,
    /// Throughput over the smallest level's.
    pub ratio_to_smallest: Option<f64>,
}

/// A key-service run: keys created through the API on an empty token, listed, and loaded by a
/// second replica.
#[derive(Clone, Debug, Serialize)]
pub struct KeyServiceResult {
    /// P-256 keys created through the key service.
    pub keys: usize,
    /// Seconds to create all of them.
    pub create_s: f64,
    /// Keys created one at a time at the start, and again at the end.
    pub sequential: usize,
    /// Create (+ `OperationService.Get`) one at a time, token holding 0..`sequential` keys.
    pub create_first: Latency,
    /// The same, token holding `keys - sequential`..`keys` keys.
    pub create_last: Latency,
    /// Keys created by concurrent clients in between.
    pub bulk_keys: usize,
    /// Those clients.
    pub bulk_clients: usize,
    /// The daemon's `managed_keys.max_concurrent_generations`.
    pub bulk_generations: i64,
    /// Seconds the bulk took.
    pub bulk_s: f64,
    /// Bulk keys per second.
    pub bulk_keys_per_s: f64,
    /// A bulk create as its client saw it (queueing included).
    pub bulk_create: Latency,
    /// List of the whole folder, per page size.
    pub list: Vec<ListRun>,
    /// Seconds from starting a second replica on the token to its ready line.
    pub replica_startup_s: f64,
    /// Signatures through the replica verified independently.
    pub verified: u64,
    /// Signatures that did not verify.
    pub invalid: u64,
}

/// Listing every key of the folder with one page size.
#[derive(Clone, Debug, Serialize)]
pub struct ListRun {
    /// `page_size` of every request.
    pub page_size: usize,
    /// Pages it took.
    pub pages: usize,
    /// Per page.
    pub latency: Latency,
}

/// A target from issue 7, checked.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    /// What is measured.
    pub target: String,
    /// The bound.
    pub goal: String,
    /// The measurement, when this run took it.
    pub measured: Option<String>,
    /// Met, missed, or not measured by this run.
    pub met: Option<bool>,
    /// Context: related figures, or what to run to measure it.
    pub note: String,
}

/// Everything a bench run reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The settings.
    pub settings: Settings,
    /// One row per run.
    pub runs: Vec<RunResult>,
    /// Scale levels (`--scale`).
    pub scale: Vec<ScaleResult>,
    /// The key-service run (`--key-service`).
    pub key_service: Option<KeyServiceResult>,
    /// The targets this run could check.
    pub targets: Vec<TargetCheck>,
}

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const RSA2048: Algorithm = Algorithm::Rsa2048PssSha256;

impl Report {
    fn find(
        &self,
        algorithm: Algorithm,
        path: PathKind,
        operation: &str,
        load: Load,
        verify: Option<bool>,
    ) -> Option<&RunResult> {
        self.runs.iter().find(|r| {
            r.algorithm == algorithm.name()
                && r.path == path
                && r.load == load
                && (path == PathKind::Direct || r.operation == operation)
                && (verify.is_none() || r.verify_ecdsa == verify)
        })
    }

    /// Checks every target the runs allow.
    pub fn check_targets(&mut self) {
        let mut out = Vec::new();
        let sessions = self.settings.sessions;
        let session_note = if sessions == 2 {
            String::new()
        } else {
            format!(" The target is stated for 2 sessions; this run used {sessions}.")
        };

        // 1. P-256 SignHash at saturation, verify-after-sign off.
        let direct = self.find(P256, PathKind::Direct, "", Load::Saturation, None);
        let off = self.find(
            P256,
            PathKind::Gateway,
            "SignHash",
            Load::Saturation,
            Some(false),
        );
        let on = self.find(
            P256,
            PathKind::Gateway,
            "SignHash",
            Load::Saturation,
            Some(true),
        );
        let ratio_of = |r: Option<&RunResult>| r.and_then(|r| r.ratio);
        out.push(ratio_target(
            "P-256 SignHash at saturation, gateway/direct, ECDSA verify-after-sign off",
            0.75,
            ratio_of(off),
            format!(
                "With verify-after-sign on: {}.{session_note}",
                ratio_of(on).map_or("not measured".into(), |r| format!("{r:.2}"))
            ),
            "run with --algorithm ecdsa-nist-p256-sha-256 --verify-ecdsa both",
        ));

        // 2. RSA-2048 PSS SignHash (always verified).
        let rsa = self.find(
            RSA2048,
            PathKind::Gateway,
            "SignHash",
            Load::Saturation,
            None,
        );
        let others: Vec<String> = [Algorithm::Rsa2048PssSha384, Algorithm::Rsa2048PssSha512]
            .into_iter()
            .filter_map(|a| {
                self.find(a, PathKind::Gateway, "SignHash", Load::Saturation, None)
                    .and_then(|r| r.ratio)
                    .map(|x| format!("{}: {x:.2}", a.name()))
            })
            .collect();
        out.push(ratio_target(
            "RSA-2048 PSS (SHA-256) SignHash at saturation, gateway/direct, verify-after-sign on",
            0.92,
            ratio_of(rsa),
            if others.is_empty() {
                session_note.trim_start().to_string()
            } else {
                format!("{}.{session_note}", others.join(", "))
            },
            "run with --algorithm rsa-2048-sign-pss-sha-256",
        ));

        // 3. Daemon CPU per request outside the PKCS#11 module.
        let outside = |g: Option<&RunResult>| Some(g?.cpu_us_per_op? - direct?.cpu_us_per_op?);
        let measured = outside(off);
        out.push(TargetCheck {
            target: "P-256 SignHash: daemon CPU per request minus direct CPU per signature, verify-after-sign off".into(),
            goal: "≤ 25 µs".into(),
            measured: measured.map(|v| format!("{v:.1} µs")),
            met: measured.map(|v| v <= 25.0),
            note: match measured {
                Some(_) => format!(
                    "Daemon {:.1} µs/request, direct {:.1} µs/signature; with verify-after-sign on: {}.",
                    off.and_then(|r| r.cpu_us_per_op).unwrap_or_default(),
                    direct.and_then(|r| r.cpu_us_per_op).unwrap_or_default(),
                    outside(on).map_or("not measured".into(), |v| format!("{v:.1} µs"))
                ),
                None => "not measured: run with --algorithm ecdsa-nist-p256-sha-256 --verify-ecdsa both against the bench's own daemon".into(),
            },
        });

        // 4. p99 at half of saturation, per algorithm.
        for algorithm in Algorithm::ALL {
            let gw = self.find(algorithm, PathKind::Gateway, "SignHash", Load::Half, None);
            let d = self.find(algorithm, PathKind::Direct, "", Load::Half, None);
            let (Some(gw), Some(d)) = (gw, d) else {
                continue;
            };
            let bound = 2.0 * d.latency.p99_us + 500.0;
            out.push(TargetCheck {
                target: format!("{algorithm} SignHash p99 at half of saturation"),
                goal: "≤ 2 × direct p99 + 0.5 ms".into(),
                measured: Some(format!("{:.0} µs (bound {bound:.0} µs)", gw.latency.p99_us)),
                met: Some(gw.latency.p99_us <= bound),
                note: format!(
                    "gateway {:.0}/s, direct {:.0}/s, direct p99 {:.0} µs",
                    gw.throughput, d.throughput, d.latency.p99_us
                ),
            });
        }

        // 5. Peak RSS with 256 clients.
        let peak = self
            .runs
            .iter()
            .filter(|r| r.path == PathKind::Gateway)
            .filter_map(|r| r.peak_rss_kib)
            .max();
        let clients = self.settings.clients;
        out.push(TargetCheck {
            target: "Daemon peak RSS with 256 concurrent clients".into(),
            goal: "≤ 64 MiB".into(),
            measured: (clients >= 256)
                .then_some(peak)
                .flatten()
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0)),
            met: (clients >= 256)
                .then_some(peak)
                .flatten()
                .map(|k| k <= 64 * 1024),
            note: if clients >= 256 {
                format!("highest VmHWM over every gateway run with {clients} clients")
            } else {
                "not measured: run with --concurrency 256".into()
            },
        });

        // 6. Scale.
        let smallest = self.scale.iter().min_by_key(|s| s.keys);
        let largest = self
            .scale
            .iter()
            .filter(|s| s.keys >= 10_000)
            .max_by_key(|s| s.keys);
        match (smallest, largest) {
            (Some(small), Some(large)) => {
                out.push(TargetCheck {
                    target: format!("Start-up with {} keys on the token", large.keys),
                    goal: "≤ 10 s".into(),
                    measured: Some(format!("{:.2} s", large.startup_s)),
                    met: Some(large.startup_s <= 10.0),
                    note: format!("{} keys: {:.2} s", small.keys, small.startup_s),
                });
                let ratio = large.throughput / small.throughput.max(f64::MIN_POSITIVE);
                out.push(TargetCheck {
                    target: format!(
                        "P-256 SignHash throughput with {} keys vs {} keys",
                        large.keys, small.keys
                    ),
                    goal: "within 5%".into(),
                    measured: Some(format!("{:+.1}%", (ratio - 1.0) * 100.0)),
                    met: Some(ratio >= 0.95),
                    note: format!(
                        "gateway {:.0}/s vs {:.0}/s; the token alone (direct) {}/s vs {}/s",
                        large.throughput,
                        small.throughput,
                        opt(large.direct_throughput, 0),
                        opt(small.direct_throughput, 0)
                    ),
                });
            }
            _ => out.push(TargetCheck {
                target: "Start-up and throughput with 10,000 keys on the token".into(),
                goal: "≤ 10 s; within 5% of 10 keys".into(),
                measured: None,
                met: None,
                note: "not measured: run with --scale 10,1000,10000".into(),
            }),
        }
        self.targets = out;
    }

    /// The results table as text, for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(
            out,
            "machine: {} × {}, Linux {}, load {}{}",
            m.cpus,
            m.cpu,
            m.kernel,
            load(m.load_before),
            m.load_after
                .map_or(String::new(), |l| format!(" → {}", load(Some(l))))
        );
        let _ = writeln!(
            out,
            "token: {}; {} sessions, {} clients, {:.1} s per run after {:.1} s warm-up; gateway: {}",
            m.pkcs11_library.as_deref().unwrap_or("not loaded"),
            s.sessions,
            s.clients,
            s.duration_s,
            s.warmup_s,
            s.gateway
        );
        if !self.runs.is_empty() {
            out.push('\n');
            out.push_str(&text_header());
            for r in &self.runs {
                out.push_str(&text_row(r));
            }
        }
        if !self.scale.is_empty() {
            out.push_str("\nscale (P-256 SignHash over every key, round robin):\n");
            let _ = writeln!(
                out,
                "{:>7} {:>9} {:>10} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8} {:>10} {:>8} {:>8}",
                "keys",
                "keygen s",
                "startup s",
                "direct/s",
                "ops/s",
                "gw/dir",
                "p50 µs",
                "p99 µs",
                "errors",
                "verified",
                "cpu µs/op",
                "rss MiB",
                "vs min"
            );
            for r in &self.scale {
                let _ = writeln!(
                    out,
                    "{:>7} {:>9.1} {:>10.2} {:>9} {:>9.0} {:>7} {:>8.0} {:>8.0} {:>7} {:>8} {:>10} {:>8} {:>8}",
                    r.keys,
                    r.keygen_s,
                    r.startup_s,
                    opt(r.direct_throughput, 0),
                    r.throughput,
                    opt(r.ratio, 2),
                    r.latency.p50_us,
                    r.latency.p99_us,
                    r.errors,
                    verified(r.verified, r.invalid),
                    opt(r.cpu_us_per_op, 1),
                    mib(r.peak_rss_kib),
                    opt(r.ratio_to_smallest, 3)
                );
            }
        }
        if let Some(k) = &self.key_service {
            out.push('\n');
            out.push_str(&k.text());
        }
        if !self.targets.is_empty() {
            out.push_str("\ntargets:\n");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "  {:<13} {} {}: {}{}",
                    verdict(t.met),
                    t.target,
                    t.goal,
                    t.measured.as_deref().unwrap_or("-"),
                    if t.note.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", t.note)
                    }
                );
            }
        }
        out
    }

    /// The results as Markdown tables (for BENCHMARKS.md).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(
            out,
            "{} × {}, Linux {}, {}; load average {} before, {} after. {} sessions, {} clients, {:.1} s per run after {:.1} s warm-up.\n",
            m.cpus,
            m.cpu,
            m.kernel,
            m.pkcs11_library.as_deref().unwrap_or("module not loaded"),
            load(m.load_before),
            load(m.load_after),
            s.sessions,
            s.clients,
            s.duration_s,
            s.warmup_s
        );
        if !self.runs.is_empty() {
            out.push_str("| algorithm | path | operation | load | ECDSA verify | ops/s | p50 µs | p90 µs | p99 µs | max µs | errors | verified | CPU µs/op | peak RSS MiB | gateway/direct |\n");
            out.push_str("|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
            for r in &self.runs {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                    r.algorithm,
                    path(r.path),
                    r.operation,
                    load_label(r),
                    verify_label(r),
                    r.throughput,
                    r.latency.p50_us,
                    r.latency.p90_us,
                    r.latency.p99_us,
                    r.latency.max_us,
                    r.errors,
                    verified(r.verified, r.invalid),
                    opt(r.cpu_us_per_op, 1),
                    mib(r.peak_rss_kib),
                    opt(r.ratio, 2)
                );
            }
            out.push('\n');
        }
        if !self.scale.is_empty() {
            out.push_str("| keys on the token | key generation s | start-up s | direct signs/s | gateway SignHash/s | gateway/direct | p50 µs | p99 µs | errors | verified | CPU µs/op | peak RSS MiB (start-up) | peak RSS MiB (run) | gateway vs smallest |\n");
            out.push_str("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
            for r in &self.scale {
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {:.2} | {} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    r.keys,
                    r.keygen_s,
                    r.startup_s,
                    opt(r.direct_throughput, 0),
                    r.throughput,
                    opt(r.ratio, 2),
                    r.latency.p50_us,
                    r.latency.p99_us,
                    r.errors,
                    verified(r.verified, r.invalid),
                    opt(r.cpu_us_per_op, 1),
                    mib(r.startup_peak_rss_kib),
                    mib(r.peak_rss_kib),
                    opt(r.ratio_to_smallest, 3)
                );
            }
            out.push('\n');
        }
        if let Some(k) = &self.key_service {
            out.push_str(&k.markdown());
            out.push('\n');
        }
        if !self.targets.is_empty() {
            out.push_str("| target | goal | measured | verdict | note |\n|---|---|---|---|---|\n");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    t.target,
                    t.goal,
                    t.measured.as_deref().unwrap_or("–"),
                    verdict(t.met),
                    t.note
                );
            }
        }
        out
    }
}

impl KeyServiceResult {
    /// The rows: what was done, and its time.
    fn rows(&self) -> Vec<(String, String)> {
        let ms = |us: f64| format!("{:.1} ms", us / 1e3);
        let spread = |l: &Latency| {
            format!(
                "p50 {} / p99 {} / max {}",
                ms(l.p50_us),
                ms(l.p99_us),
                ms(l.max_us)
            )
        };
        let (n, seq) = (self.keys, self.sequential);
        let mut rows = vec![
            (
                format!("Create {n} P-256 keys, all phases"),
                format!(
                    "{:.1} s ({:.1} keys/s)",
                    self.create_s,
                    n as f64 / self.create_s.max(f64::MIN_POSITIVE)
                ),
            ),
            (
                format!("Create, one at a time, token holding 0–{seq} API keys"),
                spread(&self.create_first),
            ),
            (
                format!(
                    "Create, one at a time, token holding {}–{n} API keys",
                    n - seq
                ),
                spread(&self.create_last),
            ),
            (
                format!(
                    "Create, {} keys by {} concurrent clients (generation budget {})",
                    self.bulk_keys, self.bulk_clients, self.bulk_generations
                ),
                format!(
                    "{:.1} s ({:.1} keys/s); per call, queueing included: {}",
                    self.bulk_s,
                    self.bulk_keys_per_s,
                    spread(&self.bulk_create)
                ),
            ),
        ];
        for l in &self.list {
            rows.push((
                format!(
                    "List of the {n}-key folder, page_size {} ({} pages)",
                    l.page_size, l.pages
                ),
                format!("per page: {}", spread(&l.latency)),
            ));
        }
        rows.push((
            format!("A second replica starting on the token (loading {n} keys)"),
            format!(
                "{:.2} s; its signature {}",
                self.replica_startup_s,
                if self.invalid == 0 {
                    "verified"
                } else {
                    "did NOT verify"
                }
            ),
        ));
        rows
    }

    pub(crate) fn text(&self) -> String {
        let mut out = String::from("key service (keys created through the API, then listed):\n");
        for (what, took) in self.rows() {
            let _ = writeln!(out, "  {what}: {took}");
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = String::from("| what | time |\n|---|---|\n");
        for (what, took) in self.rows() {
            let _ = writeln!(out, "| {what} | {took} |");
        }
        out
    }
}

fn ratio_target(
    target: &str,
    goal: f64,
    ratio: Option<f64>,
    note: String,
    how: &str,
) -> TargetCheck {
    TargetCheck {
        target: target.into(),
        goal: format!("≥ {goal:.2}×"),
        measured: ratio.map(|r| format!("{r:.2}×")),
        met: ratio.map(|r| r >= goal),
        note: if ratio.is_some() {
            note
        } else {
            format!("not measured: {how}")
        },
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "NOT MET",
        None => "not measured",
    }
}

fn load(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn verified(ok: u64, invalid: u64) -> String {
    if invalid == 0 {
        ok.to_string()
    } else {
        format!("{ok} ({invalid} INVALID)")
    }
}

fn path(p: PathKind) -> &'static str {
    match p {
        PathKind::Direct => "direct",
        PathKind::Gateway => "gateway",
    }
}

fn load_label(r: &RunResult) -> String {
    match (r.load, r.target_rate) {
        (Load::Saturation, _) => "sat".into(),
        (Load::Half, Some(rate)) => format!("½ ({rate:.0}/s)"),
        (Load::Half, None) => "½".into(),
    }
}

fn verify_label(r: &RunResult) -> &'static str {
    match r.verify_ecdsa {
        _ if r.algorithm.starts_with("RSA") && r.path == PathKind::Gateway => "(RSA: on)",
        Some(true) => "on",
        Some(false) => "off",
        None => "-",
    }
}

/// The header of the text table.
pub(crate) fn text_header() -> String {
    format!(
        "{:<26} {:<7} {:<12} {:<12} {:<6} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8} {:>9} {:>7} {:>6}\n",
        "algorithm",
        "path",
        "operation",
        "load",
        "verify",
        "ops/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "errors",
        "verified",
        "cpu µs/op",
        "rss MiB",
        "gw/dir"
    )
}

/// One row of the text table.
pub(crate) fn text_row(r: &RunResult) -> String {
    format!(
        "{:<26} {:<7} {:<12} {:<12} {:<6} {:>9.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>6} {:>8} {:>9} {:>7} {:>6}\n",
        r.algorithm,
        path(r.path),
        r.operation,
        load_label(r),
        match verify_label(r) {
            "(RSA: on)" => "on",
            v => v,
        },
        r.throughput,
        r.latency.p50_us,
        r.latency.p90_us,
        r.latency.p99_us,
        r.latency.max_us,
        r.errors,
        verified(r.verified, r.invalid),
        opt(r.cpu_us_per_op, 1),
        mib(r.peak_rss_kib),
        opt(r.ratio, 2)
    )
}
