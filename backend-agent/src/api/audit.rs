//! `GET /api/v1/audit?since=&agent=&actor=&kind=&limit=`: records oldest first after `since`
//! (a `seq` number as a cursor, or an RFC 3339 time), only those in the caller's scope;
//! `next_since` continues the listing. In a cluster on PostgreSQL the fleet's records, each
//! with `replica`; `since` is then the fleet listing's own cursor (or a time).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, AppState};

/// Query of the audit route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    since: Option<String>,
    agent: Option<String>,
    actor: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

/// Lists audit records.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    if state.commands.reads_fleet_audit() {
        return fleet(caller, state, q).await;
    }
    let mut filter = agentmesh_audit::AuditFilter {
        agent: q.agent,
        actor: q.actor,
        kind: q.kind,
        limit: q.limit.unwrap_or(agentmesh_audit::DEFAULT_QUERY_LIMIT),
        ..Default::default()
    };
    match q.since {
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
            filter.since_seq = Some(
                s.parse()
                    .map_err(|_| ApiError::bad_request("since: number too large"))?,
            )
        }
        Some(s) => filter.since_ts = Some(s),
        None => {}
    }
    let page = state.commands.read_audit(&caller.principal, filter).await?;
    Ok(Json(json!({
        "records": page.items,
        "count": page.items.len(),
        "next_since": page.next,
    })))
}

/// The cluster's answer: every replica's mirrored records.
async fn fleet(caller: Caller, state: AppState, q: AuditQuery) -> Result<Json<Value>, ApiError> {
    let mut filter = crate::store::audit_mirror::FleetAuditFilter {
        agent: q.agent,
        actor: q.actor,
        kind: q.kind,
        limit: q.limit.unwrap_or(agentmesh_audit::DEFAULT_QUERY_LIMIT),
        ..Default::default()
    };
    match q.since {
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
            filter.after_id = s
                .parse()
                .map_err(|_| ApiError::bad_request("since: number too large"))?
        }
        Some(s) => filter.since_ts = Some(s),
        None => {}
    }
    let page = state
        .commands
        .read_fleet_audit(&caller.principal, filter)
        .await?;
    Ok(Json(json!({
        "records": page.items,
        "count": page.items.len(),
        "next_since": page.next,
    })))
}
