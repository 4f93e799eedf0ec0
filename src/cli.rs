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
