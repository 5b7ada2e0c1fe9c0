//! Identity lifecycle: enrolment (admin pin, join token, renewal), join tokens, refused
//! redemptions and renewals, revocation and retired pins.

use std::net::SocketAddr;

use agentmesh_audit::AuditEvent;
use serde_json::json;

use super::extra_kinds;
use crate::audit::kinds;

/// `enrolled` (`source: api`): `actor` enrolled `pin` directly; `lifted_revocation` says
/// whether that cleared an agent-level revocation.
pub fn pin_enrolled(actor: &str, agent_id: &str, pin: &str, lifted_revocation: bool) -> AuditEvent {
    AuditEvent::new(kinds::ENROLLED)
        .actor(actor)
        .agent(agent_id)
        .details(json!({
            "pin": pin, "source": "api", "lifted_revocation": lifted_revocation,
        }))
}

/// `enrolled` (`source: join_token`): the agent redeemed a join token for `pin`.
pub fn enrolled_with_join_token(agent_id: &str, pin: &str) -> AuditEvent {
    enrolled("join_token", agent_id, pin, "join_token")
}

/// `enrolled` (`source: renewal`): the agent renewed its certificate, now with `pin`.
pub fn renewed(agent_id: &str, pin: &str) -> AuditEvent {
    enrolled(agent_id, agent_id, pin, "renewal")
}

fn enrolled(actor: &str, agent_id: &str, pin: &str, source: &str) -> AuditEvent {
    AuditEvent::new(kinds::ENROLLED)
        .actor(actor)
        .agent(agent_id)
        .details(json!({"pin": pin, "source": source}))
}

/// `join_token_created`: `actor` created a join token for `agent_id`. The hash prefix
/// names the token in the trail without letting anyone use it.
pub fn join_token_created(
    actor: &str,
    agent_id: &str,
    token_sha256: &str,
    expires_at: &str,
    ttl_secs: u64,
) -> AuditEvent {
    AuditEvent::new(extra_kinds::JOIN_TOKEN_CREATED)
        .actor(actor)
        .agent(agent_id)
        .details(json!({
            "token_id": &token_sha256[..12.min(token_sha256.len())],
            "expires_at": expires_at,
            "ttl_secs": ttl_secs,
        }))
}

/// `auth_failed` (`join_token`): `peer` failed to redeem a join token for `agent_id`.
pub fn join_token_refused(agent_id: &str, peer: SocketAddr, why: &str) -> AuditEvent {
    AuditEvent::new(kinds::AUTH_FAILED)
        .agent(agent_id)
        .details(json!({"credential": "join_token", "reason": why, "peer": peer.to_string()}))
}

/// `rate_limited` (`enrol_attempts_per_sec`): `peer` tried to enrol too often.
pub fn enrol_rate_limited(peer: SocketAddr) -> AuditEvent {
    AuditEvent::new(kinds::RATE_LIMITED).details(json!({
        "limit": "enrol_attempts_per_sec", "peer": peer.to_string(),
    }))
}

/// `renewal_refused`: `agent_id`'s renewal was refused (`code`, with the message it got).
pub fn renewal_refused(agent_id: &str, code: &str, message: &str) -> AuditEvent {
    AuditEvent::new(extra_kinds::RENEWAL_REFUSED)
        .actor(agent_id)
        .agent(agent_id)
        .details(json!({"code": code, "reason": message}))
}

/// `revoked`: `actor` revoked all `pins` of `agent_id`; `disconnected` if it was connected.
pub fn agent_revoked(actor: &str, agent_id: &str, pins: usize, disconnected: bool) -> AuditEvent {
    AuditEvent::new(kinds::REVOKED)
        .actor(actor)
        .agent(agent_id)
        .details(json!({"pins": pins, "disconnected": disconnected}))
}

/// `revoked` (one pin): `agent_id`'s old `pin` was retired (`reason`).
pub fn pin_retired(agent_id: &str, pin: &str, reason: &str) -> AuditEvent {
    AuditEvent::new(kinds::REVOKED)
        .actor(agent_id)
        .agent(agent_id)
        .details(json!({"pin": pin, "reason": reason}))
}
