//! The `p11kms` binary: parse, load, run until SIGTERM or SIGINT.

use clap::Parser;
use p11kms::cli::{AlibabaCommand, Cli, ClientKeyCommand, Command};
use p11kms::{client, dev, telemetry, App, Config};
use std::process::ExitCode;

/// Blocking threads beyond the session pool: start-up, shutdown and key generation.
const EXTRA_BLOCKING_THREADS: usize = 4;

/// Exit status when only an operator can fix the start-up failure (sysexits' `EX_CONFIG`):
/// a supervisor must not restart on it (`RestartPreventExitStatus=78` in deploy/p11kms.service).
const EXIT_NEEDS_OPERATOR: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Clients of a running daemon and offline tools: no HSM, no config.
    let cli = match cli.command {
        Command::Keys(args) => return client::main(args),
        Command::Bench(args) => return p11kms::bench::main(args),
        Command::Alibaba(args) => match args.command {
            AlibabaCommand::ClientKey(ClientKeyCommand::Create(args)) => {
                return p11kms::alibaba_client_key::main(args)
            }
        },
        command => Cli { command },
    };
    // Everything that must happen before threads exist (config, environment) happens here.
    let prepared = match &cli.command {
        Command::Serve { config } => Config::load(config)
            .map(|config| Mode::Serve(Box::new(config)))
            .map_err(|e| e.to_string()),
        Command::Dev(args) => dev::prepare(args)
            .map(|state| Mode::Dev(Box::new(state), args.init_only))
            .map_err(|e| e.to_string()),
        Command::Keys(_) | Command::Bench(_) | Command::Alibaba(_) => {
            unreachable!("handled above")
        }
    };
    let mode = match prepared {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("p11kms: {e}");
            return ExitCode::from(EXIT_NEEDS_OPERATOR);
        }
    };
    let (format, pool) = match &mode {
        Mode::Serve(cfg) => (cfg.log.format, cfg.hsm.pool_size),
        Mode::Dev(..) => (Default::default(), dev::POOL_SIZE),
    };
    telemetry::init(format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(pool + EXTRA_BLOCKING_THREADS)
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p11kms: {e}");
            let needs_operator = e
                .downcast_ref::<p11kms::app::StartError>()
                .is_some_and(p11kms::app::StartError::needs_operator);
            if needs_operator {
                ExitCode::from(EXIT_NEEDS_OPERATOR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

enum Mode {
    // Boxed: both are large, and only one is ever made.
    Serve(Box<Config>),
    Dev(Box<dev::DevState>, bool),
}

async fn run(mode: Mode) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before anything slow: SIGHUP's default action kills the process, and an
    // operator's (or logrotate's) reload during start-up must not.
    let mut hangup = signal(SignalKind::hangup())?;
    let app = match mode {
        Mode::Serve(config) => App::build(&config).await?,
        Mode::Dev(state, init_only) => {
            let (config, hsm) = dev::provision(&state).await?;
            if init_only {
                hsm.shutdown();
                println!(
                    "p11kms dev state is ready in {}",
                    state.config_path().display()
                );
                return Ok(());
            }
            let app = App::build_with_hsm(&config, hsm).await?;
            println!(
                "{}",
                dev::banner(&state, app.local_addr(), app.tls_addr(), app.admin_addr())
            );
            app
        }
    };
    let reload = app.reload().clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading files");
            reload.trigger();
        }
    });
    // Installed before the ready line: whoever saw it may stop us at once, and must get the
    // graceful stop, not the default action's kill.
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    // One line on stdout that scripts and tests wait for instead of sleeping.
    if let Some(addr) = app.rest_addr() {
        // Before the ready line, so that whoever waits for that line has this one too.
        println!("p11kms REST listening on {addr}");
    }
    if let Some(addr) = app.tls_addr() {
        println!("p11kms TLS listening on {addr}");
    }
    if let Some(addr) = app.alibaba_addr() {
        println!("p11kms Alibaba listening on {addr}");
    }
    if let Some(addr) = app.admin_addr() {
        println!("p11kms admin listening on {addr}");
    }
    println!("p11kms listening on {}", app.local_addr());
    // The listeners are bound: connections queue until the serve loop takes them.
    p11kms::systemd::ready();
    app.run(shutdown_signal(term, int)).await;
    Ok(())
}

async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
