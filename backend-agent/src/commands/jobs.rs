//! Fan-out jobs: one request, many agents, with `max_concurrency` in flight and a
//! `max_errors` budget after which the remaining targets are skipped (the semantics of SSM
//! Run Command's MaxConcurrency/MaxErrors).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{finish, CommandService, SubmitError, SubmitRequest, WAIT_GRACE};
use crate::auth::{Principal, Role};
use crate::authz::{decide, Action, AgentScope, AuthzError, Decision, Ids, Subject};
use crate::clock;
use crate::store::{CommandQuery, CommandRecord, CommandState, JobRecord, StoreError};

/// Targets dispatched at once when the request does not say.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 50;
/// Largest fan-out accepted in one job.
pub const MAX_TARGETS: usize = CommandQuery::MAX_LIMIT;

/// Which agents a job targets: `ids` and/or `labels` (both given = intersection).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Agent ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Labels every target must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A fan-out request.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// Which agents.
    pub selector: Selector,
    /// Verb name.
    pub verb: String,
    /// Arguments.
    pub args: Map<String, Value>,
    /// Per-command timeout.
    pub timeout_ms: Option<u64>,
    /// Targets in flight at once.
    pub max_concurrency: Option<u32>,
    /// Failures after which dispatching stops (0 behaves like 1; absent = no limit).
    pub max_errors: Option<u32>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The selector is empty or malformed.
    #[error("{0}")]
    BadSelector(String),
    /// An id in the selector is unknown.
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The selector matched nothing.
    #[error("the selector matches no agents")]
    NoTargets,
    /// Too many targets.
    #[error("the selector matches {0} agents; at most {MAX_TARGETS} per job")]
    TooManyTargets(usize),
    /// The verb or args do not fit the targets' schema, or the caller may not run it (scope,
    /// rate limit).
    #[error(transparent)]
    Invalid(SubmitError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandService {
    /// The API's entry for a fan-out: the verb scope, the token's labels forced into the
    /// selector (matched against authoritative labels), the operator rate limit (one charge
    /// per job); then the job is recorded and dispatched in the background, each target
    /// re-checked and charged to its agent limit as it is reached.
    pub async fn submit_job(
        self: &Arc<Self>,
        caller: &Principal,
        mut req: JobRequest,
    ) -> Result<JobRecord, JobError> {
        let own = Subject {
            verb: Some(&req.verb),
            agent: AgentScope::Labels(&caller.labels),
        };
        let refuse = |e: AuthzError| JobError::Invalid(e.into());
        self.authz
            .check(caller, Action::FanOut, &own, Ids::default(), String::new)
            .map_err(refuse)?;
        if caller.role != Role::Admin && !caller.labels.is_empty() {
            let labels = req.selector.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &caller.labels {
                if labels.get(k).is_some_and(|have| have != v) {
                    let reason = format!(
                        "token {:?} may only target agents labelled {k}={v}",
                        caller.name
                    );
                    return Err(refuse(AuthzError::Forbidden(reason)));
                }
                labels.insert(k.clone(), v.clone());
            }
        }
        if let (Some(cluster), Some(_)) = (self.cluster(), &req.selector.labels) {
            // Labels of agents held elsewhere are current after a gather.
            cluster.learn_fleet().await;
        }
        let targets = self.resolve(&req.selector)?;
        self.precheck(&targets, &req.verb, &req.args)?;
        self.charge_operator(caller, Some(&req.verb))
            .map_err(JobError::Invalid)?;
        let job = JobRecord {
            job_id: uuid::Uuid::now_v7().to_string(),
            verb: req.verb.clone(),
            args: Value::Object(Map::new()),
            requested_by: caller.name.clone(),
            selector: serde_json::to_value(&req.selector).unwrap_or(Value::Null),
            max_concurrency: req
                .max_concurrency
                .unwrap_or(DEFAULT_MAX_CONCURRENCY)
                .max(1),
            max_errors: req.max_errors.unwrap_or(u32::MAX),
            created_at: clock::now_rfc3339(),
            targets,
        };
        self.store.insert_job(&job).await?;
        self.registry.events.job_started(&job);
        info!(job.id = %job.job_id, targets = job.targets.len(), verb = %job.verb, "fan-out job started");
        let service = self.clone();
        let run = job.clone();
        let caller = caller.clone();
        tokio::spawn(async move { service.run_job(run, req, caller).await });
        Ok(job)
    }

    /// The selector's targets: known, not revoked, and matching its labels (authoritative
    /// labels, see [`crate::registry`]).
    fn resolve(&self, selector: &Selector) -> Result<Vec<String>, JobError> {
        let no_labels = BTreeMap::new();
        let mut targets = match (&selector.ids, &selector.labels) {
            (None, None) => {
                return Err(JobError::BadSelector(
                    "selector needs ids and/or labels".into(),
                ))
            }
            (Some(ids), labels) => {
                let eligible: std::collections::HashSet<String> = self
                    .registry
                    .ids_matching(labels.as_ref().unwrap_or(&no_labels))
                    .into_iter()
                    .collect();
                let mut out = Vec::new();
                for id in ids {
                    if !self.registry.contains(id) {
                        return Err(JobError::UnknownAgent(id.clone()));
                    }
                    if eligible.contains(id) {
                        out.push(id.clone());
                    }
                }
                out
            }
            (None, Some(labels)) => self.registry.ids_matching(labels),
        };
        targets.sort();
        targets.dedup();
        match targets.len() {
            0 => Err(JobError::NoTargets),
            n if n > MAX_TARGETS => Err(JobError::TooManyTargets(n)),
            _ => Ok(targets),
        }
    }

    /// Refuses early (422) when no target offers the verb or the args fail its schema.
    fn precheck(
        &self,
        targets: &[String],
        verb: &str,
        args: &Map<String, Value>,
    ) -> Result<(), JobError> {
        let spec = targets
            .iter()
            .filter_map(|id| self.registry.command_target(id, verb))
            .find_map(|t| t.spec);
        let Some(spec) = spec else {
            if self.cluster().is_some() {
                // The schema is with the replicas holding the targets; each checks there.
                return Ok(());
            }
            return Err(JobError::Invalid(SubmitError::NotAdvertised {
                agent: "any target".into(),
                verb: verb.to_owned(),
            }));
        };
        spec.validate_args(args)
            .map_err(|e| JobError::Invalid(SubmitError::BadArgs(e)))
    }

    /// Dispatches the job's targets, `max_concurrency` at a time. Each target is submitted
    /// and awaited in a task of its own, so the durable `command_requested` records and the
    /// command rows of concurrent targets share group commits (audit and store) instead of
    /// costing one fsync after another. The `max_errors` budget is checked as each slot
    /// frees up.
    async fn run_job(self: Arc<Self>, job: JobRecord, req: JobRequest, caller: Principal) {
        let in_flight = Arc::new(Semaphore::new(job.max_concurrency as usize));
        let failures = Arc::new(AtomicU32::new(0));
        let budget = job.max_errors.max(1);
        let run = Arc::new((job, req, caller));
        // At most one task per target (bounded by MAX_TARGETS), reaped as they finish.
        let mut targets = tokio::task::JoinSet::new();
        for i in 0..run.0.targets.len() {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            while targets.try_join_next().is_some() {}
            let job = &run.0;
            let agent_id = &job.targets[i];
            if failures.load(Ordering::SeqCst) >= budget {
                drop(permit);
                self.record_unsent(
                    job,
                    agent_id,
                    CommandState::Cancelled,
                    "skipped",
                    "max_errors reached; not dispatched",
                )
                .await;
                continue;
            }
            let (service, run, failures) = (self.clone(), run.clone(), failures.clone());
            targets.spawn(async move {
                let ok = service.run_target(&run, i).await;
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                drop(permit);
            });
        }
        while targets.join_next().await.is_some() {}
        let (job, _, _) = &*run;
        info!(job.id = %job.job_id, failures = failures.load(Ordering::SeqCst), "fan-out job finished dispatching");
    }

    /// Submits target `i` of a job and waits for its result; `true` when it ended `ok`.
    async fn run_target(&self, run: &(JobRecord, JobRequest, Principal), i: usize) -> bool {
        let (job, req, caller) = run;
        let agent_id = &job.targets[i];
        match self.submit_target(job, req, caller, agent_id).await {
            Ok(rec) => {
                let limit = std::time::Duration::from_millis(rec.timeout_ms) + WAIT_GRACE;
                let outcome = self.wait(&rec.command_id, limit).await;
                matches!(&outcome, Ok(Some(r)) if r.status == CommandState::Ok)
            }
            Err(e) => {
                if !matches!(e, SubmitError::QueueFull(_) | SubmitError::Store(_)) {
                    self.record_unsent(
                        job,
                        agent_id,
                        CommandState::Rejected,
                        e.code(),
                        &e.to_string(),
                    )
                    .await;
                }
                false
            }
        }
    }

    /// One target of a job, looked up again now: it may have been revoked or relabelled
    /// since the selector was resolved.
    async fn submit_target(
        &self,
        job: &JobRecord,
        req: &JobRequest,
        caller: &Principal,
        agent_id: &str,
    ) -> Result<CommandRecord, SubmitError> {
        let target = self
            .registry
            .command_target(agent_id, &req.verb)
            .ok_or_else(|| SubmitError::UnknownAgent(agent_id.to_owned()))?;
        let subject = Subject {
            verb: Some(&req.verb),
            agent: AgentScope::Labels(&target.labels),
        };
        if decide(caller, Action::FanOut, &subject) != Decision::Allow {
            return Err(AuthzError::Forbidden(format!(
                "agent {agent_id:?} left the scope of token {:?}",
                caller.name
            ))
            .into());
        }
        let request = SubmitRequest {
            agent_id: agent_id.to_owned(),
            verb: req.verb.clone(),
            args: req.args.clone(),
            timeout_ms: req.timeout_ms,
            queue_ttl_ms: None,
        };
        if target.session.is_none() && !target.refused {
            let (by, job_id) = (&job.requested_by, Some(job.job_id.as_str()));
            if let Some(routed) = self.route_remote(caller, by, job_id, &request).await {
                return routed;
            }
        }
        self.submit_to(&job.requested_by, Some(job.job_id.clone()), target, request)
            .await
    }

    async fn record_unsent(
        &self,
        job: &JobRecord,
        agent_id: &str,
        status: CommandState,
        code: &str,
        message: &str,
    ) {
        let mut rec = CommandRecord {
            command_id: uuid::Uuid::now_v7().to_string(),
            agent_id: agent_id.to_owned(),
            verb: job.verb.clone(),
            args: Value::Object(Map::new()),
            requested_by: job.requested_by.clone(),
            status: CommandState::Pending,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            created_at: clock::now_rfc3339(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            error: None,
            timeout_ms: 0,
            job_id: Some(job.job_id.clone()),
        };
        finish(&mut rec, status, code, message);
        if let Err(e) = self.store.insert_command(&rec).await {
            warn!(error = %e, job.id = %job.job_id, "could not record a skipped target");
        }
        self.registry.events.command_status(&rec);
    }

    /// The job with the per-target records of the targets `visible` admits (without their
    /// output unless `include_output`) and a summary over those targets.
    pub(super) async fn render_job(
        &self,
        job: JobRecord,
        visible: impl Fn(&str) -> bool,
        include_output: bool,
    ) -> Result<Value, StoreError> {
        let job_id = job.job_id.as_str();
        let records = self
            .store
            .list_commands(&CommandQuery {
                agent: None,
                status: None,
                job_id: Some(job_id.to_owned()),
                limit: CommandQuery::MAX_LIMIT,
                before: None,
                with_output: include_output,
            })
            .await?;
        let mut by_agent: BTreeMap<&str, &CommandRecord> = BTreeMap::new();
        for r in &records {
            by_agent.insert(r.agent_id.as_str(), r);
        }
        let (mut ok, mut failed, mut pending, mut skipped) = (0, 0, 0, 0);
        let targets: Vec<&String> = job.targets.iter().filter(|a| visible(a)).collect();
        let mut results = Vec::with_capacity(targets.len());
        for &agent in &targets {
            match by_agent.get(agent.as_str()) {
                Some(r) => {
                    let is_skipped = r.error.as_ref().is_some_and(|e| e.code == "skipped");
                    match r.status {
                        _ if is_skipped => skipped += 1,
                        CommandState::Ok => ok += 1,
                        s if s.is_final() => failed += 1,
                        _ => pending += 1,
                    }
                    results.push(super::read::render(r, include_output));
                }
                None => {
                    pending += 1;
                    results
                        .push(json!({"agent_id": agent, "status": "pending", "command_id": null}));
                }
            }
        }
        Ok(json!({
            "job_id": job.job_id,
            "verb": job.verb,
            "requested_by": job.requested_by,
            "created_at": job.created_at,
            "selector": job.selector,
            "max_concurrency": job.max_concurrency,
            "max_errors": if job.max_errors == u32::MAX { Value::Null } else { json!(job.max_errors) },
            "summary": {"targets": targets.len(), "ok": ok, "failed": failed, "pending": pending, "skipped": skipped},
            "results": results,
        }))
    }
}
