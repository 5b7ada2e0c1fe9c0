//! `[cluster]`: routing between backend replicas over NATS (see `docs/cluster.md`). Absent
//! (the default), the backend is a single node and needs no NATS.

use std::time::Duration;

use serde::Deserialize;

/// `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`nats://127.0.0.1:4222`).
    pub nats_url: String,
    /// This replica's id, unique in the cluster (default: the hostname).
    #[serde(default = "default_replica_id")]
    pub replica_id: String,
    /// Cluster name: subjects live under `agentmesh.<name>.` (default `default`).
    #[serde(default = "default_name")]
    pub name: String,
    /// How long a replica waits for another to answer a routed command or a list.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl ClusterConfig {
    /// [`ClusterConfig::request_timeout_ms`] as a duration (at least 100 ms).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(100))
    }

    /// Whether `s` is usable as one NATS subject token (no dots, spaces or wildcards).
    pub fn valid_token(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

fn default_replica_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.replace(|c: char| !(c.is_ascii_alphanumeric() || c == '-'), "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_owned())
}

fn default_name() -> String {
    "default".to_owned()
}

fn default_request_timeout_ms() -> u64 {
    5_000
}
