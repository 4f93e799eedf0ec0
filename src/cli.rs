//! Command-line interface. There is deliberately no flag for a PIN or a token: secrets come from
//! files or the environment, never from argv, where any local user can read them.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Cloud-KMS signing APIs in front of a PKCS#11 HSM.
#[derive(Debug, Parser)]
#[command(name = "p11kms", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the KMS APIs from the token described in a config file (production mode).
    Serve {
        /// The TOML config file; `P11KMS__SECTION__KEY` variables override its values.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a local endpoint on a private SoftHSM token with one key per algorithm.
    Dev(DevArgs),
    /// Manage keys on a running p11kms over gRPC (create, get, list, update, delete, undelete).
    Keys(KeysArgs),
    /// Measure p11kms against the token it fronts: direct PKCS#11 and gateway in one run.
    Bench(BenchArgs),
    /// Alibaba Cloud KMS tools.
    Alibaba(AlibabaArgs),
}

/// `p11kms alibaba` options.
#[derive(Debug, clap::Args)]
pub struct AlibabaArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AlibabaCommand,
}

/// `p11kms alibaba` subcommands.
#[derive(Debug, Subcommand)]
pub enum AlibabaCommand {
    /// Client keys (application access points) of the KMS instance API.
    #[command(name = "client-key", subcommand)]
    ClientKey(ClientKeyCommand),
}

/// `p11kms alibaba client-key` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientKeyCommand {
    /// Make a client key: a credential made in software for one client, not an HSM key.
    ///
    /// Generates an RSA-2048 key pair in software and a self-signed certificate, and writes
    /// Alibaba's ClientKey file `clientKey_KAAP.<uuid>.json` (a password-protected PKCS#12)
    /// and its random password (`….password`, mode 0600) for the client, and the certificate
    /// (`….cert.pem`) for the gateway. Prints the `[[alibaba.client_keys]]` config entry. The
    /// gateway only ever gets the certificate; the private key stays with the client.
    Create(ClientKeyCreateArgs),
}

/// `p11kms alibaba client-key create` options. The password is generated and written to a
/// file, never taken from or shown on the command line.
#[derive(Debug, clap::Args)]
pub struct ClientKeyCreateArgs {
    /// The subject id the key authenticates as (bind roles to it in [[auth.bindings]]).
    #[arg(long)]
    pub subject: String,
    /// userAccount, serviceAccount or federatedUser.
    #[arg(long, default_value = "serviceAccount")]
    pub subject_type: String,
    /// Directory for the ClientKey file, its password file and the certificate (created if
    /// missing; existing files are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// `p11kms keys` options. The bearer token comes from `--token-file` or the `P11KMS_TOKEN`
/// environment variable, never from a flag value.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// The gateway's gRPC endpoint.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// A file holding the bearer token to send (otherwise `P11KMS_TOKEN`, if set).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print proto3 JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Timeout of each call, in seconds (key generation can take a while).
    #[arg(long, global = true, default_value_t = 300)]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// `p11kms keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key (generated on the token) and wait for the operation.
    Create {
        /// The folder to create it in.
        #[arg(long)]
        folder_id: String,
        /// The signature algorithm, e.g. ECDSA_NIST_P256_SHA_256 or rsa-3072-sign-pss-sha-256.
        #[arg(long)]
        algorithm: String,
        /// Name.
        #[arg(long, default_value = "")]
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// A label as KEY=VALUE; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Refuse Delete until this is turned off.
        #[arg(long)]
        deletion_protection: bool,
    },
    /// Show a key.
    Get {
        /// The key id.
        key_id: String,
    },
    /// List the keys of a folder (every page, unless --page-token or --one-page).
    List {
        /// The folder.
        #[arg(long)]
        folder_id: String,
        /// Keys per request (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: i64,
        /// Continue from this token (implies --one-page).
        #[arg(long)]
        page_token: Option<String>,
        /// Fetch one page and print the next page token.
        #[arg(long)]
        one_page: bool,
    },
    /// Change a key's name, description, labels, status or deletion protection.
    Update {
        /// The key id.
        key_id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// Replace all labels with these (KEY=VALUE, repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Remove every label.
        #[arg(long, conflicts_with = "labels")]
        clear_labels: bool,
        /// ACTIVE or INACTIVE.
        #[arg(long)]
        status: Option<String>,
        /// Turn deletion protection on or off.
        #[arg(long, value_name = "true|false")]
        deletion_protection: Option<bool>,
    },
    /// Delete a key (restorable with `undelete` during the retention window).
    Delete {
        /// The key id.
        key_id: String,
    },
    /// Restore a deleted key (p11kms's admin API).
    Undelete {
        /// The key id.
        key_id: String,
    },
    /// List a key's operations, newest first.
    Operations {
        /// The key id.
        key_id: String,
    },
}

/// `p11kms dev` options.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the token, PINs and generated config live; created on first run, reused after.
    #[arg(long, default_value = "./.p11kms-dev")]
    pub state_dir: PathBuf,
    /// Address to serve on, plaintext (gRPC, REST and the Alibaba APIs).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address to serve the same APIs on over TLS, with a certificate from the dev CA
    /// (`ca.pem` in the state directory).
    #[arg(long, default_value = "127.0.0.1:50443")]
    pub tls_listen: SocketAddr,
    /// The SoftHSMv2 module; found in the usual install locations when omitted.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Create (or check) the token, keys and config, then exit without serving.
    #[arg(long)]
    pub init_only: bool,
}

/// `p11kms bench` options. With no options it creates a SoftHSM token in a temporary directory,
/// starts its own daemon on it, and measures every algorithm.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Algorithms: `all`, or a comma-separated list (ECDSA_NIST_P256_SHA_256 or
    /// ecdsa-nist-p256-sha-256).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub algorithm: Vec<String>,
    /// Measured time per run: seconds, or with a unit (500ms, 5s, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub duration: std::time::Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: std::time::Duration,
    /// PKCS#11 sessions: threads of the direct path, and the daemon's `hsm.pool_size`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub sessions: u16,
    /// Concurrent gRPC clients, each on its own HTTP/2 connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,
    /// What to measure: both paths, or only one.
    #[arg(long, value_enum, default_value_t = BenchMode::Both)]
    pub mode: BenchMode,
    /// Gateway operations to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sign-hash,sign-1k,sign-32k,get-public-key"
    )]
    pub ops: Vec<BenchOp>,
    /// ECDSA verify-after-sign in the bench's daemon. `both`: every run with it on (the
    /// default config), plus a SignHash run with it off for each ECDSA algorithm.
    #[arg(long, value_enum, default_value_t = BenchVerify::Both)]
    pub verify_ecdsa: BenchVerify,
    /// Skip the SignHash runs at half of the saturation throughput (the latency target).
    #[arg(long)]
    pub no_half_load: bool,
    /// Print the report as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the report as Markdown tables to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Where the bench's SoftHSM token, PINs and config live (as `p11kms dev --state-dir`);
    /// reused between runs. Default: a temporary directory, removed at exit.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The SoftHSMv2 module; found in the usual install locations when omitted.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Measure this running gateway (plaintext gRPC, dev key ids) instead of starting one. The
    /// direct path then needs `--state-dir` of the same token.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A file holding the bearer token to send. Default: `<state-dir>/admin.token` when it
    /// exists, else the `P11KMS_TOKEN` environment variable, else none.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Scale runs instead of the algorithm runs: start-up time and P-256 SignHash throughput of
    /// `p11kms serve` with this many keys on a token, e.g. `10,1000,10000`. Keys are generated
    /// once per `--state-dir` and reused.
    #[arg(long, value_delimiter = ',')]
    pub scale: Vec<usize>,
    /// A key-service run instead of the algorithm runs: create this many P-256 keys through the
    /// key service of a daemon on an empty token of its own, list them with every page size,
    /// and time a second replica's start-up on them.
    #[arg(long, value_name = "KEYS")]
    pub key_service: Option<usize>,
    /// Internal: generate this many scale keys on the token of `SOFTHSM2_CONF`, then exit.
    #[arg(long, hide = true)]
    pub scale_keygen: Option<usize>,
}

/// Which paths `p11kms bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// Direct PKCS#11 and the gateway.
    Both,
    /// Only PKCS#11 sessions in the bench process.
    Direct,
    /// Only the gateway.
    Gateway,
}

/// A gateway operation `p11kms bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    /// SignHash with a digest of the key's hash length.
    SignHash,
    /// Sign with a 1 KiB message.
    #[value(name = "sign-1k")]
    Sign1k,
    /// Sign with a 32 KiB message (the API's limit).
    #[value(name = "sign-32k")]
    Sign32k,
    /// GetPublicKey.
    GetPublicKey,
}

/// ECDSA verify-after-sign setting of the bench's daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchVerify {
    /// On (the default config).
    On,
    /// Off.
    Off,
    /// On, plus SignHash runs with it off.
    Both,
}

/// `250ms`, `5s`, `2m`, or bare seconds (`2.5`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 5s, 1m)"))?;
    if !value.is_finite() || value < 0.0 || value * scale > 86_400.0 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(value * scale))
}
