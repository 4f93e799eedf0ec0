//! Builds the gateway from a config — HSM, keys, services, listener — and runs it until a
//! shutdown signal.

use crate::api::admin;
use crate::api::alibaba;
use crate::api::alibaba::instance::api_name::ApiName;
use crate::api::alibaba::openapi::actions as openapi_actions;
use crate::api::mux::{self, Routes};
use crate::api::tls::ServerTls;
use crate::api::transport_audit::TransportAudit;
use crate::api::yandex::grpc::endpoints::EndpointService;
use crate::api::yandex::{grpc, rest};
use crate::api::{context, grpc_gate, server};
use crate::auth::Identity;
use crate::config::Config;
use crate::hsm::{Hsm, HsmError, KeySpec};
use crate::keys::manager::KeyRules;
use crate::keys::{KeyEntry, KeyManager, KeyRegistry};
use crate::metrics::{MethodNames, Observed};
use crate::signer::Signer;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HSM could not be used.
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// Configured keys are missing or unfit; every one is listed.
    #[error("{} configured key(s) cannot be served:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Keys(Vec<HsmError>),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The `[server.tls]` files cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::api::tls::TlsError),
    /// `[auth]` or `[audit]` cannot be put into service (JWKS, audit file).
    #[error("{0}")]
    Identity(String),
    /// A blocking start-up task failed.
    #[error("start-up task failed: {0}")]
    Task(String),
    /// The keys created through the API could not be read from the token.
    #[error("cannot read the keys created through the API from the token: {0}")]
    ManagedKeys(String),
}

impl StartError {
    /// Whether only an operator can fix this: a wrong config, PIN, key map, certificate or
    /// module. Starting again unchanged fails the same way, and with a wrong PIN it would use
    /// up one of the token's PIN attempts each time. A token that is not there yet, an HSM
    /// that does not answer, or a port still in use may well be gone on the next try.
    pub fn needs_operator(&self) -> bool {
        match self {
            StartError::Hsm(e) => e.needs_operator(),
            StartError::Keys(_) | StartError::Tls(_) | StartError::Identity(_) => true,
            StartError::Bind { .. } | StartError::Task(_) | StartError::ManagedKeys(_) => false,
        }
    }
}

/// A built gateway, bound to its address and ready to run.
pub struct App {
    listener: TcpListener,
    router: axum::Router,
    /// Fronts on listeners of their own (`server.rest_listen`, `alibaba.listen`).
    own: Vec<OwnListener>,
    /// `server.tls_listen`: everything the main listener serves, over TLS.
    tls_listener: Option<TcpListener>,
    hsm: Hsm,
    signer: Arc<Signer>,
    manager: Arc<KeyManager>,
    health: HealthReporter,
    limits: server::ServerLimits,
    /// Connection and body limits and the transport's audit records, over both listeners.
    edge: Arc<server::Edge>,
    tls: Option<Arc<ServerTls>>,
    reload: Reload,
    identity: Arc<Identity>,
    /// `[admin] listen`: metrics, liveness and readiness.
    admin: Option<(TcpListener, Observed)>,
}

/// A front served on a listener of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnFront {
    /// `server.rest_listen`.
    Rest,
    /// `alibaba.listen`: the OpenAPI and the instance API.
    Alibaba,
}

#[derive(Debug)]
struct OwnListener {
    front: OwnFront,
    listener: TcpListener,
    router: axum::Router,
}

async fn bind_optional(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    match addr {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| StartError::Bind { addr, source }),
        None => Ok(None),
    }
}

/// "Re-read your files": SIGHUP in the binary. Long-lived parts that read files (the TLS
/// certificate, log sinks) [`subscribe`](Reload::subscribe) and reload on every change of the
/// counter. A `watch` channel coalesces: a burst of signals means one more reload, never a
/// queue of them.
#[derive(Clone, Debug)]
pub struct Reload(Arc<watch::Sender<u64>>);

impl Default for Reload {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Reload {
    /// Asks every subscriber to reload.
    pub fn trigger(&self) {
        self.0.send_modify(|generation| *generation += 1);
    }

    /// A receiver whose `changed()` fires on every later [`Reload::trigger`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Connects to the HSM, resolves every configured key, and binds the listener.
    ///
    /// # Errors
    /// Any HSM, key or bind failure; every unusable key is named.
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        let cfg = config.hsm.clone();
        let hsm = tokio::task::spawn_blocking(move || Hsm::connect(&cfg))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        Self::build_with_hsm(config, hsm).await
    }

    /// Like [`App::build`] with an HSM that is already connected.
    ///
    /// # Errors
    /// As [`App::build`].
    pub async fn build_with_hsm(config: &Config, hsm: Hsm) -> Result<Self, StartError> {
        // Before anything that counts (key resolution counts pin mismatches).
        crate::metrics::install();
        // First, so that everything built below can subscribe.
        let reload = Reload::default();
        let specs: Vec<KeySpec> = config.keys.iter().map(KeySpec::from_config).collect();
        let resolved = {
            let hsm = hsm.clone();
            tokio::task::spawn_blocking(move || hsm.resolve_keys(&specs))
                .await
                .map_err(|e| StartError::Task(e.to_string()))??
        };
        let registry = Arc::new(KeyRegistry::default());
        let mut failures = Vec::new();
        for ((id, outcome), key) in resolved.into_iter().zip(&config.keys) {
            match outcome {
                Ok(public_key) => {
                    debug_assert_eq!(id, key.id);
                    registry.insert(KeyEntry::from_config(key, public_key));
                }
                Err(e) => failures.push(e),
            }
        }
        if !failures.is_empty() {
            return Err(StartError::Keys(failures));
        }
        tracing::info!(keys = registry.len(), "configured keys resolved");

        let identity = Identity::from_config(config).map_err(StartError::Identity)?;
        let manager = KeyManager::new(
            Arc::clone(&registry),
            hsm.clone(),
            &config.managed_keys,
            KeyRules {
                min_version_interval: std::time::Duration::from_secs(
                    config.alibaba.min_key_version_interval_secs,
                ),
            },
            hsm.pool_capacity(),
            Arc::clone(&identity.policy),
        );
        let managed = manager
            .load()
            .await
            .map_err(|e| StartError::ManagedKeys(crate::error::chain(&e)))?;
        tracing::info!(
            keys = managed,
            "keys created through the API loaded from the token"
        );

        let signer = Arc::new(Signer::new(
            Arc::clone(&manager),
            hsm.clone(),
            config.signing.verify_ecdsa,
        ));

        let tls = match &config.server.tls {
            Some(cfg) => {
                let cfg = cfg.clone();
                // File reads and key parsing: blocking work.
                Some(
                    tokio::task::spawn_blocking(move || ServerTls::load(&cfg))
                        .await
                        .map_err(|e| StartError::Task(e.to_string()))??,
                )
            }
            None => None,
        };
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let tls_listener = match config.server.tls_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let rest_listener = bind_optional(config.server.rest_listen).await?;
        let alibaba_listener = bind_optional(config.alibaba.listen).await?;
        let advertised = advertised_address(config, bound);
        let endpoints = EndpointService::new(&advertised);
        let (grpc_router, health) =
            grpc::routes(Arc::clone(&signer), Arc::clone(&manager), endpoints.clone());
        let gate = grpc::gate_methods();
        let methods = MethodNames::new(
            gate.paths()
                .map(str::to_string)
                .chain(openapi_actions::ACTIONS.iter().map(|a| a.to_string()))
                .chain(ApiName::SERVED.iter().map(|a| a.name().to_string())),
        );
        let grpc_router = grpc_gate::apply(grpc_router, gate);
        let rest_router = rest::routes(Arc::clone(&signer), Arc::clone(&manager), endpoints);
        let (openapi_router, instance_router) = alibaba::routes(
            Arc::clone(&signer),
            Arc::clone(&manager),
            Arc::clone(&identity),
            &config.alibaba,
        );
        // By protocol on one listener; REST, and the Alibaba APIs, may have listeners of their
        // own. The context layer goes last, around everything a listener serves.
        let serial = hsm.token().serial;
        let max_header_list_size = config.server.max_header_list_size as usize;
        let mut routes = Routes {
            grpc: Some(grpc_router),
            rest: Some(rest_router),
            alibaba_openapi: Some(openapi_router),
            alibaba_instance: Some(instance_router),
        };
        let mut own = Vec::new();
        let own_listeners = [
            (OwnFront::Rest, rest_listener),
            (OwnFront::Alibaba, alibaba_listener),
        ];
        for (front, listener) in own_listeners {
            let Some(listener) = listener else { continue };
            let taken = match front {
                OwnFront::Rest => Routes {
                    rest: routes.rest.take(),
                    ..Routes::default()
                },
                OwnFront::Alibaba => Routes {
                    alibaba_openapi: routes.alibaba_openapi.take(),
                    alibaba_instance: routes.alibaba_instance.take(),
                    ..Routes::default()
                },
            };
            let router = context::apply(
                mux::by_protocol(taken),
                Arc::clone(&identity),
                serial.clone(),
                max_header_list_size,
                methods.clone(),
            );
            own.push(OwnListener {
                front,
                listener,
                router,
            });
        }
        let router = mux::by_protocol(routes);
        let edge = server::Edge::new(
            &config.server,
            TransportAudit::new(Arc::clone(&identity), serial.clone()),
        );
        let router = context::apply(
            router,
            Arc::clone(&identity),
            serial,
            max_header_list_size,
            methods,
        );
        let admin = bind_optional(config.admin.as_ref().map(|a| a.listen))
            .await?
            .map(|listener| {
                let observed =
                    Observed::new(hsm.clone(), Arc::clone(&identity), Arc::clone(&registry));
                (listener, observed)
            });
        Ok(Self {
            listener,
            router,
            own,
            tls_listener,
            hsm,
            signer,
            manager,
            health,
            limits: server::ServerLimits::from_config(&config.server),
            edge,
            tls,
            reload,
            identity,
            admin,
        })
    }

    /// The reload signal: the binary triggers it on SIGHUP; parts that read files subscribe.
    pub fn reload(&self) -> &Reload {
        &self.reload
    }

    /// Authentication, authorisation, audit and rate limits.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The TLS listener's address, with `server.tls_listen`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's address, with `[admin]`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The REST listener's address, with `server.rest_listen`.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.own_addr(OwnFront::Rest)
    }

    /// The Alibaba APIs' listener's address, with `alibaba.listen`.
    pub fn alibaba_addr(&self) -> Option<SocketAddr> {
        self.own_addr(OwnFront::Alibaba)
    }

    fn own_addr(&self, front: OwnFront) -> Option<SocketAddr> {
        self.own
            .iter()
            .find(|o| o.front == front)
            .and_then(|o| o.listener.local_addr().ok())
    }

    /// The signing core.
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// The key-management core.
    pub fn key_manager(&self) -> &Arc<KeyManager> {
        &self.manager
    }

    /// Serves until `shutdown` completes, drains in-flight requests, then closes every session
    /// and finalises the module once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(addr = %self.local_addr(), "serving");
        if let Some(addr) = self.rest_addr() {
            tracing::info!(%addr, "serving the REST API on its own listener");
        }
        let stop = CancellationToken::new();
        // Until the very end: the metrics of the drain are worth scraping too.
        let admin = self.admin.map(|(listener, observed)| {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics and probes");
            tokio::spawn(admin::serve(
                listener,
                observed,
                self.hsm.health(),
                stop.clone().cancelled_owned(),
            ))
        });
        let background = self.hsm.spawn_background(stop.clone());
        let watchdog = tokio::spawn(crate::systemd::watchdog(self.hsm.clone(), stop.clone()));
        let keys = self.manager.spawn_background(stop.clone());
        let health = tokio::spawn(report_health(self.hsm.health(), self.health, stop.clone()));
        let identity = self
            .identity
            .spawn_background(self.reload.subscribe(), stop.clone());
        let tls_watch = self
            .tls
            .as_ref()
            .map(|tls| tokio::spawn(Arc::clone(tls).watch(self.reload.subscribe(), stop.clone())));
        // Every listener stops on the same signal and they drain side by side. With a TLS
        // listener of its own, the others are plaintext.
        let stop_serving = CancellationToken::new();
        let (plain_tls, extra_tls) = match self.tls_listener {
            Some(listener) => (None, Some((listener, self.tls.clone()))),
            None => (self.tls.clone(), None),
        };
        let own: Vec<_> = self
            .own
            .into_iter()
            .map(|o| {
                tokio::spawn(server::serve(
                    o.listener,
                    o.router,
                    self.limits.clone(),
                    plain_tls.clone(),
                    Arc::clone(&self.edge),
                    stop_serving.clone().cancelled_owned(),
                ))
            })
            .collect();
        let tls = extra_tls.map(|(listener, tls)| {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving over TLS");
            server::serve(
                listener,
                self.router.clone(),
                self.limits.clone(),
                tls,
                Arc::clone(&self.edge),
                stop_serving.clone().cancelled_owned(),
            )
        });
        tokio::join!(
            async {
                shutdown.await;
                crate::systemd::stopping();
                stop_serving.cancel();
            },
            server::serve(
                self.listener,
                self.router,
                self.limits,
                plain_tls,
                self.edge,
                stop_serving.clone().cancelled_owned(),
            ),
            async {
                for task in own {
                    if let Err(e) = task.await {
                        tracing::error!(error = %e, "a listener's task failed");
                    }
                }
            },
            async {
                if let Some(tls) = tls {
                    tls.await;
                }
            },
        );
        stop.cancel();
        let _ = tokio::join!(background, health, keys, identity, watchdog);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        // Records of requests cancelled during the drain were queued without waiting.
        self.identity.audit.flush().await;
        if let Some(task) = tls_watch {
            let _ = task.await;
        }
        let hsm = self.hsm;
        if let Err(e) = tokio::task::spawn_blocking(move || hsm.shutdown()).await {
            tracing::warn!(error = %e, "HSM shutdown task failed");
        }
        tracing::info!("stopped");
    }
}

/// What endpoint discovery advertises: `server.advertise_address`, else the bound address.
fn advertised_address(config: &Config, bound: SocketAddr) -> String {
    if let Some(address) = &config.server.advertise_address {
        return address.clone();
    }
    if bound.ip().is_unspecified() {
        tracing::warn!(
            %bound,
            "server.advertise_address is not set and the listener is on a wildcard address: \
             endpoint discovery hands clients {bound}, which only works on this host; set \
             server.advertise_address to the host:port clients use (the name in the certificate)"
        );
    }
    bound.to_string()
}

/// Mirrors the HSM's health into `grpc.health.v1`: SERVING only while the token answers. The
/// health service answers from memory, so a hung token cannot hang it.
async fn report_health(
    mut healthy: watch::Receiver<bool>,
    reporter: HealthReporter,
    stop: CancellationToken,
) {
    loop {
        let status = if *healthy.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        reporter
            .set_service_status(grpc::CRYPTO_SERVICE_NAME, status)
            .await;
        tokio::select! {
            changed = healthy.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}
