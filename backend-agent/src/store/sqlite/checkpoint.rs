//! The [`CheckpointStore`] implementation for [`SqliteStore`].

use agentmesh_audit::Checkpoint;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::checkpoint::{CheckpointStore, CHECKPOINTS_KEPT};
use crate::store::StoreError;

impl CheckpointStore for SqliteStore {
    fn put_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let seq = i64::try_from(cp.seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint seq {} too large", cp.seq)))?;
        let kept = i64::try_from(CHECKPOINTS_KEPT).unwrap_or(i64::MAX);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO audit_checkpoints (seq, hash, ts, file, public_key, key_pin, signature) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                seq,
                cp.hash,
                cp.ts,
                cp.file,
                cp.public_key,
                cp.key_pin,
                cp.signature
            ],
        )?;
        tx.execute(
            "DELETE FROM audit_checkpoints WHERE id <= (SELECT MAX(id) FROM audit_checkpoints) - ?1",
            params![kept],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT seq, hash, ts, file, public_key, key_pin, signature \
                 FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
                [],
                |r| {
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
                    ))
                },
            )
            .optional()?;
        row.map(|(seq, mut cp)| {
            cp.seq = u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt(format!("negative checkpoint seq {seq}")))?;
            Ok(cp)
        })
        .transpose()
    }
}
