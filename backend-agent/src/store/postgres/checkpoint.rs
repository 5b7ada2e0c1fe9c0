//! The [`CheckpointStore`] implementation for [`PostgresStore`].

use agentmesh_audit::Checkpoint;

use super::row;
use super::PostgresStore;
use crate::store::checkpoint::{CheckpointStore, CHECKPOINTS_KEPT};
use crate::store::StoreError;

const COLUMNS: &str = "seq, hash, ts, file, public_key, key_pin, signature, replica_id";

/// A row of [`COLUMNS`] as `(replica, checkpoint)`.
fn decode(r: &::postgres::Row) -> Result<(String, Checkpoint), StoreError> {
    let owner = "audit checkpoint";
    let seq: i64 = row::get(r, 0, owner)?;
    Ok((
        row::get(r, 7, owner)?,
        Checkpoint {
            seq: u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt(format!("negative checkpoint seq {seq}")))?,
            hash: row::get(r, 1, owner)?,
            ts: row::get(r, 2, owner)?,
            file: row::get(r, 3, owner)?,
            public_key: row::get(r, 4, owner)?,
            key_pin: row::get(r, 5, owner)?,
            signature: row::get(r, 6, owner)?,
        },
    ))
}

impl CheckpointStore for PostgresStore {
    fn put_replica_checkpoint(&self, replica: &str, cp: &Checkpoint) -> Result<(), StoreError> {
        let seq = i64::try_from(cp.seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint seq {} too large", cp.seq)))?;
        let kept = i64::try_from(CHECKPOINTS_KEPT).unwrap_or(i64::MAX);
        self.in_tx(|tx| {
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, hash, ts, file, public_key, key_pin, \
                 signature, replica_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &seq,
                    &cp.hash,
                    &cp.ts,
                    &cp.file,
                    &cp.public_key,
                    &cp.key_pin,
                    &cp.signature,
                    &replica,
                ],
            )?;
            tx.execute(
                "DELETE FROM audit_checkpoints WHERE replica_id = $1 AND id NOT IN \
                 (SELECT id FROM audit_checkpoints WHERE replica_id = $1 \
                  ORDER BY id DESC LIMIT $2)",
                &[&replica, &kept],
            )?;
            Ok(((), true))
        })
    }

    fn latest_replica_checkpoint(&self, replica: &str) -> Result<Option<Checkpoint>, StoreError> {
        let found = self.client()?.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM audit_checkpoints WHERE replica_id = $1 \
                 ORDER BY id DESC LIMIT 1"
            ),
            &[&replica],
        )?;
        found.map(|r| decode(&r).map(|(_, cp)| cp)).transpose()
    }

    fn latest_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let rows = self.client()?.query(
            &format!(
                "SELECT {COLUMNS} FROM audit_checkpoints WHERE id IN \
                 (SELECT MAX(id) FROM audit_checkpoints GROUP BY replica_id) ORDER BY replica_id"
            ),
            &[],
        )?;
        rows.iter().map(decode).collect()
    }
}
