//! `p11kms bench`: the gateway measured against the token it fronts, in one run.
//!
//! For each algorithm, on the same token, key and number of sessions:
//!
//! * **direct**: N PKCS#11 sessions in this process, one thread each, signing digests through
//!   cryptoki with the gateway's own mechanism ([`crate::hsm::bench`]);
//! * **gateway**: M gRPC clients, each on its own HTTP/2 connection, against a p11kms daemon
//!   that the bench starts as a separate process (`p11kms dev` on the bench's token, so its
//!   CPU time and peak RSS can be read from `/proc`), or against `--endpoint`.
//!
//! Every run has a warm-up, then a measured window. It reports throughput, latency percentiles
//! (HDR histogram), errors, how many sampled signatures (the first and every 100th) verified
//! independently with RustCrypto after the run, the daemon's CPU per request and peak RSS,
//! and the gateway/direct throughput ratio. SignHash is also run open-loop at half of each
//! path's saturation throughput, for the latency target. Finally the targets of issue 7 are
//! checked against whatever was measured.
//!
//! `--scale` measures start-up time and throughput of `p11kms serve` with many keys instead
//! (see `scale.rs`); `--key-service` creates keys through the API, lists them and starts a
//! replica on them (see `key_service.rs`).

mod daemon;
mod direct;
mod gateway;
mod key_service;
mod procfs;
pub mod report;
mod scale;
pub mod stats;
mod verify;

use crate::cli::{BenchArgs, BenchMode, BenchOp, BenchVerify, DevArgs};
use crate::crypto::{Algorithm, KeyKind};
use crate::dev;
use crate::hsm::bench::{DirectKey, DirectToken};
use daemon::{Daemon, Launch};
use gateway::{Op, Target};
use report::{Machine, Report, Settings};
use secrecy::SecretString;
use stats::{Latency, Load, PathKind, RunResult};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use verify::{Encoding, Verifier};

/// This very binary, for the processes the bench starts (the daemon, `dev --init-only`, the
/// scale key generator). Not `current_exe()`: when cargo rebuilds the binary during a run, its
/// path names the new file (or none), while `/proc/self/exe` stays the one running.
const SELF_EXE: &str = "/proc/self/exe";

/// Runs `p11kms bench`. Call before any other thread exists: preparing the state directory
/// sets `SOFTHSM2_CONF` for this process.
pub fn main(args: BenchArgs) -> ExitCode {
    if let Some(count) = args.scale_keygen {
        return scale::keygen_main(&args, count);
    }
    let plan = match Plan::from_args(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("p11kms bench: {e}");
            return ExitCode::from(2);
        }
    };
    let state = if plan.needs_state() {
        match State::prepare(&args) {
            Ok(state) => Some(state),
            Err(e) => {
                eprintln!("p11kms bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let outcome = runtime.block_on(run(&plan, state.as_ref()));
    drop(runtime);
    if let Some(state) = &state {
        state.cleanup();
    }
    match outcome {
        Ok(report) => {
            if let Some(path) = &plan.markdown {
                if let Err(e) = std::fs::write(path, report.markdown()) {
                    eprintln!("p11kms bench: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if plan.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report serialises")
                );
            } else {
                // The rows were printed as they were measured; now the summary.
                let text = report.text();
                let summary = text
                    .split_once("\ntargets:\n")
                    .map_or(String::new(), |(_, t)| format!("\ntargets:\n{t}"));
                print!("{summary}");
            }
            let invalid: u64 = report.runs.iter().map(|r| r.invalid).sum::<u64>()
                + report.scale.iter().map(|r| r.invalid).sum::<u64>()
                + report.key_service.as_ref().map_or(0, |k| k.invalid);
            if invalid > 0 {
                eprintln!("p11kms bench: {invalid} sampled signatures did NOT verify");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p11kms bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The parsed arguments.
#[derive(Debug)]
struct Plan {
    algorithms: Vec<Algorithm>,
    ops: Vec<Op>,
    warmup: Duration,
    duration: Duration,
    sessions: usize,
    clients: usize,
    direct: bool,
    gateway: bool,
    verify: BenchVerify,
    half_load: bool,
    json: bool,
    markdown: Option<PathBuf>,
    endpoint: Option<String>,
    token_file: Option<PathBuf>,
    state_dir_given: bool,
    module: Option<PathBuf>,
    scale: Vec<usize>,
    key_service: Option<usize>,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Result<Self, String> {
        let mut algorithms = Vec::new();
        for name in &args.algorithm {
            let name = name.trim();
            if name.eq_ignore_ascii_case("all") {
                algorithms.extend(Algorithm::ALL);
                continue;
            }
            let upper = name.to_ascii_uppercase().replace('-', "_");
            let algorithm = Algorithm::from_name(&upper).ok_or_else(|| {
                format!(
                    "--algorithm {name:?} is not an algorithm; use `all` or names such as ECDSA_NIST_P256_SHA_256 or rsa-2048-sign-pss-sha-256"
                )
            })?;
            algorithms.push(algorithm);
        }
        algorithms.sort();
        algorithms.dedup();
        // ECDSA first: the fast algorithms' numbers do not wait behind RSA-4096.
        algorithms.sort_by_key(|a| (a.is_rsa(), *a));
        let mut ops: Vec<Op> = args
            .ops
            .iter()
            .map(|o| match o {
                BenchOp::SignHash => Op::SignHash,
                BenchOp::Sign1k => Op::Sign(1024),
                BenchOp::Sign32k => Op::Sign(32 * 1024),
                BenchOp::GetPublicKey => Op::GetPublicKey,
            })
            .collect();
        ops.dedup();
        let (mut direct, gateway) = match args.mode {
            BenchMode::Both => (true, true),
            BenchMode::Direct => (true, false),
            BenchMode::Gateway => (false, true),
        };
        if args.endpoint.is_some() && args.state_dir.is_none() {
            if args.mode == BenchMode::Direct {
                return Err("--mode direct needs the token: pass --state-dir".into());
            }
            direct = false;
        }
        if args.duration < Duration::from_millis(100) {
            return Err("--duration must be at least 100ms".into());
        }
        for &n in &args.scale {
            if !(1..=100_000).contains(&n) {
                return Err(format!("--scale {n}: from 1 to 100000 keys"));
            }
        }
        if !args.scale.is_empty() && args.endpoint.is_some() {
            return Err("--scale starts its own daemons; it cannot use --endpoint".into());
        }
        if let Some(n) = args.key_service {
            if !(1..=100_000).contains(&n) {
                return Err(format!("--key-service {n}: from 1 to 100000 keys"));
            }
            if args.endpoint.is_some() || !args.scale.is_empty() {
                return Err(
                    "--key-service starts its own daemons on a token of its own; it cannot be combined with --endpoint or --scale".into(),
                );
            }
        }
        Ok(Self {
            algorithms,
            ops,
            warmup: args.warmup,
            duration: args.duration,
            sessions: usize::from(args.sessions),
            clients: usize::from(args.concurrency),
            direct,
            gateway,
            verify: args.verify_ecdsa,
            half_load: !args.no_half_load,
            json: args.json,
            markdown: args.markdown.clone(),
            endpoint: args.endpoint.clone(),
            token_file: args.token_file.clone(),
            state_dir_given: args.state_dir.is_some(),
            module: args.module.clone(),
            scale: {
                let mut s = args.scale.clone();
                s.sort_unstable();
                s.dedup();
                s
            },
            key_service: args.key_service,
        })
    }

    fn needs_state(&self) -> bool {
        self.endpoint.is_none() || self.state_dir_given
    }

    fn progress(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        }
    }

    fn row(&self, row: &RunResult) {
        if self.json {
            eprint!("{}", report::text_row(row));
        } else {
            print!("{}", report::text_row(row));
            let _ = std::io::stdout().flush();
        }
    }
}

/// The bench's dev state directory (token, PINs, generated config).
#[derive(Debug)]
struct State {
    dir: PathBuf,
    temporary: bool,
}

impl State {
    fn prepare(args: &BenchArgs) -> Result<Self, String> {
        let (dir, temporary) = match &args.state_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("p11kms-bench-{}", std::process::id())),
                true,
            ),
        };
        // The same preparation `p11kms dev` does (SoftHSM config, PINs); it also points this
        // process's SOFTHSM2_CONF at the token, for the direct path.
        let dev_args = DevArgs {
            state_dir: dir.clone(),
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            tls_listen: "127.0.0.1:0".parse().expect("a valid address"),
            module: args.module.clone(),
            init_only: false,
        };
        dev::prepare(&dev_args).map_err(|e| e.to_string())?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self { dir, temporary })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("p11kms.toml")
    }

    /// The module path and token label of the dev config, and the user PIN.
    fn token(&self) -> Result<(PathBuf, String, SecretString), String> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let hsm = table.get("hsm").and_then(|h| h.as_table());
        let field = |k: &str| {
            hsm.and_then(|h| h.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("{}: no hsm.{k}", path.display()))
        };
        let pin_path = self.dir.join("user.pin");
        let pin = std::fs::read_to_string(&pin_path)
            .map_err(|e| format!("cannot read {}: {e}", pin_path.display()))?;
        Ok((
            PathBuf::from(field("module")?),
            field("token_label")?,
            SecretString::from(pin.trim_end()),
        ))
    }

    fn cleanup(&self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The bearer token: `--token-file`, else `<state-dir>/admin.token`, else `P11KMS_TOKEN`.
fn bearer(plan: &Plan, state: Option<&State>) -> Result<Option<String>, String> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))
    };
    if let Some(path) = &plan.token_file {
        return read(path).map(Some);
    }
    if let Some(state) = state {
        let path = state.dir.join("admin.token");
        if path.exists() {
            return read(&path).map(Some);
        }
    }
    Ok(std::env::var("P11KMS_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// The daemons the bench started: the main one (default config unless `--verify-ecdsa off`)
/// and, for `--verify-ecdsa both`, one with ECDSA verify-after-sign off.
struct Gateways {
    main: Option<Endpoint>,
    verify_off: Option<Endpoint>,
    /// Kept alive (and stopped on drop).
    _daemons: Vec<Daemon>,
}

#[derive(Clone, Debug)]
struct Endpoint {
    target: Target,
    daemon: Option<procfs::Proc>,
    verify_ecdsa: Option<bool>,
}

async fn run(plan: &Plan, state: Option<&State>) -> Result<Report, String> {
    let mut report = Report {
        machine: Machine {
            cpu: procfs::cpu_model(),
            cpus: procfs::cpus(),
            kernel: procfs::kernel(),
            pkcs11_library: None,
            load_before: procfs::load_average(),
            load_after: None,
            p11kms: env!("CARGO_PKG_VERSION").into(),
        },
        settings: Settings {
            sessions: plan.sessions,
            clients: plan.clients,
            duration_s: plan.duration.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            gateway: plan
                .endpoint
                .clone()
                .unwrap_or_else(|| "started by the bench (p11kms dev)".into()),
        },
        ..Report::default()
    };
    if let Some(keys) = plan.key_service {
        let state = state.expect("key-service runs have a state directory");
        ensure_provisioned(plan, state).await?;
        let (module, _, _) = state.token()?;
        let bearer = bearer(plan, Some(state))?;
        report.settings.gateway = "started by the bench (p11kms serve)".into();
        let result = key_service::run(plan, &state.dir, &module, bearer.as_deref(), keys).await?;
        if !plan.json {
            print!("{}", result.text());
        }
        report.key_service = Some(result);
    } else if !plan.scale.is_empty() {
        let state = state.expect("scale runs have a state directory");
        ensure_provisioned(plan, state).await?;
        let (module, _, _) = state.token()?;
        let bearer = bearer(plan, Some(state))?;
        report.settings.gateway = "started by the bench (p11kms serve)".into();
        report.scale = scale::run(plan, &state.dir, &module, bearer.as_deref()).await?;
    } else {
        measure_algorithms(plan, state, &mut report).await?;
    }
    report.machine.load_after = procfs::load_average();
    report.check_targets();
    Ok(report)
}

/// Creates the token and keys when no daemon of ours will (`p11kms dev --init-only`).
async fn ensure_provisioned(plan: &Plan, state: &State) -> Result<(), String> {
    if state.config_path().exists()
        && state
            .dir
            .join("tokens")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    {
        return Ok(());
    }
    plan.progress("provisioning the bench token (p11kms dev --init-only)");
    let exe = SELF_EXE;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("dev")
        .arg("--init-only")
        .arg("--state-dir")
        .arg(&state.dir);
    if let Some(m) = &plan.module {
        cmd.arg("--module").arg(m);
    }
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run p11kms dev --init-only: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "p11kms dev --init-only failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

async fn start_gateways(plan: &Plan, state: Option<&State>) -> Result<Gateways, String> {
    if !plan.gateway {
        return Ok(Gateways {
            main: None,
            verify_off: None,
            _daemons: Vec::new(),
        });
    }
    if let Some(endpoint) = &plan.endpoint {
        let target = Target::resolve(endpoint, bearer(plan, state)?.as_deref()).await?;
        return Ok(Gateways {
            main: Some(Endpoint {
                target,
                daemon: None,
                verify_ecdsa: None,
            }),
            verify_off: None,
            _daemons: Vec::new(),
        });
    }
    let state = state.expect("a bench-started gateway has a state directory");
    let main_verify = plan.verify != BenchVerify::Off;
    let wants_off = plan.verify == BenchVerify::Both
        && plan.ops.contains(&Op::SignHash)
        && plan.algorithms.iter().any(|a| !a.is_rsa());
    let start = |verify: bool| {
        let launch = Launch::dev(&state.dir, plan.module.as_deref(), plan.sessions, verify);
        tokio::task::spawn_blocking(move || launch.start())
    };
    plan.progress("starting the daemon (the first run on a new token generates 13 keys)");
    let main = start(main_verify).await.map_err(|e| e.to_string())??;
    let mut daemons = Vec::new();
    // The bearer token is written by the daemon; read it once it is up.
    let bearer = bearer(plan, Some(state))?;
    let endpoint = |d: &Daemon, verify: bool| -> Result<Endpoint, String> {
        Ok(Endpoint {
            target: Target::new(d.addr(), bearer.as_deref())?,
            daemon: Some(d.proc()),
            verify_ecdsa: Some(verify),
        })
    };
    let main_endpoint = endpoint(&main, main_verify)?;
    daemons.push(main);
    let verify_off = if wants_off {
        let d = start(false).await.map_err(|e| e.to_string())??;
        let e = endpoint(&d, false)?;
        daemons.push(d);
        Some(e)
    } else {
        None
    };
    Ok(Gateways {
        main: Some(main_endpoint),
        verify_off,
        _daemons: daemons,
    })
}

async fn measure_algorithms(
    plan: &Plan,
    state: Option<&State>,
    report: &mut Report,
) -> Result<(), String> {
    let gateways = start_gateways(plan, state).await?;
    if let Some(state) = state {
        if plan.direct && gateways.main.is_none() {
            ensure_provisioned(plan, state).await?;
        }
    }
    let token = match (plan.direct, state) {
        (true, Some(state)) => {
            let (module, label, pin) = state.token()?;
            let token = tokio::task::spawn_blocking(move || -> Result<DirectToken, String> {
                let module = crate::hsm::load(&module).map_err(|e| e.to_string())?;
                DirectToken::open(&module, &label, &pin).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            report.machine.pkcs11_library = Some(token.library());
            Some(Arc::new(token))
        }
        _ => None,
    };
    if !plan.json {
        print!("{}", report.text());
        println!();
        print!("{}", report::text_header());
    }
    let result = measure_each(plan, &gateways, token.as_ref(), report).await;
    drop(gateways);
    if let Some(token) = token {
        if let Ok(token) = Arc::try_unwrap(token) {
            let _ = tokio::task::spawn_blocking(move || token.close()).await;
        }
    }
    result
}

async fn measure_each(
    plan: &Plan,
    gateways: &Gateways,
    token: Option<&Arc<DirectToken>>,
    report: &mut Report,
) -> Result<(), String> {
    for &algorithm in &plan.algorithms {
        let key_id = dev::key_id(algorithm);
        plan.progress(&format!("measuring {algorithm}"));
        // The public key, from both sides: they must be the same key.
        let direct_key = match token {
            Some(token) => {
                let token = Arc::clone(token);
                let ck_id = key_id.clone().into_bytes();
                Some(
                    tokio::task::spawn_blocking(move || token.key(&ck_id, algorithm))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("{algorithm}: {e}"))?,
                )
            }
            None => None,
        };
        let gateway_verifier = match &gateways.main {
            Some(g) => Some(Verifier::from_pem(
                algorithm,
                &g.target.public_key_pem(&key_id).await?,
            )?),
            None => None,
        };
        if let (Some(k), Some(v)) = (&direct_key, &gateway_verifier) {
            if k.spki_der() != v.spki_der() {
                return Err(format!(
                    "{algorithm}: the gateway publishes a different public key for {key_id} than the token holds; is --endpoint serving the --state-dir token?"
                ));
            }
        }
        let verifier = match (&gateway_verifier, &direct_key) {
            (Some(v), _) => Arc::new(Verifier::from_spki_der(algorithm, v.spki_der())?),
            (None, Some(k)) => Arc::new(Verifier::from_spki_der(algorithm, k.spki_der())?),
            (None, None) => unreachable!("at least one path is measured"),
        };

        let mut direct_sat = None;
        if let (Some(token), Some(key)) = (token, &direct_key) {
            let r = run_direct(plan, token, key, &verifier, None).await?;
            plan.row(&r);
            direct_sat = Some(r.throughput);
            report.runs.push(r);
        }
        let Some(main) = &gateways.main else {
            if let (Some(token), Some(key), Some(tp), true) =
                (token, &direct_key, direct_sat, plan.half_load)
            {
                let r = run_direct(plan, token, key, &verifier, Some(tp / 2.0)).await?;
                plan.row(&r);
                report.runs.push(r);
            }
            continue;
        };
        for &op in &plan.ops {
            let r = run_gateway(
                plan, main, algorithm, op, &key_id, &verifier, None, direct_sat,
            )
            .await?;
            plan.row(&r);
            let saturation = r.throughput;
            report.runs.push(r);
            if op == Op::SignHash && plan.half_load {
                if let (Some(token), Some(key), Some(tp)) = (token, &direct_key, direct_sat) {
                    let r = run_direct(plan, token, key, &verifier, Some(tp / 2.0)).await?;
                    plan.row(&r);
                    report.runs.push(r);
                }
                if saturation > 0.0 {
                    let r = run_gateway(
                        plan,
                        main,
                        algorithm,
                        op,
                        &key_id,
                        &verifier,
                        Some(saturation / 2.0),
                        None,
                    )
                    .await?;
                    plan.row(&r);
                    report.runs.push(r);
                }
            }
        }
        if let (Some(off), KeyKind::Ec(_)) = (&gateways.verify_off, algorithm.key_kind()) {
            let r = run_gateway(
                plan,
                off,
                algorithm,
                Op::SignHash,
                &key_id,
                &verifier,
                None,
                direct_sat,
            )
            .await?;
            plan.row(&r);
            report.runs.push(r);
        }
    }
    Ok(())
}

async fn run_direct(
    plan: &Plan,
    token: &Arc<DirectToken>,
    key: &DirectKey,
    verifier: &Arc<Verifier>,
    rate: Option<f64>,
) -> Result<RunResult, String> {
    let token = Arc::clone(token);
    let key = key.clone();
    let (threads, warmup, duration) = (plan.sessions, plan.warmup, plan.duration);
    let digest_len = verify::digest_len(key.algorithm());
    let algorithm = key.algorithm();
    let verifier = Arc::clone(verifier);
    // Samples are verified after the window, so verification does not skew the timings.
    let (measured, verified, invalid) = tokio::task::spawn_blocking(move || {
        let keys = [key];
        let measured = direct::run(&token, &keys, digest_len, threads, warmup, duration, rate)?;
        let (verified, invalid) = check_samples(
            &measured.tally.samples,
            |_| Some(&*verifier),
            Encoding::Raw,
            None,
        )?;
        Ok::<_, String>((measured, verified, invalid))
    })
    .await
    .map_err(|e| e.to_string())??;
    let tally = &measured.tally;
    let ok = tally.latencies_ns.len() as u64;
    let seconds = measured.window.as_secs_f64();
    report_first_error(algorithm, "direct", tally);
    Ok(RunResult {
        algorithm: algorithm.name().into(),
        path: PathKind::Direct,
        operation: "sign digest".into(),
        load: if rate.is_some() {
            Load::Half
        } else {
            Load::Saturation
        },
        target_rate: rate,
        verify_ecdsa: None,
        sessions: threads,
        workers: threads,
        seconds,
        ok,
        throughput: ok as f64 / seconds,
        latency: Latency::of(&tally.latencies_ns),
        errors: tally.errors.values().sum(),
        error_kinds: tally.errors.clone(),
        verified,
        invalid,
        cpu_us_per_op: per_op_us(measured.cpu_seconds, ok),
        client_cpu_us_per_op: None,
        peak_rss_kib: None,
        ratio: None,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_gateway(
    plan: &Plan,
    endpoint: &Endpoint,
    algorithm: Algorithm,
    op: Op,
    key_id: &str,
    verifier: &Arc<Verifier>,
    rate: Option<f64>,
    direct_throughput: Option<f64>,
) -> Result<RunResult, String> {
    let run = gateway::Plan {
        op,
        algorithm,
        key_ids: Arc::new(vec![key_id.to_string()]),
        clients: plan.clients,
        warmup: plan.warmup,
        duration: plan.duration,
        rate,
        daemon: endpoint.daemon,
    };
    let measured = gateway::run(&endpoint.target, &run).await?;
    let encoding = if op == Op::GetPublicKey {
        None
    } else {
        Some(Encoding::Api)
    };
    let (verified, invalid) = {
        let v = Arc::clone(verifier);
        let samples = &measured.tally.samples;
        match encoding {
            Some(enc) => check_samples(samples, |_| Some(&*v), enc, None)?,
            None => check_samples(samples, |_| Some(&*v), Encoding::Api, Some(()))?,
        }
    };
    let tally = &measured.tally;
    let ok = tally.latencies_ns.len() as u64;
    let seconds = measured.window.as_secs_f64();
    let throughput = ok as f64 / seconds;
    report_first_error(algorithm, &op.label(), tally);
    Ok(RunResult {
        algorithm: algorithm.name().into(),
        path: PathKind::Gateway,
        operation: op.label(),
        load: if rate.is_some() {
            Load::Half
        } else {
            Load::Saturation
        },
        target_rate: rate,
        verify_ecdsa: endpoint.verify_ecdsa,
        sessions: plan.sessions,
        workers: plan.clients,
        seconds,
        ok,
        throughput,
        latency: Latency::of(&tally.latencies_ns),
        errors: tally.errors.values().sum(),
        error_kinds: tally.errors.clone(),
        verified,
        invalid,
        cpu_us_per_op: per_op_us(measured.daemon_cpu_seconds, ok),
        client_cpu_us_per_op: per_op_us(measured.client_cpu_seconds, ok),
        peak_rss_kib: measured.peak_rss_kib,
        ratio: match (op, direct_throughput) {
            (Op::GetPublicKey, _) | (_, None) => None,
            (_, Some(d)) if d > 0.0 => Some(throughput / d),
            _ => None,
        },
    })
}

fn per_op_us(cpu_seconds: Option<f64>, ops: u64) -> Option<f64> {
    (ops > 0)
        .then_some(cpu_seconds?)
        .map(|s| s * 1e6 / ops as f64)
}

fn report_first_error(algorithm: Algorithm, what: &str, tally: &stats::Tally) {
    if let Some(e) = &tally.first_error {
        let n: u64 = tally.errors.values().sum();
        eprintln!("p11kms bench: {algorithm} {what}: {n} errors; the first: {e}");
    }
}

/// Verifies every sample; returns (verified, invalid). `pem` set: the samples are
/// GetPublicKey answers, checked to be the key's PEM.
fn check_samples<'a>(
    samples: &[stats::Sample],
    verifier_of: impl Fn(usize) -> Option<&'a Verifier>,
    encoding: Encoding,
    pem: Option<()>,
) -> Result<(u64, u64), String> {
    let (mut verified, mut invalid) = (0, 0);
    for s in samples {
        let verifier = verifier_of(s.key).ok_or("no public key for a sampled key")?;
        let ok = match pem {
            Some(()) => std::str::from_utf8(&s.signature)
                .ok()
                .and_then(|pem| Verifier::from_pem(verifier.algorithm(), pem).ok())
                .is_some_and(|v| v.spki_der() == verifier.spki_der()),
            None => match verifier.verify(&s.digest, &s.signature, encoding) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("p11kms bench: a sampled signature does NOT verify: {e}");
                    false
                }
            },
        };
        if ok {
            verified += 1;
        } else {
            invalid += 1;
        }
    }
    Ok((verified, invalid))
}
