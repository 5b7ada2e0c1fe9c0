//! Durable command records: the agent's at-most-once memory (`docs/protocol.md`, "Execution semantics").
//!
//! One append-only journal, `state_dir/results/journal` (module `journal`), holds per command:
//! - `start` before it runs. With the audit log on, the durable `command_requested` audit
//!   record *is* the at-most-once marker (one fsync, group-committed with other commands), so
//!   `start` is only written, not fsynced, and carries that record's seq; without an audit log
//!   `start` itself is fsynced.
//! - `finish` with its signed result, fsynced (group commit) before the result is sent;
//! - `delivered` once written to a session: kept in memory and written lazily, never fsynced
//!   (losing one only resends the result; the hub ignores duplicates).
//!
//! So a command costs two fsyncs on the agent: one before it runs, one after. Opening replays
//! the journal (a torn last line is cut), finishes every command left `started` as `failed`
//! with code `interrupted` — never re-run — and, since a `start` may not have survived a power
//! loss, also every command the audit log admitted after the journal's last `mark` that the
//! journal does not know (module `load`). Records of the previous format (one JSON file per id,
//! up to version 0.x) are imported on open and their files removed.
//!
//! An in-memory index (id → stage, times, where its lines are) answers every question without
//! touching the file; only a result itself is read back when it is re-sent.
//!
//! Retention: finished records older than `result_retention_secs` are dropped and at most
//! `max_entries` are kept (oldest first out), at open and then at most every [`PRUNE_EVERY`]
//! as commands start. A command id repeated after its record is gone would run again. The
//! journal is rewritten without what was dropped once it holds more than twice what is live
//! (and at least [`COMPACT_MIN_BYTES`]).

mod journal;
mod load;
mod record;
mod retention;
mod scan;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_protocol::ResultFrame;
use tracing::warn;

use journal::{encode, Journal, Op, Span, Syncer};

pub use journal::JOURNAL;

/// Directory under `state_dir`.
pub const RESULTS_DIR: &str = "results";

/// Default bound on the number of records kept.
pub const MAX_ENTRIES: usize = 10_000;

/// Time-based pruning runs at most this often.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The journal is never compacted below this size.
pub const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Whether `id` can name a record: 1 to 128 characters of `A-Z a-z 0-9 _ -` (UUIDs and ULIDs
/// fit; the previous format used ids as file names).
pub fn valid_command_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What the store knows about a command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Recorded as started; no result yet.
    Started,
    /// Its result is stored.
    Finished,
}

/// Who asked for what; written with every record (never the arguments: they may be secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The command id.
    pub command_id: String,
    /// Its verb.
    pub verb: String,
    /// The operator token name.
    pub requested_by: String,
}

/// A result on its way to the hub (or as stored): the frame, and the key pin and message
/// limit it was signed and fitted for (none when it is unsigned).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The frame.
    pub frame: ResultFrame,
    /// `(pin, limit)` of its signature.
    pub sealed: Option<(String, usize)>,
}

/// Where the audit log is, for the power-loss check at open.
#[derive(Debug, Clone)]
pub struct AuditHint {
    /// The audit log's current file.
    pub path: PathBuf,
    /// Seq of its last durable record now (nothing is admitted while the store opens).
    pub durable_seq: u64,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Records loaded.
    pub loaded: usize,
    /// Ids left `started` by the previous process, now finished as `interrupted`.
    pub interrupted: Vec<String>,
    /// Records imported from the previous one-file-per-command format.
    pub migrated: usize,
    /// Files or lines that could not be read or parsed.
    pub skipped: usize,
    /// Records removed by retention.
    pub pruned: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    stage: Stage,
    started_ms: u64,
    finished_ms: Option<u64>,
    delivered_ms: Option<u64>,
    start: Option<Span>,
    finish: Option<Span>,
}

impl Entry {
    /// When the record ages from.
    fn age_from(&self) -> u64 {
        self.finished_ms.unwrap_or(self.started_ms)
    }

    fn bytes(&self) -> u64 {
        [self.start, self.finish]
            .iter()
            .flatten()
            .map(|s| u64::from(s.len))
            .sum()
    }
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    entries: HashMap<String, Entry>,
    last_prune_ms: u64,
    /// Highest audit seq of a `start` written so far.
    max_seq: u64,
    /// The audit seq the journal's last `mark` vouches for.
    mark: u64,
}

/// The durable record of every recent command.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    retention_ms: u64,
    max_entries: usize,
    inner: Mutex<Inner>,
    syncer: Mutex<Syncer>,
    /// Commands whose durable audit record is queued but whose `start` is not written yet: a
    /// `mark` may only be written while there are none (see [`Store::admitting`]).
    admitting: AtomicUsize,
}

/// Counts a command between queueing its audit record and writing its `start`.
#[derive(Debug)]
pub struct Admitting {
    store: Arc<Store>,
}

impl Drop for Admitting {
    fn drop(&mut self) {
        self.store.admitting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Opens (creating it if needed) `state_dir/results`, replays the journal (importing
    /// records of the previous format), finishes the commands a previous process left running
    /// as `interrupted`, and prunes.
    pub fn open(
        state_dir: &Path,
        retention: Duration,
        max_entries: usize,
        audit: Option<AuditHint>,
    ) -> io::Result<(Store, LoadReport)> {
        let dir = state_dir.join(RESULTS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        load::open(dir, retention, max_entries, audit)
    }

    /// Call when a command's durable audit record is queued; drop the guard once its
    /// `start` is written (or it will not run).
    pub fn admitting(self: &Arc<Self>) -> Admitting {
        self.admitting.fetch_add(1, Ordering::AcqRel);
        Admitting {
            store: Arc::clone(self),
        }
    }

    /// Records that `meta` is about to run; returns the start time. With `audit_seq` (its
    /// `command_requested` record, already durable) the line is only written; without, it is
    /// made durable here. Blocking.
    pub fn record_started(&self, meta: &Meta, audit_seq: Option<u64>) -> io::Result<u64> {
        if !valid_command_id(&meta.command_id) {
            return Err(invalid_id());
        }
        let now = now_ms();
        self.prune_if_due(now);
        let line = encode(&Op::Start {
            id: meta.command_id.clone(),
            verb: meta.verb.clone(),
            by: meta.requested_by.clone(),
            ms: now,
            audit_seq,
        })?;
        let at = {
            let mut inner = lock(&self.inner);
            let span = inner.journal.append(&line)?;
            if let Some(seq) = audit_seq {
                inner.max_seq = inner.max_seq.max(seq);
            }
            inner.entries.insert(
                meta.command_id.clone(),
                Entry {
                    stage: Stage::Started,
                    started_ms: now,
                    finished_ms: None,
                    delivered_ms: None,
                    start: Some(span),
                    finish: None,
                },
            );
            inner.journal.position()
        };
        if audit_seq.is_none() {
            self.sync(at)?;
        }
        Ok(now)
    }

    /// Stores, durably, the result of a command; `sealed` is the `(pin, limit)` it was signed
    /// and fitted for. Blocking.
    pub fn record_finished(
        &self,
        meta: &Meta,
        started_ms: u64,
        result: &ResultFrame,
        sealed: Option<(&str, usize)>,
    ) -> io::Result<()> {
        if !valid_command_id(&meta.command_id) {
            return Err(invalid_id());
        }
        let now = now_ms();
        let line = encode(&Op::Finish {
            id: meta.command_id.clone(),
            ms: now,
            pin: sealed.map(|s| s.0.to_owned()),
            limit: sealed.map(|s| s.1),
            result: result.clone(),
        })?;
        let at = {
            let mut inner = lock(&self.inner);
            let span = inner.journal.append(&line)?;
            let entry = inner
                .entries
                .entry(meta.command_id.clone())
                .or_insert(Entry {
                    stage: Stage::Started,
                    started_ms,
                    finished_ms: None,
                    delivered_ms: None,
                    start: None,
                    finish: None,
                });
            entry.stage = Stage::Finished;
            entry.finished_ms = Some(now);
            entry.finish = Some(span);
            self.mark_if_quiet(&mut inner)?;
            inner.journal.position()
        };
        self.sync(at)?;
        self.compact_if_due();
        Ok(())
    }

    /// Records that `id`'s result was written to a session now (in memory; on disk lazily).
    /// `false` when there is no stored result under that id.
    pub fn mark_delivered(&self, id: &str) -> io::Result<bool> {
        let now = now_ms();
        let mut inner = lock(&self.inner);
        match inner.entries.get_mut(id) {
            Some(e) if e.stage == Stage::Finished => e.delivered_ms = Some(now),
            _ => return Ok(false),
        }
        let line = encode(&Op::Delivered {
            id: id.to_owned(),
            ms: now,
        })?;
        inner.journal.append_lazy(&line)?;
        Ok(true)
    }

    /// Writes what is kept in memory only (delivery marks); for shutdown. Blocking.
    pub fn flush(&self) -> io::Result<()> {
        lock(&self.inner).journal.flush_lazy()
    }

    /// Appends a `mark` when no command is between its audit record and its `start`.
    fn mark_if_quiet(&self, inner: &mut Inner) -> io::Result<()> {
        if inner.max_seq > inner.mark && self.admitting.load(Ordering::Acquire) == 0 {
            let seq = inner.max_seq;
            inner
                .journal
                .append(&encode(&Op::Mark { audit_seq: seq })?)?;
            inner.mark = seq;
        }
        Ok(())
    }

    /// Makes the journal durable up to `at` (group commit).
    fn sync(&self, at: (u64, u64)) -> io::Result<()> {
        let current = lock(&self.inner).journal.position();
        lock(&self.syncer).sync_to(at, current)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            warn!(error = %e, "cannot write delivery marks to the command journal");
        }
    }
}

fn invalid_id() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a valid command id")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
