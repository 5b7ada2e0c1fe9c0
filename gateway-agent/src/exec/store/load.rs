//! Opening the store: replay, import of the previous format, commands left running finished
//! as `interrupted`, and compaction.

use std::collections::HashMap;
use std::io::{self, BufRead as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::Duration;

use agentmesh_protocol::{CommandStatus, ErrorBody, ResultFrame};
use tracing::warn;

use super::journal::{decode, encode, read_at, Journal, Op, Span, Syncer, JOURNAL};
use super::record::{read_record, Record};
use super::{
    lock, now_ms, scan, valid_command_id, AuditHint, Entry, Inner, LoadReport, Stage, Store,
};
use crate::exec::outcome;

/// What replaying the journal file found.
#[derive(Default)]
struct Replay {
    entries: HashMap<String, Entry>,
    /// Where the valid prefix ends.
    valid: u64,
    max_seq: u64,
    /// The last `mark`, if the journal has one.
    mark: Option<u64>,
    torn: bool,
}

pub(super) fn open(
    dir: PathBuf,
    retention: Duration,
    max_entries: usize,
    audit: Option<AuditHint>,
) -> io::Result<(Store, LoadReport)> {
    let mut report = LoadReport::default();
    let replay = replay(&dir.join(JOURNAL))?;
    if replay.torn {
        warn!(dir = %dir.display(), "command journal had a torn last record (crash); cut");
        report.skipped += 1;
    }
    report.loaded = replay.entries.len();
    let journal = Journal::open(&dir, replay.valid)?;
    let syncer = Syncer::new(&journal)?;
    let store = Store {
        retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
        max_entries: max_entries.max(1),
        inner: Mutex::new(Inner {
            journal,
            entries: replay.entries,
            last_prune_ms: 0,
            max_seq: replay.max_seq,
            mark: replay.mark.unwrap_or(0),
        }),
        syncer: Mutex::new(syncer),
        admitting: AtomicUsize::new(0),
        dir,
    };
    let legacy = store.import_legacy(&mut report)?;
    if let (Some(hint), Some(mark)) = (&audit, replay.mark) {
        // Only a journal that has a mark was written by an agent that relied on the audit
        // log for its start markers; the previous format and audit-less runs fsynced them.
        store.adopt_audited(hint, mark, now_ms())?;
    }
    for id in store.started_ids() {
        store.finish_interrupted(&id)?;
        report.interrupted.push(id);
    }
    {
        let mut inner = lock(&store.inner);
        let seq = audit
            .as_ref()
            .map_or(0, |h| h.durable_seq)
            .max(inner.max_seq);
        if seq > inner.mark || (audit.is_some() && replay.mark.is_none()) {
            // Nothing runs yet: every admitted command up to here is accounted for.
            inner
                .journal
                .append(&encode(&Op::Mark { audit_seq: seq })?)?;
            inner.mark = seq;
        }
        let at = inner.journal.position();
        drop(inner);
        store.sync(at)?;
    }
    remove_legacy(&store.dir, &legacy);
    report.pruned = store.prune_at(now_ms());
    store.compact_if_due();
    Ok((store, report))
}

fn replay(path: &Path) -> io::Result<Replay> {
    let mut out = Replay::default();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut reader = io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let op = match (line.last(), decode(&line)) {
            (Some(b'\n'), Some(op)) => op,
            _ => {
                out.torn = true;
                break;
            }
        };
        let span = Span {
            offset: out.valid,
            len: u32::try_from(n).unwrap_or(u32::MAX),
        };
        out.valid += n as u64;
        apply(&mut out, op, span);
    }
    Ok(out)
}

fn apply(out: &mut Replay, op: Op, span: Span) {
    match op {
        Op::Start {
            id, ms, audit_seq, ..
        } => {
            out.max_seq = out.max_seq.max(audit_seq.unwrap_or(0));
            match out.entries.get_mut(&id) {
                Some(e) if e.stage == Stage::Finished => {}
                _ => {
                    out.entries.insert(id, started(ms, Some(span)));
                }
            }
        }
        Op::Finish { id, ms, .. } => {
            let e = out.entries.entry(id).or_insert_with(|| started(ms, None));
            e.stage = Stage::Finished;
            e.finished_ms = Some(ms);
            e.finish = Some(span);
        }
        Op::Delivered { id, ms } => {
            if let Some(e) = out.entries.get_mut(&id) {
                e.delivered_ms = Some(ms);
            }
        }
        Op::Mark { audit_seq } => out.mark = Some(audit_seq.max(out.mark.unwrap_or(0))),
    }
}

fn started(ms: u64, span: Option<Span>) -> Entry {
    Entry {
        stage: Stage::Started,
        started_ms: ms,
        finished_ms: None,
        delivered_ms: None,
        start: span,
        finish: None,
    }
}

impl Store {
    /// Appends `op`'s line and indexes it (not synced).
    fn put(&self, op: &Op) -> io::Result<()> {
        let line = encode(op)?;
        let mut inner = lock(&self.inner);
        let span = inner.journal.append(&line)?;
        let mut replay = Replay {
            entries: std::mem::take(&mut inner.entries),
            ..Replay::default()
        };
        apply(&mut replay, op.clone(), span);
        inner.entries = replay.entries;
        inner.max_seq = inner.max_seq.max(replay.max_seq);
        Ok(())
    }

    /// Imports `*.json` records of the previous format the journal does not have yet; returns
    /// the files to remove once the journal is synced.
    fn import_legacy(&self, report: &mut LoadReport) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for dirent in std::fs::read_dir(&self.dir)? {
            let Ok(dirent) = dirent else { continue };
            let name = dirent.file_name().to_string_lossy().into_owned();
            let path = dirent.path();
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                files.push(path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match read_record(&path) {
                Ok(record) if record.command_id == id && valid_command_id(id) => {
                    if self.stage(id) != Some(Stage::Finished) {
                        self.import(record)?;
                        report.migrated += 1;
                    }
                    files.push(path);
                }
                Ok(_) => {
                    report.skipped += 1;
                    warn!(file = %path.display(), "skipping a command record that names another id");
                }
                Err(e) => {
                    report.skipped += 1;
                    warn!(file = %path.display(), error = %e, "skipping an unreadable command record");
                }
            }
        }
        Ok(files)
    }

    fn import(&self, record: Record) -> io::Result<()> {
        let id = record.command_id;
        self.put(&Op::Start {
            id: id.clone(),
            verb: record.verb,
            by: record.requested_by,
            ms: record.started_ms,
            audit_seq: None,
        })?;
        if let Some(result) = record.result {
            self.put(&Op::Finish {
                id: id.clone(),
                ms: record.finished_ms.unwrap_or(record.started_ms),
                pin: None,
                limit: None,
                result,
            })?;
            if let Some(ms) = record.delivered_ms {
                self.put(&Op::Delivered { id, ms })?;
            }
        }
        Ok(())
    }

    /// Records as started every command the audit log admitted after `mark` that the journal
    /// does not know (its `start` was lost with the page cache), within retention.
    fn adopt_audited(&self, hint: &AuditHint, mark: u64, now: u64) -> io::Result<()> {
        let oldest = now.saturating_sub(self.retention_ms);
        let admitted = match scan::admitted_after(&hint.path, mark) {
            Ok(admitted) => admitted,
            Err(e) => {
                // Only a power loss makes this matter; refusing to start would not help.
                warn!(
                    path = %hint.path.display(),
                    error = %e,
                    "cannot read the audit log back to find commands a power loss may have \
                     hidden from the journal"
                );
                Vec::new()
            }
        };
        for admitted in admitted {
            if admitted.ms < oldest || self.stage(&admitted.id).is_some() {
                continue;
            }
            warn!(command.id = %admitted.id, "command audited as admitted but missing from the journal");
            self.put(&Op::Start {
                id: admitted.id,
                verb: admitted.verb,
                by: admitted.by,
                ms: admitted.ms,
                audit_seq: Some(admitted.seq),
            })?;
        }
        Ok(())
    }

    fn started_ids(&self) -> Vec<String> {
        lock(&self.inner)
            .entries
            .iter()
            .filter(|(_, e)| e.stage == Stage::Started)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn finish_interrupted(&self, id: &str) -> io::Result<()> {
        let started_ms = lock(&self.inner)
            .entries
            .get(id)
            .map_or(0, |e| e.started_ms);
        let started_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(started_ms) * 1_000_000)
                .ok()
                .map(outcome::rfc3339);
        let result = ResultFrame {
            started_at,
            ..outcome::bare(
                id,
                CommandStatus::Failed,
                Some(ErrorBody::new(
                    "interrupted",
                    "the agent stopped while this command was running; its outcome is unknown \
                     and it was not run again",
                )),
            )
        };
        self.put(&Op::Finish {
            id: id.to_owned(),
            ms: now_ms(),
            pin: None,
            limit: None,
            result,
        })
    }

    /// Rewrites the journal from the index (what retention dropped is gone). Callers hold
    /// the lock; the new file is durable when this returns.
    pub(super) fn compact(&self, inner: &mut Inner) -> io::Result<()> {
        let Inner {
            journal,
            entries,
            mark,
            ..
        } = inner;
        let mut order: Vec<(u64, &String, &Entry)> = entries
            .iter()
            .map(|(id, e)| (e.started_ms, id, e))
            .collect();
        order.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut moved: Vec<(String, Option<Span>, Option<Span>)> = Vec::with_capacity(order.len());
        journal.replace(|old, w| {
            w.put(&encode(&Op::Mark { audit_seq: *mark })?)?;
            for (_, id, e) in &order {
                let mut spans = (None, None);
                if let Some(s) = e.start {
                    spans.0 = Some(w.put(&read_at(old, s)?)?);
                }
                if let Some(s) = e.finish {
                    spans.1 = Some(w.put(&read_at(old, s)?)?);
                }
                if let Some(ms) = e.delivered_ms {
                    w.put(&encode(&Op::Delivered {
                        id: (*id).clone(),
                        ms,
                    })?)?;
                }
                moved.push(((*id).clone(), spans.0, spans.1));
            }
            Ok(())
        })?;
        for (id, start, finish) in moved {
            if let Some(e) = entries.get_mut(&id) {
                e.start = start;
                e.finish = finish;
            }
        }
        lock(&self.syncer).replaced(journal)
    }
}

/// Removes the previous format's files once their records are in the synced journal.
fn remove_legacy(dir: &Path, files: &[PathBuf]) {
    if files.is_empty() {
        return;
    }
    for path in files {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(file = %path.display(), error = %e, "cannot remove an imported command record");
        }
    }
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        warn!(dir = %dir.display(), error = %e, "cannot sync the results directory");
    }
}
