//! `p11kms keys …`: a small gRPC client of a running gateway's key service.
//!
//! Changes return an operation; like the SDKs, the client then polls `OperationService.Get`
//! until the operation is done and prints its result. The bearer token comes from
//! `--token-file` or `P11KMS_TOKEN` and is sent as `authorization: Bearer …`; it never appears on
//! the command line, where other local users could read it.

use crate::api::yandex::grpc::pb::kms::asymmetric_signature_key_service_client::AsymmetricSignatureKeyServiceClient;
use crate::api::yandex::grpc::pb::kms::{
    asymmetric_signature_key, AsymmetricSignatureAlgorithm, AsymmetricSignatureKey,
    CreateAsymmetricSignatureKeyRequest, DeleteAsymmetricSignatureKeyRequest,
    GetAsymmetricSignatureKeyRequest, ListAsymmetricSignatureKeyOperationsRequest,
    ListAsymmetricSignatureKeysRequest, ListAsymmetricSignatureKeysResponse,
    UpdateAsymmetricSignatureKeyRequest,
};
use crate::api::yandex::grpc::pb::operation::operation_service_client::OperationServiceClient;
use crate::api::yandex::grpc::pb::operation::{operation, GetOperationRequest, Operation};
use crate::api::yandex::grpc::pb::p11kms::v1::key_admin_service_client::KeyAdminServiceClient;
use crate::api::yandex::grpc::pb::p11kms::v1::UndeleteKeyRequest;
use crate::api::yandex::json;
use crate::api::yandex::mapping::type_names;
use crate::cli::{KeysArgs, KeysCommand};
use crate::crypto::Algorithm;
use prost::Message as _;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The environment variable holding the bearer token when `--token-file` is not given.
pub const TOKEN_ENV: &str = "P11KMS_TOKEN";
/// Pause between two polls of an operation that is not done yet.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Why a `keys` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The gateway could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Call(Status),
    /// The operation finished with an error.
    #[error("operation {id} failed: {code}: {message}")]
    Operation {
        /// The operation id.
        id: String,
        /// The google.rpc code.
        code: i32,
        /// Its message.
        message: String,
    },
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Call(s)
    }
}

/// Runs a `keys` command to completion; the binary's entry point for it.
pub fn main(args: KeysArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p11kms: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p11kms: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn bearer(args: &KeysArgs) -> Result<Bearer, ClientError> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    ClientError::Usage(format!("cannot read --token-file {}: {e}", path.display()))
                })?
                .trim()
                .to_string(),
        ),
        None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()),
    };
    match token.filter(|t| !t.is_empty()) {
        None => Ok(Bearer(None)),
        Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
            .map(|v| Bearer(Some(v)))
            .map_err(|_| {
                ClientError::Usage("the token contains characters a header cannot carry".into())
            }),
    }
}

type Intercepted = InterceptedService<Channel, Bearer>;

struct Clients {
    keys: AsymmetricSignatureKeyServiceClient<Intercepted>,
    operations: OperationServiceClient<Intercepted>,
    admin: KeyAdminServiceClient<Intercepted>,
}

async fn connect(args: &KeysArgs) -> Result<Clients, ClientError> {
    let bearer = bearer(args)?;
    let endpoint = Endpoint::from_shared(args.endpoint.clone())
        .map_err(|e| ClientError::Usage(format!("--endpoint {:?}: {e}", args.endpoint)))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(args.timeout));
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: args.endpoint.clone(),
            source,
        })?;
    Ok(Clients {
        keys: AsymmetricSignatureKeyServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        ),
        operations: OperationServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        admin: KeyAdminServiceClient::with_interceptor(channel, bearer),
    })
}

fn parse_algorithm(text: &str) -> Result<i32, ClientError> {
    Algorithm::from_name(&text.to_ascii_uppercase().replace('-', "_"))
        .map(Algorithm::to_proto)
        .ok_or_else(|| {
            let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            ClientError::Usage(format!(
                "--algorithm {text:?} is not one of {}",
                names.join(", ")
            ))
        })
}

fn parse_labels(labels: &[String]) -> Result<HashMap<String, String>, ClientError> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ClientError::Usage(format!("--label {l:?} must be KEY=VALUE")))
        })
        .collect()
}

fn parse_status(text: &str) -> Result<i32, ClientError> {
    match asymmetric_signature_key::Status::from_str_name(&text.to_ascii_uppercase()) {
        Some(
            s @ (asymmetric_signature_key::Status::Active
            | asymmetric_signature_key::Status::Inactive),
        ) => Ok(s as i32),
        _ => Err(ClientError::Usage(format!(
            "--status {text:?} must be ACTIVE or INACTIVE"
        ))),
    }
}

/// Polls `OperationService.Get` until the operation is done, as the SDK waiters do, and returns
/// the key in its response.
async fn wait(clients: &mut Clients, op: Operation) -> Result<AsymmetricSignatureKey, ClientError> {
    let mut op = op;
    loop {
        op = clients
            .operations
            .get(GetOperationRequest {
                operation_id: op.id.clone(),
            })
            .await?
            .into_inner();
        if op.done {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    match op.result {
        Some(operation::Result::Response(any))
            if any.type_url.rsplit('/').next() == Some(type_names::KEY) =>
        {
            AsymmetricSignatureKey::decode(any.value.as_slice()).map_err(|e| {
                ClientError::Call(Status::internal(format!(
                    "operation {} returned an undecodable key: {e}",
                    op.id
                )))
            })
        }
        Some(operation::Result::Error(e)) => Err(ClientError::Operation {
            id: op.id,
            code: e.code,
            message: e.message,
        }),
        _ => Err(ClientError::Call(Status::internal(format!(
            "operation {} finished without a key",
            op.id
        )))),
    }
}

/// Runs one command and returns what to print.
///
/// # Errors
/// Usage, connection, call and operation failures.
pub async fn run(args: KeysArgs) -> Result<String, ClientError> {
    let mut c = connect(&args).await?;
    let as_json = args.json;
    let key_out = |k: &AsymmetricSignatureKey| {
        if as_json {
            pretty(&json::key(k))
        } else {
            key_details(k)
        }
    };
    match args.command {
        KeysCommand::Create {
            folder_id,
            algorithm,
            name,
            description,
            labels,
            deletion_protection,
        } => {
            let req = CreateAsymmetricSignatureKeyRequest {
                folder_id,
                name,
                description,
                labels: parse_labels(&labels)?,
                signature_algorithm: parse_algorithm(&algorithm)?,
                deletion_protection,
            };
            let op = c.keys.create(req).await?.into_inner();
            let key = wait(&mut c, op).await?;
            Ok(key_out(&key))
        }
        KeysCommand::Get { key_id } => {
            let key = c
                .keys
                .get(GetAsymmetricSignatureKeyRequest { key_id })
                .await?
                .into_inner();
            Ok(key_out(&key))
        }
        KeysCommand::List {
            folder_id,
            page_size,
            page_token,
            one_page,
        } => {
            let one_page = one_page || page_token.is_some();
            let mut all = ListAsymmetricSignatureKeysResponse::default();
            let mut token = page_token.unwrap_or_default();
            loop {
                let page = c
                    .keys
                    .list(ListAsymmetricSignatureKeysRequest {
                        folder_id: folder_id.clone(),
                        page_size,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.keys.extend(page.keys);
                token = page.next_page_token;
                if one_page || token.is_empty() {
                    break;
                }
            }
            all.next_page_token = token;
            Ok(if as_json {
                pretty(&json::key_list(&all))
            } else {
                let mut out = key_table(&all.keys);
                if !all.next_page_token.is_empty() {
                    let _ = writeln!(out, "next page token: {}", all.next_page_token);
                }
                out
            })
        }
        KeysCommand::Update {
            key_id,
            name,
            description,
            labels,
            clear_labels,
            status,
            deletion_protection,
        } => {
            let mut req = UpdateAsymmetricSignatureKeyRequest {
                key_id,
                ..Default::default()
            };
            let mut paths = Vec::new();
            if let Some(v) = name {
                req.name = v;
                paths.push("name");
            }
            if let Some(v) = description {
                req.description = v;
                paths.push("description");
            }
            if !labels.is_empty() || clear_labels {
                req.labels = parse_labels(&labels)?;
                paths.push("labels");
            }
            if let Some(v) = status {
                req.status = parse_status(&v)?;
                paths.push("status");
            }
            if let Some(v) = deletion_protection {
                req.deletion_protection = v;
                paths.push("deletion_protection");
            }
            if paths.is_empty() {
                return Err(ClientError::Usage(
                    "nothing to change: give --name, --description, --label, --clear-labels, --status or --deletion-protection".into(),
                ));
            }
            req.update_mask = Some(prost_types::FieldMask {
                paths: paths.into_iter().map(String::from).collect(),
            });
            let op = c.keys.update(req).await?.into_inner();
            let key = wait(&mut c, op).await?;
            Ok(key_out(&key))
        }
        KeysCommand::Delete { key_id } => {
            let op = c
                .keys
                .delete(DeleteAsymmetricSignatureKeyRequest { key_id })
                .await?
                .into_inner();
            let key = wait(&mut c, op).await?;
            Ok(if as_json {
                pretty(&json::key(&key))
            } else {
                format!("deleted; restorable with `p11kms keys undelete {}` until the retention window ends\n{}", key.id, key_details(&key))
            })
        }
        KeysCommand::Undelete { key_id } => {
            let op = c
                .admin
                .undelete(UndeleteKeyRequest { key_id })
                .await?
                .into_inner();
            let key = wait(&mut c, op).await?;
            Ok(key_out(&key))
        }
        KeysCommand::Operations { key_id } => {
            let mut ops = Vec::new();
            let mut token = String::new();
            loop {
                let page = c
                    .keys
                    .list_operations(ListAsymmetricSignatureKeyOperationsRequest {
                        key_id: key_id.clone(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                ops.extend(page.operations);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            Ok(if as_json {
                pretty(&serde_json::json!({
                    "operations": ops.iter().map(json::operation).collect::<Vec<_>>()
                }))
            } else {
                operation_table(&ops)
            })
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialise");
    s.push('\n');
    s
}

fn status_name(k: &AsymmetricSignatureKey) -> String {
    asymmetric_signature_key::Status::try_from(k.status)
        .map_or_else(|_| k.status.to_string(), |s| s.as_str_name().to_string())
}

fn algorithm_name(k: &AsymmetricSignatureKey) -> String {
    AsymmetricSignatureAlgorithm::try_from(k.signature_algorithm).map_or_else(
        |_| k.signature_algorithm.to_string(),
        |a| a.as_str_name().to_string(),
    )
}

fn labels_text(k: &AsymmetricSignatureKey) -> String {
    let mut labels: Vec<_> = k.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    labels.join(",")
}

fn created_text(k: &AsymmetricSignatureKey) -> String {
    k.created_at
        .as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// One key, one field per line.
fn key_details(k: &AsymmetricSignatureKey) -> String {
    let rows = [
        ("id", k.id.clone()),
        ("folder_id", k.folder_id.clone()),
        ("name", k.name.clone()),
        ("description", k.description.clone()),
        ("signature_algorithm", algorithm_name(k)),
        ("status", status_name(k)),
        ("deletion_protection", k.deletion_protection.to_string()),
        ("created_at", created_text(k)),
        ("labels", labels_text(k)),
    ];
    let mut out = String::new();
    for (field, value) in rows {
        let _ = writeln!(out, "{field:<20} {value}");
    }
    out
}

/// Rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn key_table(keys: &[AsymmetricSignatureKey]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.name.clone(),
                algorithm_name(k),
                status_name(k),
                if k.deletion_protection { "yes" } else { "no" }.to_string(),
                created_text(k),
                labels_text(k),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "SIGNATURE ALGORITHM",
            "STATUS",
            "PROTECTED",
            "CREATED",
            "LABELS",
        ],
        &rows,
    )
}

fn operation_table(ops: &[Operation]) -> String {
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|op| {
            vec![
                op.id.clone(),
                op.description.clone(),
                op.created_at
                    .as_ref()
                    .map_or_else(|| "-".to_string(), ToString::to_string),
                if op.done { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table(&["ID", "DESCRIPTION", "CREATED", "DONE"], &rows)
}
