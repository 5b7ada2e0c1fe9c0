//! Authorisation in one place: may principal P do action X to an agent or a command?
//!
//! [`decide`] is the whole policy, a pure function; [`Authz`] applies it and writes the
//! `forbidden` records, so neither the HTTP layer nor the command path has scope logic or
//! audit calls of its own for refusals.
//!
//! # The policy
//! - Roles: reads need `viewer`, submit/fan-out/cancel need `operator`; `admin` is unscoped.
//! - A token's scope is its `verbs` and `labels` (for every role). An agent is in scope when
//!   its *authoritative* labels (enrolment labels when set, else what its `hello` claims)
//!   include every label of the token; a command, job or audit record is in scope when its
//!   agent is and its verb is one the token may run.
//! - Submit and fan-out outside the scope: 403 (the caller named the target itself).
//! - Cancel and reads outside the scope: 404, as if the command did not exist, so a scoped
//!   token cannot probe ids.
//! - Audit records that name no agent (401s, token use, enrolment of unknown agents...) are
//!   visible only to unscoped tokens; records naming an agent the registry no longer knows are
//!   visible only to tokens without a label scope.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::warn;

use crate::audit::{events, Audit};
use crate::auth::{Principal, Role};

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run a verb on one agent.
    Submit,
    /// Run a verb on the agents a selector resolves to.
    FanOut,
    /// Cancel a command.
    Cancel,
    /// Read a command, job, history list or audit record.
    Read,
}

/// The agent an action touches, as the registry knows it.
#[derive(Debug, Clone, Copy)]
pub enum AgentScope<'a> {
    /// No agent is involved (e.g. an audit record about a failed login).
    None,
    /// An agent the registry does not know (any more).
    Unknown,
    /// A known agent with its authoritative labels.
    Labels(&'a BTreeMap<String, String>),
}

/// What an action touches: the verb (when there is one) and the agent.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The verb of the command, job or audit record.
    pub verb: Option<&'a str>,
    /// The agent.
    pub agent: AgentScope<'a>,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse with 403 and this reason.
    Forbidden(String),
    /// Answer as if the subject did not exist (404).
    Hidden,
}

/// The policy: may `p` do `action` to `subject`? Pure; see the module docs for the rules.
pub fn decide(p: &Principal, action: Action, subject: &Subject<'_>) -> Decision {
    let needed = match action {
        Action::Read => Role::Viewer,
        Action::Submit | Action::FanOut | Action::Cancel => Role::Operator,
    };
    let in_scope = in_scope(p, subject);
    match action {
        Action::Read | Action::Cancel if !in_scope => Decision::Hidden,
        _ if p.role < needed => Decision::Forbidden(format!(
            "token {:?} has role {} but this needs {}",
            p.name,
            p.role.as_str(),
            needed.as_str()
        )),
        _ if in_scope => Decision::Allow,
        _ => Decision::Forbidden(scope_reason(p, subject)),
    }
}

fn in_scope(p: &Principal, s: &Subject<'_>) -> bool {
    if p.role == Role::Admin {
        return true;
    }
    let verb_ok = s.verb.is_none_or(|v| p.allows_verb(v));
    match s.agent {
        AgentScope::None if s.verb.is_none() => p.is_unscoped(),
        AgentScope::None | AgentScope::Unknown => p.labels.is_empty() && verb_ok,
        AgentScope::Labels(labels) => p.allows_labels(labels) && verb_ok,
    }
}

fn scope_reason(p: &Principal, s: &Subject<'_>) -> String {
    if let Some(v) = s.verb.filter(|v| !p.allows_verb(v)) {
        return format!("token {:?} may not run verb {v:?}", p.name);
    }
    let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "token {:?} may only target agents labelled {}",
        p.name,
        labels.join(",")
    )
}

/// A refusal, as the API maps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// 403 with the reason.
    #[error("{0}")]
    Forbidden(String),
    /// 404: out of scope, answered as unknown.
    #[error("{0}")]
    NotFound(String),
}

/// Ids an audited refusal names.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ids<'a> {
    /// The target agent.
    pub agent: Option<&'a str>,
    /// The command or job.
    pub command: Option<&'a str>,
}

/// Applies [`decide`] and records refusals (`forbidden`). Authentication failures (401) are
/// not authorisation decisions: the bearer extractor in `api/auth.rs` records those.
pub struct Authz {
    audit: Arc<Audit>,
}

impl Authz {
    /// An authoriser writing to `audit`.
    pub fn new(audit: Arc<Audit>) -> Self {
        Authz { audit }
    }

    /// Refuses (403, audited) unless `p`'s role includes `role`.
    pub fn require(&self, p: &Principal, role: Role) -> Result<(), AuthzError> {
        if p.role >= role {
            return Ok(());
        }
        let reason = format!(
            "token {:?} has role {} but this needs {}",
            p.name,
            p.role.as_str(),
            role.as_str()
        );
        self.refused(p, &reason, Ids::default(), None);
        Err(AuthzError::Forbidden(reason))
    }

    /// Decides and records: a 403 is audited; a 404 for a cancel or a single read is audited
    /// too (someone probed an id outside their scope), `not_found` names the subject.
    pub fn check(
        &self,
        p: &Principal,
        action: Action,
        subject: &Subject<'_>,
        ids: Ids<'_>,
        not_found: impl FnOnce() -> String,
    ) -> Result<(), AuthzError> {
        match decide(p, action, subject) {
            Decision::Allow => Ok(()),
            Decision::Forbidden(reason) => {
                self.refused(p, &reason, ids, subject.verb);
                Err(AuthzError::Forbidden(reason))
            }
            Decision::Hidden => {
                self.refused(p, "out of scope (answered 404)", ids, subject.verb);
                Err(AuthzError::NotFound(not_found()))
            }
        }
    }

    fn refused(&self, p: &Principal, reason: &str, ids: Ids<'_>, verb: Option<&str>) {
        warn!(token = %p.name, reason, "forbidden");
        self.audit.record(events::forbidden(
            &p.name,
            reason,
            ids.agent,
            ids.command,
            verb,
        ));
    }
}

#[cfg(test)]
mod tests;
