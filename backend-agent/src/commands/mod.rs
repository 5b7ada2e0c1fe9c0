//! Commands end to end on the backend: validate against the agent's advertised schema,
//! record, dispatch over the agent's bounded queue (or hold for an offline agent up to
//! `queue_ttl_ms`), collect results, wake waiters. Fan-out jobs live in [`jobs`].
//!
//! [`CommandService`] is the single entry for everything an API caller does with commands:
//! submit, fan-out, cancel and every read. Each entry takes the caller's [`Principal`], makes
//! one registry lookup, asks [`Authz`] (the one policy), charges the operator and agent rate
//! limits and writes the audit record; the HTTP layer only parses and maps errors.
//!
//! Every state change is written to the store before anything depends on it: a command is
//! recorded `dispatched` before its frame is queued, so a fast result can never be
//! overwritten by a late status update.
//!
//! # Layout
//! - this file: the service, its settings, errors and waiters.
//! - `submit`: one command on one agent. `cancel`: cancelling. `read`: scoped reads of
//!   commands, jobs, history and the audit log. [`jobs`]: fan-out.
//! - `held`: commands held for offline agents; `handover`: in a cluster, handed to the
//!   replica the agent attached to. `results`: results from agents (a bounded
//!   queue from the sessions to one worker; no store I/O on a session loop).
//! - `sweep`: expiry of commands that never got a result, and history pruning.
//! - [`redact`]: secret params hashed before they are stored or audited.

mod cancel;
pub mod fleet_audit;
mod handover;
mod held;
pub mod jobs;
pub mod read;
pub mod redact;
mod remote;
mod results;
mod submit;
mod sweep;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_protocol::{ArgError, CommandFrame};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::authz::{Authz, AuthzError};
use crate::clock;
use crate::config::{LimitsConfig, StoreConfig};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{CommandRecord, CommandState, ErrorInfo, Store, StoreError};
use crate::sync::lock;

/// Verb timeout used when neither the verb nor the request gives one.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Extra time a `wait=true` request waits beyond the command's timeout.
pub const WAIT_GRACE: Duration = Duration::from_secs(5);
/// Commands held for one offline agent; beyond it new ones are refused (503).
pub const MAX_QUEUED_PER_AGENT: usize = 256;

/// Knobs of the command service (from `[limits]` and `[store]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest `queue_ttl_ms` accepted.
    pub max_queue_ttl_ms: u64,
    /// A dispatched command without a result this long past its timeout ends `expired`.
    pub result_grace: Duration,
    /// Finished commands older than this are pruned (`None`: no age limit).
    pub retention: Option<Duration>,
    /// At most this many finished commands are kept (`None`: no cap).
    pub max_records: Option<usize>,
    /// How often the pruner runs.
    pub prune_interval: Duration,
}

impl Settings {
    /// From the config tables.
    pub fn from_config(limits: &LimitsConfig, store: &StoreConfig) -> Self {
        Settings {
            max_queue_ttl_ms: limits.max_queue_ttl_ms,
            result_grace: Duration::from_secs(limits.result_grace_secs),
            retention: (store.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(store.retention_days) * 86_400)),
            max_records: (store.max_records > 0).then_some(store.max_records),
            prune_interval: Duration::from_secs(store.prune_interval_secs.max(1)),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&LimitsConfig::default(), &StoreConfig::default())
    }
}

/// One command as an operator asked for it.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// Target agent.
    pub agent_id: String,
    /// Verb name.
    pub verb: String,
    /// Arguments (validated against the agent's schema).
    pub args: Map<String, Value>,
    /// Requested timeout; the smaller of this and the verb's wins.
    pub timeout_ms: Option<u64>,
    /// Hold the command this long if the agent is offline (else 409).
    pub queue_ttl_ms: Option<u64>,
}

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No such agent.
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The caller may not do this (403), or the subject is outside its scope (404).
    #[error(transparent)]
    Denied(#[from] AuthzError),
    /// The agent is revoked or has no active certificate: nothing is sent to it.
    #[error("agent {0:?} is revoked; no command is sent to it")]
    Revoked(String),
    /// `queue_ttl_ms` is above `[limits] max_queue_ttl_ms`.
    #[error("queue_ttl_ms: {asked} is above the limit of {max} ms")]
    QueueTtlTooLong {
        /// What was asked for.
        asked: u64,
        /// `[limits] max_queue_ttl_ms`.
        max: u64,
    },
    /// The operator token's command rate is exhausted.
    #[error("token {token:?} is over its command rate; retry in {wait:?}")]
    OperatorRateLimited {
        /// Token name.
        token: String,
        /// How long until a request would pass.
        wait: Duration,
    },
    /// The agent did not advertise the verb.
    #[error("agent {agent:?} does not offer verb {verb:?}")]
    NotAdvertised {
        /// Agent id.
        agent: String,
        /// Verb name.
        verb: String,
    },
    /// The arguments do not fit the verb's schema.
    #[error("{0}")]
    BadArgs(ArgError),
    /// The agent is not connected and no `queue_ttl_ms` was given.
    #[error("agent {0:?} is offline; pass queue_ttl_ms to hold the command until it reconnects")]
    Offline(String),
    /// The agent's send queue (or offline hold queue) is full.
    #[error("agent {0:?} has too many commands queued; retry later")]
    QueueFull(String),
    /// The agent's command rate is exhausted.
    #[error("agent {agent:?} is over its command rate; retry in {wait:?}")]
    RateLimited {
        /// Agent id.
        agent: String,
        /// How long until a command would pass.
        wait: Duration,
    },
    /// The audit log could not make the request durable: the command is not sent.
    #[error("audit log unavailable: {0}")]
    Audit(agentmesh_audit::AuditError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `[cluster]`: the agent may be held by another replica, which cannot be reached.
    #[error("cluster unavailable: {0}")]
    ClusterUnavailable(String),
    /// `[cluster]`: another replica refused the command with this code.
    #[error("{message}")]
    Remote {
        /// Its stable code.
        code: &'static str,
        /// Its message.
        message: String,
    },
}

impl SubmitError {
    /// Stable code for records and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::UnknownAgent(_) => "unknown_agent",
            SubmitError::Denied(AuthzError::Forbidden(_)) => "forbidden",
            SubmitError::Denied(AuthzError::NotFound(_)) => "not_found",
            SubmitError::Revoked(_) => "agent_revoked",
            SubmitError::QueueTtlTooLong { .. } => "invalid_queue_ttl",
            SubmitError::OperatorRateLimited { .. } => "rate_limited",
            SubmitError::NotAdvertised { .. } => "verb_not_advertised",
            SubmitError::BadArgs(_) => "invalid_args",
            SubmitError::Offline(_) => "agent_offline",
            SubmitError::QueueFull(_) => "queue_full",
            SubmitError::RateLimited { .. } => "rate_limited",
            SubmitError::Audit(_) => "audit_unavailable",
            SubmitError::Store(e) if e.is_unavailable() => "store_unavailable",
            SubmitError::Store(_) => "internal",
            SubmitError::ClusterUnavailable(_) => "cluster_unavailable",
            SubmitError::Remote { code, .. } => code,
        }
    }
}

struct Held {
    frame: CommandFrame,
    deadline: Instant,
}

/// The command service: one per backend.
pub struct CommandService {
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    limits: Arc<crate::reload::SharedLimits>,
    audit: Arc<crate::audit::Audit>,
    authz: Arc<Authz>,
    settings: Settings,
    /// Permits for reads that scan files or materialise outputs (see `read`).
    heavy_reads: tokio::sync::Semaphore,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<CommandRecord>>>>,
    held: Mutex<HashMap<String, VecDeque<Held>>>,
    handovers: handover::Handovers,
    connected_tx: mpsc::Sender<String>,
    /// Results from sessions to the results worker (see `results`).
    results_tx: mpsc::Sender<results::QueuedResult>,
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl CommandService {
    /// Builds the service and starts its background work (flushing held commands when an
    /// agent connects, expiring them at their deadline, expiring dispatched commands that
    /// never got a result, pruning history) until `shutdown` flips.
    #[allow(clippy::too_many_arguments)] // the service's collaborators, each needed once
    pub fn start(
        registry: Arc<Registry>,
        store: Store,
        metrics: Arc<Metrics>,
        limits: Arc<crate::reload::SharedLimits>,
        audit: Arc<crate::audit::Audit>,
        authz: Arc<Authz>,
        settings: Settings,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Self> {
        // Bounded: if it is full, the periodic sweep still finds held commands of connected
        // agents, so a dropped notification only delays them by one sweep.
        let (connected_tx, mut connected_rx) = mpsc::channel::<String>(1024);
        let (results_tx, results_rx) = mpsc::channel(results::RESULT_QUEUE);
        let service = Arc::new(CommandService {
            registry,
            store,
            metrics,
            limits,
            audit,
            authz,
            settings,
            heavy_reads: tokio::sync::Semaphore::new(read::MAX_HEAVY_READS),
            waiters: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            handovers: handover::Handovers::default(),
            connected_tx,
            results_tx,
            cluster: std::sync::OnceLock::new(),
        });
        results::spawn_worker(Arc::downgrade(&service), results_rx);
        sweep::spawn_pruner(Arc::downgrade(&service), shutdown.clone());
        let worker = Arc::downgrade(&service);
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(Duration::from_millis(250));
            let mut expiry =
                tokio::time::interval_at(Instant::now() + sweep::EXPIRY_SWEEP, sweep::EXPIRY_SWEEP);
            loop {
                tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut shutdown) => break,
                    Some(agent) = connected_rx.recv() => {
                        let Some(s) = worker.upgrade() else { break };
                        s.flush_held(&agent).await;
                    }
                    _ = sweep.tick() => {
                        let Some(s) = worker.upgrade() else { break };
                        s.expire_held().await;
                    }
                    _ = expiry.tick() => {
                        let Some(s) = worker.upgrade() else { break };
                        s.expire_unanswered().await;
                    }
                }
            }
        });
        service
    }

    /// An agent's session started: dispatch what was held for it.
    pub fn on_connected(&self, agent_id: &str) {
        let _ = self.connected_tx.try_send(agent_id.to_owned());
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The authoriser (for routes outside the command path, e.g. enrolment).
    pub fn authz(&self) -> &Arc<Authz> {
        &self.authz
    }

    /// Charges one request to `caller`'s operator bucket; audited when refused.
    fn charge_operator(&self, caller: &Principal, verb: Option<&str>) -> Result<(), SubmitError> {
        let limits = self.limits.load();
        limits.check_operator(&caller.name).map_err(|wait| {
            self.metrics.rate_limited("operator");
            tracing::warn!(token = %caller.name, "operator rate limit hit");
            self.audit.record(crate::audit::events::rate_limited(
                &caller.name,
                "operator_commands",
                None,
                verb,
            ));
            SubmitError::OperatorRateLimited {
                token: caller.name.clone(),
                wait,
            }
        })
    }

    /// Marks commands a previous process left `pending` (held in its memory) as expired.
    pub async fn recover(&self) -> Result<(), StoreError> {
        self.recover_as(false).await
    }

    /// [`CommandService::recover`]; `clustered` (`[cluster]`): other live replicas may hold
    /// `pending` records of the shared store in their memory, so only those no replica can
    /// still hold (older than [`CommandService::orphan_age_ms`]) are expired here; younger
    /// ones are left to their holder, or to the expiry sweep once they reach that age.
    pub async fn recover_as(&self, clustered: bool) -> Result<(), StoreError> {
        let now = clock::unix_ms();
        for mut rec in self.store.unfinished_commands().await? {
            if clustered && !self.is_orphan(&rec, now) {
                continue;
            }
            if rec.status == CommandState::Pending {
                finish(
                    &mut rec,
                    CommandState::Expired,
                    "backend_restarted",
                    "the backend restarted before the command was dispatched",
                );
                self.store.update_command(&rec).await?;
                self.audit.record(crate::audit::events::command_expired(
                    &rec,
                    "backend_restarted",
                ));
            }
        }
        Ok(())
    }

    /// Waits until the command is final or `limit` passes.
    pub async fn wait(
        &self,
        command_id: &str,
        limit: Duration,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters)
            .entry(command_id.to_owned())
            .or_default()
            .push(tx);
        // Registered before looking, so a result landing in between is not missed.
        if let Some(rec) = self.store.get_command(command_id).await? {
            if rec.status.is_final() {
                self.drop_closed_waiters(command_id);
                return Ok(Some(rec));
            }
        }
        let out = tokio::time::timeout(limit, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.drop_closed_waiters(command_id);
        Ok(out)
    }

    fn drop_closed_waiters(&self, command_id: &str) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(command_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(command_id);
            }
        }
    }

    fn notify(&self, rec: &CommandRecord) {
        self.registry.events.command_status(rec);
        if rec.status.is_final() {
            let latency = clock::unix_ms_from_rfc3339(&rec.created_at)
                .map(|t| Duration::from_millis(u64::try_from(clock::unix_ms() - t).unwrap_or(0)));
            self.metrics
                .command_finished(&rec.verb, rec.status.as_str(), latency);
            if let Some(cluster) = self.cluster.get() {
                cluster.publish_done(&rec.command_id);
            }
        }
        if let Some(list) = lock(&self.waiters).remove(&rec.command_id) {
            for tx in list {
                let _ = tx.send(rec.clone());
            }
        }
    }
}

pub(crate) fn finish(rec: &mut CommandRecord, status: CommandState, code: &str, message: &str) {
    rec.status = status;
    rec.error = Some(ErrorInfo {
        code: code.to_owned(),
        message: message.to_owned(),
    });
    rec.finished_at = Some(clock::now_rfc3339());
}
