//! The agent's own `/metrics` (Prometheus text 0.0.4, `prometheus-client`), served on
//! `agent.health_listen`: connection state, commands by verb and final status, command run
//! time, audit fsync latency, build info.
//!
//! Command counters are process-wide ([`global`]): a daemon runs one agent; tests that run
//! several agents in one process see their sum.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::state::StateSnapshot;

/// A label set.
type Labels = Vec<(&'static str, String)>;

/// Most `(verb, status)` series; later verbs count under `verb="_other"`.
pub const MAX_VERB_SERIES: usize = 512;

/// Upper bounds (seconds) of the command run-time histogram.
pub const RUN_TIME_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0,
];

/// The agent's metrics.
#[derive(Debug)]
pub struct GatewayMetrics {
    commands: Family<Labels, Counter>,
    series: AtomicUsize,
    run_time: Histogram,
    build_info: Family<Labels, Gauge>,
}

static GLOBAL: LazyLock<GatewayMetrics> = LazyLock::new(GatewayMetrics::new);

/// The process's metrics.
pub fn global() -> &'static GatewayMetrics {
    &GLOBAL
}

impl GatewayMetrics {
    fn new() -> GatewayMetrics {
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("component", "gateway-agent".to_owned()),
            ])
            .set(1);
        GatewayMetrics {
            commands: Family::default(),
            series: AtomicUsize::new(0),
            run_time: Histogram::new(RUN_TIME_BUCKETS),
            build_info,
        }
    }

    /// Counts a command that finished with `status` after running `took`.
    pub fn command_finished(&self, verb: &str, status: &str, took: Duration) {
        let mut labels = vec![("verb", verb.to_owned()), ("status", status.to_owned())];
        if self.commands.get(&labels).is_none() {
            // A new series: counted, and folded into `_other` past the cap (a race may
            // overshoot by the number of concurrent callers, still bounded).
            if self.series.fetch_add(1, Ordering::Relaxed) >= MAX_VERB_SERIES {
                self.series.fetch_sub(1, Ordering::Relaxed);
                labels[0].1 = "_other".to_owned();
            }
        }
        self.commands.get_or_create(&labels).inc();
        self.run_time.observe(took.as_secs_f64());
    }

    /// Renders everything, with the connection state from `state`.
    pub fn render(&self, state: &StateSnapshot) -> String {
        let mut registry = Registry::default();
        registry.register(
            "agentmesh_gateway_commands",
            "Commands finished by this agent, by verb and status",
            self.commands.clone(),
        );
        registry.register(
            "agentmesh_gateway_command_duration_seconds",
            "Seconds each command ran on this agent",
            self.run_time.clone(),
        );
        registry.register(
            "agentmesh_gateway_build_info",
            "Build information (constant 1)",
            self.build_info.clone(),
        );
        registry.register_collector(Box::new(StateCollector(state.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "could not render metrics");
        }
        out
    }
}

#[derive(Debug)]
struct StateCollector(StateSnapshot);

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let gauge = ConstGauge::new(i64::from(s.connected));
        gauge.encode(encoder.encode_descriptor(
            "agentmesh_gateway_connected",
            "1 while a session with the hub is up.",
            None,
            MetricType::Gauge,
        )?)?;
        for (name, help, v) in [
            (
                "agentmesh_gateway_connects",
                "Sessions established with the hub.",
                s.connects,
            ),
            (
                "agentmesh_gateway_pin_mismatches",
                "Hubs refused because their pin is not in outbound.server_pins.",
                s.pin_mismatches,
            ),
            (
                "agentmesh_gateway_renewals",
                "Certificates renewed.",
                s.renewals,
            ),
        ] {
            ConstCounter::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let fsync = agentmesh_audit::FSYNC_STATS.snapshot();
        encoder
            .encode_descriptor(
                "agentmesh_audit_fsync_duration_seconds",
                "Seconds each audit log fsync took",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(fsync.sum_secs, fsync.count, &fsync.buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_state_and_commands() {
        let m = GatewayMetrics::new();
        m.command_finished("ping", "ok", Duration::from_millis(20));
        let state = StateSnapshot {
            connected: true,
            connects: 2,
            ..StateSnapshot::default()
        };
        let out = m.render(&state);
        for needle in [
            "agentmesh_gateway_connected 1",
            "agentmesh_gateway_connects_total 2",
            "agentmesh_gateway_commands_total{verb=\"ping\",status=\"ok\"} 1",
            "agentmesh_gateway_command_duration_seconds_bucket{le=\"0.025\"} 1",
            "agentmesh_gateway_build_info{version=",
            "# TYPE agentmesh_audit_fsync_duration_seconds histogram",
        ] {
            assert!(out.contains(needle), "missing {needle:?} in\n{out}");
        }
    }
}
