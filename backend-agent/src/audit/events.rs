//! Typed constructors for every audit event the backend writes, one function per kind and
//! shape, so every record of one kind has the same fields (and a call site cannot forget the
//! actor). Call sites never build an [`AuditEvent`] in place.
//!
//! # Layout
//! - `command`: the command path (requests, results, refusals, pruning, labels).
//! - `identity`: who is at the door: hub connections, API 401s, aggregated failures.
//! - `enrolment`: enrolment, join tokens, renewal and revocation.
//! - this file: kinds beyond the shared ones, and the trail's own events.

use agentmesh_audit::{AuditEvent, Checkpoint};
use serde_json::{json, Value};

use super::kinds;

mod command;
mod enrolment;
mod identity;

pub use command::*;
pub use enrolment::*;
pub use identity::*;

/// Kinds this backend writes beyond the shared [`agentmesh_audit::kinds`].
pub mod extra_kinds {
    /// An operator cancelled a command.
    pub const COMMAND_CANCELLED: &str = "command_cancelled";
    /// A dispatched command got no result within its timeout plus the grace, or a held one
    /// outlived its `queue_ttl_ms`.
    pub const COMMAND_EXPIRED: &str = "command_expired";
    /// A result arrived for a command already final (e.g. expired); recorded, not applied.
    pub const LATE_RESULT: &str = "late_result";
    /// The history pruner deleted finished commands.
    pub const HISTORY_PRUNED: &str = "history_pruned";
    /// An admin set an agent's authoritative labels.
    pub const LABELS_SET: &str = "labels_set";
    /// An admin created a join token.
    pub const JOIN_TOKEN_CREATED: &str = "join_token_created";
    /// A renewal was refused.
    pub const RENEWAL_REFUSED: &str = "renewal_refused";
    /// The per-source aggregate of unauthenticated failures (see [`crate::audit_flood`]).
    pub const UNAUTHENTICATED_FAILURES: &str = "unauthenticated_failures";
    /// A config reload (SIGHUP) took effect.
    pub const CONFIG_RELOADED: &str = "config_reloaded";
    /// A config reload was refused; the previous config stays.
    pub const CONFIG_RELOAD_FAILED: &str = "config_reload_failed";
}

/// `config_reloaded`: what changed, and what changed in the file but waits for a restart.
pub fn config_reloaded(file: &str, changed: &[&str], needs_restart: &[&str]) -> AuditEvent {
    AuditEvent::new(extra_kinds::CONFIG_RELOADED).details(json!({
        "file": file,
        "changed": changed,
        "needs_restart": needs_restart,
    }))
}

/// `config_reload_failed`: the new config was refused with `error`; the old one is kept.
pub fn config_reload_failed(file: &str, error: &str) -> AuditEvent {
    AuditEvent::new(extra_kinds::CONFIG_RELOAD_FAILED).details(json!({
        "file": file,
        "error": error,
    }))
}

/// `audit_tail_missing`: records `checkpoint` vouches for are gone; the log now ends at
/// `log_last_seq`, and `problem` says how that was found.
pub fn audit_tail_missing(checkpoint: &Checkpoint, log_last_seq: u64, problem: &str) -> AuditEvent {
    AuditEvent::new(kinds::AUDIT_TAIL_MISSING).details(json!({
        "checkpoint_seq": checkpoint.seq,
        "checkpoint_hash": checkpoint.hash,
        "checkpoint_ts": checkpoint.ts,
        "log_last_seq": log_last_seq,
        "problem": problem,
    }))
}

/// The verb an audit record is about, when it names one (`details.verb`).
pub fn verb_of(details: &Value) -> Option<&str> {
    details.get("verb").and_then(Value::as_str)
}
