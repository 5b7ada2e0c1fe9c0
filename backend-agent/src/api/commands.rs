//! Command routes: run one verb on one agent, fan out, read, list, cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, AppState};
use crate::auth::{Principal, Role};
use crate::commands::jobs::{JobError, JobRequest, Selector};
use crate::commands::{SubmitError, SubmitRequest, WAIT_GRACE};
use crate::store::{CommandQuery, CommandState};

/// Body of `POST /api/v1/agents/{id}/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    verb: String,
    #[serde(default)]
    args: Map<String, Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    queue_ttl_ms: Option<u64>,
}

/// Body of `POST /api/v1/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    selector: Selector,
    verb: String,
    #[serde(default)]
    args: Map<String, Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    max_errors: Option<u32>,
}

/// Refuses (403) a verb or target outside an operator token's scope.
pub fn check_scope(
    caller: &Caller,
    verb: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let p: &Principal = &caller.0;
    if !p.verbs.iter().any(|v| v == "*" || v == verb) {
        return Err(caller.forbidden(format!("token {:?} may not run verb {verb:?}", p.name)));
    }
    if let Some((k, v)) = p.labels.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
        return Err(caller.forbidden(format!(
            "token {:?} may only target agents labelled {k}={v}",
            p.name
        )));
    }
    Ok(())
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let status = match &e {
            SubmitError::UnknownAgent(_) => StatusCode::NOT_FOUND,
            SubmitError::NotAdvertised { .. } | SubmitError::BadArgs(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            SubmitError::Offline(_) => StatusCode::CONFLICT,
            SubmitError::QueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            SubmitError::RateLimited { wait, .. } => {
                return ApiError::rate_limited(e.to_string(), *wait);
            }
            SubmitError::Store(inner) => return ApiError::internal(inner),
            SubmitError::Audit(inner) => {
                tracing::error!(error = %inner, "audit log unavailable; command refused");
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    e.to_string(),
                );
                err.retry_after = Some(1);
                return err;
            }
        };
        let mut err = ApiError::new(status, e.code(), e.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            err.retry_after = Some(1);
        }
        err
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::BadSelector(m) => ApiError::bad_request(m),
            JobError::UnknownAgent(id) => ApiError::not_found(format!("unknown agent {id:?}")),
            JobError::NoTargets | JobError::TooManyTargets(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_targets",
                e.to_string(),
            ),
            JobError::Invalid(inner) => inner.into(),
            JobError::Store(inner) => ApiError::internal(inner),
        }
    }
}

/// Charges one request to the caller's token bucket.
fn operator_rate(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    state.limits.check_operator(&caller.0.name).map_err(|wait| {
        tracing::warn!(token = %caller.0.name, "operator rate limit hit");
        caller.audit_rate_limited("operator_commands");
        ApiError::rate_limited(
            format!("token {:?} is over its command rate", caller.0.name),
            wait,
        )
    })
}

/// `POST /api/v1/agents/{id}/commands`.
pub async fn run_on_agent(
    caller: Caller,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    operator_rate(&state, &caller)?;
    let labels = state
        .registry
        .command_target(&agent_id, &body.verb)
        .map(|t| t.labels)
        .ok_or_else(|| ApiError::not_found(format!("unknown agent {agent_id:?}")))?;
    check_scope(&caller, &body.verb, &labels)?;
    let record = state
        .commands
        .submit(SubmitRequest {
            agent_id,
            verb: body.verb,
            args: body.args,
            timeout_ms: body.timeout_ms,
            requested_by: caller.0.name.clone(),
            queue_ttl_ms: body.queue_ttl_ms,
            job_id: None,
        })
        .await?;
    if !body.wait {
        let answer = json!({"command_id": record.command_id, "status": record.status});
        return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    let limit = Duration::from_millis(record.timeout_ms)
        + Duration::from_millis(body.queue_ttl_ms.unwrap_or(0))
        + WAIT_GRACE;
    match state.commands.wait(&record.command_id, limit).await {
        Ok(Some(done)) => Ok(Json(done).into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "wait_timeout",
            format!(
                "no result within {} ms; the command goes on: GET /api/v1/commands/{}",
                limit.as_millis(),
                record.command_id
            ),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `POST /api/v1/commands` (fan-out).
pub async fn fan_out(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<JobBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    operator_rate(&state, &caller)?;
    // Scope: the verb, and every label the token is restricted to must be in the selector.
    check_scope(&caller, &body.verb, &caller.0.labels)?;
    let mut selector = body.selector;
    if !caller.0.labels.is_empty() {
        let labels = selector.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &caller.0.labels {
            if labels.get(k).is_some_and(|have| have != v) {
                return Err(caller.forbidden(format!(
                    "token {:?} may only target agents labelled {k}={v}",
                    caller.0.name
                )));
            }
            labels.insert(k.clone(), v.clone());
        }
    }
    let job = state
        .commands
        .submit_job(JobRequest {
            selector,
            verb: body.verb,
            args: body.args,
            timeout_ms: body.timeout_ms,
            max_concurrency: body.max_concurrency,
            max_errors: body.max_errors,
            requested_by: caller.0.name.clone(),
        })
        .await?;
    let answer = json!({"job_id": job.job_id, "targets": job.targets});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `GET /api/v1/commands/{id}`: a command record or a job.
pub async fn get_one(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let store = state.commands.store();
    if let Some(rec) = store.get_command(&id).await.map_err(ApiError::internal)? {
        return Ok(Json(serde_json::to_value(rec).map_err(ApiError::internal)?));
    }
    match state
        .commands
        .job_view(&id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(job) => Ok(Json(job)),
        None => Err(ApiError::not_found(format!(
            "unknown command or job {id:?}"
        ))),
    }
}

/// `DELETE /api/v1/commands/{id}`: cancel.
pub async fn cancel(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    match state
        .commands
        .cancel(&id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(rec) => Ok((StatusCode::ACCEPTED, Json(rec)).into_response()),
        None => Err(ApiError::not_found(format!("unknown command {id:?}"))),
    }
}

/// Query of `GET /api/v1/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    agent: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /api/v1/commands?agent=&status=&limit=&before=`.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(q) = query?;
    let status = match q.status {
        Some(s) => Some(
            s.parse::<CommandState>()
                .map_err(|_| ApiError::bad_request(format!("unknown status {s:?}")))?,
        ),
        None => None,
    };
    let query = CommandQuery {
        agent: q.agent,
        status,
        job_id: None,
        limit: q.limit.unwrap_or(CommandQuery::DEFAULT_LIMIT),
        before: q.before,
    };
    let commands = state
        .commands
        .store()
        .list_commands(&query)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"commands": commands, "count": commands.len()})))
}
