//! One command on one agent: authorise, limit, validate, audit durably, record, dispatch (or
//! hold for an offline agent).

use agentmesh_protocol::{CommandFrame, HubFrame, VerbSpec};
use tokio::sync::mpsc;
use tracing::debug;

use super::{finish, redact, CommandService, SubmitError, SubmitRequest, DEFAULT_TIMEOUT_MS};
use crate::audit::events;
use crate::auth::Principal;
use crate::authz::{Action, AgentScope, Ids, Subject};
use crate::clock;
use crate::registry::{CommandTarget, LiveSession};
use crate::store::{CommandRecord, CommandState, StoreError};

impl CommandService {
    /// The API's entry for one command: one registry lookup, the scope check, the operator
    /// and agent rate limits, then [`CommandService::submit_to`].
    pub async fn submit(
        &self,
        caller: &Principal,
        req: SubmitRequest,
    ) -> Result<CommandRecord, SubmitError> {
        if let Some(asked) = req.queue_ttl_ms {
            let max = self.settings.max_queue_ttl_ms;
            if asked > max {
                return Err(SubmitError::QueueTtlTooLong { asked, max });
            }
        }
        let Some(target) = self.registry.command_target(&req.agent_id, &req.verb) else {
            return self.route_unknown(caller, req).await;
        };
        let subject = Subject {
            verb: Some(&req.verb),
            agent: AgentScope::Labels(&target.labels),
        };
        let ids = Ids {
            agent: Some(&req.agent_id),
            command: None,
        };
        self.authz
            .check(caller, Action::Submit, &subject, ids, || {
                format!("unknown agent {:?}", req.agent_id)
            })?;
        self.charge_operator(caller, Some(&req.verb))?;
        if target.session.is_none() && !target.refused {
            if let Some(routed) = self.route_remote(caller, &caller.name, None, &req).await {
                return routed;
            }
        }
        self.submit_to(&caller.name, None, target, req).await
    }

    /// Validates, records and dispatches (or holds) one command for an already authorised
    /// caller; `target` is the registry's view of the agent.
    pub(super) async fn submit_to(
        &self,
        requested_by: &str,
        job_id: Option<String>,
        target: CommandTarget,
        req: SubmitRequest,
    ) -> Result<CommandRecord, SubmitError> {
        if target.refused {
            return Err(SubmitError::Revoked(req.agent_id));
        }
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
        if let Err(wait) = self.limits.load().check_agent(&req.agent_id) {
            self.metrics.rate_limited("agent");
            self.audit.record(events::rate_limited(
                requested_by,
                "agent_commands",
                Some(&req.agent_id),
                Some(&req.verb),
            ));
            return Err(SubmitError::RateLimited {
                agent: req.agent_id,
                wait,
            });
        }
        let queue_ttl_ms = req.queue_ttl_ms;
        let (mut record, frame) = new_command(&spec, requested_by, job_id, req);
        // The request is on disk before the command can leave the backend.
        self.audit
            .durable(events::command_requested(&record, queue_ttl_ms))
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
        match (dispatched, queue_ttl_ms) {
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
    pub(super) async fn dispatch(
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
        self.audit.record(events::command_dispatched(record));
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
}

/// The `pending` record (secret args hashed) and the frame for a validated request.
fn new_command(
    spec: &VerbSpec,
    requested_by: &str,
    job_id: Option<String>,
    req: SubmitRequest,
) -> (CommandRecord, CommandFrame) {
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
    let record = CommandRecord {
        command_id: command_id.clone(),
        agent_id: req.agent_id,
        verb: req.verb.clone(),
        args: redact::redact_args(spec, &req.args),
        requested_by: requested_by.to_owned(),
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
        job_id,
    };
    let frame = CommandFrame {
        command_id,
        verb: req.verb,
        args: req.args,
        timeout_ms: Some(timeout_ms),
        requested_by: requested_by.to_owned(),
        issued_at: now,
    };
    (record, frame)
}
