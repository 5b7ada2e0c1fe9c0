//! Durable command records: the agent's at-most-once memory (`docs/protocol.md`, "Execution semantics").
//!
//! One JSON file per command id in `state_dir/results/`, each write atomic and durable (temp
//! file, fsync, rename, fsync of the directory):
//! - before a command runs: `started_ms`, no result;
//! - when it ends: its `result` (`finished_ms`);
//! - when that result has been written to a live session: `delivered_ms`.
//!
//! An in-memory index (id → stage and times) answers every question without touching files;
//! only a result itself is read from disk when it is sent. Opening loads every file: a record a
//! previous process left `started` (it crashed or was killed mid-run) is finished as `failed`
//! with code `interrupted` — never re-run — and becomes pending delivery; unreadable files are
//! logged and skipped.
//!
//! Retention: finished records older than `result_retention_secs` are removed and at most
//! `max_entries` are kept (oldest first out), at open and then at most every [`PRUNE_EVERY`]
//! as commands start. A command id repeated after its record is gone would run again.

mod load;
mod record;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_protocol::ResultFrame;
use tracing::warn;

use record::{read_record, write_atomic, Record, FORMAT};

/// Directory under `state_dir`.
pub const RESULTS_DIR: &str = "results";

/// Default bound on the number of records kept.
pub const MAX_ENTRIES: usize = 10_000;

/// Time-based pruning runs at most this often.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Whether `id` can name a record: 1 to 128 characters of `A-Z a-z 0-9 _ -` (UUIDs and ULIDs
/// fit; anything that could escape the directory does not).
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

/// What opening found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Records loaded.
    pub loaded: usize,
    /// Ids left `started` by the previous process, now finished as `interrupted`.
    pub interrupted: Vec<String>,
    /// Files that could not be read or parsed.
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
}

impl Entry {
    fn of(record: &Record) -> Entry {
        Entry {
            stage: if record.result.is_some() {
                Stage::Finished
            } else {
                Stage::Started
            },
            started_ms: record.started_ms,
            finished_ms: record.finished_ms,
            delivered_ms: record.delivered_ms,
        }
    }

    /// When the record ages from.
    fn age_from(&self) -> u64 {
        self.finished_ms.unwrap_or(self.started_ms)
    }
}

#[derive(Debug)]
struct Index {
    entries: HashMap<String, Entry>,
    last_prune_ms: u64,
}

/// The durable record of every recent command.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    retention_ms: u64,
    max_entries: usize,
    index: Mutex<Index>,
    /// Serialises file writes (read-modify-write of one record must not interleave).
    io: Mutex<()>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Opens (creating it if needed) `state_dir/results`, loads every record, finishes the ones
    /// a previous process left running as `interrupted`, and prunes.
    pub fn open(
        state_dir: &Path,
        retention: Duration,
        max_entries: usize,
    ) -> io::Result<(Store, LoadReport)> {
        let dir = state_dir.join(RESULTS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let store = Store {
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            max_entries: max_entries.max(1),
            index: Mutex::new(Index {
                entries: HashMap::new(),
                last_prune_ms: 0,
            }),
            io: Mutex::new(()),
            dir,
        };
        let mut report = store.load()?;
        for id in store.started_ids() {
            match store.finish_interrupted(&id) {
                Ok(()) => report.interrupted.push(id),
                Err(e) => {
                    warn!(command.id = %id, error = %e, "cannot record an interrupted command")
                }
            }
        }
        report.pruned = store.prune_at(now_ms());
        Ok((store, report))
    }

    /// What is known about `id`.
    pub fn stage(&self, id: &str) -> Option<Stage> {
        lock(&self.index).entries.get(id).map(|e| e.stage)
    }

    /// Whether `id`'s result has been written to a session.
    pub fn is_delivered(&self, id: &str) -> bool {
        lock(&self.index)
            .entries
            .get(id)
            .is_some_and(|e| e.delivered_ms.is_some())
    }

    /// Records, durably, that `meta` is about to run.
    pub fn record_started(&self, meta: &Meta) -> io::Result<()> {
        let now = now_ms();
        let due = {
            let index = lock(&self.index);
            index.entries.len() >= self.max_entries
                || now.saturating_sub(index.last_prune_ms)
                    >= u64::try_from(PRUNE_EVERY.as_millis()).unwrap_or(u64::MAX)
        };
        if due {
            self.prune_at(now);
        }
        let _io = lock(&self.io);
        self.write(&Record {
            format: FORMAT,
            command_id: meta.command_id.clone(),
            verb: meta.verb.clone(),
            requested_by: meta.requested_by.clone(),
            started_ms: now,
            finished_ms: None,
            delivered_ms: None,
            result: None,
        })
    }

    /// Stores, durably, the result of a command recorded as started at `started_ms`.
    pub fn record_finished(
        &self,
        meta: &Meta,
        started_ms: u64,
        result: &ResultFrame,
    ) -> io::Result<()> {
        let _io = lock(&self.io);
        self.write(&Record {
            format: FORMAT,
            command_id: meta.command_id.clone(),
            verb: meta.verb.clone(),
            requested_by: meta.requested_by.clone(),
            started_ms,
            finished_ms: Some(now_ms()),
            delivered_ms: None,
            result: Some(result.clone()),
        })
    }

    /// Records, durably, that `id`'s result was written to a session now. `false` when there is
    /// no stored result under that id.
    pub fn mark_delivered(&self, id: &str) -> io::Result<bool> {
        if self.stage(id) != Some(Stage::Finished) {
            return Ok(false);
        }
        let _io = lock(&self.io);
        let mut record = read_record(&self.path(id))?;
        record.delivered_ms = Some(now_ms());
        self.write(&record)?;
        Ok(true)
    }

    /// The stored result of `id`, read from disk.
    pub fn result(&self, id: &str) -> io::Result<Option<ResultFrame>> {
        if !valid_command_id(id) {
            return Ok(None);
        }
        match read_record(&self.path(id)) {
            Ok(record) => Ok(record.result),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ids of stored results never written to a session, oldest first.
    pub fn undelivered(&self) -> Vec<String> {
        let index = lock(&self.index);
        let mut ids: Vec<(u64, &String)> = index
            .entries
            .iter()
            .filter(|(_, e)| e.stage == Stage::Finished && e.delivered_ms.is_none())
            .map(|(id, e)| (e.age_from(), id))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Ids of results last written to a session at or after `since_ms`, oldest first.
    pub fn delivered_since(&self, since_ms: u64) -> Vec<String> {
        let index = lock(&self.index);
        let mut ids: Vec<(u64, &String)> = index
            .entries
            .iter()
            .filter_map(|(id, e)| e.delivered_ms.filter(|t| *t >= since_ms).map(|t| (t, id)))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// When a result was last written to a session.
    pub fn last_delivery_ms(&self) -> Option<u64> {
        lock(&self.index)
            .entries
            .values()
            .filter_map(|e| e.delivered_ms)
            .max()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        lock(&self.index).entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies retention as of `now_ms`; returns how many records were removed. Records still
    /// `started` (running) are never removed.
    pub fn prune_at(&self, now_ms: u64) -> usize {
        let _io = lock(&self.io);
        let victims = {
            let mut index = lock(&self.index);
            index.last_prune_ms = now_ms;
            let mut finished: Vec<(u64, String, bool)> = index
                .entries
                .iter()
                .filter(|(_, e)| e.stage == Stage::Finished)
                .map(|(id, e)| (e.age_from(), id.clone(), e.delivered_ms.is_some()))
                .collect();
            finished.sort();
            let expired = finished
                .iter()
                .take_while(|(t, _, _)| now_ms.saturating_sub(*t) > self.retention_ms)
                .count();
            // Leave room for the record about to be added.
            let over = index.entries.len().saturating_sub(self.max_entries - 1);
            let n = expired.max(over).min(finished.len());
            finished.truncate(n);
            for (_, id, _) in &finished {
                index.entries.remove(id);
            }
            finished
        };
        let undelivered = victims.iter().filter(|(_, _, d)| !d).count();
        if undelivered > 0 {
            warn!(
                count = undelivered,
                "dropping command results that were never delivered (retention)"
            );
        }
        for (_, id, _) in &victims {
            if let Err(e) = std::fs::remove_file(self.path(id)) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(command.id = %id, error = %e, "cannot remove an old command record");
                }
            }
        }
        victims.len()
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `record` atomically and durably, then updates the index. Callers hold `io`.
    fn write(&self, record: &Record) -> io::Result<()> {
        if !valid_command_id(&record.command_id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a valid command id",
            ));
        }
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        let name = format!("{}.json", record.command_id);
        write_atomic(&self.dir, &name, &bytes)?;
        lock(&self.index)
            .entries
            .insert(record.command_id.clone(), Entry::of(record));
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
