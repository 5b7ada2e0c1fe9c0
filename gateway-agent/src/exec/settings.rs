//! [`ExecSettings`]: what the executor takes from the config, plus the audit log and signer
//! the dialer hands it.

use std::path::PathBuf;
use std::time::Duration;

use super::store;
use crate::audit::AgentAudit;
use crate::config::{GatewayConfig, VerbConfig};
use crate::signing::Signer;

/// What the executor needs from the config.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// `agent.id` (for `ping`).
    pub agent_id: String,
    /// `agent.state_dir`: results live in `state_dir/results`.
    pub state_dir: PathBuf,
    /// `[[verbs]]`.
    pub verbs: Vec<VerbConfig>,
    /// `limits.max_concurrency`.
    pub max_concurrency: u32,
    /// `limits.commands_per_minute`.
    pub commands_per_minute: u32,
    /// `agent.result_retention_secs`.
    pub result_retention: Duration,
    /// Records kept at most.
    pub max_stored_results: usize,
    /// The agent's audit log (none: nothing is audited, for tests).
    pub audit: Option<AgentAudit>,
    /// Signs results as they are produced.
    pub signer: Signer,
}

impl ExecSettings {
    /// The settings of a loaded config.
    pub fn from_config(config: &GatewayConfig) -> Self {
        ExecSettings {
            agent_id: config.agent.id.clone(),
            state_dir: config.agent.state_dir.clone(),
            verbs: config.verbs.clone(),
            max_concurrency: config.limits.max_concurrency,
            commands_per_minute: config.limits.commands_per_minute,
            result_retention: Duration::from_secs(config.agent.result_retention_secs),
            max_stored_results: store::MAX_ENTRIES,
            audit: None,
            signer: Signer::disabled(),
        }
    }

    /// Settings with no verbs, no audit log and no signer (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(agent_id: &str, state_dir: PathBuf) -> Self {
        ExecSettings {
            agent_id: agent_id.to_owned(),
            state_dir,
            verbs: Vec::new(),
            max_concurrency: 4,
            commands_per_minute: 120,
            result_retention: Duration::from_secs(86_400),
            max_stored_results: store::MAX_ENTRIES,
            audit: None,
            signer: Signer::disabled(),
        }
    }
}
