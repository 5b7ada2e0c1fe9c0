//! Bearer-token authentication as an axum extractor.

use std::sync::atomic::Ordering;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tracing::warn;

use super::{ApiError, AppState};
use crate::audit::events;
use crate::auth::{Principal, Role};

/// An authenticated caller; extracting it answers 401 when the token is missing or unknown.
/// What the caller may do is decided by [`crate::authz`], not here.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who the token says the caller is.
    pub principal: Principal,
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
                .map(|c| c.0)
                .map(|p| {
                    // Behind a trusted proxy, failures are summed per real client.
                    let ip = crate::client_addr::resolve(
                        p.ip(),
                        &parts.headers,
                        &state.trusted_proxies.load(),
                    );
                    std::net::SocketAddr::new(ip, p.port())
                });
            let source = crate::audit_flood::source_name(peer.map(|p| p.ip()));
            let first = state.failures.failure(&source, reason, || {
                events::bearer_auth_failed(reason, parts.uri.path(), peer)
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
                Ok(Caller {
                    principal: principal.clone(),
                })
            }
            None => {
                failed("unknown token");
                Err(ApiError::unauthorized("unknown token"))
            }
        }
    }
}

impl Caller {
    /// Refuses (403, audited by [`crate::authz::Authz`]) unless the role includes `role`.
    pub fn require(&self, state: &AppState, role: Role) -> Result<(), ApiError> {
        state
            .authz
            .require(&self.principal, role)
            .map_err(ApiError::from)
    }
}
