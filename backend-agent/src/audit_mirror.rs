//! `[cluster]` on PostgreSQL: copies this replica's durable audit records into the shared
//! store (`audit_records`), so any replica's `GET /api/v1/audit` lists the fleet's records.
//!
//! The local log is the queue: every [`MIRROR_INTERVAL`] the task reads the records after the
//! highest seq already mirrored (asked from the store at start, so a gap left by a crash is
//! filled from the local file on restart) up to the log's durable tail, and writes them in
//! batches of [`MIRROR_BATCH`], at most [`BATCHES_PER_TICK`] a tick. Memory stays bounded by
//! one batch; a store outage only delays the copy (logged, retried next tick), and nothing is
//! mirrored that is not on the local disk first. A last pass runs at shutdown.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_audit::AuditFilter;
use tracing::warn;

use crate::audit::Audit;
use crate::periodic::{Pass, Periodic};
use crate::store::audit_mirror::MIRROR_BATCH;
use crate::store::Store;

/// How often the task looks for new durable records.
pub const MIRROR_INTERVAL: Duration = Duration::from_secs(1);
/// Batches written per tick at most (a long backlog is caught up over several ticks).
pub const BATCHES_PER_TICK: usize = 20;

/// The mirror's state between passes.
struct Mirror {
    store: Store,
    audit: Arc<Audit>,
    replica: String,
    /// Highest seq known to be in the store; `None` until the store answered once.
    upto: Option<u64>,
}

impl Pass for Mirror {
    /// Copies what is durable and not yet mirrored; errors are logged and retried next tick.
    async fn pass(&mut self) {
        let upto = match self.upto {
            Some(u) => u,
            None => match self.store.mirrored_upto(&self.replica).await {
                Ok(u) => *self.upto.insert(u),
                Err(e) => {
                    warn!(error = %e, "audit mirror: cannot read the shared store; retrying");
                    return;
                }
            },
        };
        let (durable, _) = self.audit.log().durable_tail();
        let mut after = upto;
        for _ in 0..BATCHES_PER_TICK {
            if after >= durable {
                break;
            }
            let filter = AuditFilter {
                since_seq: Some(after),
                limit: MIRROR_BATCH,
                ..AuditFilter::default()
            };
            let path = self.audit.path().to_path_buf();
            let read =
                tokio::task::spawn_blocking(move || agentmesh_audit::query(&path, &filter)).await;
            let mut batch = match read {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    warn!(error = %e, "audit mirror: cannot read the local log; retrying");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "audit mirror: read task failed; retrying");
                    return;
                }
            };
            batch.retain(|r| r.seq <= durable);
            let Some(last) = batch.last().map(|r| r.seq) else {
                break;
            };
            if let Err(e) = self.store.mirror_audit(&self.replica, batch).await {
                warn!(error = %e, after, "audit mirror: cannot write to the shared store; retrying");
                return;
            }
            after = last;
            self.upto = Some(last);
        }
    }
}

/// The running mirror task; [`AuditMirror::finish`] runs the last pass at shutdown.
pub struct AuditMirror(Periodic<Mirror>);

impl AuditMirror {
    /// Starts mirroring `audit` as `replica`'s chain into `store`.
    pub fn start(store: Store, audit: Arc<Audit>, replica: String) -> AuditMirror {
        let mirror = Mirror {
            store,
            audit,
            replica,
            upto: None,
        };
        AuditMirror(Periodic::start("audit mirror", mirror, MIRROR_INTERVAL))
    }

    /// Stops the task after one last pass over everything durable. Call after the last audit
    /// record of the process is flushed.
    pub async fn finish(self) {
        self.0.finish().await;
    }
}
