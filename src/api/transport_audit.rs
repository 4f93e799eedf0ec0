//! Audit records for answers the transport gives before any request reaches the
//! request-context layer: an HTTP/2 stream refused past `max_concurrent_streams`
//! (REFUSED_STREAM), a header block the HTTP/2 layer refused (431), an HTTP/1.1 request head
//! that does not parse or is too large (400, 414, 431). They carry what is known: time, a fresh
//! request id, the peer and its TLS identity, the protocol (`http2` or `http1`), what the
//! transport answered (`transport`) and the outcome a gRPC client sees; no subject, rpc or key,
//! because no header was read.

use super::peer::Peer;
use crate::auth::audit::{self, Record};
use crate::auth::Identity;
use std::sync::Arc;
use tonic::Code;

/// Writes transport answers into the audit trail.
#[derive(Debug)]
pub struct TransportAudit {
    identity: Arc<Identity>,
    token_serial: String,
}

impl TransportAudit {
    /// For the gateway's audit trail.
    pub fn new(identity: Arc<Identity>, token_serial: String) -> Arc<Self> {
        Arc::new(Self {
            identity,
            token_serial,
        })
    }

    /// Records one answer: `protocol` is `http2` or `http1`, `transport` says what was
    /// answered and why. Written without waiting, as the answer is already on its way.
    pub fn answered(&self, peer: &Peer, protocol: &'static str, transport: String, outcome: Code) {
        tracing::debug!(peer = %peer.addr, protocol, %transport, "answered by the transport");
        let record = Record {
            time: Record::now(),
            request_id: super::context::new_request_id(),
            subject: None,
            authentication_failure: None,
            peer: Some(peer.addr.to_string()),
            tls: peer.tls,
            client_certificate: peer.client_subject.clone(),
            protocol,
            rpc: String::new(),
            event: None,
            key_id: None,
            folder_id: None,
            operation_id: None,
            algorithm: None,
            message_sha256: None,
            digest_sha256: None,
            alias: None,
            version_id: None,
            transport: Some(transport),
            outcome: audit::code_name(outcome),
            latency_ms: 0.0,
            token_serial: self.token_serial.clone(),
        };
        self.identity.audit.write_detached(&record);
    }
}
