//! Bearer-token authentication as an axum extractor.

use std::sync::atomic::Ordering;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tracing::warn;

use super::{ApiError, AppState};
use crate::auth::{Principal, Role};

/// An authenticated caller; extracting it answers 401 when the token is missing or unknown.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses with 403 unless the caller's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token {:?} has role {} but this needs {}",
                self.0.name,
                self.0.role.as_str(),
                role.as_str()
            )))
        }
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
        let Some(token) = presented else {
            state
                .metrics
                .api_auth_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(path = %parts.uri.path(), "API request without a bearer token");
            return Err(ApiError::unauthorized("missing bearer token"));
        };
        match state.tokens.authenticate(token) {
            Some(principal) => Ok(Caller(principal.clone())),
            None => {
                state
                    .metrics
                    .api_auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(path = %parts.uri.path(), "API request with an unknown token");
                Err(ApiError::unauthorized("unknown token"))
            }
        }
    }
}
