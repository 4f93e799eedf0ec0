//! Counted log lines for what the transport ends without a request to audit: connections
//! refused at a limit, and protocol errors (a connection closed with GOAWAY, a stream reset for
//! a malformed frame, HTTP/1.1 headers that never finished).
//!
//! Each kind keeps a process-wide count. Every occurrence up to 10, then each power of two, is
//! logged at info with that count; the rest at debug, so a flood cannot flood the log while
//! the count still says how big it was.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// What ended without a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connection closed at accept: a connection limit is reached.
    ConnectionRefused,
    /// A connection ended on a protocol error (ours or the client's GOAWAY with an error).
    ProtocolError,
    /// One stream reset for a protocol error (malformed headers, a frame out of place).
    StreamProtocolError,
    /// An HTTP/1.1 client that did not send its request headers in time.
    HeaderTimeout,
}

static COUNTS: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

impl Event {
    fn index(self) -> usize {
        match self {
            Event::ConnectionRefused => 0,
            Event::ProtocolError => 1,
            Event::StreamProtocolError => 2,
            Event::HeaderTimeout => 3,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Event::ConnectionRefused => "connection refused at a limit",
            Event::ProtocolError => "connection ended on a protocol error",
            Event::StreamProtocolError => "stream reset on a protocol error",
            Event::HeaderTimeout => "connection ended: request headers not received in time",
        }
    }
}

/// How many `event`s so far.
pub fn count(event: Event) -> u64 {
    COUNTS[event.index()].load(Ordering::Relaxed)
}

/// Counts and (within the flood bound) logs one `event` from `peer`.
pub fn note(event: Event, peer: SocketAddr, detail: &dyn Display) {
    let count = COUNTS[event.index()].fetch_add(1, Ordering::Relaxed) + 1;
    if count <= 10 || count.is_power_of_two() {
        tracing::info!(%peer, %detail, count, "{}", event.message());
    } else {
        tracing::debug!(%peer, %detail, count, "{}", event.message());
    }
}
