//! What the coordinator and the workers show about themselves over HTTP (`--http ADDR`):
//! Prometheus metrics at `/metrics` (the OpenMetrics text exposition, which Prometheus
//! scrapes), liveness at `/healthz` and readiness at `/readyz`, plus any routes the caller
//! adds (the coordinator's dashboard). Also the process's resident memory, which both report.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Renders the metrics exposition on each scrape.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;
/// Whether the process is ready for work (connected, serving).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// The content type of the OpenMetrics text exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes every `--http` serves.
pub fn router(metrics: RenderMetrics, ready: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], m()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.clone();
                async move {
                    if r() {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        )
}

/// Serve `router` on `addr` (port 0 picks one) until the task is aborted; returns the bound
/// address and the task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the --http server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok((bound, task))
}

/// This process's resident memory in bytes (`VmRSS`; 0 where `/proc` has none).
pub fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The exposition of `registry`.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}
