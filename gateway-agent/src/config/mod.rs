//! `gateway.toml`: the agent's configuration (README, "Configuration").
//!
//! Loading parses the file into a TOML table, applies `AGENTMESH_<SECTION>_<KEY>` environment
//! overrides (module `env`), deserialises into [`GatewayConfig`] (`deny_unknown_fields`
//! everywhere), resolves relative paths against the file's directory and runs the validation
//! pass (module `validate`). Every error is a [`ConfigError`] naming the file and the key.

mod check;
mod env;
mod keypath;
mod params;
mod urls;
mod validate;
mod verbs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentmesh_protocol::VerbSpec;
use serde::Deserialize;

pub use check::{check_config, config_warnings};
pub use env::ENV_PREFIX;
pub use urls::{parse_backend_urls, MAX_BACKEND_URLS};
pub use validate::{parse_backend_url, BackendUrl};
pub use verbs::{builtin_verbs, parse_template, ParamConfig, ParamType, Segment, VerbConfig};

/// Why a config could not be loaded; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file (or an environment override) holds a bad value.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: String,
        /// Dotted key path (`outbound.server_pins`, `verbs[1].args`) or environment variable.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The key (or environment variable) at fault, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// The whole `gateway.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[agent]`: identity and local endpoints.
    pub agent: AgentConfig,
    /// `[outbound]`: how to reach the hub.
    pub outbound: OutboundConfig,
    /// `[limits]`: the agent's own execution limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[audit]`: the agent's local audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[[verbs]]`: the allowlist.
    #[serde(default)]
    pub verbs: Vec<VerbConfig>,
    /// The file this was loaded from (for messages); empty when built in code.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent id; must equal the client certificate's CN.
    pub id: String,
    /// Site name, reported in `hello`.
    #[serde(default = "default_site")]
    pub site: String,
    /// Free-form labels used by operator selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the agent keeps its state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Address of the local `/health` + `/ready` endpoint; none when unset.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// How long finished command results are kept in `state_dir/results` (and so how long a
    /// repeated command id is answered from them instead of running again).
    #[serde(default = "default_result_retention_secs")]
    pub result_retention_secs: u64,
    /// Ask the hub for a new certificate once the current one expires within this many days
    /// (or within the last third of its lifetime, if that is shorter; see [`crate::renew`]).
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: u32,
}

/// `[outbound]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// `wss://host:port/path` of the hub, or a list of hubs (replicas) tried in random
    /// order; a list is held comma-separated.
    #[serde(deserialize_with = "urls::one_or_many")]
    pub backend_url: String,
    /// The mesh CA certificate (PEM) the hub's chain must verify against.
    pub ca: PathBuf,
    /// The agent's client certificate (PEM).
    pub cert: PathBuf,
    /// The agent's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Accepted hub SPKI pins; at least one (several during rotation). Through a
    /// TLS-terminating front door they are the hub's, checked on its `welcome` signature.
    #[serde(default)]
    pub server_pins: Vec<String>,
    /// Pins of a TLS-terminating front door (nginx's own certificate). When set, a TLS peer
    /// whose pin is not in `server_pins` must match one of these; when empty it must chain to
    /// `ca` for the host name. Either way the hub must then prove itself by signing `welcome`.
    #[serde(default)]
    pub front_door_pins: Vec<String>,
    /// Smallest reconnect delay.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// A session that lasted this long resets the reconnect backoff.
    #[serde(default = "default_healthy_after_secs")]
    pub healthy_after_secs: u64,
    /// Largest WebSocket message accepted from the hub.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Local address to connect from (a host with several addresses; the benchmark spreads
    /// its swarm over 127.0.0.2–254). Unset: the kernel picks, as usual.
    #[serde(default)]
    pub source_addr: Option<std::net::IpAddr>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Commands run at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Commands accepted per minute.
    #[serde(default = "default_commands_per_minute")]
    pub commands_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_concurrency: default_max_concurrency(),
            commands_per_minute: default_commands_per_minute(),
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit log; `state_dir/gateway-audit.log` when unset (always set after loading).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn default_site() -> String {
    "default".to_owned()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/agentmesh")
}
fn default_result_retention_secs() -> u64 {
    86_400
}
fn default_renew_before_days() -> u32 {
    15
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_healthy_after_secs() -> u64 {
    30
}
fn default_max_message_bytes() -> usize {
    agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES
}
fn default_max_concurrency() -> u32 {
    4
}
fn default_commands_per_minute() -> u32 {
    120
}

/// File name of the audit log inside `state_dir` when `audit.path` is unset.
pub const DEFAULT_AUDIT_FILE: &str = "gateway-audit.log";

impl GatewayConfig {
    /// Loads `path` with overrides from the process environment.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Loads `path` with overrides from `env` (tests pass their own variables).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<GatewayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_str_with_env(&text, path, env)
    }

    /// Parses `text` as if read from `path` (used for messages and relative paths).
    pub fn from_str_with_env(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<GatewayConfig, ConfigError> {
        let file = path.display().to_string();
        let invalid = |(key, message): (String, String)| ConfigError::Invalid {
            file: file.clone(),
            key,
            message,
        };
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| invalid(keypath::describe_toml_error(text, &e, true)))?;
        let overridden = env::apply_overrides(&mut table, env).map_err(invalid)?;
        // A bad value that came from the environment says which variable set it.
        let blame = |(key, message): (String, String)| {
            let var = overridden
                .iter()
                .find(|(k, _)| key.starts_with(k.as_str()))
                .map(|(_, var)| var);
            match var {
                Some(var) => invalid((key, format!("{message} (set by {var})"))),
                None => invalid((key, message)),
            }
        };
        let mut config: GatewayConfig = if overridden.is_empty() {
            toml::from_str(text)
                .map_err(|e| invalid(keypath::describe_toml_error(text, &e, true)))?
        } else {
            // Re-serialise so the deserialiser's spans point into text we can map back to keys.
            let merged = toml::to_string(&table).map_err(|e| {
                invalid((
                    ENV_PREFIX.to_owned(),
                    format!("cannot merge overrides: {e}"),
                ))
            })?;
            toml::from_str(&merged)
                .map_err(|e| blame(keypath::describe_toml_error(&merged, &e, false)))?
        };
        config.source = path.to_path_buf();
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        validate::validate(&config).map_err(blame)?;
        Ok(config)
    }

    /// Makes relative paths relative to `base` (the config file's directory) and fills
    /// `audit.path`.
    fn resolve_paths(&mut self, base: &Path) {
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.agent.state_dir);
        resolve(&mut self.outbound.ca);
        resolve(&mut self.outbound.cert);
        resolve(&mut self.outbound.key);
        // The default is built from the already resolved `state_dir`: resolving it again
        // would put a relative config's log under `<dir>/<dir>/<state_dir>`.
        match &mut self.audit.path {
            Some(path) => resolve(path),
            None => self.audit.path = Some(self.agent.state_dir.join(DEFAULT_AUDIT_FILE)),
        }
    }

    /// The file name for messages (`gateway.toml` when built in code).
    pub fn file_name(&self) -> String {
        if self.source.as_os_str().is_empty() {
            "gateway.toml".to_owned()
        } else {
            self.source.display().to_string()
        }
    }

    /// The audit log path (`state_dir/gateway-audit.log` unless configured).
    pub fn audit_path(&self) -> PathBuf {
        self.audit
            .path
            .clone()
            .unwrap_or_else(|| self.agent.state_dir.join(DEFAULT_AUDIT_FILE))
    }

    /// Everything `hello` advertises: the built-ins, then the configured verbs.
    pub fn advertised_verbs(&self) -> Vec<VerbSpec> {
        let mut verbs = builtin_verbs();
        verbs.extend(self.verbs.iter().map(VerbConfig::to_spec));
        verbs
    }
}

#[cfg(test)]
mod tests;
