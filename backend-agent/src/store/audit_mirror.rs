//! The fleet's audit records in the shared store (`[cluster]` on PostgreSQL): each replica
//! copies the durable records of its own chain into `audit_records`, so `GET /api/v1/audit` on
//! any replica lists every replica's records (`docs/cluster.md`, "Audit across replicas").
//! The local hash-chained log stays the record of truth; this is a copy for reading.

use agentmesh_audit::AuditRecord;

use super::{Store, StoreError};

/// Most records one mirror call writes, and one fleet read returns.
pub const MIRROR_BATCH: usize = 500;

/// Which mirrored records [`AuditMirrorStore::fleet_audit`] returns: all conditions hold.
#[derive(Debug, Clone, Default)]
pub struct FleetAuditFilter {
    /// Only rows after this cursor (the table's own id, in insertion order).
    pub after_id: i64,
    /// Only records at or after this RFC 3339 time (already validated).
    pub since_ts: Option<String>,
    /// Only records about this agent.
    pub agent: Option<String>,
    /// Only records by this actor.
    pub actor: Option<String>,
    /// Only records of this kind.
    pub kind: Option<String>,
    /// At most this many rows (clamped to `1..=MIRROR_BATCH`).
    pub limit: usize,
}

/// One mirrored record: its cursor, the replica whose chain holds it, the record.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRecord {
    /// Cursor for [`FleetAuditFilter::after_id`].
    pub id: i64,
    /// `[cluster] replica_id` of the chain it belongs to.
    pub replica: String,
    /// The record as in that replica's log.
    pub record: AuditRecord,
}

/// Storage for mirrored audit records. Only the PostgreSQL store keeps them; the others answer
/// [`AuditMirrorStore::mirrors_audit`] false and refuse the calls.
pub trait AuditMirrorStore: Send + Sync + 'static {
    /// Whether this store keeps the fleet's audit records.
    fn mirrors_audit(&self) -> bool {
        false
    }
    /// Highest seq of `replica`'s chain mirrored so far (0: none).
    fn mirrored_upto(&self, _replica: &str) -> Result<u64, StoreError> {
        Err(unsupported())
    }
    /// Adds `records` of `replica`'s chain; ones already there (same replica and seq) are
    /// skipped, so a retried batch is harmless.
    fn mirror_audit(&self, _replica: &str, _records: &[AuditRecord]) -> Result<(), StoreError> {
        Err(unsupported())
    }
    /// Mirrored records matching `filter`, in insertion order.
    fn fleet_audit(&self, _filter: &FleetAuditFilter) -> Result<Vec<FleetRecord>, StoreError> {
        Err(unsupported())
    }
}

fn unsupported() -> StoreError {
    StoreError::Conflict("the fleet's audit records are kept only in PostgreSQL".into())
}

impl Store {
    /// See [`AuditMirrorStore::mirrors_audit`].
    pub fn mirrors_audit(&self) -> bool {
        self.inner.mirrors_audit()
    }

    /// See [`AuditMirrorStore::mirrored_upto`].
    pub async fn mirrored_upto(&self, replica: &str) -> Result<u64, StoreError> {
        let replica = replica.to_owned();
        self.run(move |s| s.mirrored_upto(&replica)).await
    }

    /// See [`AuditMirrorStore::mirror_audit`].
    pub async fn mirror_audit(
        &self,
        replica: &str,
        records: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        let replica = replica.to_owned();
        self.run(move |s| s.mirror_audit(&replica, &records)).await
    }

    /// See [`AuditMirrorStore::fleet_audit`].
    pub async fn fleet_audit(
        &self,
        filter: FleetAuditFilter,
    ) -> Result<Vec<FleetRecord>, StoreError> {
        self.run(move |s| s.fleet_audit(&filter)).await
    }
}
