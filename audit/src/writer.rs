//! [`AuditLog`]: the cloneable handle, and the one thread that owns the file.
//!
//! Handles put messages on a bounded queue. The writer takes everything queued at once (group
//! commit), seals and writes it with one `write`, fsyncs once if anyone in the batch asked for
//! durability, and only then completes the batch's waiters:
//!
//! ```text
//!  append ──┐                        ┌─ write(batch) ─ fsync ─┬─▶ ack append_durable #1
//!  append_durable ─▶ [ bounded queue ] ─▶ writer thread        ├─▶ ack append_durable #2
//!  flush ───┘                        └─ (rotate if full)      └─▶ ack flush
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::repair::recover;
use crate::segment::Segment;
use crate::{AuditError, AuditEvent, AuditRecord, OpenReport};

/// Most messages the writer takes per batch, bounding one write's size and its waiters' wait.
const MAX_BATCH: usize = 4096;
/// Unsynced data written by plain appends is fsynced after this much idle time.
const IDLE_SYNC: Duration = Duration::from_secs(1);
/// How long `flush` and `close` wait between tries when the queue is full.
const FULL_QUEUE_RETRY: Duration = Duration::from_millis(2);

/// How a log is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// fsync before completing durable appends and flushes (default true). Without it, records
    /// are written but a power loss can lose them; only for benchmarks and tests.
    pub fsync: bool,
    /// Rotate before the current file would grow past this many bytes (default 64 MiB).
    pub max_file_bytes: u64,
    /// Messages the queue holds before `append` reports [`AuditError::Overloaded`]
    /// (default 65536).
    pub queue_capacity: usize,
}

impl Default for AuditOptions {
    fn default() -> AuditOptions {
        AuditOptions {
            fsync: true,
            max_file_bytes: 64 * 1024 * 1024,
            queue_capacity: 65536,
        }
    }
}

type RecordAck = oneshot::Sender<Result<AuditRecord, AuditError>>;
type DoneAck = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    Append {
        event: AuditEvent,
        ack: Option<RecordAck>,
    },
    Flush(DoneAck),
    Close(DoneAck),
}

/// State the handles and the writer share.
#[derive(Debug, Default)]
struct Shared {
    fsyncs: AtomicU64,
    /// Set once when a write or fsync fails; every later append fails fast with it.
    failed: OnceLock<String>,
}

/// A handle to an open audit log; clone it freely. The writer stops (after draining the queue
/// and fsyncing) when [`AuditLog::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<SyncSender<Msg>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating it and its directory if needed, mode 0600/0700) the log at `path`,
    /// repairs a torn tail, and starts the writer thread. See [`OpenReport`].
    pub fn open(path: &Path, options: AuditOptions) -> Result<(AuditLog, OpenReport), AuditError> {
        let shared = Arc::new(Shared::default());
        let (segment, report) = recover(path, &options, &shared.fsyncs)?;
        let (tx, rx) = mpsc::sync_channel(options.queue_capacity.max(1));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(segment, &rx, &thread_shared))
            .map_err(|e| AuditError::io("start writer thread", e))?;
        let inner = Inner {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            path: path.to_path_buf(),
        };
        Ok((
            AuditLog {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// Queues `event` and returns at once; the record is written soon but is not yet durable.
    /// [`AuditError::Overloaded`] when the queue is full.
    pub fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.try_send(Msg::Append { event, ack: None })
    }

    /// Queues `event` now (so records keep call order) and returns a future that completes
    /// with the record once it is written and fsynced. Concurrent calls share one fsync.
    /// A full queue fails at once with [`AuditError::Overloaded`].
    pub fn append_durable(
        &self,
        event: AuditEvent,
    ) -> impl std::future::Future<Output = Result<AuditRecord, AuditError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let queued = self.try_send(Msg::Append {
            event,
            ack: Some(ack),
        });
        async move {
            queued?;
            done.await.map_err(|_| AuditError::Closed)?
        }
    }

    /// Completes once everything queued before it is written and fsynced.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.send_waiting(Msg::Flush(ack)).await?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Drains the queue, fsyncs (even with `fsync: false`) and stops the writer, for every
    /// handle: later appends fail with [`AuditError::Closed`]. Closing a closed log is a no-op.
    pub async fn close(self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        match self.send_waiting(Msg::Close(ack)).await {
            Err(AuditError::Closed) => return Ok(()),
            other => other?,
        }
        done.await.unwrap_or(Ok(()))
    }

    /// fsyncs done so far, for metrics and tests.
    pub fn fsync_count(&self) -> u64 {
        self.inner.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn try_send(&self, msg: Msg) -> Result<(), AuditError> {
        if let Some(reason) = self.inner.shared.failed.get() {
            return Err(AuditError::Failed(reason.clone()));
        }
        let tx = self.inner.tx.as_ref().ok_or(AuditError::Closed)?;
        tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => AuditError::Overloaded,
            TrySendError::Disconnected(_) => AuditError::Closed,
        })
    }

    /// Like `try_send`, but waits (without blocking the runtime) while the queue is full.
    async fn send_waiting(&self, mut msg: Msg) -> Result<(), AuditError> {
        let tx = self.inner.tx.as_ref().ok_or(AuditError::Closed)?;
        loop {
            match tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => return Err(AuditError::Closed),
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    tokio::time::sleep(FULL_QUEUE_RETRY).await;
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it, fsync and exit; waiting for that makes
        // dropping the last handle a graceful shutdown.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "audit writer thread panicked");
            }
        }
    }
}

/// The writer thread: batches until the queue closes or a `Close` arrives.
fn run(mut segment: Segment, rx: &Receiver<Msg>, shared: &Shared) {
    // When plain appends first left unsynced data; it is synced IDLE_SYNC later at the latest,
    // busy or not.
    let mut dirty_since: Option<Instant> = None;
    loop {
        let first = match dirty_since {
            Some(since) => match rx.recv_timeout(IDLE_SYNC.saturating_sub(since.elapsed())) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => break,
            },
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            if commit(&mut segment, batch, shared) {
                return;
            }
        }
        if segment.dirty {
            let since = *dirty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE_SYNC && shared.failed.get().is_none() {
                if let Err(e) = segment.sync(false, &shared.fsyncs) {
                    fail(shared, &e);
                }
            }
        }
        // Without fsync the data stays "dirty"; nothing more to do for it.
        if !segment.dirty || !segment.options.fsync || shared.failed.get().is_some() {
            dirty_since = None;
        }
    }
    if shared.failed.get().is_none() {
        if let Err(e) = segment.sync(true, &shared.fsyncs) {
            fail(shared, &e);
        }
    }
}

/// Writes one batch, fsyncs if needed, completes its waiters; true if it held a `Close`.
fn commit(segment: &mut Segment, batch: Vec<Msg>, shared: &Shared) -> bool {
    let mut events = Vec::new();
    let mut record_acks = Vec::new();
    let mut done_acks = Vec::new();
    let mut closing = false;
    let mut durable = false;
    for msg in batch {
        match msg {
            // Messages behind a `Close` are dropped, which fails their waiters with `Closed`.
            _ if closing => {}
            Msg::Append { event, ack } => {
                durable |= ack.is_some();
                events.push(event);
                record_acks.push(ack);
            }
            Msg::Flush(ack) => {
                durable = true;
                done_acks.push(ack);
            }
            Msg::Close(ack) => {
                closing = true;
                done_acks.push(ack);
            }
        }
    }
    let result = match shared.failed.get() {
        Some(reason) => Err(AuditError::Failed(reason.clone())),
        None => write_and_sync(segment, events, durable, closing, shared),
    };
    match result {
        Ok(records) => {
            for (ack, record) in record_acks.into_iter().zip(records) {
                if let Some(ack) = ack {
                    let _ = ack.send(Ok(record));
                }
            }
            for ack in done_acks {
                let _ = ack.send(Ok(()));
            }
        }
        Err(e) => {
            for ack in record_acks.into_iter().flatten() {
                let _ = ack.send(Err(e.clone()));
            }
            for ack in done_acks {
                let _ = ack.send(Err(e.clone()));
            }
        }
    }
    closing
}

fn write_and_sync(
    segment: &mut Segment,
    events: Vec<AuditEvent>,
    durable: bool,
    closing: bool,
    shared: &Shared,
) -> Result<Vec<AuditRecord>, AuditError> {
    let result = segment
        .write_events(events, &shared.fsyncs)
        .and_then(|records| {
            if durable || closing {
                segment.sync(closing, &shared.fsyncs)?;
            }
            Ok(records)
        });
    if let Err(e) = &result {
        fail(shared, e);
    }
    result
}

/// Marks the log failed: after a failed write or fsync the file's state is unknown, so the
/// writer refuses everything until the log is reopened (and repaired).
fn fail(shared: &Shared, error: &AuditError) {
    tracing::error!(error = %error, "audit log write failed; refusing further appends");
    let _ = shared.failed.set(error.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_futures_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send_static<T: Send + 'static>(_: &T) {}
        send_sync::<AuditLog>();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) =
            AuditLog::open(&dir.path().join("a.jsonl"), AuditOptions::default()).unwrap();
        let fut = log.append_durable(AuditEvent::new("k"));
        send_static(&fut);
        drop(fut);
        drop(log);
    }
}
