//! Audit records for unauthenticated failures (API 401s, refused hub handshakes, refused
//! join-token redemptions), aggregated per source so that a flood cannot fill the disk.
//!
//! Per source address (IPv6 by /64, see [`crate::limits::source_key`]) and per window of
//! [`WINDOW`]:
//! - the first failure is recorded at once, in full, as before (`auth_failed`,
//!   `agent_rejected`), so an operator sees an attack begin without delay;
//! - every further failure is only counted; when the window closes, one
//!   `unauthenticated_failures` record carries `{source, count, reasons, first_ts, last_ts}`
//!   (`count` includes the failure recorded at once).
//!
//! So a source costs at most two records per window however fast it fails. Bounds: at most
//! [`MAX_SOURCES`] sources per window; failures from further sources are summed into one
//! record with `source = "overflow"` (no record of their own), and each source keeps at
//! most [`MAX_REASONS`] distinct reasons (the rest count under `"other"`). [`FailureAudit::
//! flush`] closes the window early; the backend calls it on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentmesh_audit::AuditEvent;
use tokio::sync::watch;

use crate::audit::{events, Audit};
use crate::clock;

/// Kind of the aggregated record.
pub use crate::audit::events::extra_kinds::UNAUTHENTICATED_FAILURES;
/// Length of one aggregation window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most sources tracked in one window; the rest share the `overflow` record.
pub const MAX_SOURCES: usize = 1024;
/// Most distinct reasons kept per source; the rest count under `other`.
pub const MAX_REASONS: usize = 16;
/// Source name of the record that sums failures of sources beyond [`MAX_SOURCES`].
pub const OVERFLOW_SOURCE: &str = "overflow";

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    reasons: BTreeMap<String, u64>,
    first_ms: i64,
    last_ms: i64,
}

impl Tally {
    fn add(&mut self, reason: &str, now_ms: i64) {
        if self.count == 0 {
            self.first_ms = now_ms;
        }
        self.count += 1;
        self.last_ms = now_ms;
        let key = if self.reasons.contains_key(reason) || self.reasons.len() < MAX_REASONS {
            reason
        } else {
            "other"
        };
        *self.reasons.entry(key.to_owned()).or_default() += 1;
    }

    fn event(&self, source: &str) -> AuditEvent {
        events::unauthenticated_failures(
            source,
            self.count,
            &self.reasons,
            self.first_ms,
            self.last_ms,
        )
    }
}

#[derive(Debug, Default)]
struct Window {
    sources: HashMap<String, Tally>,
    overflow: Tally,
}

/// The per-source aggregator in front of the audit log.
pub struct FailureAudit {
    audit: Arc<Audit>,
    window: Mutex<Window>,
    /// Failures counted without a record of their own (for metrics).
    suppressed: AtomicU64,
}

impl std::fmt::Debug for FailureAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureAudit").finish_non_exhaustive()
    }
}

/// How a failure's source is named in records: the limiter key of the address.
pub fn source_name(ip: Option<IpAddr>) -> String {
    ip.map(|ip| crate::limits::source_key(ip).to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl FailureAudit {
    /// An aggregator writing to `audit`.
    pub fn new(audit: Arc<Audit>) -> Self {
        FailureAudit {
            audit,
            window: Mutex::new(Window::default()),
            suppressed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Tallies are plain counters; a panic mid-update cannot leave them unsafe to read.
        crate::sync::lock(&self.window)
    }

    /// Counts one failure from `source` for `reason`; `first` builds the full record, which
    /// is written only for the first failure of this source in the window. Returns whether
    /// it was, so callers can log at the same rate (a flood must not become a log flood).
    pub fn failure(&self, source: &str, reason: &str, first: impl FnOnce() -> AuditEvent) -> bool {
        let now = clock::unix_ms();
        let is_first = {
            let mut w = self.lock();
            if let Some(t) = w.sources.get_mut(source) {
                t.add(reason, now);
                false
            } else if w.sources.len() >= MAX_SOURCES {
                w.overflow.add(reason, now);
                false
            } else {
                let mut t = Tally::default();
                t.add(reason, now);
                w.sources.insert(source.to_owned(), t);
                true
            }
        };
        if is_first {
            self.audit.record(first());
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        is_first
    }

    /// Failures so far that got no record of their own.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Closes the window: one aggregated record per source that failed more than once, and
    /// one for the overflow. Returns how many records were written.
    pub fn flush(&self) -> usize {
        let window = std::mem::take(&mut *self.lock());
        let mut written = 0;
        let mut sources: Vec<_> = window.sources.into_iter().collect();
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        for (source, tally) in sources.iter().filter(|(_, t)| t.count > 1) {
            self.audit.record(tally.event(source));
            written += 1;
        }
        if window.overflow.count > 0 {
            self.audit.record(window.overflow.event(OVERFLOW_SOURCE));
            written += 1;
        }
        written
    }

    /// Flushes every [`WINDOW`] until shutdown, then once more.
    pub fn spawn_flusher(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(WINDOW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = agentmesh_daemon::stopped(&mut stop) => break,
                    _ = every.tick() => { self.flush(); }
                }
            }
            self.flush();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuditConfig;

    fn audit(dir: &std::path::Path) -> Arc<Audit> {
        let config: AuditConfig =
            toml::from_str(&format!("path = {:?}", dir.join("audit.log"))).unwrap();
        Arc::new(Audit::open(&config).unwrap().0)
    }

    fn lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_flood_from_one_source_is_two_records_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let a = audit(dir.path());
        let f = FailureAudit::new(a.clone());
        for i in 0..10_000 {
            let reason = if i % 2 == 0 {
                "unknown token"
            } else {
                "missing"
            };
            f.failure("192.0.2.1", reason, || AuditEvent::new("auth_failed"));
        }
        f.failure("192.0.2.2", "unknown token", || {
            AuditEvent::new("auth_failed")
        });
        assert_eq!(f.flush(), 1, "the single failure needs no summary");
        a.flush().await;
        let records = lines(dir.path());
        let kinds: Vec<&str> = records
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["auth_failed", "auth_failed", UNAUTHENTICATED_FAILURES],
            "{records:?}"
        );
        let summary = &records[2]["details"];
        assert_eq!(summary["source"], "192.0.2.1");
        assert_eq!(summary["count"], 10_000);
        assert_eq!(summary["reasons"]["unknown token"], 5_000);
        assert_eq!(f.suppressed(), 9_999);
        assert_eq!(f.flush(), 0, "a new window starts empty");
    }

    #[tokio::test]
    async fn sources_beyond_the_cap_share_one_overflow_record() {
        let dir = tempfile::tempdir().unwrap();
        let a = audit(dir.path());
        let f = FailureAudit::new(a.clone());
        for i in 0..(MAX_SOURCES + 500) {
            f.failure(&format!("src-{i}"), "x", || AuditEvent::new("auth_failed"));
        }
        assert_eq!(f.flush(), 1, "only the overflow needs a summary");
        a.flush().await;
        let records = lines(dir.path());
        assert_eq!(records.len(), MAX_SOURCES + 1);
        let last = &records[MAX_SOURCES]["details"];
        assert_eq!(last["source"], OVERFLOW_SOURCE);
        assert_eq!(last["count"], 500);
    }

    #[test]
    fn reasons_per_source_are_bounded() {
        let mut t = Tally::default();
        for i in 0..100 {
            t.add(&format!("reason {i}"), 1);
        }
        assert_eq!(t.reasons.len(), MAX_REASONS + 1);
        assert_eq!(t.reasons["other"], 100 - MAX_REASONS as u64);
    }
}
