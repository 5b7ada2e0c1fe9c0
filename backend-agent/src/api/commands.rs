//! Command routes: run one verb on one agent, fan out, read, list, cancel. Parsing and error
//! mapping only: authorisation, limits and auditing are in [`crate::commands`].

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
use crate::authz::AuthzError;
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

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let status = match &e {
            SubmitError::UnknownAgent(_) => StatusCode::NOT_FOUND,
            SubmitError::Denied(AuthzError::Forbidden(m)) => return ApiError::forbidden(m),
            SubmitError::Denied(AuthzError::NotFound(m)) => return ApiError::not_found(m),
            SubmitError::NotAdvertised { .. }
            | SubmitError::BadArgs(_)
            | SubmitError::QueueTtlTooLong { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            SubmitError::Offline(_) | SubmitError::Revoked(_) => StatusCode::CONFLICT,
            SubmitError::QueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            SubmitError::RateLimited { wait, .. }
            | SubmitError::OperatorRateLimited { wait, .. } => {
                return ApiError::rate_limited(e.to_string(), *wait);
            }
            SubmitError::Store(inner) => return ApiError::store(inner),
            SubmitError::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            SubmitError::Remote { code, .. } => match *code {
                "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
                "audit_unavailable" | "store_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
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
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
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
            JobError::Store(inner) => ApiError::store(&inner),
        }
    }
}

/// `POST /api/v1/agents/{id}/commands`.
pub async fn run_on_agent(
    caller: Caller,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Response, ApiError> {
    let request = SubmitRequest {
        agent_id,
        verb: body.verb,
        args: body.args,
        timeout_ms: body.timeout_ms,
        queue_ttl_ms: body.queue_ttl_ms,
    };
    let record = state.commands.submit(&caller.principal, request).await?;
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
        Err(e) => Err(ApiError::store(&e)),
    }
}

/// `POST /api/v1/commands` (fan-out).
pub async fn fan_out(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<JobBody>,
) -> Result<Response, ApiError> {
    let request = JobRequest {
        selector: body.selector,
        verb: body.verb,
        args: body.args,
        timeout_ms: body.timeout_ms,
        max_concurrency: body.max_concurrency,
        max_errors: body.max_errors,
    };
    let job = state
        .commands
        .submit_job(&caller.principal, request)
        .await?;
    let answer = json!({"job_id": job.job_id, "targets": job.targets});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `?include=output` of the read routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneQuery {
    include: Option<String>,
}

fn include_output(include: Option<&str>) -> Result<bool, ApiError> {
    match include {
        None => Ok(false),
        Some("output") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "include: only \"output\" is known, not {other:?}"
        ))),
    }
}

/// `GET /api/v1/commands/{id}`: a command record (with its output) or a job (its results
/// with output only with `?include=output`).
pub async fn get_one(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<OneQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let output = include_output(q.include.as_deref())?;
    Ok(Json(
        state
            .commands
            .read_one(&caller.principal, &id, output)
            .await?,
    ))
}

/// `DELETE /api/v1/commands/{id}`: cancel.
pub async fn cancel(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = state.commands.cancel(&caller.principal, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

/// Query of `GET /api/v1/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    agent: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
    include: Option<String>,
}

/// `GET /api/v1/commands?agent=&status=&limit=&before=&include=output`: newest first,
/// without `stdout`/`stderr` unless `include=output`; `next_before` continues the list.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let output = include_output(q.include.as_deref())?;
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
        limit: q.limit.unwrap_or(CommandQuery::DEFAULT_LIMIT),
        before: q.before,
        ..CommandQuery::default()
    };
    let page = state
        .commands
        .list(&caller.principal, query, output)
        .await?;
    Ok(Json(json!({
        "commands": page.items,
        "count": page.items.len(),
        "next_before": page.next,
    })))
}
