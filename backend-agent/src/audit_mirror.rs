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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::audit::Audit;
use crate::store::audit_mirror::MIRROR_BATCH;
use crate::store::Store;

/// How often the task looks for new durable records.
pub const MIRROR_INTERVAL: Duration = Duration::from_secs(1);
/// Batches written per tick at most (a long backlog is caught up over several ticks).
pub const BATCHES_PER_TICK: usize = 20;

struct Mirror {
    store: Store,
    audit: Arc<Audit>,
    replica: String,
    /// Highest seq known to be in the store; `None` until the store answered once.
    upto: Option<u64>,
}

impl Mirror {
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
pub struct AuditMirror {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Mirror>>,
}

impl AuditMirror {
    /// Starts mirroring `audit` as `replica`'s chain into `store`.
    pub fn start(store: Store, audit: Arc<Audit>, replica: String) -> AuditMirror {
        let (stop, mut stopped) = oneshot::channel();
        let mut mirror = Mirror {
            store,
            audit,
            replica,
            upto: None,
        };
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(MIRROR_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = every.tick() => mirror.pass().await,
                }
            }
            mirror
        });
        AuditMirror {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the task after one last pass over everything durable. Call after the last audit
    /// record of the process is flushed.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Ok(mut mirror) = task.await {
                mirror.pass().await;
            }
        }
    }
}

impl Drop for AuditMirror {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
