//! The state series, read from their owners when Prometheus scrapes.

use crate::auth::Identity;
use crate::hsm::Hsm;
use crate::keys::{KeyRegistry, Status};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use std::sync::Arc;

/// What a scrape reads: the token, the audit sink and the keys.
#[derive(Clone)]
pub struct Observed {
    hsm: Hsm,
    /// Its audit sink.
    identity: Arc<Identity>,
    registry: Arc<KeyRegistry>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

/// Key states as labels.
const STATES: [&str; 4] = ["ACTIVE", "INACTIVE", "CREATING", "DELETED"];

pub(super) fn describe() {
    describe_gauge!(
        "p11kms_hsm_pool_size",
        "Sessions the pool may hold (hsm.pool_size)"
    );
    describe_gauge!("p11kms_hsm_sessions_in_use", "Sessions checked out now");
    describe_gauge!(
        "p11kms_hsm_token_up",
        "1 while the token answers, 0 while it is being recovered"
    );
    describe_gauge!(
        "p11kms_hsm_epoch",
        "The token connection's epoch: 1 at start, one more after each successful recovery"
    );
    describe_counter!(
        "p11kms_hsm_recovery_attempts_total",
        "Recoveries of the token connection started"
    );
    describe_counter!(
        "p11kms_hsm_recoveries_total",
        "Recoveries of the token connection that succeeded"
    );
    describe_gauge!(
        "p11kms_hsm_credential_failed",
        "1 when the token refused the PIN (recovery waits for an operator)"
    );
    describe_gauge!(
        "p11kms_audit_queue_depth",
        "Audit records waiting for the writer"
    );
    describe_counter!(
        "p11kms_audit_records_written_total",
        "Audit records written"
    );
    describe_counter!(
        "p11kms_audit_write_failures_total",
        "Audit records that could not be written"
    );
    describe_gauge!(
        "p11kms_audit_outage",
        "1 while audit records cannot be written"
    );
    describe_gauge!("p11kms_keys", "Keys served, by state");
    describe_gauge!("p11kms_build_info", "The running build (always 1)");
}

fn count(n: usize) -> f64 {
    n as f64
}

impl Observed {
    /// Reads from these parts on every scrape.
    pub fn new(hsm: Hsm, identity: Arc<Identity>, registry: Arc<KeyRegistry>) -> Self {
        Self {
            hsm,
            identity,
            registry,
        }
    }

    /// Brings the state series up to date (called before each render).
    pub fn update(&self) {
        let hsm = self.hsm.stats();
        gauge!("p11kms_hsm_pool_size").set(count(self.hsm.pool_capacity()));
        gauge!("p11kms_hsm_sessions_in_use").set(count(hsm.sessions_in_use));
        gauge!("p11kms_hsm_token_up").set(f64::from(u8::from(hsm.up)));
        gauge!("p11kms_hsm_epoch").set(hsm.epoch as f64);
        counter!("p11kms_hsm_recovery_attempts_total").absolute(hsm.recovery_attempts);
        counter!("p11kms_hsm_recoveries_total").absolute(hsm.epoch.saturating_sub(1));
        gauge!("p11kms_hsm_credential_failed").set(f64::from(u8::from(hsm.credential_failed)));

        let audit = &self.identity.audit;
        gauge!("p11kms_audit_queue_depth").set(count(audit.queued()));
        counter!("p11kms_audit_records_written_total").absolute(audit.written());
        counter!("p11kms_audit_write_failures_total").absolute(audit.failed());
        gauge!("p11kms_audit_outage").set(f64::from(u8::from(!audit.healthy())));

        let mut by_state = [0usize; STATES.len()];
        for key in self.registry.all_any() {
            let i = if key.deletion.is_some() {
                3
            } else {
                match key.status {
                    Status::Active => 0,
                    Status::Inactive => 1,
                    Status::Creating => 2,
                }
            };
            by_state[i] += 1;
        }
        for (state, n) in STATES.iter().zip(by_state) {
            gauge!("p11kms_keys", "state" => *state).set(count(n));
        }
        gauge!("p11kms_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    }
}
