//! The edge: the shared listener (TLS, HTTP/1.1 and HTTP/2, limits), the request-context layer
//! (request ids, authentication, rate limits, audit) and one folder per cloud's API. A front
//! owns its wire types and maps them to and from the core's domain types ([`crate::signer`],
//! [`crate::keys`]) at its edge; nothing below `api/<cloud>/` imports them.

pub mod alibaba;
pub mod body_budget;
pub mod conn_limit;
pub mod context;
pub mod grpc_gate;
pub mod h2_watch;
pub mod linger;
pub mod mux;
pub mod outcome;
pub mod peer;
pub mod server;
pub mod tls;
pub mod transport_audit;
pub mod transport_log;
pub mod yandex;
