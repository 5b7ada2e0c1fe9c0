//! Who is at the door: hub connections (accepted, refused, ended), API requests without a
//! valid bearer token, and the per-source aggregate of such failures.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use agentmesh_audit::AuditEvent;
use serde_json::json;

use super::extra_kinds;
use crate::audit::kinds;
use crate::clock;
use crate::hub::identity::{PeerIdentity, Rejection};

/// `agent_rejected`: the hub refused a connection from `peer`, before it became a session;
/// `identity` is the certificate it presented, when it got that far.
pub(crate) fn agent_rejected(
    peer: SocketAddr,
    rejection: &Rejection,
    identity: Option<&PeerIdentity>,
) -> AuditEvent {
    let event = AuditEvent::new(kinds::AGENT_REJECTED).details(json!({
        "reason": rejection.reason, "detail": rejection.detail,
        "pin": identity.map(|i| i.pin.clone()), "peer": peer.to_string(),
    }));
    match identity {
        Some(id) => event.agent(id.cn.as_str()),
        None => event,
    }
}

/// `rate_limited` (`hub_connects_per_ip`): connections from `ip` dropped before TLS;
/// `dropped_total` counts all such drops of this process.
pub fn hub_connects_rate_limited(ip: IpAddr, dropped_total: u64) -> AuditEvent {
    AuditEvent::new(kinds::RATE_LIMITED).details(json!({
        "limit": "hub_connects_per_ip", "peer": ip.to_string(), "dropped_total": dropped_total,
    }))
}

/// `agent_connected`: `agent_id` completed `hello` and its session `session_id` started.
pub(crate) fn agent_connected(
    agent_id: &str,
    session_id: &str,
    identity: &PeerIdentity,
    peer: SocketAddr,
    version: &str,
) -> AuditEvent {
    AuditEvent::new(kinds::AGENT_CONNECTED)
        .agent(agent_id)
        .details(json!({
            "session_id": session_id,
            "pin": identity.pin,
            "remote_addr": peer.to_string(),
            "via_proxy": identity.via_proxy,
            "version": version,
        }))
}

/// `agent_disconnected`: the session ended; `reason` is its stable end code.
pub fn agent_disconnected(agent_id: &str, session_id: &str, reason: &str) -> AuditEvent {
    AuditEvent::new(kinds::AGENT_DISCONNECTED)
        .agent(agent_id)
        .details(json!({"session_id": session_id, "reason": reason}))
}

/// `auth_failed` (`bearer`): an API request to `path` without a valid bearer token.
pub fn bearer_auth_failed(reason: &str, path: &str, peer: Option<SocketAddr>) -> AuditEvent {
    AuditEvent::new(kinds::AUTH_FAILED).details(json!({
        "credential": "bearer", "reason": reason, "path": path,
        "peer": peer.map(|p| p.to_string()),
    }))
}

/// `unauthenticated_failures`: `count` failures from `source` between `first_ms` and
/// `last_ms` (Unix ms), by reason.
pub fn unauthenticated_failures(
    source: &str,
    count: u64,
    reasons: &BTreeMap<String, u64>,
    first_ms: i64,
    last_ms: i64,
) -> AuditEvent {
    AuditEvent::new(extra_kinds::UNAUTHENTICATED_FAILURES).details(json!({
        "source": source,
        "count": count,
        "reasons": reasons,
        "first_ts": clock::rfc3339_from_unix_ms(first_ms),
        "last_ts": clock::rfc3339_from_unix_ms(last_ms),
    }))
}
