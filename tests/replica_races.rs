//! Issue 11, item 1: three replicas (three `p11kms serve` processes on one token copy) change one
//! key at the same moment, 100 trials of each race the issue names:
//!
//! * a revocation and a grant of *different* bindings (and an unrelated change on the third);
//! * a revocation and a grant of the *same* binding (and an unrelated change on the third);
//! * deletion protection turned on against two Deletes;
//! * label updates (different label keys and the same key) with an unrelated change.
//!
//! The writes of a trial start together: one task per replica, on connections opened before,
//! released by one barrier. That makes most trials truly concurrent (every writer reads the key
//! before any other has written), but not all of them (a write can finish before another one
//! reads). So every check accepts exactly the outcomes the documented rules (`src/keys/doc.rs`,
//! README "Several replicas") allow for *any* interleaving, and where the answers reveal whether
//! the writers saw each other, the test says how many trials were truly concurrent.
//!
//! The 100 trials of a race run in four lanes of 25, each lane with three replicas on a token
//! of its own: a trial races its three replicas on one key, as it would alone, while the lanes'
//! waits for convergence overlap (see [`in_lanes`]).
//!
//! After each trial every replica must converge to the same state, polled (never slept for)
//! within [`CONVERGED_WITHIN`], and the state must be an allowed one: no acknowledged change
//! lost, no revocation undone, deletion protection never bypassed. Revocations and grants are
//! also checked where they matter: the revoked subject is refused a signature on every replica,
//! the granted one gets a signature that verifies (RustCrypto).

mod common;
mod key_service_support;

use common::{verify, Daemon};
use key_service_support::{managed_token, Clients};
use p11kms::api::yandex::grpc::pb::kms::asymmetric_signature_key::Status as KeyStatus;
use p11kms::api::yandex::grpc::pb::kms::AsymmetricSignatureKey;
use p11kms::api::yandex::grpc::pb::yandex::cloud::access::{
    AccessBinding, AccessBindingAction, AccessBindingDelta, ListAccessBindingsRequest,
    SetAccessBindingsRequest, Subject, UpdateAccessBindingsRequest,
};
use p11kms::crypto::Algorithm;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::ops::Range;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::{Code, Status};

/// Trials per race.
const TRIALS: usize = 100;
/// Trials of one race run in this many lanes at once, each on its own cluster (see
/// [`in_lanes`]).
const LANES: usize = 4;
/// How often [`Cluster::agree`] asks every replica again.
const POLL: Duration = Duration::from_millis(50);
/// The smallest refresh interval the config allows: replicas look for each other's changes
/// this often.
const REFRESH_MS: u64 = 100;
/// How long all replicas may take to agree after a trial. A replica notices a change at its
/// next refresh; on SoftHSM, a process that wrote at the same moment as another may not see the
/// other's new objects until some process writes again, which p11kms's touches do 0.3–0.7 s
/// after a write, then 1.5 s and 5 s after the last one (README "SoftHSMv2 as a shared token").
/// Racing writes are exactly that case, so the bound covers the last touch plus a refresh and
/// a scan on a loaded 2-core machine. The distribution is printed: most trials converge within
/// a few refresh intervals.
const CONVERGED_WITHIN: Duration = Duration::from_secs(10);

const P256: Algorithm = Algorithm::EcdsaP256Sha256;
const SIGNER: &str = "kms.asymmetricSignatureKeys.signer";
const VIEWER: &str = "kms.viewer";
const SA: &str = "serviceAccount";

/// Three replicas on one token copy, with an admin client on each.
struct Cluster {
    _token: common::TestToken,
    daemons: Vec<Daemon>,
    admins: Vec<Clients>,
    /// Bearer secrets of the service accounts the races bind, by subject id.
    secrets: BTreeMap<String, String>,
}

impl Cluster {
    /// Starts three replicas; `subjects` get API tokens (no config role).
    async fn start(subjects: &[String]) -> Self {
        let token = managed_token(&[("refresh_interval_ms", (REFRESH_MS as i64).into())]);
        let mut secrets = BTreeMap::new();
        for s in subjects {
            let secret = format!("tok-{s}-{}", hex::encode(rand::random::<[u8; 12]>()));
            token.add_api_token(&secret, s, SA);
            secrets.insert(s.clone(), secret);
        }
        let daemons: Vec<Daemon> = (0..3).map(|_| Daemon::serve(&token, &[])).collect();
        let mut admins = Vec::new();
        for d in &daemons {
            admins.push(Clients::connect(d).await);
        }
        Self {
            _token: token,
            daemons,
            admins,
            secrets,
        }
    }

    /// The replicas playing A, B and C in trial `i`: every replica plays every part, so every
    /// pair of replica ids meets in both orders.
    fn parts(&self, i: usize) -> (Clients, Clients, Clients) {
        (
            self.admins[i % 3].clone(),
            self.admins[(i + 1) % 3].clone(),
            self.admins[(i + 2) % 3].clone(),
        )
    }

    /// Polls every replica until all report the same `observe` value; that value and how long
    /// it took, or the last observations if they did not agree within [`CONVERGED_WITHIN`].
    async fn agree<T, F, Fut>(&self, observe: F) -> Result<(T, Duration), Vec<T>>
    where
        T: PartialEq + Clone,
        F: Fn(Clients) -> Fut,
        Fut: Future<Output = T>,
    {
        let start = Instant::now();
        loop {
            let mut seen = Vec::with_capacity(self.admins.len());
            for c in &self.admins {
                seen.push(observe(c.clone()).await);
            }
            if seen.windows(2).all(|w| w[0] == w[1]) {
                return Ok((seen.swap_remove(0), start.elapsed()));
            }
            if start.elapsed() >= CONVERGED_WITHIN {
                return Err(seen);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Cluster::agree`] on `want`, for the set-up and repairs between trials.
    async fn settle<T, F, Fut>(&self, what: &str, want: &T, observe: F)
    where
        T: PartialEq + Clone + Debug,
        F: Fn(Clients) -> Fut,
        Fut: Future<Output = T>,
    {
        let start = Instant::now();
        loop {
            match self.agree(&observe).await {
                Ok((got, _)) if got == *want => return,
                Ok(_) => {}
                Err(seen) => panic!("{what}: replicas disagree: {seen:#?}"),
            }
            assert!(
                start.elapsed() < CONVERGED_WITHIN,
                "{what}: not {want:?} within {CONVERGED_WITHIN:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether `subject` may sign with `key` on every replica (a signature that verifies) or
    /// on none (PERMISSION_DENIED); anything else is described.
    async fn signs_everywhere(&self, subject: &str, key: &AsymmetricSignatureKey) -> Signs {
        let mut outcomes = Vec::new();
        for d in &self.daemons {
            outcomes.push(sign_as(d, &self.secrets[subject], key).await);
        }
        if outcomes.iter().all(Result::is_ok) {
            Signs::Everywhere
        } else if outcomes.iter().all(|o| {
            o.as_ref()
                .is_err_and(|s| s.code() == Code::PermissionDenied)
        }) {
            Signs::Nowhere
        } else {
            Signs::Mixed(format!("{outcomes:?}"))
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Signs {
    Everywhere,
    Nowhere,
    Mixed(String),
}

/// Signs as the holder of `secret` and verifies the signature with RustCrypto against the
/// public key the replica publishes to that caller.
async fn sign_as(
    daemon: &Daemon,
    secret: &str,
    key: &AsymmetricSignatureKey,
) -> Result<(), Status> {
    let algorithm = Algorithm::from_proto(key.signature_algorithm).expect("known algorithm");
    let mut kms = daemon.kms_as(Some(secret)).await;
    let message = format!("race check {}", key.id).into_bytes();
    let signature = kms.sign(&key.id, &message).await?;
    let pem = kms.public_key(&key.id).await?;
    let public = verify::parse_public_key(&pem, algorithm).expect("a valid public key");
    public
        .verify_message(algorithm, &message, &signature)
        .unwrap_or_else(|e| panic!("a signature of {} does not verify: {e}", key.id));
    Ok(())
}

/// Runs three calls at the same moment, one task each, released together by a barrier.
async fn together<A, B, C>(
    a: impl Future<Output = A> + Send + 'static,
    b: impl Future<Output = B> + Send + 'static,
    c: impl Future<Output = C> + Send + 'static,
) -> (A, B, C)
where
    A: Send + 'static,
    B: Send + 'static,
    C: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(3));
    let gate = |b: &Arc<Barrier>| {
        let b = Arc::clone(b);
        async move {
            b.wait().await;
        }
    };
    let (ga, gb, gc) = (gate(&barrier), gate(&barrier), gate(&barrier));
    let ta = tokio::spawn(async move {
        ga.await;
        a.await
    });
    let tb = tokio::spawn(async move {
        gb.await;
        b.await
    });
    let tc = tokio::spawn(async move {
        gc.await;
        c.await
    });
    (ta.await.unwrap(), tb.await.unwrap(), tc.await.unwrap())
}

fn binding(role: &str, subject: &str) -> AccessBinding {
    AccessBinding {
        role_id: role.into(),
        subject: Some(Subject {
            id: subject.into(),
            r#type: SA.into(),
        }),
    }
}

/// Bindings as (role, subject id).
type Bound = BTreeSet<(String, String)>;

fn bound(list: &[(&str, &str)]) -> Bound {
    list.iter()
        .map(|(r, s)| ((*r).to_string(), (*s).to_string()))
        .collect()
}

/// A key's access bindings as one replica lists them (every page).
async fn list_bindings(mut c: Clients, key: String) -> Result<Bound, Code> {
    let mut out = Bound::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .keys
            .list_access_bindings(ListAccessBindingsRequest {
                resource_id: key.clone(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(|s| s.code())?
            .into_inner();
        for b in page.access_bindings {
            let subject = b.subject.map(|s| s.id).unwrap_or_default();
            out.insert((b.role_id, subject));
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

async fn set_bindings(mut c: Clients, key: String, list: Vec<AccessBinding>) -> Result<(), Status> {
    c.keys
        .set_access_bindings(SetAccessBindingsRequest {
            resource_id: key,
            access_bindings: list,
        })
        .await
        .map(drop)
}

async fn update_bindings(
    mut c: Clients,
    key: String,
    deltas: Vec<(AccessBindingAction, AccessBinding)>,
) -> Result<(), Status> {
    c.keys
        .update_access_bindings(UpdateAccessBindingsRequest {
            resource_id: key,
            access_binding_deltas: deltas
                .into_iter()
                .map(|(action, b)| AccessBindingDelta {
                    action: action as i32,
                    access_binding: Some(b),
                })
                .collect(),
        })
        .await
        .map(drop)
}

/// Durations, for the summary line.
#[derive(Default)]
struct Times(Vec<Duration>);

impl Times {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn summary(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return "none".into();
        }
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        format!("median {:?}, p90 {:?}, max {:?}", at(0.5), at(0.9), at(1.0))
    }
}

/// What went wrong in which trials; the test fails at the end if anything did, after printing
/// the counts (so a run against a broken model reports how often each rule broke).
#[derive(Default)]
struct Violations(BTreeMap<&'static str, Vec<String>>);

impl Violations {
    fn add(&mut self, kind: &'static str, detail: String) {
        println!("VIOLATION {kind}: {detail}");
        self.0.entry(kind).or_default().push(detail);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn absorb(&mut self, other: Violations) {
        for (kind, details) in other.0 {
            self.0.entry(kind).or_default().extend(details);
        }
    }

    fn assert_none(&self, race: &str, trials: usize) {
        for (kind, details) in &self.0 {
            println!("{race}: {kind}: {}/{trials} trials", details.len());
            for d in details.iter().take(3) {
                println!("    {d}");
            }
        }
        assert!(
            self.0.is_empty(),
            "{race}: {} kind(s) of violation, see above",
            self.0.len()
        );
    }
}

/// What the lanes of one race report.
#[derive(Default)]
struct Tally {
    violations: Violations,
    times: Times,
    /// Outcomes by name (which order the writers ended up in).
    counts: BTreeMap<&'static str, usize>,
}

type Shared = Arc<Mutex<Tally>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// One trial's findings, added to the tally when the trial ends (a trial repairs its key when it
/// found anything).
fn report(shared: &Shared, found: Violations, converged: Option<Duration>) {
    let mut tally = lock(shared);
    tally.violations.absorb(found);
    if let Some(took) = converged {
        tally.times.push(took);
    }
}

fn count(shared: &Shared, outcome: &'static str) {
    *lock(shared).counts.entry(outcome).or_default() += 1;
}

/// Runs the `TRIALS` trials of a race in `LANES` lanes at once, each lane on a cluster of its
/// own (three replicas on one token, `subjects(lane)` with API tokens) and on a key of its own,
/// `run` playing trials `range` one after the other. Lanes do not share replicas: a replica
/// makes one change at a time, so lanes sharing replicas would queue a trial's writes behind
/// other lanes' and make them less concurrent (with five lanes on one cluster, only 26 of 100
/// label trials were truly concurrent, against 98 alone). What lanes overlap is the waiting for
/// convergence, which dominates a trial's time (see [`CONVERGED_WITHIN`]). Lanes are local
/// tasks (a [`Daemon`] is not `Sync`); each trial's writes still run on tasks of their own (see
/// [`together`]). A panicking lane fails the test.
async fn in_lanes<S, F, Fut>(subjects: S, run: F) -> Tally
where
    S: Fn(usize) -> Vec<String>,
    F: Fn(Rc<Cluster>, usize, Range<usize>, Shared) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let shared: Shared = Arc::default();
    let per_lane = TRIALS / LANES;
    let mut clusters = Vec::new();
    for lane in 0..LANES {
        clusters.push(Rc::new(Cluster::start(&subjects(lane)).await));
    }
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let lanes: Vec<_> = clusters
                .iter()
                .enumerate()
                .map(|(lane, cluster)| {
                    tokio::task::spawn_local(run(
                        Rc::clone(cluster),
                        lane,
                        lane * per_lane..(lane + 1) * per_lane,
                        Arc::clone(&shared),
                    ))
                })
                .collect();
            for lane in lanes {
                if let Err(e) = lane.await {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        })
        .await;
    let tally = std::mem::take(&mut *lock(&shared));
    tally
}

/// Replica A revokes `d<l>-<j>` while B grants `d<l>-<j+1>` and C renames the key: every
/// replica must end with exactly the new subject bound and the new name, the old subject
/// refused everywhere and the new one signing everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_and_a_grant_of_different_bindings_both_take_effect() {
    let per_lane = TRIALS / LANES;
    let subjects = |lane: usize| (0..=per_lane).map(|j| format!("d{lane}-{j}")).collect();
    let started = Instant::now();
    let tally = in_lanes(subjects, different_bindings_lane).await;
    let n = |k: &str| tally.counts.get(k).copied().unwrap_or(0);
    println!(
        "different bindings: {TRIALS} trials in {LANES} lanes in {:?}: revocations lost {} of \
         {TRIALS}, grants lost {} of {TRIALS}; all replicas agreed after: {}",
        started.elapsed(),
        n("revocation lost"),
        n("grant lost"),
        tally.times.summary()
    );
    tally.violations.assert_none("different bindings", TRIALS);
}

async fn different_bindings_lane(
    cluster: Rc<Cluster>,
    lane: usize,
    trials: Range<usize>,
    shared: Shared,
) {
    let subject = |j: usize| format!("d{lane}-{j}");
    let key = cluster.admins[lane % 3]
        .clone()
        .create_key("races", P256)
        .await;
    let id = key.id.clone();
    set_bindings(
        cluster.admins[lane % 3].clone(),
        id.clone(),
        vec![binding(SIGNER, &subject(0))],
    )
    .await
    .unwrap();
    let observe = |c: Clients| {
        let id = id.clone();
        async move {
            let name = c
                .clone()
                .get(&id)
                .await
                .map(|k| k.name)
                .map_err(|s| s.code());
            (list_bindings(c, id).await, name)
        }
    };
    cluster
        .settle(
            "set-up",
            &(Ok(bound(&[(SIGNER, &subject(0))])), Ok(String::new())),
            &observe,
        )
        .await;

    for (j, i) in trials.enumerate() {
        let mut found = Violations::default();
        let mut converged = None;
        let (a, b, c) = cluster.parts(i);
        let (old, new, name) = (subject(j), subject(j + 1), format!("c-{i}"));
        let (ra, rb, rc) = together(
            update_bindings(
                a,
                id.clone(),
                vec![(AccessBindingAction::Remove, binding(SIGNER, &old))],
            ),
            update_bindings(
                b,
                id.clone(),
                vec![(AccessBindingAction::Add, binding(SIGNER, &new))],
            ),
            {
                let (id, name) = (id.clone(), name.clone());
                async move { c.clone().update(&id, &["name"], |r| r.name = name).await }
            },
        )
        .await;
        ra.unwrap_or_else(|s| panic!("trial {i}: revoke {old}: {s}"));
        rb.unwrap_or_else(|s| panic!("trial {i}: grant {new}: {s}"));
        rc.unwrap_or_else(|s| panic!("trial {i}: rename: {s}"));

        let want = (Ok(bound(&[(SIGNER, &new)])), Ok(name.clone()));
        match cluster.agree(&observe).await {
            Ok((got, took)) => {
                converged = Some(took);
                if got
                    .0
                    .as_ref()
                    .is_ok_and(|b| b.contains(&(SIGNER.into(), old.clone())))
                {
                    count(&shared, "revocation lost");
                }
                if got
                    .0
                    .as_ref()
                    .is_ok_and(|b| !b.contains(&(SIGNER.into(), new.clone())))
                {
                    count(&shared, "grant lost");
                }
                if got != want {
                    found.add(
                        "an acknowledged change was lost",
                        format!("trial {i}: want {want:?}, all replicas have {got:?}"),
                    );
                }
            }
            Err(seen) => found.add("no convergence", format!("trial {i}: {seen:?}")),
        }
        match cluster.signs_everywhere(&old, &key).await {
            Signs::Nowhere => {}
            other => found.add(
                "a revoked subject still signs",
                format!("trial {i}: {old}: {other:?}"),
            ),
        }
        match cluster.signs_everywhere(&new, &key).await {
            Signs::Everywhere => {}
            other => found.add(
                "a granted subject cannot sign",
                format!("trial {i}: {new}: {other:?}"),
            ),
        }
        let repair = !found.is_empty();
        report(&shared, found, converged);
        if repair {
            // Put the key back where the next trial expects it.
            set_bindings(
                cluster.admins[lane % 3].clone(),
                id.clone(),
                vec![binding(SIGNER, &new)],
            )
            .await
            .unwrap();
            cluster
                .settle(&format!("repair after trial {i}"), &want, &observe)
                .await;
        }
    }
}

/// Replica A revokes carol (and adds a marker binding) while B sets the bindings to carol and
/// another subject and C changes the description. Only two outcomes are allowed: B's set
/// came after A's change and saw it (carol bound again, A's marker removed by the set), or
/// not, and then the revocation stands, whether A came after B or the two were concurrent
/// (a revocation wins over a concurrent grant of the same binding). Carol signs exactly when
/// she is bound.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_is_never_undone_by_a_concurrent_grant_of_the_same_binding() {
    let started = Instant::now();
    let tally = in_lanes(|_| vec!["carol".to_string()], same_binding_lane).await;
    let n = |k: &str| tally.counts.get(k).copied().unwrap_or(0);
    println!(
        "same binding: {TRIALS} trials in {LANES} lanes in {:?}: the revocation stood in {} \
         (concurrent, or the set came first), carol was granted again by a set that had seen \
         the revocation in {}; all replicas agreed after: {}",
        started.elapsed(),
        n("revoked"),
        n("regranted"),
        tally.times.summary()
    );
    tally.violations.assert_none("same binding", TRIALS);
}

async fn same_binding_lane(
    cluster: Rc<Cluster>,
    lane: usize,
    trials: Range<usize>,
    shared: Shared,
) {
    let key = cluster.admins[lane % 3]
        .clone()
        .create_key("races", P256)
        .await;
    let id = key.id.clone();
    let observe = |c: Clients| {
        let id = id.clone();
        async move {
            let description = c
                .clone()
                .get(&id)
                .await
                .map(|k| k.description)
                .map_err(|s| s.code());
            (list_bindings(c, id).await, description)
        }
    };

    let mut description = String::new();
    for i in trials {
        let mut found = Violations::default();
        let mut converged = None;
        // Carol is bound before every trial (after a revocation, granted again on its own).
        let base = cluster.agree(&observe).await.expect("agreed").0 .0.unwrap();
        if !base.contains(&(SIGNER.to_string(), "carol".to_string())) {
            set_bindings(
                cluster.admins[i % 3].clone(),
                id.clone(),
                vec![binding(SIGNER, "carol")],
            )
            .await
            .unwrap();
            cluster
                .settle(
                    "carol granted",
                    &(Ok(bound(&[(SIGNER, "carol")])), Ok(description.clone())),
                    &observe,
                )
                .await;
        }
        let (a, b, c) = cluster.parts(i);
        let (marker, witness) = (format!("ma{i}"), format!("wb{i}"));
        description = format!("c-{i}");
        let (ra, rb, rc) = together(
            update_bindings(
                a,
                id.clone(),
                vec![
                    (AccessBindingAction::Remove, binding(SIGNER, "carol")),
                    (AccessBindingAction::Add, binding(VIEWER, &marker)),
                ],
            ),
            set_bindings(
                b,
                id.clone(),
                vec![binding(SIGNER, "carol"), binding(VIEWER, &witness)],
            ),
            {
                let (id, d) = (id.clone(), description.clone());
                async move {
                    c.clone()
                        .update(&id, &["description"], |r| r.description = d)
                        .await
                }
            },
        )
        .await;
        ra.unwrap_or_else(|s| panic!("trial {i}: revoke carol: {s}"));
        rb.unwrap_or_else(|s| panic!("trial {i}: set carol: {s}"));
        rc.unwrap_or_else(|s| panic!("trial {i}: describe: {s}"));

        let after_a = bound(&[(SIGNER, "carol"), (VIEWER, &witness)]);
        let revocation_stands = bound(&[(VIEWER, &witness), (VIEWER, &marker)]);
        let carol_bound = match cluster.agree(&observe).await {
            Ok(((bindings, got_description), took)) => {
                converged = Some(took);
                if got_description.as_ref() != Ok(&description) {
                    found.add(
                        "an unrelated change was lost",
                        format!("trial {i}: description {got_description:?}"),
                    );
                }
                match bindings {
                    Ok(b) if b == after_a => {
                        count(&shared, "regranted");
                        Some(true)
                    }
                    Ok(b) if b == revocation_stands => {
                        count(&shared, "revoked");
                        Some(false)
                    }
                    other => {
                        found.add(
                            "not an outcome of any order (a change was lost or a revocation undone)",
                            format!(
                                "trial {i}: {other:?}; allowed {after_a:?} or {revocation_stands:?}"
                            ),
                        );
                        None
                    }
                }
            }
            Err(seen) => {
                found.add("no convergence", format!("trial {i}: {seen:?}"));
                None
            }
        };
        if let Some(carol_bound) = carol_bound {
            let signs = cluster.signs_everywhere("carol", &key).await;
            let want = if carol_bound {
                Signs::Everywhere
            } else {
                Signs::Nowhere
            };
            if signs != want {
                found.add(
                    "what carol may do differs from her bindings",
                    format!("trial {i}: bound {carol_bound}, signs {signs:?}"),
                );
            }
            report(&shared, found, converged);
        } else {
            report(&shared, found, converged);
            // Put the key in a state the next trial understands.
            set_bindings(
                cluster.admins[lane % 3].clone(),
                id.clone(),
                vec![binding(SIGNER, "carol")],
            )
            .await
            .unwrap();
            cluster
                .settle(
                    &format!("repair after trial {i}"),
                    &(Ok(bound(&[(SIGNER, "carol")])), Ok(description.clone())),
                    &observe,
                )
                .await;
        }
    }
}

/// What a replica shows of the key in the protection race.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Get answers, with this deletion protection.
    Live { protected: bool },
    /// Get answers NOT_FOUND.
    Deleted,
    /// Anything else.
    Other(String),
}

/// Replica A turns deletion protection on while B and C delete the key. Whatever the order,
/// an acknowledged protection means the key stays (or comes back) with protection on, on every
/// replica; otherwise a Delete was acknowledged and the key is deleted. Turning protection off
/// afterwards must not bring a void deletion back.
#[tokio::test(flavor = "multi_thread")]
async fn deletion_protection_is_never_bypassed_by_a_concurrent_delete() {
    let started = Instant::now();
    let tally = in_lanes(|_| Vec::new(), protection_lane).await;
    let n = |k: &str| tally.counts.get(k).copied().unwrap_or(0);
    println!(
        "protection against Delete: {TRIALS} trials in {LANES} lanes in {:?}: protection and a \
         Delete both acknowledged (concurrent) {}, protection first {}, a Delete first {}; all \
         replicas agreed after: {}",
        started.elapsed(),
        n("both acknowledged"),
        n("protection first"),
        n("a Delete first"),
        tally.times.summary()
    );
    tally
        .violations
        .assert_none("protection against Delete", TRIALS);
}

async fn protection_lane(cluster: Rc<Cluster>, lane: usize, trials: Range<usize>, shared: Shared) {
    let key = cluster.admins[lane % 3]
        .clone()
        .create_key("races", P256)
        .await;
    let id = key.id.clone();
    let observe = |c: Clients| {
        let id = id.clone();
        async move {
            match c.clone().get(&id).await {
                Ok(k) => Seen::Live {
                    protected: k.deletion_protection,
                },
                Err(s) if s.code() == Code::NotFound => Seen::Deleted,
                Err(s) => Seen::Other(s.to_string()),
            }
        }
    };

    for i in trials {
        let mut found = Violations::default();
        let mut converged = None;
        let (a, b, c) = cluster.parts(i);
        let delete = |mut c: Clients, id: String| async move { c.delete(&id).await.map(drop) };
        let (ra, rb, rc) = together(
            {
                let id = id.clone();
                async move { a.clone().set_protection(&id, true).await.map(drop) }
            },
            delete(b, id.clone()),
            delete(c, id.clone()),
        )
        .await;
        let code = |r: &Result<(), Status>| r.as_ref().map_or_else(Status::code, |()| Code::Ok);
        let (ca, cb, cc) = (code(&ra), code(&rb), code(&rc));
        let deletes_ok = [cb, cc].iter().filter(|c| **c == Code::Ok).count();
        let fine = |c: Code, allowed: &[Code]| allowed.contains(&c);
        if !fine(ca, &[Code::Ok, Code::NotFound])
            || !fine(cb, &[Code::Ok, Code::FailedPrecondition, Code::NotFound])
            || !fine(cc, &[Code::Ok, Code::FailedPrecondition, Code::NotFound])
        {
            panic!("trial {i}: unexpected answers: protect {ra:?}, delete {rb:?}, delete {rc:?}");
        }
        let want = if ca == Code::Ok {
            count(
                &shared,
                if deletes_ok > 0 {
                    "both acknowledged"
                } else {
                    "protection first"
                },
            );
            Seen::Live { protected: true }
        } else {
            count(&shared, "a Delete first");
            if deletes_ok == 0 {
                found.add(
                    "nothing was acknowledged",
                    format!("trial {i}: {ca:?} {cb:?} {cc:?}"),
                );
            }
            Seen::Deleted
        };
        match cluster.agree(&observe).await {
            Ok((got, took)) => {
                converged = Some(took);
                if got != want {
                    found.add(
                        "deletion protection bypassed or an acknowledged change lost",
                        format!(
                            "trial {i}: answers {ca:?} {cb:?} {cc:?}; want {want:?}, got {got:?}"
                        ),
                    );
                }
            }
            Err(seen) => found.add("no convergence", format!("trial {i}: {seen:?}")),
        }
        if want == (Seen::Live { protected: true }) {
            for d in &cluster.daemons {
                let mut c = Clients::connect(d).await;
                if let Err(s) = c.sign_verified(&key).await {
                    found.add("a protected key does not sign", format!("trial {i}: {s}"));
                }
            }
        }

        // Back to unprotected and not deleted, by whichever replica comes next. Turning
        // protection off must not revive a Delete that protection voided.
        let mut next = cluster.admins[(i + 1) % 3].clone();
        match want {
            Seen::Live { .. } => {
                next.set_protection(&id, false)
                    .await
                    .unwrap_or_else(|s| panic!("trial {i}: protection off: {s}"));
            }
            _ => {
                next.undelete(&id)
                    .await
                    .unwrap_or_else(|s| panic!("trial {i}: undelete: {s}"));
            }
        }
        let reset = Seen::Live { protected: false };
        let revived = match cluster.agree(&observe).await {
            Ok((got, _)) if got == reset => false,
            Ok((got, _)) => {
                found.add(
                    "a void deletion came back",
                    format!("trial {i}: after the reset {got:?}"),
                );
                got == Seen::Deleted
            }
            Err(seen) => panic!("trial {i}: no convergence after the reset: {seen:?}"),
        };
        let repair = !found.is_empty();
        report(&shared, found, converged);
        if repair {
            if revived {
                next.undelete(&id).await.unwrap();
            }
            cluster
                .settle(&format!("repair after trial {i}"), &reset, &observe)
                .await;
        }
    }
}

/// The fields of the label race, as one replica shows them.
type LabelView = Result<(BTreeMap<String, String>, String, String, i32), Code>;

/// Replica A replaces the labels (changing `shared` and `only-a`) and sets the name, B replaces
/// them (changing `shared` and `only-b`) and sets the description, C flips the status. Update
/// replaces all labels, so a writer that saw the other's change overwrites it as it asked;
/// whether it saw it shows in its answer (the name or description the other set). Writers that
/// did not see each other both keep their own label keys, and `shared` takes one of the two
/// values, the same on every replica. The name, description and status always survive.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_label_updates_keep_every_acknowledged_label() {
    let started = Instant::now();
    let tally = in_lanes(|_| Vec::new(), labels_lane).await;
    let n = |k: &str| tally.counts.get(k).copied().unwrap_or(0);
    println!(
        "labels: {TRIALS} trials in {LANES} lanes in {:?}: concurrent {} (shared went to A's \
         value {} times, to B's {}), B after A {}, A after B {}; all replicas agreed after: {}",
        started.elapsed(),
        n("concurrent"),
        n("shared to A"),
        n("shared to B"),
        n("B after A"),
        n("A after B"),
        tally.times.summary()
    );
    tally.violations.assert_none("labels", TRIALS);
}

async fn labels_lane(cluster: Rc<Cluster>, lane: usize, trials: Range<usize>, shared: Shared) {
    let key = cluster.admins[lane % 3]
        .clone()
        .create_key("races", P256)
        .await;
    let id = key.id.clone();
    let observe = |c: Clients| {
        let id = id.clone();
        async move {
            let view: LabelView = c
                .clone()
                .get(&id)
                .await
                .map(|k| {
                    (
                        k.labels.into_iter().collect(),
                        k.name,
                        k.description,
                        k.status,
                    )
                })
                .map_err(|s| s.code());
            view
        }
    };

    for i in trials {
        let mut found = Violations::default();
        let mut converged = None;
        let (base, ..) = cluster.agree(&observe).await.expect("agreed").0.unwrap();
        let (a, b, c) = cluster.parts(i);
        let (va, vb) = (format!("a{i}"), format!("b{i}"));
        let mut labels_a = base.clone();
        labels_a.insert("shared".into(), va.clone());
        labels_a.insert("only-a".into(), i.to_string());
        let mut labels_b = base.clone();
        labels_b.insert("shared".into(), vb.clone());
        labels_b.insert("only-b".into(), i.to_string());
        let status = if i % 2 == 0 {
            KeyStatus::Inactive
        } else {
            KeyStatus::Active
        };
        let (ra, rb, rc) = together(
            {
                let (id, labels, name) = (id.clone(), labels_a.clone(), va.clone());
                async move {
                    a.clone()
                        .update(&id, &["labels", "name"], |r| {
                            r.labels = labels.into_iter().collect();
                            r.name = name;
                        })
                        .await
                }
            },
            {
                let (id, labels, description) = (id.clone(), labels_b.clone(), vb.clone());
                async move {
                    b.clone()
                        .update(&id, &["labels", "description"], |r| {
                            r.labels = labels.into_iter().collect();
                            r.description = description;
                        })
                        .await
                }
            },
            {
                let id = id.clone();
                async move { c.clone().set_status(&id, status).await }
            },
        )
        .await;
        let ra = ra.unwrap_or_else(|s| panic!("trial {i}: A's update: {s}"));
        let rb = rb.unwrap_or_else(|s| panic!("trial {i}: B's update: {s}"));
        rc.unwrap_or_else(|s| panic!("trial {i}: C's status: {s}"));
        let b_saw_a = rb.name == va;
        let a_saw_b = ra.description == vb;
        assert!(
            !(a_saw_b && b_saw_a),
            "trial {i}: each writer saw the other's change: {ra:?} / {rb:?}"
        );
        // The labels allowed for the value `shared` ends with.
        let allowed = |shared: &str| -> BTreeMap<String, String> {
            if b_saw_a {
                labels_b.clone()
            } else if a_saw_b {
                labels_a.clone()
            } else {
                let mut both = base.clone();
                both.insert("only-a".into(), i.to_string());
                both.insert("only-b".into(), i.to_string());
                both.insert("shared".into(), shared.to_string());
                both
            }
        };
        count(
            &shared,
            match (a_saw_b, b_saw_a) {
                (false, false) => "concurrent",
                (true, _) => "A after B",
                (_, true) => "B after A",
            },
        );
        match cluster.agree(&observe).await {
            Ok((Ok((labels, name, description, got_status)), took)) => {
                converged = Some(took);
                let shared_value = labels.get("shared").cloned().unwrap_or_default();
                let shared_ok = if a_saw_b || b_saw_a {
                    true
                } else {
                    shared_value == va || shared_value == vb
                };
                if !shared_ok || labels != allowed(&shared_value) {
                    found.add(
                        "an acknowledged label change was lost",
                        format!(
                            "trial {i}: got {labels:?}; A saw B {a_saw_b}, B saw A {b_saw_a}; \
                             want {:?} (shared {va} or {vb})",
                            allowed(&shared_value)
                        ),
                    );
                } else if !(a_saw_b || b_saw_a) {
                    count(
                        &shared,
                        if shared_value == va {
                            "shared to A"
                        } else {
                            "shared to B"
                        },
                    );
                }
                if (name.as_str(), description.as_str(), got_status)
                    != (va.as_str(), vb.as_str(), status as i32)
                {
                    found.add(
                        "an unrelated change was lost",
                        format!(
                            "trial {i}: name {name}, description {description}, status \
                             {got_status}, want status {}",
                            status as i32
                        ),
                    );
                }
            }
            Ok((Err(code), _)) => panic!("trial {i}: Get answers {code:?}"),
            Err(seen) => found.add("no convergence", format!("trial {i}: {seen:?}")),
        }
        report(&shared, found, converged);
    }
}
