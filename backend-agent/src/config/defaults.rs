//! The serde defaults of the backend config: one function per defaulted field.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::DEFAULT_POOL_SIZE;

pub(super) fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
pub(super) fn default_max_body_bytes() -> usize {
    1024 * 1024
}
pub(super) fn default_hub_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8081))
}
pub(super) fn default_hub_cert() -> PathBuf {
    "tls/server/cert.pem".into()
}
pub(super) fn default_hub_key() -> PathBuf {
    "tls/server/key.pem".into()
}
pub(super) fn default_hub_client_ca() -> PathBuf {
    "tls/server/ca.pem".into()
}
pub(super) fn default_heartbeat_secs() -> u64 {
    20
}
pub(super) fn default_hello_timeout_secs() -> u64 {
    10
}
pub(super) fn default_handshake_timeout_secs() -> u64 {
    10
}
pub(super) fn default_max_message_bytes() -> usize {
    agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES
}
pub(super) fn default_max_pending_handshakes() -> usize {
    4096
}
pub(super) fn default_send_queue() -> usize {
    256
}
pub(super) fn default_drain_reconnect_after_ms() -> u64 {
    1000
}
pub(super) fn default_drain_grace_secs() -> u64 {
    5
}
pub(super) fn default_store_path() -> PathBuf {
    "/var/lib/agentmesh/backend.db".into()
}
pub(super) fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}
pub(super) fn default_retention_days() -> u32 {
    30
}
pub(super) fn default_max_records() -> usize {
    100_000
}
pub(super) fn default_prune_interval_secs() -> u64 {
    300
}
pub(super) fn default_max_queue_ttl_ms() -> u64 {
    3_600_000
}
pub(super) fn default_result_grace_secs() -> u64 {
    30
}
pub(super) fn default_audit_path() -> PathBuf {
    "/var/lib/agentmesh/audit.log".into()
}
pub(super) fn default_operator_rate() -> u32 {
    20
}
pub(super) fn default_operator_burst() -> u32 {
    40
}
pub(super) fn default_agent_rate() -> u32 {
    10
}
pub(super) fn default_agent_burst() -> u32 {
    20
}
pub(super) fn default_hub_connects_per_ip() -> u32 {
    5
}
pub(super) fn default_hub_connects_per_ip_burst() -> u32 {
    10
}
pub(super) fn default_hub_connects_per_agent() -> u32 {
    1
}
pub(super) fn default_hub_connects_per_agent_burst() -> u32 {
    10
}
pub(super) fn default_hub_handshakes_per_sec() -> u32 {
    200
}
pub(super) fn default_hub_handshake_burst() -> u32 {
    400
}
pub(super) fn default_enrol_attempts_per_sec() -> u32 {
    2
}
pub(super) fn default_enrol_burst() -> u32 {
    20
}
pub(super) fn default_renewals_per_agent_per_hour() -> u32 {
    6
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_audit_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}
pub(super) fn default_agent_cert_days() -> i64 {
    90
}
pub(super) fn default_max_join_token_secs() -> u64 {
    7 * 24 * 3600
}
pub(super) fn default_verbs() -> Vec<String> {
    vec!["*".to_owned()]
}
