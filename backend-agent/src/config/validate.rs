//! The validation pass over a parsed `backend.toml`: every error names the file and the key.

use super::{BackendConfig, ConfigError};

impl BackendConfig {
    /// Refuses values the types allow but the backend cannot run with.
    pub(super) fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        self.log
            .validate()
            .map_err(|m| invalid("log.level".into(), m))?;
        if let Some(c) = &self.cluster {
            if !super::ClusterConfig::valid_token(&c.replica_id)
                || !super::ClusterConfig::valid_token(&c.name)
            {
                return Err(invalid(
                    "cluster.replica_id".into(),
                    "replica_id and name: 1-128 of [A-Za-z0-9_-]".into(),
                ));
            }
        }
        if self.hub.heartbeat_secs == 0 {
            return Err(invalid("hub.heartbeat_secs".into(), "must be > 0".into()));
        }
        if self.hub.hello_timeout_secs == 0 || self.hub.handshake_timeout_secs == 0 {
            return Err(invalid(
                "hub.hello_timeout_secs".into(),
                "must be > 0".into(),
            ));
        }
        if self.hub.max_message_bytes < 1024 {
            return Err(invalid(
                "hub.max_message_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        if self.hub.send_queue == 0 || self.hub.max_pending_handshakes == 0 {
            return Err(invalid("hub.send_queue".into(), "must be > 0".into()));
        }
        if self.store.prune_interval_secs == 0 {
            return Err(invalid(
                "store.prune_interval_secs".into(),
                "must be > 0".into(),
            ));
        }
        if let Some(url) = &self.store.url {
            url.check().map_err(|m| invalid("store.url".into(), m))?;
        }
        if !(1..=super::MAX_POOL_SIZE).contains(&self.store.pool_size) {
            return Err(invalid(
                "store.pool_size".into(),
                format!("must be 1..={}", super::MAX_POOL_SIZE),
            ));
        }
        if self.ca.cert.is_some() != self.ca.key.is_some() {
            return Err(invalid(
                "ca".into(),
                "set both cert and key, or neither".into(),
            ));
        }
        if !(1..=3650).contains(&self.ca.agent_cert_days) {
            return Err(invalid(
                "ca.agent_cert_days".into(),
                "must be 1..=3650".into(),
            ));
        }
        for (i, pin) in self.hub.trusted_proxy_pins.iter().enumerate() {
            check_pin(pin).map_err(|m| invalid(format!("hub.trusted_proxy_pins[{i}]"), m))?;
        }
        if !self.hub.trusted_proxies.is_empty() && self.hub.trusted_proxy_pins.is_empty() {
            return Err(invalid(
                "hub.trusted_proxies".into(),
                "set hub.trusted_proxy_pins too: a hub proxy is trusted by its pinned certificate, its address only defers the per-address limit until that is checked".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, agent) in self.agents.iter().enumerate() {
            mesh_certs::validate_agent_id(&agent.id)
                .map_err(|e| invalid(format!("agents[{i}].id"), e.to_string()))?;
            if !seen.insert(agent.id.as_str()) {
                return Err(invalid(
                    format!("agents[{i}].id"),
                    format!("duplicate agent id {:?}", agent.id),
                ));
            }
            if agent.pins.is_empty() {
                return Err(invalid(
                    format!("agents[{i}].pins"),
                    "must not be empty".into(),
                ));
            }
            for (j, pin) in agent.pins.iter().enumerate() {
                check_pin(pin).map_err(|m| invalid(format!("agents[{i}].pins[{j}]"), m))?;
            }
            if agent.labels.iter().flatten().any(|(k, _)| k.is_empty()) {
                return Err(invalid(
                    format!("agents[{i}].labels"),
                    "label keys must not be empty".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if token.name.is_empty() || !names.insert(token.name.as_str()) {
                return Err(invalid(
                    format!("tokens[{i}].name"),
                    "must be non-empty and unique".into(),
                ));
            }
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("tokens[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the token; `backend-agent token new` prints it)"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks the `sha256//<base64 of 32 bytes>` pin format.
pub fn check_pin(pin: &str) -> Result<(), String> {
    use base64::Engine as _;
    let body = pin
        .strip_prefix("sha256//")
        .ok_or_else(|| format!("pin {pin:?} must start with sha256//"))?;
    match base64::engine::general_purpose::STANDARD.decode(body) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        _ => Err(format!(
            "pin {pin:?} must be sha256// followed by the base64 of 32 bytes"
        )),
    }
}
