//! The admin listener (`[admin] listen`): `/metrics` for Prometheus, `/healthz` and `/readyz`
//! for orchestrators that do not speak gRPC health. Never on the API port: it answers without
//! credentials, so it belongs on loopback or a network only the monitoring can reach.
//!
//! * `/healthz`: 200 while the process serves at all (liveness).
//! * `/readyz`: 200 while the token answers (the keys are resolved before the listener
//!   exists), 503 while it is being recovered or refused the PIN.

use crate::metrics::Observed;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Admin {
    handle: PrometheusHandle,
    observed: Arc<Observed>,
    token_up: watch::Receiver<bool>,
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    admin.observed.update();
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], admin.handle.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if *admin.token_up.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the token is being recovered\n",
        )
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    observed: Observed,
    token_up: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Admin {
            handle: crate::metrics::install(),
            observed: Arc::new(observed),
            token_up,
        });
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "the admin listener failed");
    }
}
