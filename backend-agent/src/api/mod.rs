//! The operator HTTP API (README, "Operator API"): JSON in and out, bearer-token auth.

mod agents;
mod audit;
mod auth;
mod body;
mod commands;
mod enrol;
mod error;
mod health;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;

pub use auth::Caller;
pub use error::ApiError;

use crate::auth::TokenStore;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// Agents and sessions.
    pub registry: Arc<Registry>,
    /// Bearer tokens.
    pub tokens: Arc<TokenStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Set once the hub listener is bound.
    pub hub_listening: Arc<AtomicBool>,
    /// Process start.
    pub started: Instant,
    /// Commands and jobs.
    pub commands: Arc<crate::commands::CommandService>,
    /// The authorisation policy (and its audit records).
    pub authz: Arc<crate::authz::Authz>,
    /// Authoritative agent labels.
    pub labels: Arc<crate::labels::AgentLabels>,
    /// Rate limits.
    pub limits: Arc<crate::reload::SharedLimits>,
    /// Enrolment, renewal, revocation.
    pub enrolment: Arc<crate::enrol::Enrolment>,
    /// Audit trail.
    pub audit: Arc<crate::audit::Audit>,
    /// Unauthenticated failures, aggregated per source.
    pub failures: Arc<crate::audit_flood::FailureAudit>,
    /// `[http] trusted_proxies`: peers whose forwarded client address is honoured.
    pub trusted_proxies: Arc<crate::reload::Swap<Vec<crate::client_addr::Cidr>>>,
    /// Live hub settings; its draining flag makes `/ready` answer 503.
    pub live: Arc<crate::hub::LiveSettings>,
}

/// The API router.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{id}",
            get(agents::get).delete(enrol::revoke),
        )
        .route("/api/v1/agents/{id}/labels", put(agents::set_labels))
        .route("/api/v1/enrollments", post(enrol::create))
        .route("/api/v1/enroll", post(enrol::redeem))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/agents/{id}/commands", post(commands::run_on_agent))
        .route(
            "/api/v1/commands",
            post(commands::fan_out).get(commands::list),
        )
        .route(
            "/api/v1/commands/{id}",
            get(commands::get_one).delete(commands::cancel),
        )
        .route("/api/v1/events", get(crate::events::sse::stream))
        .merge(crate::ui::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
