//! Key-service runs (`--key-service N`): N P-256 keys created through the key service of a
//! `p11kms serve` on an empty token, the folder listed with every page size, then a second
//! replica started on the token.
//!
//! On SoftHSM's file store a create re-reads the token's directory, so its time grows with the
//! keys already there and the run shows how: creates one at a time on a nearly empty and on a
//! full token, and the bulk in between with concurrent clients. These are the numbers of a
//! filling token; the test suite checks the paging itself over a few hundred keys
//! (`tests/key_service_list.rs`), where creating thousands would cost minutes on every run.
//!
//! Each run starts from an empty token in `<state-dir>/key-service-<n>/` (made again every time:
//! creating the keys is what is measured). Everything listed is checked (id order, every key
//! exactly once), and one signature through the replica is verified independently.

use super::daemon::{Daemon, Launch};
use super::gateway::{Connection, Target};
use super::report::{KeyServiceResult, ListRun};
use super::stats::Latency;
use super::verify::{self, Encoding, Verifier};
use super::{scale, Plan};
use crate::api::yandex::grpc::pb::kms::asymmetric_signature_key_service_client::AsymmetricSignatureKeyServiceClient;
use crate::api::yandex::grpc::pb::kms::{
    AsymmetricGetPublicKeyRequest, AsymmetricSignHashRequest, AsymmetricSignatureKey,
    CreateAsymmetricSignatureKeyRequest, ListAsymmetricSignatureKeysRequest,
};
use crate::api::yandex::grpc::pb::operation::operation_service_client::OperationServiceClient;
use crate::api::yandex::grpc::pb::operation::{operation, GetOperationRequest};
use crate::crypto::Algorithm;
use prost::Message as _;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

const ALGORITHM: Algorithm = Algorithm::EcdsaP256Sha256;
const FOLDER: &str = "bench-key-service";
/// Keys created one at a time at the start and at the end: a create's own time (no queueing)
/// on a nearly empty and on a full token.
const SEQUENTIAL: usize = 50;
/// Concurrent clients of the bulk phase, each on its own connection: the daemon always has the
/// next create waiting.
const CREATORS: usize = 4;
/// `managed_keys.max_concurrent_generations` of the daemon.
const GENERATIONS: i64 = 2;
/// Page sizes listed; one-key pages only up to [`MAX_KEYS_FOR_PAGES_OF_ONE`] keys (thousands of
/// round trips say nothing the other sizes do not).
const PAGE_SIZES: [usize; 4] = [1, 7, 100, 1000];
const MAX_KEYS_FOR_PAGES_OF_ONE: usize = 500;

/// Runs one key-service level.
pub(crate) async fn run(
    plan: &Plan,
    state_dir: &Path,
    module: &Path,
    bearer: Option<&str>,
    keys: usize,
) -> Result<KeyServiceResult, String> {
    let dir = state_dir.join(format!("key-service-{keys}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    let softhsm_conf = scale::token_dir(&dir)?;
    scale::init_token(plan, state_dir, module, &softhsm_conf).await?;
    let config = write_config(plan, state_dir, keys)?;
    let start = |name: &str| {
        let launch = Launch::serve(&config, &softhsm_conf, dir.join(format!("{name}.log")));
        tokio::task::spawn_blocking(move || launch.start())
    };
    let daemon: Daemon = start("daemon").await.map_err(|e| e.to_string())??;
    let target = Target::new(daemon.addr(), bearer)?;

    let sequential = SEQUENTIAL.min(keys / 4);
    let bulk = keys - 2 * sequential;
    plan.progress(&format!("key service: creating {keys} P-256 keys"));
    let started = Instant::now();
    let (mut ids, first) = create_many(&target, sequential, 1).await?;
    let bulk_started = Instant::now();
    let (more, bulk_times) = create_many(&target, bulk, CREATORS).await?;
    let bulk_s = bulk_started.elapsed().as_secs_f64();
    let (last_ids, last) = create_many(&target, sequential, 1).await?;
    let create_s = started.elapsed().as_secs_f64();
    ids.extend(more);
    ids.extend(last_ids);
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    if expected.len() != keys {
        return Err(format!(
            "key service: {keys} creates returned {} distinct key ids",
            expected.len()
        ));
    }

    plan.progress("key service: listing");
    let mut client = Clients::connect(&target).await?;
    let mut list = Vec::new();
    for page_size in PAGE_SIZES {
        if page_size == 1 && keys > MAX_KEYS_FOR_PAGES_OF_ONE {
            continue;
        }
        list.push(client.page_through(page_size, &expected).await?);
    }

    plan.progress("key service: starting a second replica on the token");
    let replica = start("replica").await.map_err(|e| e.to_string())??;
    let replica_startup_s = replica.startup().as_secs_f64();
    let replica_target = Target::new(replica.addr(), bearer)?;
    Clients::connect(&replica_target)
        .await?
        .page_through(1000, &expected)
        .await?;
    let verified = sign_and_verify(&replica_target, &ids[keys / 2]).await;
    drop(replica);
    drop(daemon);

    let (verified, invalid) = match verified {
        Ok(()) => (1, 0),
        Err(e) => {
            eprintln!("p11kms bench: key service: {e}");
            (0, 1)
        }
    };
    Ok(KeyServiceResult {
        keys,
        create_s,
        sequential,
        create_first: Latency::of(&first),
        create_last: Latency::of(&last),
        bulk_keys: bulk,
        bulk_clients: CREATORS,
        bulk_generations: GENERATIONS,
        bulk_s,
        bulk_keys_per_s: bulk as f64 / bulk_s.max(f64::MIN_POSITIVE),
        bulk_create: Latency::of(&bulk_times),
        list,
        replica_startup_s,
        verified,
        invalid,
    })
}

/// `<state-dir>/key-service-<n>.toml`: the dev config on the run's own token, with no declared
/// keys (every key is the API's) and the bench's generation budget.
fn write_config(plan: &Plan, state_dir: &Path, keys: usize) -> Result<PathBuf, String> {
    let mut table = scale::config_on_own_token(plan, state_dir)?;
    table.insert("keys".into(), toml::Value::Array(Vec::new()));
    let mut managed = match table.remove("managed_keys") {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    managed.insert("max_concurrent_generations".into(), GENERATIONS.into());
    table.insert("managed_keys".into(), managed.into());
    let path = state_dir.join(format!("key-service-{keys}.toml"));
    let text = format!(
        "# p11kms bench key-service config: keys created through the API only (generated).\n{}",
        toml::to_string(&table).map_err(|e| e.to_string())?
    );
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Creates `n` keys with `clients` concurrent clients; their ids and each create's time (ns).
async fn create_many(
    target: &Target,
    n: usize,
    clients: usize,
) -> Result<(Vec<String>, Vec<u64>), String> {
    let mut tasks = Vec::new();
    for w in 0..clients {
        let share = n / clients + usize::from(w < n % clients);
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Clients::connect(&target).await?;
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                let started = Instant::now();
                let id = c.create().await?;
                out.push((id, nanos(started)));
            }
            Ok::<_, String>(out)
        }));
    }
    let (mut ids, mut times) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for t in tasks {
        for (id, ns) in t.await.map_err(|e| e.to_string())?? {
            ids.push(id);
            times.push(ns);
        }
    }
    Ok((ids, times))
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn failed(call: &str, s: &tonic::Status) -> String {
    format!("key service: {call}: {:?}: {}", s.code(), s.message())
}

/// The key service and the operation service on one connection.
struct Clients {
    target: Target,
    keys: AsymmetricSignatureKeyServiceClient<Connection>,
    ops: OperationServiceClient<Connection>,
}

impl Clients {
    async fn connect(target: &Target) -> Result<Self, String> {
        let connection = target.connection().await?;
        Ok(Self {
            target: target.clone(),
            keys: AsymmetricSignatureKeyServiceClient::with_origin(
                connection.clone(),
                target.origin(),
            ),
            ops: OperationServiceClient::with_origin(connection, target.origin()),
        })
    }

    /// Create, then `OperationService.Get` of its operation, as the SDK waiters do; the new
    /// key's id.
    async fn create(&mut self) -> Result<String, String> {
        let request = CreateAsymmetricSignatureKeyRequest {
            folder_id: FOLDER.into(),
            signature_algorithm: ALGORITHM.to_proto(),
            ..Default::default()
        };
        let op = self
            .keys
            .create(self.target.request(request))
            .await
            .map_err(|s| failed("Create", &s))?
            .into_inner();
        let op = self
            .ops
            .get(self.target.request(GetOperationRequest {
                operation_id: op.id,
            }))
            .await
            .map_err(|s| failed("OperationService.Get", &s))?
            .into_inner();
        match op.result {
            Some(operation::Result::Response(any)) if op.done => {
                AsymmetricSignatureKey::decode(any.value.as_slice())
                    .map(|k| k.id)
                    .map_err(|e| format!("key service: the created key does not decode: {e}"))
            }
            other => Err(format!(
                "key service: operation {} is not done with a key: {other:?}",
                op.id
            )),
        }
    }

    /// Lists the folder with `page_size`, timing each page; every key of `expected` must come
    /// exactly once, in id order, and nothing else.
    async fn page_through(
        &mut self,
        page_size: usize,
        expected: &BTreeSet<String>,
    ) -> Result<ListRun, String> {
        let mut latencies = Vec::new();
        let mut last: Option<String> = None;
        let mut listed = 0;
        let mut page_token = String::new();
        loop {
            let request = ListAsymmetricSignatureKeysRequest {
                folder_id: FOLDER.into(),
                page_size: i64::try_from(page_size).unwrap_or(i64::MAX),
                page_token,
            };
            let started = Instant::now();
            let page = self
                .keys
                .list(self.target.request(request))
                .await
                .map_err(|s| failed("List", &s))?
                .into_inner();
            latencies.push(nanos(started));
            if page.keys.len() > page_size {
                return Err(format!(
                    "key service: a page of List with page_size {page_size} has {} keys",
                    page.keys.len()
                ));
            }
            for key in page.keys {
                if last.as_ref().is_some_and(|l| *l >= key.id) || !expected.contains(&key.id) {
                    return Err(format!(
                        "key service: List (page_size {page_size}) returned {} out of order, twice or unknown",
                        key.id
                    ));
                }
                listed += 1;
                last = Some(key.id);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if listed != expected.len() {
            return Err(format!(
                "key service: List (page_size {page_size}) returned {listed} of {} keys",
                expected.len()
            ));
        }
        Ok(ListRun {
            page_size,
            pages: latencies.len(),
            latency: Latency::of(&latencies),
        })
    }
}

/// SignHash with `key_id`, verified against its published public key with RustCrypto.
async fn sign_and_verify(target: &Target, key_id: &str) -> Result<(), String> {
    let mut client = target.connect().await?;
    let mut digest = vec![0u8; verify::digest_len(ALGORITHM)];
    rand::fill(&mut digest[..]);
    let signature = client
        .sign_hash(target.request(AsymmetricSignHashRequest {
            key_id: key_id.into(),
            hash: digest.clone(),
        }))
        .await
        .map_err(|s| failed("SignHash", &s))?
        .into_inner()
        .signature;
    let pem = client
        .get_public_key(target.request(AsymmetricGetPublicKeyRequest {
            key_id: key_id.into(),
        }))
        .await
        .map_err(|s| failed("GetPublicKey", &s))?
        .into_inner()
        .public_key;
    Verifier::from_pem(ALGORITHM, &pem)?
        .verify(&digest, &signature, Encoding::Api)
        .map_err(|e| format!("the signature of {key_id} does NOT verify: {e}"))
}
