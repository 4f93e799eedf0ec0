//! Audit records for answers the transport gives before any request reaches the
//! request-context layer: an HTTP/2 stream refused past `max_concurrent_streams`
//! (REFUSED_STREAM), a header block the HTTP/2 layer refused (431), an HTTP/1.1 request head
//! that does not parse or is too large (400, 414, 431). They carry what is known: time, a fresh
//! request id, the peer and its TLS identity, the protocol (`http2` or `http1`), what the
//! transport answered (`transport`) and the outcome a gRPC client sees; no subject, rpc or key,
//! because no header was read.
//!
//! [`connection_error`] sorts out how a connection ended, and [`H2Refusals`] what the frame
//! scanner found: an answer gets a record, a protocol error a counted log line
//! ([`super::transport_log`]).

use super::h2_watch::Sent;
use super::peer::Peer;
use super::transport_log::{self, Event};
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

/// Sorts out how a connection ended with an error: an HTTP/1.1 request head hyper answered
/// itself (400, 414, 431) is audited; protocol errors and header timeouts are counted; the
/// rest (a client that went away) is only worth a debug line.
pub fn connection_error(
    audit: &TransportAudit,
    peer: &Peer,
    error: &(dyn std::error::Error + 'static),
) {
    let remote = peer.addr;
    let Some(e) = error.downcast_ref::<hyper::Error>() else {
        tracing::debug!(%remote, %error, "connection ended with an error");
        return;
    };
    if e.is_parse() && !e.is_parse_version_h2() && !e.is_parse_status() {
        // hyper wrote the answer before it gave up on the connection.
        let text = e.to_string();
        let (status, outcome) = if !e.is_parse_too_large() {
            (400, Code::InvalidArgument)
        } else if text.contains("uri") {
            (414, Code::InvalidArgument)
        } else {
            (431, Code::ResourceExhausted)
        };
        audit.answered(peer, "http1", format!("HTTP/1.1 {status}: {text}"), outcome);
        return;
    }
    if e.is_timeout() {
        transport_log::note(Event::HeaderTimeout, remote, e);
        return;
    }
    let h2 = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>());
    match h2 {
        Some(h2) if h2.is_go_away() && h2.reason() != Some(h2::Reason::NO_ERROR) => {
            let side = if h2.is_remote() {
                "sent by the client"
            } else {
                "ours"
            };
            let reason = h2.reason().map_or_else(String::new, |r| format!("{r:?}"));
            transport_log::note(
                Event::ProtocolError,
                remote,
                &format_args!("HTTP/2 GOAWAY {reason} ({side}): {h2}"),
            );
        }
        _ => tracing::debug!(%remote, error = %e, "connection ended with an error"),
    }
}

/// Where the frame scanner's findings go: audit records for the refused streams, a counted
/// log line for stream protocol errors.
pub struct H2Refusals {
    /// Where records go.
    pub audit: Arc<TransportAudit>,
    /// The connection.
    pub peer: Peer,
    /// `server.max_concurrent_streams`, for the record.
    pub max_streams: u32,
    /// The HTTP/2 layer's header ceiling, for the record.
    pub hard_headers: u32,
}

impl H2Refusals {
    /// Records or counts one refusal.
    pub fn report(&self, sent: Sent) {
        match sent {
            Sent::RefusedStream(stream) => self.audit.answered(
                &self.peer,
                "http2",
                format!(
                    "HTTP/2 REFUSED_STREAM on stream {stream}: over server.max_concurrent_streams ({})",
                    self.max_streams
                ),
                // What a gRPC client reports for a refused stream; it may retry at once.
                Code::Unavailable,
            ),
            Sent::HeadersTooLarge(stream) => self.audit.answered(
                &self.peer,
                "http2",
                format!(
                    "HTTP/2 431 on stream {stream}: header list over the HTTP/2 layer's ceiling of {} bytes",
                    self.hard_headers
                ),
                Code::ResourceExhausted,
            ),
            Sent::StreamProtocolError(stream) => transport_log::note(
                Event::StreamProtocolError,
                self.peer.addr,
                &format_args!("HTTP/2 RST_STREAM PROTOCOL_ERROR on stream {stream}"),
            ),
        }
    }
}
