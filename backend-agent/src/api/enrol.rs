//! Enrolment routes: admin enrolment and join tokens, join-token redemption, revocation.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, AppState};
use crate::audit::events;
use crate::auth::Role;
use crate::enrol::EnrolError;

/// Default lifetime of a join token.
pub const DEFAULT_JOIN_TOKEN_SECS: u64 = 3600;

impl From<EnrolError> for ApiError {
    fn from(e: EnrolError) -> Self {
        match &e {
            EnrolError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            }
            EnrolError::BadToken(_) => ApiError::unauthorized(e.to_string()),
            EnrolError::NoCa => ApiError::new(StatusCode::CONFLICT, "no_ca", e.to_string()),
            EnrolError::UnknownAgent(_) => ApiError::not_found(e.to_string()),
            EnrolError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "revoked_pin", e.to_string())
            }
            EnrolError::RenewalRefused { code, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, e.to_string())
            }
            EnrolError::Store(inner) => ApiError::store(inner),
        }
    }
}

/// Body of `POST /api/v1/enrollments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentBody {
    agent_id: String,
    #[serde(default)]
    pin: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// Authoritative labels for the agent (see [`crate::labels`]).
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// `POST /api/v1/enrollments` (admin): `{agent_id, pin}` enrols directly; `{agent_id,
/// ttl_secs}` creates a one-time join token; `labels` sets the agent's authoritative labels.
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<EnrollmentBody>,
) -> Result<Response, ApiError> {
    caller.require(&state, Role::Admin)?;
    // Labels are checked before anything changes and set once the enrolment exists.
    if let Some(labels) = &body.labels {
        state.labels.check(&body.agent_id, labels)?;
    }
    let labels = body.labels;
    match body.pin {
        Some(pin) => {
            state
                .enrolment
                .enrol_pin(&body.agent_id, &pin, &caller.principal.name)
                .await?;
            set_labels(&state, &caller, &body.agent_id, labels).await?;
            let answer = json!({"agent_id": body.agent_id, "pin": pin, "state": "active"});
            Ok((StatusCode::CREATED, Json(answer)).into_response())
        }
        None => {
            let ttl = body.ttl_secs.unwrap_or(DEFAULT_JOIN_TOKEN_SECS);
            let issued = state
                .enrolment
                .create_join_token(&body.agent_id, ttl, &caller.principal.name)
                .await?;
            set_labels(&state, &caller, &body.agent_id, labels).await?;
            let answer = json!({
                "agent_id": issued.agent_id,
                "token": issued.token,
                "expires_at": issued.expires_at,
                "usage": format!(
                    "gateway-agent enroll --api https://FRONT-DOOR --token {} --id {} --ca ca.pem --out /etc/agentmesh/tls",
                    issued.token, issued.agent_id
                ),
            });
            Ok((StatusCode::CREATED, Json(answer)).into_response())
        }
    }
}

async fn set_labels(
    state: &AppState,
    caller: &Caller,
    agent_id: &str,
    labels: Option<BTreeMap<String, String>>,
) -> Result<(), ApiError> {
    match labels {
        Some(labels) => Ok(state
            .labels
            .set_at_enrolment(&caller.principal, agent_id, labels)
            .await?),
        None => Ok(()),
    }
}

/// Body of `POST /api/v1/enroll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    token: String,
    agent_id: String,
    csr: String,
}

/// `POST /api/v1/enroll` (no bearer token): redeem a join token with a CSR.
pub async fn redeem(
    State(state): State<AppState>,
    client: crate::client_addr::ClientAddr,
    JsonBody(body): JsonBody<EnrollBody>,
) -> Result<Response, ApiError> {
    // Guessing join tokens is throttled per source address (IPv6 by /64), on a limiter of
    // its own so an enrolment flood never touches the operators' budget. Behind a proxy in
    // `[http] trusted_proxies` the source is the client it forwards, not the proxy.
    let peer = client.socket();
    let source = crate::audit_flood::source_name(Some(peer.ip()));
    if let Err(wait) = state.limits.load().check_enrol(peer.ip()) {
        state.metrics.rate_limited("enrol");
        state.failures.failure(&source, "enrol: rate limited", || {
            events::enrol_rate_limited(peer)
        });
        return Err(ApiError::rate_limited("too many enrolment attempts", wait));
    }
    match state
        .enrolment
        .redeem(&body.token, &body.agent_id, &body.csr)
        .await
    {
        Ok(signed) => Ok(Json(signed).into_response()),
        Err(e) => {
            let why = match &e {
                EnrolError::BadToken(why) => Some(*why),
                EnrolError::Invalid(_) | EnrolError::Conflict(_) => Some("invalid request"),
                _ => None,
            };
            if let Some(why) = why {
                let first = state
                    .failures
                    .failure(&source, &format!("enrol: {why}"), || {
                        events::join_token_refused(&body.agent_id, peer, why)
                    });
                // Logged at the rate it is audited.
                if first {
                    warn!(peer.addr = %peer, agent.id = %body.agent_id, reason = why, error = %e, "join token refused");
                }
            }
            Err(e.into())
        }
    }
}

/// `DELETE /api/v1/agents/{id}` (admin): revoke every pin and disconnect at once.
pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&state, Role::Admin)?;
    let (pins, disconnected) = state
        .enrolment
        .revoke(&agent_id, &caller.principal.name)
        .await?;
    if let Some(cluster) = state.commands.cluster() {
        cluster.broadcast_revoke(&agent_id);
    }
    Ok(Json(
        json!({"agent_id": agent_id, "revoked_pins": pins, "disconnected": disconnected}),
    ))
}
