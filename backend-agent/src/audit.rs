//! The backend's audit trail: one [`AuditLog`] (hash chain, group commit) plus the helpers
//! every part of the backend uses to record security-relevant events.
//!
//! Only `command_requested` is written durably (the command does not leave the backend before
//! its request is on disk); everything else is appended without waiting and reaches the disk
//! with the next group commit. A full queue is logged, never blocks a request.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use agentmesh_audit::{AuditError, AuditEvent, AuditLog, AuditOptions, AuditRecord, OpenReport};
use tracing::{error, warn};

use crate::config::AuditConfig;

pub mod events;

pub use agentmesh_audit::kinds;

/// The audit trail of one backend process.
pub struct Audit {
    log: AuditLog,
    tokens_seen: Mutex<HashSet<String>>,
    /// Appends queued so far; with `synced`, lets a reader skip a flush when nothing new
    /// was appended since the last fsync.
    appended: AtomicU64,
    /// `appended` as of the last completed flush or durable append.
    synced: AtomicU64,
    /// Readers share one flush instead of queueing one each.
    read_flush: tokio::sync::Mutex<()>,
}

impl Audit {
    /// Opens (and if needed repairs) the log at `[audit].path`.
    pub fn open(config: &AuditConfig) -> Result<(Audit, OpenReport), AuditError> {
        let options = AuditOptions {
            fsync: config.fsync,
            max_file_bytes: config.max_file_bytes,
            ..AuditOptions::default()
        };
        let (log, report) = AuditLog::open(&config.path, options)?;
        if let Some(cut) = &report.repaired {
            warn!(path = %config.path.display(), repair = %cut, "audit log repaired at start");
        }
        if let Some(broken) = &report.broken {
            error!(path = %config.path.display(), error = %broken, "audit log chain is BROKEN (tampering?); continuing the chain");
        }
        Ok((
            Audit {
                log,
                tokens_seen: Mutex::new(HashSet::new()),
                appended: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                read_flush: tokio::sync::Mutex::new(()),
            },
            report,
        ))
    }

    /// Appends without waiting for the disk.
    pub fn record(&self, event: AuditEvent) {
        self.appended.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.log.append(event) {
            warn!(error = %e, "audit append failed");
        }
    }

    /// Appends and waits until the record is on disk (group-committed).
    pub async fn durable(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        let upto = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        let record = self.log.append_durable(event).await?;
        // Everything queued before it was written and fsynced with it.
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(record)
    }

    /// Makes what was appended so far visible to a reader of the files. Costs nothing when
    /// nothing was appended since the last fsync (durable appends count), and concurrent
    /// readers share one flush: a burst of audit reads cannot turn into a burst of fsyncs.
    pub async fn sync_for_read(&self) {
        if self.synced.load(Ordering::Acquire) >= self.appended.load(Ordering::Acquire) {
            return;
        }
        let _one_at_a_time = self.read_flush.lock().await;
        let upto = self.appended.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) >= upto {
            return; // the reader before us covered it
        }
        self.flush().await;
        self.synced.fetch_max(upto, Ordering::AcqRel);
    }

    /// Records `token_used` the first time a token is seen by this process.
    pub fn token_used(&self, name: &str) {
        let first = crate::sync::lock(&self.tokens_seen).insert(name.to_owned());
        if first {
            self.record(events::token_used(name));
        }
    }

    /// Fsyncs everything appended so far.
    pub async fn flush(&self) {
        if let Err(e) = self.log.flush().await {
            warn!(error = %e, "audit flush failed");
        }
    }

    /// Number of fsyncs so far (metrics, benchmarks).
    pub fn fsync_count(&self) -> u64 {
        self.log.fsync_count()
    }

    /// Records appended by this process so far (metrics).
    pub fn appended_count(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// The log file.
    pub fn path(&self) -> &std::path::Path {
        self.log.path()
    }

    /// False while the writer cannot write (a full disk): commands are refused with 503
    /// `audit_unavailable` until its retry succeeds. For `/ready`.
    pub fn is_healthy(&self) -> bool {
        self.log.is_healthy()
    }

    /// The underlying log (its durable tail, for checkpoints).
    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_do_not_fsync_when_nothing_new_was_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig {
            path: dir.path().join("audit.log"),
            ..AuditConfig::default()
        };
        let (audit, _) = Audit::open(&config).expect("open");
        audit.record(events::token_used("ops"));
        audit.sync_for_read().await;
        let after_first = audit.fsync_count();
        for _ in 0..100 {
            audit.sync_for_read().await;
        }
        assert_eq!(audit.fsync_count(), after_first, "idle reads cost no fsync");
        // A durable append syncs what came before it: the next read needs no flush either.
        audit.record(events::token_used("viewer"));
        audit
            .durable(events::token_used("admin"))
            .await
            .expect("durable");
        let after_durable = audit.fsync_count();
        audit.sync_for_read().await;
        assert_eq!(audit.fsync_count(), after_durable);
    }
}
