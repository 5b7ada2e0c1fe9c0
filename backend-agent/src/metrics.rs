//! Process metrics, rendered in the Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters the hub and API update.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted by the hub.
    pub hub_connections_accepted: AtomicU64,
    /// Handshakes admitted by the global admission rate.
    pub hub_admitted: AtomicU64,
    /// Sessions that completed `hello`/`welcome`.
    pub hub_sessions_started: AtomicU64,
    /// Sessions replaced by a newer one of the same identity.
    pub hub_sessions_superseded: AtomicU64,
    /// Sessions dropped for missing 3 heartbeats.
    pub hub_sessions_timed_out: AtomicU64,
    /// Sessions dropped because the agent stopped reading (a write missed its deadline).
    pub hub_sessions_write_timeout: AtomicU64,
    /// Certificate renewals refused (one outstanding, rate limit, bad CSR).
    pub renewals_refused: AtomicU64,
    /// Unauthenticated failures summed into a per-source record instead of one each.
    pub unauthenticated_failures_aggregated: AtomicU64,
    /// Connections refused, by reason code.
    hub_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// API requests refused for a missing or bad token.
    pub api_auth_failures: AtomicU64,
    /// Results received for commands that were already final (re-deliveries).
    pub results_duplicate: AtomicU64,
}

impl Metrics {
    /// Counts a refused hub connection under `reason`.
    pub fn hub_rejected(&self, reason: &'static str) {
        let mut map = crate::sync::lock(&self.hub_rejected);
        *map.entry(reason).or_default() += 1;
    }

    /// Refused hub connections for one reason (for tests).
    pub fn hub_rejected_count(&self, reason: &str) -> u64 {
        let map = crate::sync::lock(&self.hub_rejected);
        map.get(reason).copied().unwrap_or(0)
    }

    /// Renders every metric; `connected` is the current number of live sessions.
    pub fn render(&self, connected: usize) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        let _ = writeln!(
            out,
            "# HELP agentmesh_agents_connected Live agent sessions.\n# TYPE agentmesh_agents_connected gauge\nagentmesh_agents_connected {connected}"
        );
        counter(
            &mut out,
            "agentmesh_hub_connections_accepted_total",
            "TCP connections accepted by the hub.",
            &self.hub_connections_accepted,
        );
        counter(
            &mut out,
            "agentmesh_hub_admitted_total",
            "Handshakes admitted by the global admission rate.",
            &self.hub_admitted,
        );
        counter(
            &mut out,
            "agentmesh_hub_sessions_started_total",
            "Agent sessions that completed hello/welcome.",
            &self.hub_sessions_started,
        );
        counter(
            &mut out,
            "agentmesh_hub_sessions_superseded_total",
            "Sessions replaced by a newer session of the same identity.",
            &self.hub_sessions_superseded,
        );
        counter(
            &mut out,
            "agentmesh_hub_sessions_timed_out_total",
            "Sessions dropped after three missed heartbeats.",
            &self.hub_sessions_timed_out,
        );
        counter(
            &mut out,
            "agentmesh_hub_sessions_write_timeout_total",
            "Sessions dropped because the agent stopped reading.",
            &self.hub_sessions_write_timeout,
        );
        counter(
            &mut out,
            "agentmesh_renewals_refused_total",
            "Certificate renewals refused (one outstanding, rate limit, bad CSR).",
            &self.renewals_refused,
        );
        counter(
            &mut out,
            "agentmesh_api_auth_failures_total",
            "API requests refused for a missing or unknown token.",
            &self.api_auth_failures,
        );
        counter(
            &mut out,
            "agentmesh_results_duplicate_total",
            "Results received again for commands already final.",
            &self.results_duplicate,
        );
        counter(
            &mut out,
            "agentmesh_unauthenticated_failures_aggregated_total",
            "Unauthenticated failures counted in a per-source summary instead of a record each.",
            &self.unauthenticated_failures_aggregated,
        );
        let _ = writeln!(
            out,
            "# HELP agentmesh_hub_rejected_total Hub connections refused, by reason.\n# TYPE agentmesh_hub_rejected_total counter"
        );
        let map = crate::sync::lock(&self.hub_rejected);
        for (reason, n) in map.iter() {
            let _ = writeln!(
                out,
                "agentmesh_hub_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out
    }
}
