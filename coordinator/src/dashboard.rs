//! The dashboard on the coordinator's `--http`: the page at `/` (its assets embedded in the
//! binary, drawn by the same renderer as `report.html`), and the JSON it polls.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /` | the page |
//! | `GET /assets/{report.css, report.js, dashboard.js}` | its assets |
//! | `GET /api/state` | workers, sweeps with per-job progress, recent failures |
//! | `GET /api/sweeps/{id}/report` | a sweep's report so far (404 until something is judged) |
//! | `POST /api/sweeps/{id}/cancel` | cancel, with `Authorization: Bearer <token>` |
//!
//! Read-only without the token: the only change it makes is a cancel, which needs the
//! coordinator's token (and is refused where the coordinator has none).

use crate::aggregate;
use crate::core::Core;
use crate::scheduler::FailureKind;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flotilla_contract::report::html::{DASHBOARD_HTML, DASHBOARD_JS, REPORT_CSS, REPORT_JS};
use flotilla_proto::v1 as pb;
use serde_json::{json, Value};
use std::sync::Arc;

/// A sweep's state as the CLI and the dashboard name it.
pub fn sweep_state(state: i32) -> &'static str {
    match pb::SweepState::try_from(state).unwrap_or(pb::SweepState::Unspecified) {
        pb::SweepState::Unspecified => "unknown",
        pb::SweepState::Queued => "queued",
        pb::SweepState::Running => "running",
        pb::SweepState::Succeeded => "succeeded",
        pb::SweepState::Failed => "failed",
        pb::SweepState::Cancelled => "cancelled",
    }
}

/// A job's state as the CLI and the dashboard name it.
pub fn job_state(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Blocked => "blocked",
        pb::JobState::Ready => "ready",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

#[derive(Clone)]
struct Dash {
    core: Arc<Core>,
    token: Option<Arc<str>>,
}

/// The dashboard's routes; `token` is the coordinator's (cancels need it).
pub fn routes(core: Arc<Core>, token: Option<String>) -> Router {
    let state = Dash {
        core,
        token: token.map(Arc::from),
    };
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }),
        )
        .route(
            "/assets/report.css",
            get(|| async { asset("text/css; charset=utf-8", REPORT_CSS) }),
        )
        .route(
            "/assets/report.js",
            get(|| async { asset("text/javascript; charset=utf-8", REPORT_JS) }),
        )
        .route(
            "/assets/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route("/api/state", get(api_state))
        .route("/api/sweeps/{id}/report", get(api_report))
        .route("/api/sweeps/{id}/cancel", post(api_cancel))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn sweep_json(s: &pb::SweepStatus) -> Value {
    json!({
        "id": s.sweep_id, "name": s.name, "state": sweep_state(s.state),
        "created_unix_ms": s.created_unix_ms, "updated_unix_ms": s.updated_unix_ms,
        "shards_total": s.shards_total, "shards_done": s.shards_done,
        "shards_running": s.shards_running, "shards_failed": s.shards_failed, "error": s.error,
        "jobs": s.jobs.iter().map(|j| json!({
            "id": j.job_id, "kind": j.kind, "label": j.label, "state": job_state(j.state),
            "shards_total": j.shards_total, "shards_done": j.shards_done,
            "shards_running": j.shards_running, "shards_failed": j.shards_failed,
            "error": j.error,
            "training": j.training.as_ref().map(|t| json!({
                "round": t.round, "rounds": t.rounds, "step": t.step, "steps": t.steps,
                "loss": t.loss, "heldout_loss": t.heldout_loss,
            })),
        })).collect::<Vec<_>>(),
    })
}

fn worker_json(w: &pb::WorkerInfo) -> Value {
    let c = w.capabilities.clone().unwrap_or_default();
    json!({
        "id": w.worker_id, "hostname": c.hostname, "device": c.device, "gpu_name": c.gpu_name,
        "gpu_memory_bytes": c.gpu_memory_bytes, "ram_bytes": c.ram_bytes,
        "memory_free_bytes": c.memory_free_bytes, "cores": c.cores, "slots": c.slots,
        "running": w.running, "current_shards": w.running_shards,
        "models_loaded": c.models_loaded, "connected": w.connected, "paused": w.paused,
        "shards_completed": w.shards_completed, "units_per_second": w.units_per_second,
        "prefill_tokens_per_s": w.prefill_tokens_per_s,
        "last_seen_unix_ms": w.last_seen_unix_ms, "version": c.version,
    })
}

/// Everything the page shows but the results.
pub fn state_json(core: &Core) -> Value {
    let failures: Vec<Value> = core
        .recent_failures()
        .iter()
        .rev()
        .map(|f| {
            json!({
                "at_unix_ms": f.at_unix_ms, "sweep_id": f.sweep_id, "shard_id": f.shard_id,
                "attempt": f.attempt, "worker_id": f.worker_id,
                "kind": match f.kind {
                    FailureKind::Task => "task",
                    FailureKind::Infrastructure => "infrastructure",
                },
                "message": f.message,
            })
        })
        .collect();
    json!({
        "coordinator": {
            "id": core.id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": core.started.elapsed().as_secs_f64(),
            "now_unix_ms": crate::store::now_ms(),
        },
        "workers": core.workers().iter().map(worker_json).collect::<Vec<_>>(),
        "sweeps": core.list().iter().map(sweep_json).collect::<Vec<_>>(),
        "failures": failures,
    })
}

async fn api_state(State(d): State<Dash>) -> Response {
    axum::Json(state_json(&d.core)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn api_report(State(d): State<Dash>, Path(id): Path<String>) -> Response {
    let Some(status) = d.core.status(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no sweep `{id}`"));
    };
    match aggregate::load(&d.core, &id).await {
        Ok(Some(outcome)) if !outcome.cases.is_empty() || !outcome.training.is_empty() => {
            let report = aggregate::report(&outcome);
            axum::Json(json!({
                "sweep_id": id, "state": sweep_state(status.state), "report": report,
            }))
            .into_response()
        }
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            format!("sweep `{id}` has no results yet"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn api_cancel(State(d): State<Dash>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(token) = &d.token else {
        return error(
            StatusCode::FORBIDDEN,
            "this coordinator runs without a token: cancel with `flotilla sweep cancel`",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !crate::service::same_secret(given.as_bytes(), token.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    match d.core.cancel(&id).await {
        Ok(Some(s)) => axum::Json(sweep_json(&s)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no sweep `{id}`")),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
