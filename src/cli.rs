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
}

/// `p11kms dev` options.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the token, PINs and generated config live; created on first run, reused after.
    #[arg(long, default_value = "./.p11kms-dev")]
    pub state_dir: PathBuf,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The SoftHSMv2 module; found in the usual install locations when omitted.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Create (or check) the token, keys and config, then exit without serving.
    #[arg(long)]
    pub init_only: bool,
}
