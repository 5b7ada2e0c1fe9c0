//! `backend.toml`: parsing, defaults, environment overrides and validation (README, "Configuration").
//!
//! Unknown keys are refused; every error names the file and the key. Relative paths are
//! resolved against the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Role;

mod cluster;
mod defaults;
mod env;
mod log;
mod store_url;
mod validate;

use defaults::*;

pub use cluster::ClusterConfig;
pub use env::{apply_env_overrides, ENV_PREFIX};
pub use log::LogConfig;
pub use store_url::{DatabaseUrl, DEFAULT_POOL_SIZE, MAX_POOL_SIZE};
pub use validate::check_pin;

/// A config that could not be loaded; the message names file and key.
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
    /// The file is not valid TOML or does not fit the schema (unknown key, wrong type).
    #[error("{file}: {message}")]
    Parse {
        /// The config file.
        file: String,
        /// What the parser said, including the key.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: String,
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole backend configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Operator HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// mTLS WebSocket hub.
    #[serde(default)]
    pub hub: HubConfig,
    /// Embedded store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Rate limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The mesh CA used to sign enrolment and renewal CSRs (optional).
    #[serde(default)]
    pub ca: CaConfig,
    /// Statically enrolled agents.
    #[serde(default)]
    pub agents: Vec<AgentEnrolment>,
    /// API bearer tokens (by SHA-256).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Logging (`[log] level`, reloadable).
    #[serde(default)]
    pub log: LogConfig,
    /// Routing between replicas over NATS (`None`: a single node).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of the operator API.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Addresses/CIDRs of reverse proxies whose `X-Real-IP` / `X-Forwarded-For` name the
    /// client that limits and audit records key on (empty = trust no header).
    #[serde(default)]
    pub trusted_proxies: Vec<crate::client_addr::Cidr>,
}

/// `[hub]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Listen address of the hub.
    #[serde(default = "default_hub_listen")]
    pub listen: SocketAddr,
    /// Hub server certificate (PEM).
    #[serde(default = "default_hub_cert")]
    pub cert: PathBuf,
    /// Hub server key (PEM, PKCS#8).
    #[serde(default = "default_hub_key")]
    pub key: PathBuf,
    /// The mesh CA that agent certificates must chain to.
    #[serde(default = "default_hub_client_ca")]
    pub client_ca: PathBuf,
    /// WebSocket ping interval; silent for 3 intervals = dropped.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// How long a new session may take to send `hello`.
    #[serde(default = "default_hello_timeout_secs")]
    pub hello_timeout_secs: u64,
    /// How long TLS plus the WebSocket upgrade may take.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Largest WebSocket message accepted (closed with 1009 beyond).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Pins of reverse proxies (nginx) trusted to forward agent certificates.
    #[serde(default)]
    pub trusted_proxy_pins: Vec<String>,
    /// Addresses/CIDRs the pinned proxies connect from: exempt from the pre-TLS per-address
    /// limit (charged after TLS unless the peer presents a pinned proxy certificate).
    #[serde(default)]
    pub trusted_proxies: Vec<crate::client_addr::Cidr>,
    /// Connections still in TLS/upgrade/hello at once; beyond it new ones are dropped.
    #[serde(default = "default_max_pending_handshakes")]
    pub max_pending_handshakes: usize,
    /// Frames queued for one agent; a full queue refuses new commands.
    #[serde(default = "default_send_queue")]
    pub send_queue: usize,
    /// The first reconnect slot handed out in `drain` on graceful shutdown; later sessions
    /// get later slots (see `hub::drain`).
    #[serde(default = "default_drain_reconnect_after_ms")]
    pub drain_reconnect_after_ms: u64,
    /// On shutdown, how long commands in flight on connected agents may take to report
    /// before sessions are drained (0 = drain at once).
    #[serde(default = "default_drain_grace_secs")]
    pub drain_grace_secs: u64,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file of the embedded store.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Finished commands older than this many days are pruned (0 = keep regardless of age).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// At most this many finished commands are kept; the oldest go first (0 = no cap).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// How often the pruner runs.
    #[serde(default = "default_prune_interval_secs")]
    pub prune_interval_secs: u64,
    /// PostgreSQL instead of the SQLite file (`postgres://user:pass@host:port/db`;
    /// docs/store-postgres.md). Unset: the SQLite file at `path`.
    #[serde(default)]
    pub url: Option<DatabaseUrl>,
    /// Most connections open to PostgreSQL at once (with `url`).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit log (JSON Lines, hash chain).
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// fsync `command_requested` before dispatch (group commit). Off only for benchmarks.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Rotate the log file beyond this size; the chain continues in the new file.
    #[serde(default = "default_audit_max_file_bytes")]
    pub max_file_bytes: u64,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained commands per second per operator token.
    #[serde(default = "default_operator_rate")]
    pub operator_commands_per_sec: u32,
    /// Burst per operator token.
    #[serde(default = "default_operator_burst")]
    pub operator_burst: u32,
    /// Sustained commands per second per agent.
    #[serde(default = "default_agent_rate")]
    pub agent_commands_per_sec: u32,
    /// Burst per agent.
    #[serde(default = "default_agent_burst")]
    pub agent_burst: u32,
    /// Hub connection attempts per source address per second (0 = no limit).
    #[serde(default = "default_hub_connects_per_ip")]
    pub hub_connects_per_ip_per_sec: u32,
    /// Burst of connection attempts per source address.
    #[serde(default = "default_hub_connects_per_ip_burst")]
    pub hub_connects_per_ip_burst: u32,
    /// Hub connections one agent identity (certificate CN) may open per second, counted
    /// after TLS (0 = no limit): one noisy agent is throttled alone, also behind a proxy.
    #[serde(default = "default_hub_connects_per_agent")]
    pub hub_connects_per_agent_per_sec: u32,
    /// Burst of connections per agent identity.
    #[serde(default = "default_hub_connects_per_agent_burst")]
    pub hub_connects_per_agent_burst: u32,
    /// Global rate of TLS handshakes the hub starts (0 = no limit); excess waits its turn.
    #[serde(default = "default_hub_handshakes_per_sec")]
    pub hub_handshakes_per_sec: u32,
    /// Burst of the global handshake rate.
    #[serde(default = "default_hub_handshake_burst")]
    pub hub_handshake_burst: u32,
    /// Join-token redemptions per source address (IPv6 by /64) per second (0 = no limit).
    #[serde(default = "default_enrol_attempts_per_sec")]
    pub enrol_attempts_per_sec: u32,
    /// Burst of join-token redemptions per source address.
    #[serde(default = "default_enrol_burst")]
    pub enrol_burst: u32,
    /// Certificate renewals one agent may start per hour (0 = no limit; still one at a time).
    #[serde(default = "default_renewals_per_agent_per_hour")]
    pub renewals_per_agent_per_hour: u32,
    /// Largest `queue_ttl_ms` a command may ask for (422 beyond).
    #[serde(default = "default_max_queue_ttl_ms")]
    pub max_queue_ttl_ms: u64,
    /// A dispatched command without a result this long after its timeout ends `expired`.
    #[serde(default = "default_result_grace_secs")]
    pub result_grace_secs: u64,
}

/// `[ca]`: the mesh CA key, needed only for join-token enrolment and renewal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// CA certificate (PEM); absent = enrolment by CSR and renewal are off.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// CA private key (PEM, PKCS#8; keep it 0600).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Validity of certificates the backend signs.
    #[serde(default = "default_agent_cert_days")]
    pub agent_cert_days: i64,
    /// Longest lifetime of a join token.
    #[serde(default = "default_max_join_token_secs")]
    pub max_join_token_secs: u64,
}

/// `[[agents]]`: a statically enrolled agent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEnrolment {
    /// Agent id (certificate CN).
    pub id: String,
    /// Enrolled SPKI pins.
    pub pins: Vec<String>,
    /// Authoritative labels: when set, scopes and fan-out selectors match these and labels
    /// the agent claims in `hello` can only add keys for display.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `[[tokens]]`: an API bearer token, stored by hash.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded as `requested_by` and in the audit log.
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// `viewer`, `operator` or `admin`.
    pub role: Role,
    /// Verbs the token may run and read about (`*` = all); applies to viewers too, ignored
    /// for admins.
    #[serde(default = "default_verbs")]
    pub verbs: Vec<String>,
    /// Labels an agent must carry (its authoritative labels) to be targeted or read about;
    /// applies to viewers too, ignored for admins.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

macro_rules! default_via_serde {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                // Every field has a serde default, so an empty table always deserialises.
                toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
            }
        }
    )*};
}
default_via_serde!(
    HttpConfig,
    HubConfig,
    StoreConfig,
    AuditConfig,
    LimitsConfig,
    CaConfig
);

impl BackendConfig {
    /// Loads `path` with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Loads `path` with overrides from `env` (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, &file, base, env)
    }

    /// Parses TOML text; `file` names it in errors, `base` anchors relative paths.
    pub fn from_toml(
        text: &str,
        file: &str,
        base: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            file: file.to_owned(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        apply_env_overrides(&mut table, env)
            .map_err(|e| parse_err(format!("{}: {}", e.name, e.message)))?;
        let mut config = BackendConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| parse_err(e.to_string()))?;
        config.resolve_paths(base);
        config.validate(file)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.hub.cert,
            &mut self.hub.key,
            &mut self.hub.client_ca,
            &mut self.store.path,
            &mut self.audit.path,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut self.ca.cert, &mut self.ca.key].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests;
