//! `[log]`: the log filter, which a reload (SIGHUP) applies without a restart.

use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `warn,backend_agent::hub=debug`). Unset: `RUST_LOG`, else
    /// `info`. At start `RUST_LOG` wins over it; a reload applies it when it changed.
    #[serde(default)]
    pub level: Option<String>,
}

impl LogConfig {
    /// Checks that `level` parses as a filter.
    pub fn validate(&self) -> Result<(), String> {
        match &self.level {
            None => Ok(()),
            Some(level) => agentmesh_daemon::log::check_filter(level),
        }
    }
}
