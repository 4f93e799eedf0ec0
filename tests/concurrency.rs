//! 32 concurrent clients, each on its own connection, mixing every key with Sign and SignHash
//! for a few seconds: no errors, and every signature verifies (with RustCrypto).

mod common;

use common::verify::{self, ParsedKey};
use common::{dev_key_id, Daemon, TestToken};
use p11kms::crypto::Algorithm;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
const RUN_FOR: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Outcome {
    ok: usize,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_get_only_valid_signatures() {
    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let keys: Arc<Vec<(Algorithm, String, ParsedKey)>> = {
        let mut kms = daemon.kms().await;
        let mut keys = Vec::new();
        for alg in Algorithm::ALL {
            let id = dev_key_id(alg);
            let key = verify::parse_public_key(&kms.public_key(&id).await.unwrap(), alg).unwrap();
            keys.push((alg, id, key));
        }
        Arc::new(keys)
    };

    // One connection per client, all made before the clock starts: on a loaded machine the
    // last ones must not connect after the run is over.
    let mut connections = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        connections.push(daemon.kms().await);
    }
    let deadline = Instant::now() + RUN_FOR;
    let mut clients = tokio::task::JoinSet::new();
    for (client, mut kms) in connections.into_iter().enumerate() {
        let keys = Arc::clone(&keys);
        clients.spawn(async move {
            let mut outcome = Outcome::default();
            let mut i = client;
            while Instant::now() < deadline {
                let (alg, id, key) = &keys[i % keys.len()];
                let message = format!("client {client} request {i}").repeat(1 + i % 7);
                let digest = verify::hash_of(*alg).digest(message.as_bytes());
                let use_sign_hash = (i / keys.len() + client) % 2 == 1;
                let result = if use_sign_hash {
                    kms.sign_hash(id, &digest).await
                } else {
                    kms.sign(id, message.as_bytes()).await
                };
                let op = if use_sign_hash { "SignHash" } else { "Sign" };
                match result {
                    Ok(sig) => match key.verify_digest(*alg, &digest, &sig) {
                        Ok(()) => outcome.ok += 1,
                        Err(e) => outcome
                            .errors
                            .push(format!("{op} {id}: bad signature: {e}")),
                    },
                    Err(status) => outcome.errors.push(format!("{op} {id}: {status:?}")),
                }
                i += 1;
            }
            outcome
        });
    }

    let mut total = 0;
    let mut errors = Vec::new();
    let mut per_client = Vec::new();
    while let Some(joined) = clients.join_next().await {
        let outcome = joined.expect("client task");
        total += outcome.ok;
        per_client.push(outcome.ok);
        errors.extend(outcome.errors);
    }
    assert!(
        errors.is_empty(),
        "{} failed of {}:\n{}\n{}",
        errors.len(),
        total + errors.len(),
        errors.join("\n"),
        daemon.stderr()
    );
    // Every client made progress, so the run really was concurrent.
    assert!(
        per_client.iter().all(|&n| n >= 1),
        "some clients starved: {per_client:?}"
    );
    eprintln!("{total} valid signatures from {CLIENTS} clients in {RUN_FOR:?}");
}
