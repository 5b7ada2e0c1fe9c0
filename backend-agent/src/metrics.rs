//! Process metrics, rendered in the Prometheus text format (0.0.4) at `/metrics` with
//! `prometheus-client`.
//!
//! Two kinds: counters and families updated where things happen ([`Metrics`]'s atomics and
//! `families`), and values read at scrape time from the registry, the audit log and the
//! sessions' queues ([`Scrape`]). Every label space is bounded (fixed reason codes, verbs
//! capped, one series per enrolled agent for certificate expiry, capped too).
//!
//! # Layout
//! - `families`: labelled counters, the command latency histogram, build info.
//! - `collect`: the scrape-time snapshot and its encoder.

mod collect;
mod families;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::registry::Registry;

use self::collect::{Snapshot, Value};
use self::families::Families;
pub use self::families::{Labels, COMMAND_LATENCY_BUCKETS, MAX_VERB_SERIES};

/// Most agents whose certificate expiry is tracked; at the cap new agents are not added.
pub const MAX_CERT_SERIES: usize = 100_000;

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
    /// Agent id → `notAfter` (unix seconds) of the certificate of its latest session.
    cert_not_after: Mutex<HashMap<String, i64>>,
    families: Families,
}

/// What `/metrics` reads at scrape time from outside [`Metrics`].
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Live agent sessions.
    pub connected: usize,
    /// Records waiting in the audit writer's queue.
    pub audit_backlog: usize,
    /// Audit records appended by this process.
    pub audit_records: u64,
    /// Audit fsyncs by this process.
    pub audit_fsyncs: u64,
    /// The audit log can be written.
    pub audit_writable: bool,
    /// Frames queued towards agents, summed over sessions.
    pub outbound_queued: u64,
    /// The fullest session's outbound queue.
    pub outbound_queued_max: u64,
    /// Commands held for offline agents (`queue_ttl_ms`).
    pub held_commands: usize,
    /// Shutdown has started ([`crate::hub::LiveSettings::draining`]).
    pub draining: bool,
    /// Event stream: (subscribers, events published, subscribers dropped for falling behind).
    pub events: (usize, u64, u64),
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

    /// Counts a session that ended with `reason` (the session's end code).
    pub fn session_closed(&self, reason: &str) {
        self.families
            .sessions_closed
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts a command that reached final `status` after `latency` since submission.
    pub fn command_finished(&self, verb: &str, status: &str, latency: Option<Duration>) {
        self.families.command(verb, status);
        if let Some(latency) = latency {
            self.families.command_latency.observe(latency.as_secs_f64());
        }
    }

    /// Counts one refusal by the rate limiter `limiter` (`operator`, `agent`, `hub_ip`,
    /// `enrol`, `hub_admission`, `hub_identity`).
    pub fn rate_limited(&self, limiter: &'static str) {
        self.families
            .rate_limited
            .get_or_create(&vec![("limiter", limiter.to_owned())])
            .inc();
    }

    /// Refusals counted for `limiter` so far (for tests).
    pub fn rate_limited_count(&self, limiter: &'static str) -> u64 {
        self.families
            .rate_limited
            .get(&vec![("limiter", limiter.to_owned())])
            .map_or(0, |c| c.get())
    }

    /// Remembers the expiry of the certificate agent `id` connected with (from its DER).
    pub fn agent_certificate(&self, id: &str, cert_der: &[u8]) {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
            return;
        };
        let not_after = cert.validity().not_after.timestamp();
        let mut map = crate::sync::lock(&self.cert_not_after);
        if map.len() < MAX_CERT_SERIES || map.contains_key(id) {
            map.insert(id.to_owned(), not_after);
        }
    }

    /// Like [`Metrics::agent_certificate`] for a PEM certificate (forwarded by a trusted
    /// proxy); the first certificate in `pem` is the agent's.
    pub fn agent_certificate_pem(&self, id: &str, pem: &str) {
        if let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) {
            self.agent_certificate(id, &block.contents);
        }
    }

    /// Renders every metric; `connected` is the current number of live sessions.
    pub fn render(&self, connected: usize) -> String {
        self.render_with(&Scrape {
            connected,
            audit_writable: true,
            ..Scrape::default()
        })
    }

    /// Renders every metric with the scrape-time values in `scrape`.
    pub fn render_with(&self, scrape: &Scrape) -> String {
        let mut registry = Registry::default();
        self.families.register(&mut registry);
        registry.register_collector(Box::new(self.snapshot(scrape)));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "could not render metrics");
        }
        out
    }

    fn snapshot(&self, scrape: &Scrape) -> Snapshot {
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut s = Snapshot::default();
        s.gauge(
            "agentmesh_agents_connected",
            "Live agent sessions.",
            scrape.connected as f64,
        );
        let counters: [(&'static str, &'static str, &AtomicU64); 10] = [
            (
                "agentmesh_hub_connections_accepted",
                "TCP connections accepted by the hub.",
                &self.hub_connections_accepted,
            ),
            (
                "agentmesh_hub_admitted",
                "Handshakes admitted by the global admission rate.",
                &self.hub_admitted,
            ),
            (
                "agentmesh_hub_sessions_started",
                "Agent sessions that completed hello/welcome.",
                &self.hub_sessions_started,
            ),
            (
                "agentmesh_sessions_opened",
                "Agent sessions opened (hello/welcome completed).",
                &self.hub_sessions_started,
            ),
            (
                "agentmesh_hub_sessions_superseded",
                "Sessions replaced by a newer session of the same identity.",
                &self.hub_sessions_superseded,
            ),
            (
                "agentmesh_hub_sessions_timed_out",
                "Sessions dropped after three missed heartbeats.",
                &self.hub_sessions_timed_out,
            ),
            (
                "agentmesh_hub_sessions_write_timeout",
                "Sessions dropped because the agent stopped reading.",
                &self.hub_sessions_write_timeout,
            ),
            (
                "agentmesh_renewals_refused",
                "Certificate renewals refused (one outstanding, rate limit, bad CSR).",
                &self.renewals_refused,
            ),
            (
                "agentmesh_api_auth_failures",
                "API requests refused for a missing or unknown token.",
                &self.api_auth_failures,
            ),
            (
                "agentmesh_results_duplicate",
                "Results received again for commands already final.",
                &self.results_duplicate,
            ),
        ];
        for (name, help, v) in counters {
            s.counter(name, help, load(v));
        }
        s.counter(
            "agentmesh_unauthenticated_failures_aggregated",
            "Unauthenticated failures counted in a per-source summary instead of a record each.",
            load(&self.unauthenticated_failures_aggregated),
        );
        let rejected = crate::sync::lock(&self.hub_rejected)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::Counter(*v)))
            .collect();
        s.family(
            "agentmesh_hub_rejected",
            "Hub connections and handshakes refused, by reason.",
            "reason",
            rejected,
        );
        self.queue_and_audit(scrape, &mut s);
        self.cert_expiry(&mut s);
        s
    }

    fn queue_and_audit(&self, scrape: &Scrape, s: &mut Snapshot) {
        let queues = BTreeMap::from([
            (
                "audit".to_owned(),
                Value::Gauge(scrape.audit_backlog as f64),
            ),
            (
                "agent_outbound".to_owned(),
                Value::Gauge(scrape.outbound_queued as f64),
            ),
            (
                "held_commands".to_owned(),
                Value::Gauge(scrape.held_commands as f64),
            ),
        ]);
        s.family(
            "agentmesh_queue_depth",
            "Items waiting in a queue (audit writer; frames to agents, summed over sessions; \
             commands held for offline agents).",
            "queue",
            queues,
        );
        s.gauge(
            "agentmesh_agent_outbound_queue_max",
            "Frames waiting in the fullest session's outbound queue.",
            scrape.outbound_queued_max as f64,
        );
        s.counter(
            "agentmesh_audit_records",
            "Audit records appended by this process.",
            scrape.audit_records,
        );
        s.counter(
            "agentmesh_audit_fsyncs",
            "Audit log fsyncs by this process.",
            scrape.audit_fsyncs,
        );
        s.gauge(
            "agentmesh_audit_writable",
            "1 while the audit log can be written.",
            f64::from(u8::from(scrape.audit_writable)),
        );
        s.gauge(
            "agentmesh_draining",
            "1 once shutdown has started.",
            f64::from(u8::from(scrape.draining)),
        );
        s.fsync = Some(agentmesh_audit::FSYNC_STATS.snapshot());
        let (subscribers, published, dropped) = scrape.events;
        s.gauge(
            "agentmesh_events_subscribers",
            "Open event streams (GET /api/v1/events).",
            subscribers as f64,
        );
        s.counter(
            "agentmesh_events_published",
            "Events published to the event stream.",
            published,
        );
        s.counter(
            "agentmesh_events_dropped",
            "Event stream readers dropped for falling behind.",
            dropped,
        );
    }

    fn cert_expiry(&self, s: &mut Snapshot) {
        let now = crate::clock::unix_ms() / 1000;
        let map = crate::sync::lock(&self.cert_not_after).clone();
        let min = map.values().min().map(|t| (t - now) as f64);
        s.gauge(
            "agentmesh_agent_cert_expiry_min_seconds",
            "Seconds until the first agent certificate of the fleet expires (NaN: none seen).",
            min.unwrap_or(f64::NAN),
        );
        let series = map
            .into_iter()
            .map(|(id, t)| (id, Value::Gauge((t - now) as f64)))
            .collect();
        s.family(
            "agentmesh_agent_cert_expiry_seconds",
            "Seconds until each agent's certificate (of its latest session) expires.",
            "agent",
            series,
        );
    }
}

#[cfg(test)]
mod tests;
