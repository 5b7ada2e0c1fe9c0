//! Bearer-token authentication as an axum extractor.

use std::sync::atomic::Ordering;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tracing::warn;

use super::{ApiError, AppState};
use crate::audit::{kinds, Audit};
use crate::auth::{Principal, Role};
use agentmesh_audit::AuditEvent;
use std::sync::Arc;

/// An authenticated caller; extracting it answers 401 when the token is missing or unknown.
#[derive(Clone)]
pub struct Caller(pub Principal, Arc<Audit>);

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Caller").field(&self.0).finish()
    }
}

impl Caller {
    /// Refuses with 403 (audited) unless the caller's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(self.forbidden(format!(
                "token {:?} has role {} but this needs {}",
                self.0.name,
                self.0.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// A 403, audited as `forbidden`.
    pub fn forbidden(&self, message: String) -> ApiError {
        warn!(token = %self.0.name, reason = %message, "forbidden");
        self.1.record(
            AuditEvent::new(kinds::FORBIDDEN)
                .actor(self.0.name.as_str())
                .details(serde_json::json!({"reason": message})),
        );
        ApiError::forbidden(message)
    }

    /// Records a refused request as `rate_limited`.
    pub fn audit_rate_limited(&self, limit: &str) {
        self.1.record(
            AuditEvent::new(kinds::RATE_LIMITED)
                .actor(self.0.name.as_str())
                .details(serde_json::json!({"limit": limit})),
        );
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let failed = |reason: &str| {
            state
                .metrics
                .api_auth_failures
                .fetch_add(1, Ordering::Relaxed);
            // Aggregated per source: a bad-token flood costs a few records, not one each,
            // and is logged at the same rate.
            let peer = parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0);
            let source = crate::audit_flood::source_name(peer.map(|p| p.ip()));
            let first = state.failures.failure(&source, reason, || {
                AuditEvent::new(kinds::AUTH_FAILED).details(serde_json::json!({
                    "credential": "bearer", "reason": reason, "path": parts.uri.path(),
                    "peer": peer.map(|p| p.to_string()),
                }))
            });
            if first {
                warn!(path = %parts.uri.path(), %source, reason, "API request refused: 401 (further ones from this source are summed up)");
            } else {
                tracing::debug!(path = %parts.uri.path(), %source, reason, "API request refused: 401");
            }
        };
        let Some(token) = presented else {
            failed("missing bearer token");
            return Err(ApiError::unauthorized("missing bearer token"));
        };
        match state.tokens.authenticate(token) {
            Some(principal) => {
                state.audit.token_used(&principal.name);
                Ok(Caller(principal.clone(), state.audit.clone()))
            }
            None => {
                failed("unknown token");
                Err(ApiError::unauthorized("unknown token"))
            }
        }
    }
}
