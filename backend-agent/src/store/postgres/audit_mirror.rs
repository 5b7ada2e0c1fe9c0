//! The [`AuditMirrorStore`] implementation for [`PostgresStore`] (table `audit_records`).

use agentmesh_audit::AuditRecord;

use super::row;
use super::PostgresStore;
use crate::store::audit_mirror::{AuditMirrorStore, FleetAuditFilter, FleetRecord, MIRROR_BATCH};
use crate::store::StoreError;

fn seq_i64(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq} too large")))
}

impl AuditMirrorStore for PostgresStore {
    fn mirrors_audit(&self) -> bool {
        true
    }

    fn mirrored_upto(&self, replica: &str) -> Result<u64, StoreError> {
        let r = self.client()?.query_one(
            "SELECT COALESCE(MAX(seq), 0) FROM audit_records WHERE replica_id = $1",
            &[&replica],
        )?;
        let seq: i64 = row::get(&r, 0, "audit records")?;
        u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative audit seq {seq}")))
    }

    fn mirror_audit(&self, replica: &str, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.in_tx(|tx| {
            let insert = tx.prepare(
                "INSERT INTO audit_records (replica_id, seq, at, kind, agent, actor, record) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb) \
                 ON CONFLICT (replica_id, seq) DO NOTHING",
            )?;
            for rec in records {
                let json = serde_json::to_string(rec)
                    .map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))?;
                tx.execute(
                    &insert,
                    &[
                        &replica,
                        &seq_i64(rec.seq)?,
                        &rec.ts,
                        &rec.kind,
                        &rec.agent_id,
                        &rec.actor,
                        &json,
                    ],
                )?;
            }
            Ok(((), true))
        })
    }

    fn fleet_audit(&self, f: &FleetAuditFilter) -> Result<Vec<FleetRecord>, StoreError> {
        let limit = i64::try_from(f.limit.clamp(1, MIRROR_BATCH)).unwrap_or(1);
        let rows = self.client()?.query(
            "SELECT id, replica_id, record::text FROM audit_records \
             WHERE id > $1 \
               AND ($2::text IS NULL OR at::timestamptz >= $2::text::timestamptz) \
               AND ($3::text IS NULL OR agent = $3) \
               AND ($4::text IS NULL OR actor = $4) \
               AND ($5::text IS NULL OR kind = $5) \
             ORDER BY id LIMIT $6",
            &[
                &f.after_id,
                &f.since_ts,
                &f.agent,
                &f.actor,
                &f.kind,
                &limit,
            ],
        )?;
        let owner = "audit records";
        rows.iter()
            .map(|r| {
                let text: String = row::get(r, 2, owner)?;
                Ok(FleetRecord {
                    id: row::get(r, 0, owner)?,
                    replica: row::get(r, 1, owner)?,
                    record: serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("mirrored audit record: {e}")))?,
                })
            })
            .collect()
    }
}
