//! `/health`, `/ready` and `/metrics`: no token needed.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;

/// Liveness: the process answers.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "healthy",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "agents_connected": state.registry.connected_count(),
    }))
}

/// Readiness: the hub is listening, the store takes writes and the audit log can be written
/// (while it cannot, commands are refused, so a load balancer should look elsewhere).
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let hub = state.hub_listening.load(Ordering::Relaxed);
    let store = state
        .commands
        .store()
        .check_writable()
        .await
        .map_err(|e| e.to_string());
    let audit = state.audit.is_healthy();
    let ok = hub && store.is_ok() && audit;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "hub_listening": hub,
        "store_writable": store.is_ok(),
        "store_error": store.err(),
        "audit_writable": audit,
    });
    (status, Json(body))
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The aggregator counts on its own (it has no metrics handle); copy it in before render.
    state
        .metrics
        .unauthenticated_failures_aggregated
        .store(state.failures.suppressed(), Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.registry.connected_count()),
    )
}
