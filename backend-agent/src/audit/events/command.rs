//! The command path: requests, dispatch, results, cancellation, expiry, refusals, pruning and
//! labels.

use agentmesh_audit::AuditEvent;
use serde_json::{json, Value};

use super::extra_kinds;
use crate::audit::kinds;
use crate::store::CommandRecord;

/// `command_requested`: written durably before the command can leave the backend.
pub fn command_requested(rec: &CommandRecord, queue_ttl_ms: Option<u64>) -> AuditEvent {
    AuditEvent::new(kinds::COMMAND_REQUESTED)
        .actor(rec.requested_by.as_str())
        .agent(rec.agent_id.as_str())
        .command(rec.command_id.as_str())
        .details(json!({
            "verb": rec.verb,
            "args": rec.args,
            "timeout_ms": rec.timeout_ms,
            "queue_ttl_ms": queue_ttl_ms,
            "job_id": rec.job_id,
        }))
}

/// `command_dispatched`: the frame was queued on the agent's session.
pub fn command_dispatched(rec: &CommandRecord) -> AuditEvent {
    AuditEvent::new(kinds::COMMAND_DISPATCHED)
        .actor(rec.requested_by.as_str())
        .agent(rec.agent_id.as_str())
        .command(rec.command_id.as_str())
        .details(json!({"verb": rec.verb}))
}

/// `command_result` with the result's digest and signature details already assembled.
pub fn command_result(rec: &CommandRecord, mut details: Value) -> AuditEvent {
    details["verb"] = Value::String(rec.verb.clone());
    AuditEvent::new(kinds::COMMAND_RESULT)
        .actor(rec.requested_by.as_str())
        .agent(rec.agent_id.as_str())
        .command(rec.command_id.as_str())
        .details(details)
}

/// `late_result`: a result for a command that was already final; the record was not changed.
pub fn late_result(rec: &CommandRecord, mut details: Value) -> AuditEvent {
    details["verb"] = Value::String(rec.verb.clone());
    details["recorded_status"] = Value::String(rec.status.as_str().to_owned());
    AuditEvent::new(extra_kinds::LATE_RESULT)
        .actor(rec.requested_by.as_str())
        .agent(rec.agent_id.as_str())
        .command(rec.command_id.as_str())
        .details(details)
}

/// `command_cancelled`: `actor` asked to cancel `rec` (in the state it was in then).
pub fn command_cancelled(actor: &str, rec: &CommandRecord) -> AuditEvent {
    AuditEvent::new(extra_kinds::COMMAND_CANCELLED)
        .actor(actor)
        .agent(rec.agent_id.as_str())
        .command(rec.command_id.as_str())
        .details(json!({
            "verb": rec.verb,
            "status_before": rec.status.as_str(),
            "requested_by": rec.requested_by,
        }))
}

/// `command_expired`: the backend gave up on `rec` (`code` says why).
pub fn command_expired(rec: &CommandRecord, code: &str) -> AuditEvent {
    AuditEvent::new(extra_kinds::COMMAND_EXPIRED)
        .actor(rec.requested_by.as_str())
        .agent(rec.agent_id.as_str())
        .command(rec.command_id.as_str())
        .details(json!({"verb": rec.verb, "reason": code}))
}

/// `forbidden`: `actor` was refused; `agent`/`command` name the target when there is one.
pub fn forbidden(
    actor: &str,
    reason: &str,
    agent: Option<&str>,
    command: Option<&str>,
    verb: Option<&str>,
) -> AuditEvent {
    let mut e = AuditEvent::new(kinds::FORBIDDEN)
        .actor(actor)
        .details(json!({"reason": reason, "verb": verb}));
    if let Some(a) = agent {
        e = e.agent(a);
    }
    if let Some(c) = command {
        e = e.command(c);
    }
    e
}

/// `rate_limited`: `limit` names the limiter (`operator_commands`, `agent_commands`).
pub fn rate_limited(
    actor: &str,
    limit: &str,
    agent: Option<&str>,
    verb: Option<&str>,
) -> AuditEvent {
    let mut e = AuditEvent::new(kinds::RATE_LIMITED)
        .actor(actor)
        .details(json!({"limit": limit, "verb": verb}));
    if let Some(a) = agent {
        e = e.agent(a);
    }
    e
}

/// `token_used`: the first use of a token by this process.
pub fn token_used(name: &str) -> AuditEvent {
    AuditEvent::new(kinds::TOKEN_USED).actor(name)
}

/// `history_pruned`: the background pruner deleted `count` finished commands.
pub fn history_pruned(count: usize, reason: &str) -> AuditEvent {
    AuditEvent::new(extra_kinds::HISTORY_PRUNED)
        .actor("backend")
        .details(json!({"deleted": count, "reason": reason}))
}

/// `labels_set`: `actor` set `agent`'s authoritative labels (replacing `previous`).
pub fn labels_set(
    actor: &str,
    agent: &str,
    labels: &std::collections::BTreeMap<String, String>,
    previous: Option<&std::collections::BTreeMap<String, String>>,
) -> AuditEvent {
    AuditEvent::new(extra_kinds::LABELS_SET)
        .actor(actor)
        .agent(agent)
        .details(json!({"labels": labels, "previous": previous}))
}
