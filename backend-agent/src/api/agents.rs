//! `GET /api/v1/agents` and `GET /api/v1/agents/{id}`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, AppState};
use crate::labels::LabelsError;
use crate::registry::{AgentFilter, AgentView};

/// Lists the agents in the caller's label scope; `?connected=true|false` and repeated
/// `?label=k=v` (matched against the authoritative labels) filter.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query?;
    let mut filter = AgentFilter::default();
    for (key, value) in pairs {
        match key.as_str() {
            "connected" => {
                filter.connected = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(format!("connected must be true or false, not {value:?}"))
                })?)
            }
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("label must be key=value, not {value:?}"))
                })?;
                filter.labels.insert(k.to_owned(), v.to_owned());
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (known: connected, label)"
                )))
            }
        }
    }
    if let Some(cluster) = state.commands.cluster() {
        // Fleet-wide: this replica's enrolments with the sessions every replica holds.
        // Labels are matched after the gather, which brings in what the other replicas
        // know of the agents they hold.
        let connected = filter.connected.take();
        let local = || state.commands.agents(&caller.principal, &filter);
        let (agents, missing) = cluster.fleet_list(local, connected).await;
        return Ok(Json(
            json!({"agents": agents, "count": agents.len(), "replicas_missing": missing}),
        ));
    }
    let agents = state.commands.agents(&caller.principal, &filter);
    Ok(Json(json!({"agents": agents, "count": agents.len()})))
}

/// One agent by id (404 when outside the caller's label scope).
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = state.commands.agent(&caller.principal, &id)?;
    if let Some(cluster) = state.commands.cluster() {
        // Held by another replica: shown as that replica sees it.
        let (mut agents, _) = cluster.fleet_list(|| vec![view.clone()], None).await;
        if let Some(v) = agents.pop() {
            return Ok(Json(v));
        }
    }
    Ok(Json(
        serde_json::to_value(view).map_err(ApiError::internal)?,
    ))
}

/// Body of `PUT /api/v1/agents/{id}/labels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsBody {
    labels: BTreeMap<String, String>,
}

impl From<LabelsError> for ApiError {
    fn from(e: LabelsError) -> Self {
        match e {
            LabelsError::Denied(d) => d.into(),
            LabelsError::UnknownAgent(_) => ApiError::not_found(e.to_string()),
            LabelsError::FromConfig(_) => {
                ApiError::new(StatusCode::CONFLICT, "labels_from_config", e.to_string())
            }
            LabelsError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_labels", m)
            }
            LabelsError::Audit(_) => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    e.to_string(),
                );
                err.retry_after = Some(1);
                err
            }
            LabelsError::Store(inner) => ApiError::store(&inner),
        }
    }
}

/// `PUT /api/v1/agents/{id}/labels` (admin): sets the agent's authoritative labels.
pub async fn set_labels(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<LabelsBody>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(
        state
            .labels
            .set(&caller.principal, &id, body.labels)
            .await?,
    ))
}
