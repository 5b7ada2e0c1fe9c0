//! The labelled families and histograms the backend updates as things happen, built on
//! `prometheus-client`. Every family has a bounded label space: reasons and limiters are
//! fixed strings, verbs come from agents' allowlists and are capped at [`MAX_VERB_SERIES`].

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Most `(verb, status)` series kept; later verbs are counted under `verb="_other"`.
pub const MAX_VERB_SERIES: usize = 1024;

/// Upper bounds (seconds) of the command latency histogram: submission to final status.
pub const COMMAND_LATENCY_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Metrics updated on the spot (the rest are read at scrape time).
#[derive(Debug)]
pub(super) struct Families {
    /// Sessions that ended, by reason.
    pub sessions_closed: Family<Labels, Counter>,
    /// Commands that reached a final status, by verb and status.
    pub commands: Family<Labels, Counter>,
    /// `(verb, status)` series created so far.
    series: AtomicUsize,
    /// Seconds from submission to final status.
    pub command_latency: Histogram,
    /// Requests or connections a rate limiter refused, by limiter.
    pub rate_limited: Family<Labels, Counter>,
    /// Constant 1 with the build's version.
    pub build_info: Family<Labels, Gauge>,
}

impl Default for Families {
    fn default() -> Families {
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("component", "backend-agent".to_owned()),
            ])
            .set(1);
        Families {
            sessions_closed: Family::default(),
            commands: Family::default(),
            series: AtomicUsize::new(0),
            command_latency: Histogram::new(COMMAND_LATENCY_BUCKETS),
            rate_limited: Family::default(),
            build_info,
        }
    }
}

impl Families {
    /// Registers clones (sharing the same values) of every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "agentmesh_sessions_closed",
            "Agent sessions that ended, by reason",
            self.sessions_closed.clone(),
        );
        registry.register(
            "agentmesh_commands",
            "Commands that reached a final status, by verb and status",
            self.commands.clone(),
        );
        registry.register(
            "agentmesh_command_duration_seconds",
            "Seconds from a command's submission to its final status",
            self.command_latency.clone(),
        );
        registry.register(
            "agentmesh_rate_limited",
            "Requests or connections refused by a rate limiter, by limiter",
            self.rate_limited.clone(),
        );
        registry.register(
            "agentmesh_build_info",
            "Build information (constant 1)",
            self.build_info.clone(),
        );
    }

    /// Counts a final command, folding verbs past the series cap into `_other`.
    pub fn command(&self, verb: &str, status: &str) {
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
    }
}
