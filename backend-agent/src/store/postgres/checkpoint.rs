//! The [`CheckpointStore`] implementation for [`PostgresStore`].

use agentmesh_audit::Checkpoint;

use super::row;
use super::PostgresStore;
use crate::store::checkpoint::{CheckpointStore, CHECKPOINTS_KEPT};
use crate::store::StoreError;

impl CheckpointStore for PostgresStore {
    fn put_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let seq = i64::try_from(cp.seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint seq {} too large", cp.seq)))?;
        let kept = i64::try_from(CHECKPOINTS_KEPT).unwrap_or(i64::MAX);
        self.in_tx(|tx| {
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, hash, ts, file, public_key, key_pin, \
                 signature) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &seq,
                    &cp.hash,
                    &cp.ts,
                    &cp.file,
                    &cp.public_key,
                    &cp.key_pin,
                    &cp.signature,
                ],
            )?;
            tx.execute(
                "DELETE FROM audit_checkpoints \
                 WHERE id <= (SELECT MAX(id) FROM audit_checkpoints) - $1",
                &[&kept],
            )?;
            Ok(((), true))
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let found = self.client()?.query_opt(
            "SELECT seq, hash, ts, file, public_key, key_pin, signature \
             FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            &[],
        )?;
        let owner = "audit checkpoint";
        found
            .map(|r| {
                let seq: i64 = row::get(&r, 0, owner)?;
                Ok(Checkpoint {
                    seq: u64::try_from(seq).map_err(|_| {
                        StoreError::Corrupt(format!("negative checkpoint seq {seq}"))
                    })?,
                    hash: row::get(&r, 1, owner)?,
                    ts: row::get(&r, 2, owner)?,
                    file: row::get(&r, 3, owner)?,
                    public_key: row::get(&r, 4, owner)?,
                    key_pin: row::get(&r, 5, owner)?,
                    signature: row::get(&r, 6, owner)?,
                })
            })
            .transpose()
    }
}
