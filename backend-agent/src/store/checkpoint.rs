//! Audit checkpoints: signed `(seq, hash)` marks of the audit chain's tail, kept in the store so
//! records cut off the end of the log are detected (`docs/audit.md`, "Anchored tail").

use agentmesh_audit::Checkpoint;

use super::{Store, StoreError};

/// Checkpoints a store keeps; older ones are deleted as new ones arrive (only the latest is
/// needed to verify, the rest is history for an investigation).
pub const CHECKPOINTS_KEPT: usize = 100;

/// Storage for audit checkpoints. Methods block; async code goes through [`Store`].
pub trait CheckpointStore: Send + Sync + 'static {
    /// Adds `checkpoint` as the latest, deleting all but the newest [`CHECKPOINTS_KEPT`].
    fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// The most recently added checkpoint, if any.
    fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
}

impl Store {
    /// See [`CheckpointStore::put_checkpoint`].
    pub async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let checkpoint = checkpoint.clone();
        self.run(move |s| s.put_checkpoint(&checkpoint)).await
    }

    /// See [`CheckpointStore::latest_checkpoint`].
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.run(|s| s.latest_checkpoint()).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{MemoryStore, SqliteStore};

    fn checkpoint(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            hash: format!("{seq:064x}"),
            ts: "2026-01-01T00:00:00.000Z".into(),
            file: "audit.log".into(),
            public_key: "pk".into(),
            key_pin: "pin".into(),
            signature: "sig".into(),
        }
    }

    fn latest_is_the_last_put(store: &dyn CheckpointStore) {
        assert_eq!(store.latest_checkpoint().unwrap(), None);
        for seq in 1..=(CHECKPOINTS_KEPT as u64 + 5) {
            store.put_checkpoint(&checkpoint(seq)).unwrap();
        }
        assert_eq!(
            store.latest_checkpoint().unwrap(),
            Some(checkpoint(CHECKPOINTS_KEPT as u64 + 5))
        );
    }

    #[test]
    fn memory_keeps_the_latest() {
        latest_is_the_last_put(&MemoryStore::new());
    }

    #[test]
    fn sqlite_keeps_the_latest_bounded_and_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        latest_is_the_last_put(&SqliteStore::open(&path).unwrap());
        let store = SqliteStore::open(&path).unwrap();
        let latest = store.latest_checkpoint().unwrap().unwrap();
        assert_eq!(latest.seq, CHECKPOINTS_KEPT as u64 + 5);
        let rows: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM audit_checkpoints", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            rows, CHECKPOINTS_KEPT as i64,
            "older checkpoints are deleted"
        );
    }
}
