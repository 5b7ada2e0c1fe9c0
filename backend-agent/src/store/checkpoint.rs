//! Audit checkpoints: signed `(seq, hash)` marks of the audit chain's tail, kept in the store so
//! records cut off the end of the log are detected (`docs/audit.md`, "Anchored tail").

use agentmesh_audit::Checkpoint;

use super::{Store, StoreError};

/// Checkpoints a store keeps; older ones are deleted as new ones arrive (only the latest is
/// needed to verify, the rest is history for an investigation).
pub const CHECKPOINTS_KEPT: usize = 100;

/// Storage for audit checkpoints, kept per replica (`[cluster] replica_id`; `""` on a single
/// node): each replica's chain is anchored by its own checkpoints only. Methods block; async
/// code goes through [`Store`].
pub trait CheckpointStore: Send + Sync + 'static {
    /// Adds `checkpoint` as `replica`'s latest, deleting all but that replica's newest
    /// [`CHECKPOINTS_KEPT`].
    fn put_replica_checkpoint(
        &self,
        replica: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError>;
    /// `replica`'s most recently added checkpoint, if any.
    fn latest_replica_checkpoint(&self, replica: &str) -> Result<Option<Checkpoint>, StoreError>;
    /// Every replica's latest checkpoint, by replica id.
    fn latest_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError>;
    /// [`CheckpointStore::put_replica_checkpoint`] for the single node (`""`).
    fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.put_replica_checkpoint("", checkpoint)
    }
    /// [`CheckpointStore::latest_replica_checkpoint`] for the single node (`""`).
    fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.latest_replica_checkpoint("")
    }
}

impl Store {
    /// See [`CheckpointStore::put_replica_checkpoint`].
    pub async fn put_checkpoint(
        &self,
        replica: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let (replica, checkpoint) = (replica.to_owned(), checkpoint.clone());
        self.run(move |s| s.put_replica_checkpoint(&replica, &checkpoint))
            .await
    }

    /// See [`CheckpointStore::latest_replica_checkpoint`].
    pub async fn latest_checkpoint(&self, replica: &str) -> Result<Option<Checkpoint>, StoreError> {
        let replica = replica.to_owned();
        self.run(move |s| s.latest_replica_checkpoint(&replica))
            .await
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

    /// Checkpoints of one replica never stand in for another's.
    fn replicas_are_apart(store: &dyn CheckpointStore) {
        for seq in 1..=(CHECKPOINTS_KEPT as u64 + 3) {
            store.put_replica_checkpoint("a", &checkpoint(seq)).unwrap();
        }
        store.put_replica_checkpoint("b", &checkpoint(7)).unwrap();
        store.put_replica_checkpoint("a", &checkpoint(500)).unwrap();
        assert_eq!(
            store.latest_replica_checkpoint("b").unwrap(),
            Some(checkpoint(7)),
            "b's tail is b's even after a wrote more"
        );
        assert_eq!(
            store.latest_replica_checkpoint("a").unwrap(),
            Some(checkpoint(500))
        );
        assert_eq!(store.latest_replica_checkpoint("c").unwrap(), None);
        let mut all = store.latest_checkpoints().unwrap();
        all.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            all,
            vec![("a".into(), checkpoint(500)), ("b".into(), checkpoint(7))]
        );
    }

    #[test]
    fn memory_keeps_the_latest() {
        latest_is_the_last_put(&MemoryStore::new());
        replicas_are_apart(&MemoryStore::new());
    }

    #[test]
    fn sqlite_keeps_checkpoints_per_replica() {
        let dir = tempfile::tempdir().unwrap();
        replicas_are_apart(&SqliteStore::open(&dir.path().join("s.db")).unwrap());
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
