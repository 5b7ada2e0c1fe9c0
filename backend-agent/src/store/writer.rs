//! Group commit for command writes: the store's counterpart of the audit writer.
//!
//! Concurrent commands each need one write at dispatch (the record, `dispatched`) and one at
//! their result. Instead of one transaction (and one blocking-pool hop) per write, callers
//! queue a [`WriteOp`] on a bounded channel; one writer thread takes everything waiting (up
//! to [`MAX_BATCH`]), applies it with [`CommandStore::write_batch`] (SQLite: one transaction,
//! one savepoint per op) and answers each caller with its own outcome.
//!
//! Bounds: the queue holds [`QUEUE`] writes; when it is full a caller waits for room (its
//! request, or the results worker and through it the agent's session, slows down): nothing is
//! dropped. A write is answered only after its batch committed, so an acknowledged write is
//! exactly as durable as a single-statement transaction would have been.
//!
//! Shutdown: the thread holds the channel's receiver and a weak handle on the store; when the
//! last [`Store`](super::Store) handle drops, the channel closes and the thread ends after
//! answering what it already took.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::{Backend, CommandRecord, CommandState, CommandStore, StoreError};

/// Writes waiting for the writer at most; beyond it callers wait for room.
pub const QUEUE: usize = 4096;
/// Most writes in one transaction, bounding how long one batch holds the database.
pub const MAX_BATCH: usize = 512;

/// One queued command write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// [`CommandStore::insert_command`].
    Insert(CommandRecord),
    /// [`CommandStore::update_command_where`].
    Update {
        /// The new state of the record.
        rec: CommandRecord,
        /// Compare-and-set: only while the stored status is this one.
        expected: Option<CommandState>,
    },
}

impl WriteOp {
    /// Applies this op on its own (stores without a batch transaction).
    pub fn apply(&self, store: &(impl CommandStore + ?Sized)) -> Result<bool, StoreError> {
        match self {
            WriteOp::Insert(rec) => store.insert_command(rec).map(|()| true),
            WriteOp::Update { rec, expected } => store.update_command_where(rec, *expected),
        }
    }
}

type Reply = oneshot::Sender<Result<bool, StoreError>>;

/// The queue into the writer thread.
#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<(WriteOp, Reply)>,
}

impl Writer {
    /// Starts the writer thread for `store`; `None` if the thread cannot be spawned (the
    /// caller then writes directly).
    pub(super) fn start(store: &Arc<dyn Backend>) -> Option<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let weak = Arc::downgrade(store);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(rx, weak))
            .map_err(
                |e| tracing::warn!(error = %e, "store writer thread not started; writing directly"),
            )
            .ok()?;
        Some(Writer { tx })
    }

    /// Queues `op` and waits until its batch committed.
    pub(super) async fn write(&self, op: WriteOp) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((op, reply))
            .await
            .map_err(|_| StoreError::Join("store writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Join("store writer dropped a write".into()))?
    }
}

fn run(mut rx: mpsc::Receiver<(WriteOp, Reply)>, store: Weak<dyn Backend>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let (ops, replies): (Vec<WriteOp>, Vec<Reply>) = batch.drain(..).unzip();
        let outcomes = match store.upgrade() {
            Some(store) => store.write_batch(&ops),
            None => return,
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting (request cancelled) does not undo the write.
            let _ = reply.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{tests::command, SqliteStore, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_each_get_their_own_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                let rec = command(&format!("c{i:04}"), "edge-01", CommandState::Dispatched);
                store.insert_command(&rec).await?;
                // A duplicate fails alone: the rest of its batch is kept.
                let dup = store.insert_command(&rec).await;
                assert!(matches!(dup, Err(StoreError::Duplicate(_))), "{dup:?}");
                let mut done = rec.clone();
                done.status = CommandState::Ok;
                let first = store
                    .update_command_if(&done, CommandState::Dispatched)
                    .await?;
                let second = store
                    .update_command_if(&done, CommandState::Dispatched)
                    .await?;
                Ok::<_, StoreError>((first, second))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (first, second) = joined.expect("task").expect("writes");
            assert!(first && !second, "compare-and-set holds inside a batch");
        }
        let events = store.command_events("c0007").await.expect("events");
        let states: Vec<_> = events.into_iter().map(|(s, _)| s).collect();
        assert_eq!(states, [CommandState::Dispatched, CommandState::Ok]);
    }

    #[tokio::test]
    async fn a_missing_record_is_not_found_through_the_writer() {
        let store = Store::memory();
        let rec = command("nope", "edge-01", CommandState::Ok);
        let out = store.update_command_if(&rec, CommandState::Pending).await;
        assert!(matches!(out, Err(StoreError::NotFound(_))), "{out:?}");
    }
}
