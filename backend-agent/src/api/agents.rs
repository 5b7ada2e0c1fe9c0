//! `GET /api/v1/agents` and `GET /api/v1/agents/{id}`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, AppState};
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
    let agents = state.commands.agents(&caller.principal, &filter);
    Ok(Json(json!({"agents": agents, "count": agents.len()})))
}

/// One agent by id (404 when outside the caller's label scope).
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(state.commands.agent(&caller.principal, &id)?))
}
