//! `warden serve --http ADDR`: a small HTTP server (axum) on its own task, with three
//! routes:
//!
//! - `GET /metrics`: every metric in the OpenMetrics text format, which Prometheus
//!   scrapes as it is ([`crate::ops::metrics`]).
//! - `GET /healthz`: 200 while the process runs (a liveness probe: restart it when
//!   this stops answering).
//! - `GET /readyz`: 200 when this supervisor can take and finish work, 503 with one
//!   line per reason otherwise ([`crate::ops::ready`]).
//!
//! The listener is bound before start-up, so `/healthz` answers at once and `/readyz`
//! says "starting up" until the daemon is serving. The server stops with the daemon
//! (its task is aborted when [`Http`] is dropped).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

use crate::ops::metrics::Metrics;
use crate::ops::ready::Readiness;

/// The Content-Type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running HTTP server; dropping it stops it.
pub struct Http {
    task: JoinHandle<()>,
}

impl Drop for Http {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    ready: Readiness,
}

/// Binds `addr` and serves the three routes on a task of their own.
pub async fn start(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Readiness,
) -> Result<Http, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_route))
        .with_state(AppState { metrics, ready });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the --http server stopped");
        }
    });
    // The port chosen when ADDR had port 0 is in this line.
    tracing::info!(%addr, "http: /metrics, /healthz and /readyz");
    Ok(Http { task })
}

async fn metrics_route(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode())
}

async fn ready_route(State(s): State<AppState>) -> impl IntoResponse {
    match s.ready.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        ),
    }
}
