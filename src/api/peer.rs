//! What the transport knows about the other end of a request. The listener inserts one
//! [`Peer`] into every request's extensions; authentication reads it.

use std::net::SocketAddr;

/// The connection a request arrived on.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified mTLS client certificate's identity: its URI SAN (e.g. a SPIFFE id) if it
    /// has one, else its subject CN. `None` without mTLS or without a client certificate.
    pub client_subject: Option<String>,
    /// The connection was admitted into the health-check reserve past `server.max_connections`
    /// ([`super::conn_limit`]): it may carry health checks only.
    pub health_only: bool,
}
