//! Authoritative agent labels: what scopes and fan-out selectors match (see
//! [`crate::authz`]). Set statically by `[[agents]] labels` or by an admin through
//! `PUT /api/v1/agents/{id}/labels` (stored, so they survive restarts); labels an agent claims
//! in `hello` never override them.
//!
//! Config wins: an agent with `[[agents]] labels` cannot be relabelled through the API (409),
//! so the file stays the single truth for the agents it names.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::audit::{events, Audit};
use crate::auth::{Principal, Role};
use crate::authz::{Authz, AuthzError};
use crate::config::AgentEnrolment;
use crate::registry::{AgentView, Registry};
use crate::store::{Store, StoreError};

/// Most labels one agent may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// Why labels were not set.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    /// Not an admin (403).
    #[error(transparent)]
    Denied(#[from] AuthzError),
    /// No such agent (404).
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The agent's labels are set in the config file (409).
    #[error("agent {0:?} has labels in [[agents]]; change them in the config file")]
    FromConfig(String),
    /// A key or value is empty or too long, or there are too many (422).
    #[error("{0}")]
    Invalid(String),
    /// The audit log could not record the change: nothing was changed (503).
    #[error("audit log unavailable: {0}")]
    Audit(agentmesh_audit::AuditError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sets and loads authoritative labels.
pub struct AgentLabels {
    registry: Arc<Registry>,
    store: Store,
    audit: Arc<Audit>,
    authz: Arc<Authz>,
    /// Agents labelled by `[[agents]] labels`; replaced whole by a config reload.
    from_config: std::sync::Mutex<HashSet<String>>,
}

impl AgentLabels {
    /// Puts the config's and the stored labels into the registry (config first; stored
    /// labels only for agents the config does not label). Call before the hub accepts.
    pub async fn load(
        registry: Arc<Registry>,
        store: Store,
        audit: Arc<Audit>,
        authz: Arc<Authz>,
        agents: &[AgentEnrolment],
    ) -> Result<Self, StoreError> {
        let mut from_config = HashSet::new();
        for agent in agents {
            if let Some(labels) = &agent.labels {
                registry.set_config_labels(&agent.id, labels.clone());
                from_config.insert(agent.id.clone());
            }
        }
        for (id, labels) in store.agent_labels().await? {
            if !from_config.contains(&id) {
                registry.set_enrolled_labels(&id, labels);
            }
        }
        Ok(AgentLabels {
            registry,
            store,
            audit,
            authz,
            from_config: std::sync::Mutex::new(from_config),
        })
    }

    /// Applies `[[agents]] labels` from a reloaded config: labelled agents get the file's
    /// labels; an agent whose labels left the file falls back to its stored labels (API),
    /// else to none, exactly as after a restart. Returns how many agents changed hands.
    pub async fn reload_config(&self, agents: &[AgentEnrolment]) -> Result<usize, StoreError> {
        let stored: std::collections::HashMap<String, BTreeMap<String, String>> =
            self.store.agent_labels().await?.into_iter().collect();
        let mut fresh = HashSet::new();
        for agent in agents {
            if let Some(labels) = &agent.labels {
                self.registry.set_config_labels(&agent.id, labels.clone());
                fresh.insert(agent.id.clone());
            }
        }
        // The set is swapped whole: the lock is held for no await.
        let old = std::mem::replace(&mut *crate::sync::lock(&self.from_config), fresh.clone());
        let dropped: Vec<&String> = old.difference(&fresh).collect();
        for id in &dropped {
            match stored.get(*id) {
                Some(labels) => self.registry.set_enrolled_labels(id, labels.clone()),
                None => self.registry.clear_enrolled_labels(id),
            }
        }
        Ok(dropped.len() + fresh.difference(&old).count())
    }

    /// Sets `agent_id`'s authoritative labels (admin only), durably audited as `labels_set`
    /// before they take effect.
    pub async fn set(
        &self,
        caller: &Principal,
        agent_id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<AgentView, LabelsError> {
        self.authz.require(caller, Role::Admin)?;
        self.check(agent_id, &labels)?;
        if self.registry.get(agent_id).is_none() {
            return Err(LabelsError::UnknownAgent(agent_id.to_owned()));
        }
        self.apply(&caller.name, agent_id, labels).await?;
        self.registry
            .get(agent_id)
            .ok_or_else(|| LabelsError::UnknownAgent(agent_id.to_owned()))
    }

    /// Whether `labels` could be set for `agent_id` (valid, and the agent is not labelled in
    /// the config file). Enrolment calls it before it changes anything.
    pub fn check(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), LabelsError> {
        validate(labels)?;
        if crate::sync::lock(&self.from_config).contains(agent_id) {
            return Err(LabelsError::FromConfig(agent_id.to_owned()));
        }
        Ok(())
    }

    /// The labels given at enrolment (`POST /api/v1/enrollments {agent_id, pin|ttl_secs,
    /// labels}`): set like [`AgentLabels::set`] by an admin the enrolment route has already
    /// checked, for an agent that may not have connected (or been enrolled) yet, so a join
    /// token's agent has its labels before its first `hello`.
    pub async fn set_at_enrolment(
        &self,
        caller: &Principal,
        agent_id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), LabelsError> {
        self.authz.require(caller, Role::Admin)?;
        self.check(agent_id, &labels)?;
        self.apply(&caller.name, agent_id, labels).await
    }

    /// Audits durably, stores, then puts the labels in the registry.
    async fn apply(
        &self,
        actor: &str,
        agent_id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), LabelsError> {
        let previous = self.registry.enrolled_labels(agent_id);
        self.audit
            .durable(events::labels_set(
                actor,
                agent_id,
                &labels,
                previous.as_ref(),
            ))
            .await
            .map_err(LabelsError::Audit)?;
        self.store.set_agent_labels(agent_id, &labels).await?;
        // The other replicas apply them too (best effort; see `cluster::identity`).
        self.registry.announce_labels(agent_id, &labels);
        self.registry.set_enrolled_labels(agent_id, labels);
        Ok(())
    }
}

/// Checks the label count and key/value lengths.
pub(crate) fn validate(labels: &BTreeMap<String, String>) -> Result<(), LabelsError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelsError::Invalid(format!(
            "labels: at most {MAX_LABELS} per agent"
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN {
            return Err(LabelsError::Invalid(format!(
                "labels: keys must be 1..={MAX_LABEL_LEN} bytes and values at most {MAX_LABEL_LEN}"
            )));
        }
    }
    Ok(())
}
