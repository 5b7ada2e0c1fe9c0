//! The [`CheckpointStore`] implementation for [`SqliteStore`].

use agentmesh_audit::Checkpoint;
use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::SqliteStore;
use crate::store::checkpoint::{CheckpointStore, CHECKPOINTS_KEPT};
use crate::store::StoreError;

const COLUMNS: &str = "seq, hash, ts, file, public_key, key_pin, signature, replica_id";

/// A row of [`COLUMNS`]: the checkpoint (seq still signed) and its replica.
fn read(r: &Row<'_>) -> rusqlite::Result<(i64, Checkpoint, String)> {
    Ok((
        r.get::<_, i64>(0)?,
        Checkpoint {
            seq: 0,
            hash: r.get(1)?,
            ts: r.get(2)?,
            file: r.get(3)?,
            public_key: r.get(4)?,
            key_pin: r.get(5)?,
            signature: r.get(6)?,
        },
        r.get(7)?,
    ))
}

fn decode(
    (seq, mut cp, replica): (i64, Checkpoint, String),
) -> Result<(String, Checkpoint), StoreError> {
    cp.seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("negative checkpoint seq {seq}")))?;
    Ok((replica, cp))
}

impl CheckpointStore for SqliteStore {
    fn put_replica_checkpoint(&self, replica: &str, cp: &Checkpoint) -> Result<(), StoreError> {
        let seq = i64::try_from(cp.seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint seq {} too large", cp.seq)))?;
        let kept = i64::try_from(CHECKPOINTS_KEPT).unwrap_or(i64::MAX);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO audit_checkpoints \
             (seq, hash, ts, file, public_key, key_pin, signature, replica_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                seq,
                cp.hash,
                cp.ts,
                cp.file,
                cp.public_key,
                cp.key_pin,
                cp.signature,
                replica
            ],
        )?;
        tx.execute(
            "DELETE FROM audit_checkpoints WHERE replica_id = ?1 AND id NOT IN \
             (SELECT id FROM audit_checkpoints WHERE replica_id = ?1 ORDER BY id DESC LIMIT ?2)",
            params![replica, kept],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn latest_replica_checkpoint(&self, replica: &str) -> Result<Option<Checkpoint>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM audit_checkpoints WHERE replica_id = ?1 \
                     ORDER BY id DESC LIMIT 1"
                ),
                params![replica],
                read,
            )
            .optional()?;
        row.map(|r| decode(r).map(|(_, cp)| cp)).transpose()
    }

    fn latest_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit_checkpoints WHERE id IN \
             (SELECT MAX(id) FROM audit_checkpoints GROUP BY replica_id) ORDER BY replica_id"
        ))?;
        let rows = stmt.query_map([], read)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(row?)?);
        }
        Ok(out)
    }
}

/// SQLite keeps no fleet audit records: a cluster reads them from PostgreSQL.
impl crate::store::AuditMirrorStore for SqliteStore {}
