//! The writer thread: group commit, and riding out a disk that cannot take writes.
//!
//! Appends become unsealed records in a backlog; each round the writer places the whole
//! backlog on the chain, writes it with one `write` and fsyncs once if anyone asked for
//! durability. When a write or fsync fails:
//!
//! - the partial line is cut and the chain position rolls back to the last written record;
//! - durable appends and flushes in flight fail at once with [`AuditError::Unavailable`]
//!   (their records are dropped, so a refused command leaves no `command_requested`), and the
//!   handles refuse new ones until writing works again;
//! - plain appends stay in the backlog, up to `backlog_capacity`; beyond it they are dropped and
//!   counted;
//! - the writer retries with backoff ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]) and, when a
//!   write and fsync succeed, continues the same chain: the backlog plus one `log_resumed`
//!   record saying since when writes failed, why, and what was refused or dropped.
//!
//! A record is acknowledged only after it is written and fsynced, and a written record is never
//! written again, so acknowledged records are neither lost nor duplicated.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::record::{kinds, now_ts};
use crate::segment::Segment;
use crate::writer::{DoneAck, Msg, RecordAck, Shared};
use crate::{AuditError, AuditEvent, AuditRecord};

/// Most messages the writer takes per batch, bounding one write's size and its waiters' wait.
const MAX_BATCH: usize = 4096;
/// Unsynced data written by plain appends is fsynced after this much idle time.
const IDLE_SYNC: Duration = Duration::from_secs(1);
/// First wait before retrying a failed write.
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between retries.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// One record waiting to be written, and who waits for it to be durable.
struct Pending {
    record: AuditRecord,
    ack: Option<RecordAck>,
}

/// What the writer remembers about a stretch of failed writes, for the `log_resumed` record.
struct Outage {
    since: String,
    first_error: String,
    last_error: String,
    refused: u64,
    dropped: u64,
    retries: u64,
    retry_at: Instant,
    backoff: Duration,
}

impl Outage {
    /// Durable appends refused and plain appends dropped, by the writer and the handles.
    fn totals(&self, shared: &Shared) -> (u64, u64) {
        (
            self.refused + shared.refused.load(Ordering::Relaxed),
            self.dropped + shared.dropped.load(Ordering::Relaxed),
        )
    }

    /// The `log_resumed` record.
    fn resumed_record(&self, shared: &Shared) -> AuditRecord {
        let (refused, dropped) = self.totals(shared);
        let event = AuditEvent::new(kinds::LOG_RESUMED).details(json!({
            "failed_since": self.since,
            "first_error": self.first_error,
            "last_error": self.last_error,
            "retries": self.retries,
            "refused_durable": refused,
            "dropped": dropped,
        }));
        AuditRecord::unsealed(event, now_ts())
    }
}

struct Writer<'a> {
    segment: Segment,
    shared: &'a Shared,
    backlog: VecDeque<Pending>,
    flushes: Vec<DoneAck>,
    outage: Option<Outage>,
    /// When plain appends first left unsynced data; synced IDLE_SYNC later at the latest.
    dirty_since: Option<Instant>,
}

/// Runs the writer until the queue closes or a `Close` arrives.
pub(crate) fn run(segment: Segment, rx: &Receiver<Msg>, shared: &Shared) {
    let mut w = Writer {
        segment,
        shared,
        backlog: VecDeque::new(),
        flushes: Vec::new(),
        outage: None,
        dirty_since: None,
    };
    loop {
        let first = match w.deadline() {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
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
            if let Some(close) = w.take(batch) {
                let result = w.finish();
                let _ = close.send(result);
                return;
            }
        }
        w.tick();
    }
    let _ = w.finish();
}

impl Writer<'_> {
    /// When the writer must wake up without a message: an idle fsync or a retry.
    fn deadline(&self) -> Option<Instant> {
        match &self.outage {
            Some(o) => Some(o.retry_at),
            None => self.dirty_since.map(|since| since + IDLE_SYNC),
        }
    }

    /// Takes one batch of messages and writes it; returns the ack of a `Close` in it.
    fn take(&mut self, batch: Vec<Msg>) -> Option<DoneAck> {
        let mut close = None;
        let mut durable = false;
        for msg in batch {
            match msg {
                // Messages behind a `Close` are dropped, which fails their waiters with `Closed`.
                _ if close.is_some() => {}
                Msg::Append { event, ack } => {
                    durable |= ack.is_some();
                    self.accept(event, ack);
                }
                Msg::Flush(ack) => match self.unavailable() {
                    Some(e) => {
                        let _ = ack.send(Err(e));
                    }
                    None => {
                        durable = true;
                        self.flushes.push(ack);
                    }
                },
                Msg::Close(ack) => close = Some(ack),
            }
        }
        if self.outage.is_none() && close.is_none() {
            self.write(durable, false);
        }
        self.shared
            .backlog
            .store(self.backlog.len(), Ordering::Relaxed);
        close
    }

    fn accept(&mut self, event: AuditEvent, ack: Option<RecordAck>) {
        let capacity = self.shared.backlog_capacity;
        if let Some(outage) = &mut self.outage {
            if let Some(ack) = ack {
                outage.refused += 1;
                let _ = ack.send(Err(AuditError::Unavailable(outage.last_error.clone())));
                return;
            }
            if self.backlog.len() >= capacity {
                outage.dropped += 1;
                return;
            }
        }
        let record = AuditRecord::unsealed(event, now_ts());
        self.backlog.push_back(Pending { record, ack });
    }

    /// Writes the backlog (plus a `log_resumed` record after an outage) and fsyncs when
    /// `durable`, `closing`, or recovering; completes or fails the waiters. True on success.
    fn write(&mut self, durable: bool, closing: bool) -> bool {
        let recovering = self.outage.is_some();
        if recovering {
            if let Err(e) = self.segment.cut_partial() {
                self.failed(e, 0, Vec::new());
                return false;
            }
        }
        let mut records = Vec::with_capacity(self.backlog.len() + 1);
        let mut acks = Vec::with_capacity(self.backlog.len() + 1);
        for p in self.backlog.drain(..) {
            records.push(p.record);
            acks.push(p.ack);
        }
        if let Some(outage) = &self.outage {
            records.push(outage.resumed_record(self.shared));
            acks.push(None);
        }
        let fsyncs = &self.shared.fsyncs;
        let (written, result) = self.segment.write_records(&mut records, fsyncs);
        let result = result.and_then(|()| {
            if durable || closing || recovering || !self.flushes.is_empty() {
                self.segment.sync(closing, fsyncs)
            } else {
                Ok(())
            }
        });
        let mut pending: Vec<Pending> = records
            .into_iter()
            .zip(acks)
            .map(|(record, ack)| Pending { record, ack })
            .collect();
        match result {
            Ok(()) => {
                for p in pending {
                    if let Some(ack) = p.ack {
                        let _ = ack.send(Ok(p.record));
                    }
                }
                for ack in self.flushes.drain(..) {
                    let _ = ack.send(Ok(()));
                }
                if let Some(o) = self.outage.take() {
                    let (refused, dropped) = o.totals(self.shared);
                    tracing::warn!(
                        since = %o.since,
                        retries = o.retries,
                        refused_durable = refused,
                        dropped,
                        "audit log writable again; chain resumed"
                    );
                    self.shared.refused.store(0, Ordering::Relaxed);
                    self.shared.dropped.store(0, Ordering::Relaxed);
                    self.shared.set_healthy();
                }
                self.after_write();
                true
            }
            Err(e) => {
                if recovering {
                    // The `log_resumed` record is made afresh on the next success.
                    pending.pop();
                }
                self.failed(e, written, pending);
                false
            }
        }
    }

    /// Enters (or stays in) an outage after `error`: the first `written` of `pending` are in
    /// the file, the rest go back to the backlog unless someone waits for them durably.
    fn failed(&mut self, error: AuditError, written: usize, pending: Vec<Pending>) {
        self.shared.set_unavailable(&error);
        let message = error.to_string();
        let outage = match &mut self.outage {
            Some(o) => {
                o.retries += 1;
                o.last_error = message;
                o.backoff = (o.backoff * 2).min(RETRY_MAX);
                tracing::debug!(error = %error, "audit log still cannot write");
                o
            }
            None => {
                tracing::error!(error = %error, "audit log cannot write; refusing durable appends and retrying");
                self.outage.insert(Outage {
                    since: now_ts(),
                    first_error: message.clone(),
                    last_error: message,
                    refused: 0,
                    dropped: 0,
                    retries: 0,
                    retry_at: Instant::now(),
                    backoff: RETRY_FIRST,
                })
            }
        };
        outage.retry_at = Instant::now() + outage.backoff;
        let refusal = AuditError::Unavailable(outage.last_error.clone());
        for (i, p) in pending.into_iter().enumerate() {
            match p.ack {
                // Written but maybe not durable, or not written: either way not acknowledged.
                Some(ack) => {
                    outage.refused += u64::from(i >= written);
                    let _ = ack.send(Err(refusal.clone()));
                }
                None if i >= written => {
                    self.backlog.push_back(Pending {
                        record: p.record,
                        ack: None,
                    });
                }
                None => {}
            }
        }
        for ack in self.flushes.drain(..) {
            let _ = ack.send(Err(refusal.clone()));
        }
        self.shared
            .backlog
            .store(self.backlog.len(), Ordering::Relaxed);
    }

    fn unavailable(&self) -> Option<AuditError> {
        self.outage
            .as_ref()
            .map(|o| AuditError::Unavailable(o.last_error.clone()))
    }

    /// Publishes the synced tail; remembers unsynced data for the idle fsync.
    fn after_write(&mut self) {
        let mut tail = self.shared.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.0 != self.segment.synced.0 {
            *tail = self.segment.synced.clone();
        }
        drop(tail);
        if self.segment.dirty && self.segment.options.fsync {
            self.dirty_since.get_or_insert_with(Instant::now);
        } else {
            self.dirty_since = None;
        }
    }

    /// Retries after an outage, or fsyncs data plain appends left unsynced.
    fn tick(&mut self) {
        let now = Instant::now();
        match &self.outage {
            Some(o) if now >= o.retry_at => {
                self.write(false, false);
                self.shared
                    .backlog
                    .store(self.backlog.len(), Ordering::Relaxed);
            }
            Some(_) => {}
            None => {
                if matches!(self.dirty_since, Some(since) if now >= since + IDLE_SYNC) {
                    if let Err(e) = self.segment.sync(false, &self.shared.fsyncs) {
                        self.failed(e, 0, Vec::new());
                    }
                    self.after_write();
                }
            }
        }
    }

    /// Last write and fsync at close (even with `fsync: false`); a backlog that still cannot be
    /// written is lost, loudly.
    fn finish(&mut self) -> Result<(), AuditError> {
        if self.write(false, true) {
            return Ok(());
        }
        let unwritten = self.backlog.len();
        tracing::error!(
            unwritten,
            "audit log closed while it cannot write; unwritten records are lost"
        );
        Err(self
            .unavailable()
            .unwrap_or_else(|| AuditError::Unavailable("closed".into())))
    }
}

#[cfg(test)]
#[path = "thread_tests.rs"]
mod tests;
