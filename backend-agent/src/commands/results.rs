//! Results from agents: queued by the session, recorded by the results worker, audited with
//! the agent's signature checked, waiters woken.
//!
//! A session hands a result over with [`CommandService::queue_result`] and goes back to its
//! socket: no store I/O and no signature check on the session loop. The queue is bounded
//! ([`RESULT_QUEUE`]); when it is full the session waits for room before reading the agent's
//! next frame, so a burst slows the agents that send it and no result is ever dropped. The
//! worker takes what is waiting (up to [`RESULT_BATCH`]), reads their records in one call and
//! records them concurrently, so their store writes share one group commit.

use std::sync::Weak;

use agentmesh_protocol::{CommandStatus, ResultFrame};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::CommandService;
use crate::audit::events;
use crate::clock;
use crate::hub::TaskGuard;
use crate::store::{CommandRecord, CommandState, ErrorInfo};

/// Results queued between the sessions and the results worker at most.
pub const RESULT_QUEUE: usize = 1024;
/// Results the worker records at once (their writes share one transaction).
pub const RESULT_BATCH: usize = 128;

/// A result on its way from a session to the worker.
pub(super) struct QueuedResult {
    agent_id: String,
    spki: Vec<u8>,
    result: ResultFrame,
    /// Keeps shutdown waiting until the result is recorded.
    _task: Option<TaskGuard>,
}

/// The results worker: ends when the service (which holds the sender) is dropped.
pub(super) fn spawn_worker(service: Weak<CommandService>, mut rx: mpsc::Receiver<QueuedResult>) {
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(RESULT_BATCH);
        while rx.recv_many(&mut batch, RESULT_BATCH).await > 0 {
            let Some(service) = service.upgrade() else {
                break;
            };
            // One read for the whole batch instead of one blocking-pool hop per result.
            let ids: Vec<String> = batch.iter().map(|q| q.result.command_id.clone()).collect();
            let mut known: std::collections::HashMap<String, CommandRecord> =
                match service.store.get_commands(ids).await {
                    Ok(recs) => recs
                        .into_iter()
                        .map(|r| (r.command_id.clone(), r))
                        .collect(),
                    Err(e) => {
                        warn!(error = %e, "batch read failed; reading results one by one");
                        Default::default()
                    }
                };
            let service = &service;
            let records = batch.drain(..).map(|q| {
                let rec = known.remove(&q.result.command_id);
                async move {
                    service
                        .record_result(&q.agent_id, &q.spki, q.result, rec)
                        .await;
                }
            });
            futures_util::future::join_all(records).await;
        }
    });
}

impl CommandService {
    /// Hands a result from a session to the results worker. Waits while the queue is full:
    /// the calling session stops reading its agent meanwhile (backpressure); the result is
    /// never dropped. `task` keeps shutdown waiting until it is recorded.
    pub async fn queue_result(
        &self,
        agent_id: &str,
        spki: &[u8],
        result: ResultFrame,
        task: Option<TaskGuard>,
    ) {
        let queued = QueuedResult {
            agent_id: agent_id.to_owned(),
            spki: spki.to_vec(),
            result,
            _task: task,
        };
        if self.results_tx.send(queued).await.is_err() {
            // Only when the worker is gone, i.e. the runtime is shutting down.
            warn!(agent.id = %agent_id, "results worker stopped; result not recorded");
        }
    }

    /// Records a result from `agent_id` and wakes its waiters.
    pub async fn on_result(&self, agent_id: &str, spki: &[u8], result: ResultFrame) {
        self.record_result(agent_id, spki, result, None).await;
    }

    /// [`CommandService::on_result`] starting from `known`, the record as just read (if any).
    async fn record_result(
        &self,
        agent_id: &str,
        spki: &[u8],
        result: ResultFrame,
        mut known: Option<CommandRecord>,
    ) {
        // Compare-and-set against the status read, so a concurrent cancel or expiry is never
        // silently overwritten; on a lost race, read again (bounded).
        for _ in 0..3 {
            if self
                .try_record_result(agent_id, spki, &result, known.take())
                .await
            {
                return;
            }
        }
        warn!(agent.id = %agent_id, command.id = %result.command_id, "result not recorded: the command kept changing");
    }

    /// One attempt; `true` when done (recorded, or deliberately ignored).
    async fn try_record_result(
        &self,
        agent_id: &str,
        spki: &[u8],
        result: &ResultFrame,
        known: Option<CommandRecord>,
    ) -> bool {
        let read = match known {
            Some(rec) => Ok(Some(rec)),
            None => self.store.get_command(&result.command_id).await,
        };
        let rec = match read {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                warn!(agent.id = %agent_id, command.id = %result.command_id, "result for an unknown command ignored");
                return true;
            }
            Err(e) => {
                warn!(error = %e, command.id = %result.command_id, "store lookup failed; result not recorded");
                return true;
            }
        };
        if rec.agent_id != agent_id {
            warn!(agent.id = %agent_id, command.id = %rec.command_id, owner = %rec.agent_id, "result for another agent's command ignored");
            return true;
        }
        if rec.status == CommandState::Expired {
            // The backend gave up on it; the result is kept in the audit trail (signature
            // checked) but does not rewrite a final record.
            info!(command.id = %rec.command_id, agent.id = %agent_id, "late result for an expired command: audited, not applied");
            self.audit.record(events::late_result(
                &rec,
                result_details(agent_id, spki, &rec, result),
            ));
            return true;
        }
        if rec.status.is_final() {
            self.metrics
                .results_duplicate
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(command.id = %rec.command_id, "duplicate result ignored");
            return true;
        }
        let expected = rec.status;
        let mut rec = rec;
        apply_result(&mut rec, result.clone());
        match self.store.update_command_if(&rec, expected).await {
            Ok(true) => {
                self.audit.record(events::command_result(
                    &rec,
                    result_details(agent_id, spki, &rec, result),
                ));
                info!(command.id = %rec.command_id, agent.id = %agent_id, status = rec.status.as_str(), "command finished");
                self.notify(&rec);
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(error = %e, command.id = %rec.command_id, "could not record a result");
                true
            }
        }
    }
}

/// The details of a `command_result` record, with the agent's signature checked against the
/// key of the certificate the delivering session authenticated with.
fn result_details(
    agent_id: &str,
    spki: &[u8],
    rec: &CommandRecord,
    result: &ResultFrame,
) -> serde_json::Value {
    let digest = agentmesh_audit::result_digest(result);
    let mut details = serde_json::json!({
        "status": result.status.as_str(),
        "exit_code": result.exit_code,
        "duration_ms": result.duration_ms,
        "truncated": result.truncated,
        "error": result.error.as_ref().map(|e| e.code.clone()),
        "result_sha256": digest,
    });
    match &result.signature {
        Some(sig) => {
            let signature = agentmesh_audit::ResultSignature::new(spki, &digest, sig);
            match signature.verify() {
                Ok(()) => signature.insert_into(&mut details),
                Err(why) => {
                    warn!(agent.id = %agent_id, command.id = %rec.command_id, error = %why, "result signature does NOT verify");
                    details["signature_invalid"] = serde_json::Value::String(why);
                    details["unverified_signature"] = serde_json::Value::String(sig.clone());
                }
            }
        }
        None => details["unsigned"] = serde_json::Value::Bool(true),
    }
    details
}

fn apply_result(rec: &mut CommandRecord, r: ResultFrame) {
    rec.status = match r.status {
        CommandStatus::Ok => CommandState::Ok,
        CommandStatus::Failed => CommandState::Failed,
        CommandStatus::Rejected => CommandState::Rejected,
        CommandStatus::Timeout => CommandState::Timeout,
        CommandStatus::Cancelled => CommandState::Cancelled,
    };
    rec.exit_code = r.exit_code;
    rec.stdout = r.stdout;
    rec.stderr = r.stderr;
    rec.truncated = r.truncated;
    rec.started_at = r.started_at;
    rec.duration_ms = r.duration_ms;
    rec.error = r.error.map(|e| ErrorInfo {
        code: e.code,
        message: e.message,
    });
    rec.finished_at = Some(clock::now_rfc3339());
}
