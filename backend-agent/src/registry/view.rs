//! How the API shows an agent ([`AgentView`]) and filters the list ([`AgentFilter`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use agentmesh_protocol::VerbSpec;
use serde::Serialize;

use super::AgentRecord;
use crate::clock;

/// One agent as the API shows it (README, "Operator API").
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Agent id (certificate CN).
    pub id: String,
    /// Whether a session is live.
    pub connected: bool,
    /// Site from the last `hello`.
    pub site: Option<String>,
    /// Hostname from the last `hello`.
    pub hostname: Option<String>,
    /// Effective labels: the `hello` labels with the enrolment labels laid over them.
    pub labels: BTreeMap<String, String>,
    /// Labels set at enrolment; when present, scopes and selectors match only these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authoritative_labels: Option<BTreeMap<String, String>>,
    /// Verbs from the last `hello`.
    pub verbs: Vec<VerbSpec>,
    /// Agent version from the last `hello`.
    pub version: Option<String>,
    /// Pin of the certificate of the last session.
    pub pin: Option<String>,
    /// Pins enrolled (active) for this agent.
    pub enrolled_pins: Vec<String>,
    /// Whether the agent is revoked.
    pub revoked: bool,
    /// Peer address of the last session.
    pub remote_addr: Option<String>,
    /// Start of the current session (RFC 3339).
    pub connected_since: Option<String>,
    /// Last message from the agent (RFC 3339).
    pub last_seen: Option<String>,
    /// Id of the current session.
    pub session_id: Option<String>,
}

/// Filters of `GET /api/v1/agents`.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Only connected (true) or disconnected (false) agents.
    pub connected: Option<bool>,
    /// Labels an agent must carry (all of them; matched like scopes).
    pub labels: BTreeMap<String, String>,
}

pub(super) fn view(id: &str, r: &AgentRecord) -> AgentView {
    let hello = r.hello.as_ref();
    let last_seen = match &r.session {
        Some(s) => Some(s.shared.last_seen_ms.load(Ordering::Relaxed)),
        None => r.last_seen_ms,
    };
    AgentView {
        id: id.to_owned(),
        connected: r.session.is_some(),
        site: hello.map(|h| h.site.clone()),
        hostname: hello.map(|h| h.hostname.clone()),
        labels: r.merged_labels(),
        authoritative_labels: r.enrolled_labels.clone(),
        verbs: hello.map(|h| h.verbs.clone()).unwrap_or_default(),
        version: hello.map(|h| h.version.clone()),
        pin: r.pin.clone(),
        enrolled_pins: r.pins.clone(),
        revoked: r.revoked,
        remote_addr: r.remote_addr.clone(),
        connected_since: r.connected_since_ms.map(clock::rfc3339_from_unix_ms),
        last_seen: last_seen.map(clock::rfc3339_from_unix_ms),
        session_id: r.session.as_ref().map(|s| s.session_id.clone()),
    }
}
