//! Commands end to end on the backend: validate against the agent's advertised schema,
//! record, dispatch over the agent's bounded queue (or hold for an offline agent up to
//! `queue_ttl_ms`), collect results, wake waiters. Fan-out jobs live in [`jobs`].
//!
//! Every state change is written to the store before anything depends on it: a command is
//! recorded `dispatched` before its frame is queued, so a fast result can never be
//! overwritten by a late status update.

mod held;
pub mod jobs;
pub mod redact;
mod results;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentmesh_protocol::{ArgError, CommandFrame, HubFrame};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::audit::kinds;
use crate::clock;
use crate::metrics::Metrics;
use crate::registry::{LiveSession, Registry};
use crate::store::{CommandRecord, CommandState, ErrorInfo, Store, StoreError};
use agentmesh_audit::AuditEvent;
use redact::Salt;

/// Verb timeout used when neither the verb nor the request gives one.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Extra time a `wait=true` request waits beyond the command's timeout.
pub const WAIT_GRACE: Duration = Duration::from_secs(5);
/// Commands held for one offline agent; beyond it new ones are refused (503).
pub const MAX_QUEUED_PER_AGENT: usize = 256;

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
    /// Token name of the operator.
    pub requested_by: String,
    /// Hold the command this long if the agent is offline (else 409).
    pub queue_ttl_ms: Option<u64>,
    /// The fan-out job it belongs to.
    pub job_id: Option<String>,
}

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No such agent.
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
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
}

impl SubmitError {
    /// Stable code for records and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::UnknownAgent(_) => "unknown_agent",
            SubmitError::NotAdvertised { .. } => "verb_not_advertised",
            SubmitError::BadArgs(_) => "invalid_args",
            SubmitError::Offline(_) => "agent_offline",
            SubmitError::QueueFull(_) => "queue_full",
            SubmitError::RateLimited { .. } => "rate_limited",
            SubmitError::Audit(_) => "audit_unavailable",
            SubmitError::Store(_) => "internal",
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
    limits: Arc<crate::limits::RateLimits>,
    audit: Arc<crate::audit::Audit>,
    salt: Salt,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<CommandRecord>>>>,
    held: Mutex<HashMap<String, VecDeque<Held>>>,
    connected_tx: mpsc::Sender<String>,
}

impl CommandService {
    /// Builds the service and starts its background work (flushing held commands when an
    /// agent connects, expiring them at their deadline) until `shutdown` flips.
    pub fn start(
        registry: Arc<Registry>,
        store: Store,
        metrics: Arc<Metrics>,
        limits: Arc<crate::limits::RateLimits>,
        audit: Arc<crate::audit::Audit>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Self> {
        // Bounded: if it is full, the periodic sweep still finds held commands of connected
        // agents, so a dropped notification only delays them by one sweep.
        let (connected_tx, mut connected_rx) = mpsc::channel::<String>(1024);
        let service = Arc::new(CommandService {
            registry,
            store,
            metrics,
            limits,
            audit,
            salt: Salt::random(),
            waiters: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            connected_tx,
        });
        let worker = Arc::downgrade(&service);
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = crate::hub::stopped(&mut shutdown) => break,
                    Some(agent) = connected_rx.recv() => {
                        let Some(s) = worker.upgrade() else { break };
                        s.flush_held(&agent).await;
                    }
                    _ = sweep.tick() => {
                        let Some(s) = worker.upgrade() else { break };
                        s.expire_held().await;
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

    /// The store (for the read routes).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Marks commands a previous process left `pending` (held in its memory) as expired.
    pub async fn recover(&self) -> Result<(), StoreError> {
        for mut rec in self.store.unfinished_commands().await? {
            if rec.status == CommandState::Pending {
                finish(
                    &mut rec,
                    CommandState::Expired,
                    "backend_restarted",
                    "the backend restarted before the command was dispatched",
                );
                self.store.update_command(&rec).await?;
            }
        }
        Ok(())
    }

    /// Validates, records and dispatches (or holds) one command.
    pub async fn submit(&self, req: SubmitRequest) -> Result<CommandRecord, SubmitError> {
        let target = self
            .registry
            .command_target(&req.agent_id, &req.verb)
            .ok_or_else(|| SubmitError::UnknownAgent(req.agent_id.clone()))?;
        if !target.ever_connected && target.session.is_none() {
            // Its verbs are unknown until its first hello, so nothing can be validated.
            return Err(SubmitError::Offline(req.agent_id));
        }
        let spec = target.spec.ok_or_else(|| SubmitError::NotAdvertised {
            agent: req.agent_id.clone(),
            verb: req.verb.clone(),
        })?;
        spec.validate_args(&req.args)
            .map_err(SubmitError::BadArgs)?;
        if target.session.is_none() && req.queue_ttl_ms.is_none() {
            return Err(SubmitError::Offline(req.agent_id));
        }
        if let Err(wait) = self.limits.check_agent(&req.agent_id) {
            self.audit.record(
                AuditEvent::new(kinds::RATE_LIMITED)
                    .actor(req.requested_by.as_str())
                    .agent(req.agent_id.as_str())
                    .details(serde_json::json!({"limit": "agent_commands", "verb": req.verb})),
            );
            return Err(SubmitError::RateLimited {
                agent: req.agent_id,
                wait,
            });
        }
        let verb_timeout = if spec.timeout_ms > 0 {
            spec.timeout_ms
        } else {
            DEFAULT_TIMEOUT_MS
        };
        let timeout_ms = req
            .timeout_ms
            .map_or(verb_timeout, |t| t.clamp(1, verb_timeout));
        let command_id = uuid::Uuid::now_v7().to_string();
        let now = clock::now_rfc3339();
        let mut record = CommandRecord {
            command_id: command_id.clone(),
            agent_id: req.agent_id.clone(),
            verb: req.verb.clone(),
            args: redact::redact_args(&spec, &req.args, &self.salt),
            requested_by: req.requested_by.clone(),
            status: CommandState::Pending,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            created_at: now.clone(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            error: None,
            timeout_ms,
            job_id: req.job_id.clone(),
        };
        let frame = CommandFrame {
            command_id,
            verb: req.verb,
            args: req.args,
            timeout_ms: Some(timeout_ms),
            requested_by: req.requested_by,
            issued_at: now,
        };
        // The request is on disk before the command can leave the backend.
        self.audit
            .durable(
                AuditEvent::new(kinds::COMMAND_REQUESTED)
                    .actor(record.requested_by.as_str())
                    .agent(record.agent_id.as_str())
                    .command(record.command_id.as_str())
                    .details(serde_json::json!({
                        "verb": record.verb,
                        "args": record.args,
                        "timeout_ms": timeout_ms,
                        "queue_ttl_ms": req.queue_ttl_ms,
                        "job_id": record.job_id,
                    })),
            )
            .await
            .map_err(SubmitError::Audit)?;
        // A connected agent's command is stored once, already `dispatched` (one write fewer
        // per command); a held one is stored `pending` first.
        let dispatched = match &target.session {
            Some(session) => {
                self.dispatch(&mut record, frame.clone(), session, false)
                    .await
            }
            None => Err(SubmitError::Offline(record.agent_id.clone())),
        };
        match (dispatched, req.queue_ttl_ms) {
            (Err(SubmitError::Offline(_)), Some(ttl)) => {
                self.store.insert_command(&record).await?;
                self.hold(&mut record, frame, ttl).await?;
            }
            (other, _) => other?,
        }
        Ok(record)
    }

    /// Queues the frame on the session and records the outcome (`stored`: the record already
    /// exists and is updated, else it is inserted).
    async fn dispatch(
        &self,
        record: &mut CommandRecord,
        frame: CommandFrame,
        session: &LiveSession,
        stored: bool,
    ) -> Result<(), SubmitError> {
        // Reserve a slot first so a full queue is refused before anything is recorded as sent.
        let permit = match session.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                finish(
                    record,
                    CommandState::Rejected,
                    "queue_full",
                    "the agent's send queue is full",
                );
                self.save(record, stored).await?;
                return Err(SubmitError::QueueFull(record.agent_id.clone()));
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(SubmitError::Offline(record.agent_id.clone()));
            }
        };
        // Recorded `dispatched` before the frame is queued, so a fast result always finds it.
        record.status = CommandState::Dispatched;
        if !self.save(record, stored).await? {
            debug!(command.id = %record.command_id, "no longer pending (cancelled or expired); not sent");
            return Ok(());
        }
        permit.send(HubFrame::Command(frame));
        self.audit.record(
            AuditEvent::new(kinds::COMMAND_DISPATCHED)
                .actor(record.requested_by.as_str())
                .agent(record.agent_id.as_str())
                .command(record.command_id.as_str()),
        );
        debug!(command.id = %record.command_id, agent.id = %record.agent_id, "command dispatched");
        Ok(())
    }

    /// Inserts a new record, or moves a stored one on from `pending` (compare-and-set, so a
    /// cancel or expiry that won the race is not overwritten); `false`: it was no longer pending.
    async fn save(&self, record: &CommandRecord, stored: bool) -> Result<bool, StoreError> {
        if stored {
            self.store
                .update_command_if(record, CommandState::Pending)
                .await
        } else {
            self.store.insert_command(record).await.map(|()| true)
        }
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
        if let Some(list) = lock(&self.waiters).remove(&rec.command_id) {
            for tx in list {
                let _ = tx.send(rec.clone());
            }
        }
    }

    /// Cancels a command: a held one at once, a dispatched one by asking its agent.
    pub async fn cancel(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let Some(mut rec) = self.store.get_command(command_id).await? else {
            return Ok(None);
        };
        match rec.status {
            CommandState::Pending => {
                if let Some(q) = lock(&self.held).get_mut(&rec.agent_id) {
                    q.retain(|h| h.frame.command_id != command_id);
                }
                finish(
                    &mut rec,
                    CommandState::Cancelled,
                    "cancelled",
                    "cancelled before dispatch",
                );
                if self
                    .store
                    .update_command_if(&rec, CommandState::Pending)
                    .await?
                {
                    self.notify(&rec);
                } else {
                    // Dispatched meanwhile: cancel it on the agent instead.
                    return Box::pin(self.cancel(command_id)).await;
                }
            }
            CommandState::Dispatched | CommandState::Running => {
                if let Some(session) = self.registry.session(&rec.agent_id) {
                    let frame = HubFrame::Cancel {
                        command_id: command_id.to_owned(),
                    };
                    if session.tx.try_send(frame).is_err() {
                        warn!(command.id = %command_id, "could not queue cancel: agent queue full or gone");
                    }
                }
            }
            _ => {}
        }
        Ok(Some(rec))
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
