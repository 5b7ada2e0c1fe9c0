//! `/health`, `/ready` and `/metrics`: no token needed.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::metrics::Scrape;

/// Liveness: the process answers.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "healthy",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "agents_connected": state.registry.connected_count(),
    }))
}

/// Readiness: not draining, the hub is listening, the store takes writes and the audit log
/// can be written (while it cannot, commands are refused, so a load balancer should look
/// elsewhere).
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let hub = state.hub_listening.load(Ordering::Relaxed);
    let store = state
        .commands
        .store()
        .check_writable()
        .await
        .map_err(|e| e.to_string());
    let audit = state.audit.is_healthy();
    let draining = state.live.draining();
    // `[cluster]`: a replica that cannot reach the others cannot route commands.
    let cluster = state.commands.cluster();
    let nats = cluster.is_none_or(|c| c.connected());
    let ok = hub && store.is_ok() && audit && !draining && nats;
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
        "draining": draining,
    });
    let mut body = body;
    if let Some(c) = cluster {
        body["cluster"] = json!({
            "replica_id": c.replica_id(),
            "nats_connected": nats,
            "peers": c.members(),
        });
    }
    (status, Json(body))
}

/// Prometheus text format (0.0.4).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The aggregator counts on its own (it has no metrics handle); copy it in before render.
    state
        .metrics
        .unauthenticated_failures_aggregated
        .store(state.failures.suppressed(), Ordering::Relaxed);
    let (mut outbound_queued, mut outbound_queued_max) = (0u64, 0u64);
    for session in state.registry.live_sessions() {
        let queued = (session.tx.max_capacity() - session.tx.capacity()) as u64;
        outbound_queued += queued;
        outbound_queued_max = outbound_queued_max.max(queued);
    }
    let scrape = Scrape {
        connected: state.registry.connected_count(),
        audit_backlog: state.audit.log().backlog_len(),
        audit_records: state.audit.appended_count(),
        audit_fsyncs: state.audit.fsync_count(),
        audit_writable: state.audit.is_healthy(),
        outbound_queued,
        outbound_queued_max,
        held_commands: state.commands.held_count(),
        draining: state.live.draining(),
    };
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.render_with(&scrape),
    )
}
