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
//!
//! When a write or fsync fails (a full disk), the log is *unavailable* rather than dead: the
//! writer keeps the unwritten records (bounded), retries with backoff and resumes the same
//! chain; meanwhile durable appends and flushes fail at once (see `thread`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::repair::recover;
use crate::thread::run;
use crate::{AuditError, AuditEvent, AuditRecord, OpenReport};

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
    /// (default 65536). Also the most records the writer keeps while it cannot write: at
    /// that bound `append` reports [`AuditError::Unavailable`] and the writer drops what still
    /// arrives, counting it in the `log_resumed` record it writes when writing works again.
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

pub(crate) type RecordAck = oneshot::Sender<Result<AuditRecord, AuditError>>;
pub(crate) type DoneAck = oneshot::Sender<Result<(), AuditError>>;

/// What handles send the writer thread.
pub(crate) enum Msg {
    Append {
        event: AuditEvent,
        ack: Option<RecordAck>,
    },
    Flush(DoneAck),
    Close(DoneAck),
}

/// State the handles and the writer share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) fsyncs: AtomicU64,
    /// False while the writer cannot write; handles then refuse durable work at once.
    healthy: AtomicBool,
    /// Why the writer cannot write (the latest error), while it cannot.
    reason: Mutex<String>,
    /// Records the writer holds unwritten.
    pub(crate) backlog: AtomicUsize,
    pub(crate) backlog_capacity: usize,
    /// Seq and hash of the last record known to be on disk.
    pub(crate) tail: Mutex<(u64, String)>,
    /// Durable appends and flushes the handles refused during the current outage.
    pub(crate) refused: AtomicU64,
    /// Plain appends the handles refused (backlog full) during the current outage.
    pub(crate) dropped: AtomicU64,
    /// Injected failures (unit tests only).
    #[cfg(test)]
    pub(crate) fault: Arc<crate::fault::Fault>,
}

impl Shared {
    /// Marks the log unavailable because of `reason`.
    pub(crate) fn set_unavailable(&self, reason: &AuditError) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_string();
        self.healthy.store(false, Ordering::SeqCst);
    }

    /// Marks the log writable again.
    pub(crate) fn set_healthy(&self) {
        self.healthy.store(true, Ordering::SeqCst);
    }

    /// [`AuditError::Unavailable`] with the latest reason, if the log is unavailable.
    pub(crate) fn unavailable(&self) -> Option<AuditError> {
        if self.healthy.load(Ordering::SeqCst) {
            return None;
        }
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(AuditError::Unavailable(reason))
    }
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
        let fsyncs = AtomicU64::new(0);
        let (segment, report) = recover(path, &options, &fsyncs)?;
        let shared = Arc::new(Shared {
            tail: Mutex::new(segment.synced.clone()),
            fsyncs,
            healthy: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
            backlog: AtomicUsize::new(0),
            backlog_capacity: options.queue_capacity.max(1),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            #[cfg(test)]
            fault: segment.fault.clone(),
        });
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
    /// [`AuditError::Overloaded`] when the queue is full; [`AuditError::Unavailable`] when the
    /// writer cannot write and its backlog is full.
    pub fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        let shared = &self.inner.shared;
        if let Some(e) = shared.unavailable() {
            if shared.backlog.load(Ordering::Relaxed) >= shared.backlog_capacity {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        self.try_send(Msg::Append { event, ack: None })
    }

    /// Queues `event` now (so records keep call order) and returns a future that completes
    /// with the record once it is written and fsynced. Concurrent calls share one fsync.
    /// A full queue fails at once with [`AuditError::Overloaded`]; while the writer cannot
    /// write, this fails at once with [`AuditError::Unavailable`] and nothing is recorded.
    pub fn append_durable(
        &self,
        event: AuditEvent,
    ) -> impl std::future::Future<Output = Result<AuditRecord, AuditError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let shared = &self.inner.shared;
        let queued = match shared.unavailable() {
            Some(e) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            None => self.try_send(Msg::Append {
                event,
                ack: Some(ack),
            }),
        };
        async move {
            queued?;
            done.await.map_err(|_| AuditError::Closed)?
        }
    }

    /// Completes once everything queued before it is written and fsynced; fails at once with
    /// [`AuditError::Unavailable`] while the writer cannot write.
    pub async fn flush(&self) -> Result<(), AuditError> {
        if let Some(e) = self.inner.shared.unavailable() {
            self.inner.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
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

    /// False while the writer cannot write or fsync (a full disk): durable appends are being
    /// refused. For `/ready` and metrics; it turns true again by itself when a retry succeeds.
    pub fn is_healthy(&self) -> bool {
        self.inner.shared.unavailable().is_none()
    }

    /// Seq and hash of the last record known to be on disk (fsynced; written, with `fsync`
    /// off); `(0, GENESIS_PREV)` for an empty log. What a checkpoint may vouch for: a crash
    /// cannot take it away, so a log that ends before it was cut.
    pub fn durable_tail(&self) -> (u64, String) {
        self.inner
            .shared
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the writer holds unwritten (non-zero only while it cannot write).
    pub fn backlog_len(&self) -> usize {
        self.inner.shared.backlog.load(Ordering::Relaxed)
    }

    /// fsyncs done so far, for metrics and tests.
    pub fn fsync_count(&self) -> u64 {
        self.inner.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Injected failures, for unit tests.
    #[cfg(test)]
    pub(crate) fn fault(&self) -> &crate::fault::Fault {
        &self.inner.shared.fault
    }

    fn try_send(&self, msg: Msg) -> Result<(), AuditError> {
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
