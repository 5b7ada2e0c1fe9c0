//! The current file of a log: sealing events into records, writing them, syncing, rotating.
//!
//! Only the writer thread (and `open`, before the thread starts) touches a [`Segment`].

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::files::{open_log_file, rotated_path, sync_dir};
use crate::record::{kinds, now_ts};
use crate::{AuditError, AuditEvent, AuditOptions, AuditRecord};

/// Where the chain stands and what the current file holds.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) options: AuditOptions,
    /// Length of the current file.
    pub(crate) bytes: u64,
    /// Seq of the current file's first record.
    pub(crate) first_seq: Option<u64>,
    /// Records in the current file other than a leading `log_rotated`; rotation waits for one,
    /// so a record larger than the limit cannot make the log rotate forever.
    pub(crate) body_records: u64,
    /// Records in the current file.
    pub(crate) records: u64,
    pub(crate) last_seq: u64,
    pub(crate) last_hash: String,
    /// Written but not yet fsynced.
    pub(crate) dirty: bool,
    /// Seq and hash of the last record known to be on disk (fsynced, or written when the
    /// `fsync` option is off): what a checkpoint may vouch for.
    pub(crate) synced: (u64, String),
    /// Set when the rotation target already exists; the file then just grows.
    pub(crate) rotation_blocked: bool,
    /// Injected failures for the writer's unit tests.
    #[cfg(test)]
    pub(crate) fault: std::sync::Arc<crate::fault::Fault>,
}

/// The parts of a [`Segment`] a failed write rolls back.
#[derive(Debug, Clone)]
struct Position {
    first_seq: Option<u64>,
    body_records: u64,
    records: u64,
    last_seq: u64,
    last_hash: String,
}

impl Segment {
    /// Seals `events` in order and writes them (rotating when the file would outgrow
    /// `max_file_bytes`). Does not fsync. Used at open, where any failure fails the open.
    pub(crate) fn write_events(
        &mut self,
        events: Vec<AuditEvent>,
        fsyncs: &AtomicU64,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let ts = now_ts();
        let mut records: Vec<AuditRecord> = events
            .into_iter()
            .map(|e| AuditRecord::unsealed(e, ts.clone()))
            .collect();
        self.write_records(&mut records, fsyncs).1?;
        Ok(records)
    }

    /// Places `records` at the end of the chain in order ([`AuditRecord::relink`]) and writes
    /// them, one `write` per file touched, rotating when the file would outgrow
    /// `max_file_bytes`. Does not fsync.
    ///
    /// Returns how many leading records are now in a file, and the error that stopped the
    /// rest. The records after that count are not in any file — a partial line was cut — and
    /// the chain position is that of the last written record, so writing them again later
    /// continues the same chain without a gap or a duplicate.
    pub(crate) fn write_records(
        &mut self,
        records: &mut [AuditRecord],
        fsyncs: &AtomicU64,
    ) -> (usize, Result<(), AuditError>) {
        let mut buf = String::new();
        let mut saved = self.position();
        let mut written = 0;
        let total = records.len();
        for (i, record) in records.iter_mut().enumerate() {
            record.relink(self.last_seq.saturating_add(1), self.last_hash.clone());
            let mut line = record.to_line();
            if self.should_rotate(buf.len() + line.len()) {
                if let Err(e) = self.write_buf(&buf) {
                    self.restore(saved);
                    return (written, Err(e));
                }
                written = i;
                buf.clear();
                saved = self.position();
                match self.rotate(fsyncs) {
                    Err(e) => return (written, Err(e)),
                    Ok(None) => {}
                    Ok(Some(rotated)) => {
                        // If the write below fails, the new file stays empty: its
                        // `log_rotated` header is lost but the chain still links across files.
                        saved = self.position();
                        buf.push_str(&rotated.to_line());
                        self.advance(&rotated);
                        record.relink(self.last_seq.saturating_add(1), self.last_hash.clone());
                        line = record.to_line();
                    }
                }
            }
            buf.push_str(&line);
            self.advance(record);
        }
        if let Err(e) = self.write_buf(&buf) {
            self.restore(saved);
            return (written, Err(e));
        }
        (total, Ok(()))
    }

    /// Cuts whatever a failed write left past the last complete record (when the cut in
    /// `write_buf` itself failed), so the next write starts on a line boundary.
    pub(crate) fn cut_partial(&mut self) -> Result<(), AuditError> {
        let what = || format!("truncate {}", self.path.display());
        let len = self
            .file
            .metadata()
            .map_err(|e| AuditError::io(what(), e))?
            .len();
        if len > self.bytes {
            tracing::warn!(path = %self.path.display(), cut_bytes = len - self.bytes, "cutting a partial audit line left by a failed write");
            self.file
                .set_len(self.bytes)
                .map_err(|e| AuditError::io(what(), e))?;
        }
        Ok(())
    }

    fn position(&self) -> Position {
        Position {
            first_seq: self.first_seq,
            body_records: self.body_records,
            records: self.records,
            last_seq: self.last_seq,
            last_hash: self.last_hash.clone(),
        }
    }

    fn restore(&mut self, p: Position) {
        self.first_seq = p.first_seq;
        self.body_records = p.body_records;
        self.records = p.records;
        self.last_seq = p.last_seq;
        self.last_hash = p.last_hash;
    }

    /// fsyncs the file if anything is unsynced (and `force` or the `fsync` option says so).
    /// On success the current position becomes [`Segment::synced`].
    pub(crate) fn sync(&mut self, force: bool, fsyncs: &AtomicU64) -> Result<(), AuditError> {
        if !self.dirty || !(force || self.options.fsync) {
            self.synced = (self.last_seq, self.last_hash.clone());
            return Ok(());
        }
        #[cfg(test)]
        if self.fault.fail_syncs.load(Ordering::SeqCst) {
            return Err(AuditError::io(
                "fsync",
                std::io::Error::other("injected: fsync failed"),
            ));
        }
        let started = std::time::Instant::now();
        self.file
            .sync_data()
            .map_err(|e| AuditError::io(format!("fsync {}", self.path.display()), e))?;
        crate::stats::FSYNC_STATS.record(started.elapsed());
        fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.synced = (self.last_seq, self.last_hash.clone());
        Ok(())
    }

    /// The next record of the chain for `event`, stamped now; does not advance the chain.
    pub(crate) fn seal(&self, event: AuditEvent) -> AuditRecord {
        AuditRecord::seal(
            event,
            self.last_seq.saturating_add(1),
            now_ts(),
            self.last_hash.clone(),
        )
    }

    /// Counts `record` as the new end of the chain and of the current file.
    fn advance(&mut self, record: &AuditRecord) {
        if self.first_seq.is_none() {
            self.first_seq = Some(record.seq);
        }
        if !(self.records == 0 && record.kind == kinds::LOG_ROTATED) {
            self.body_records += 1;
        }
        self.records += 1;
        self.last_seq = record.seq;
        self.last_hash = record.hash.clone();
    }

    fn should_rotate(&self, pending: usize) -> bool {
        let pending = u64::try_from(pending).unwrap_or(u64::MAX);
        !self.rotation_blocked
            && self.body_records > 0
            && self.bytes.saturating_add(pending) > self.options.max_file_bytes
    }

    fn write_buf(&mut self, buf: &str) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_all(buf.as_bytes()) {
            // Best effort: do not leave half a batch behind; `cut_partial` before the next
            // write (or repair at open) catches a failed cut.
            let _ = self.file.set_len(self.bytes);
            return Err(AuditError::io(format!("write {}", self.path.display()), e));
        }
        self.bytes += buf.len() as u64;
        self.dirty = true;
        Ok(())
    }

    #[cfg(not(test))]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Under test, a [`crate::fault::Fault`] can make writes fail, after writing half.
    #[cfg(test)]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.fault.fail_writes.load(Ordering::SeqCst) {
            self.file.write_all(&bytes[..bytes.len() / 2])?;
            return Err(std::io::Error::other("injected: no space left on device"));
        }
        self.file.write_all(bytes)
    }

    /// Renames the current file to its rotated name and starts a new one; returns the
    /// `log_rotated` record that must open the new file, or `None` if rotation is impossible.
    fn rotate(&mut self, fsyncs: &AtomicU64) -> Result<Option<AuditRecord>, AuditError> {
        let first = self.first_seq.unwrap_or(self.last_seq);
        let target = rotated_path(&self.path, first, self.last_seq);
        if target.exists() {
            tracing::error!(
                path = %self.path.display(),
                target = %target.display(),
                "audit log rotation target exists; not rotating until restart"
            );
            self.rotation_blocked = true;
            return Ok(None);
        }
        self.sync(false, fsyncs)?;
        fs::rename(&self.path, &target).map_err(|e| {
            AuditError::io(
                format!("rename {} to {}", self.path.display(), target.display()),
                e,
            )
        })?;
        let file = match open_log_file(&self.path) {
            Ok((file, _)) => file,
            Err(e) => {
                // Put the old file back so the state matches the disk and a retry can rotate.
                let _ = fs::rename(&target, &self.path);
                return Err(e);
            }
        };
        if self.options.fsync {
            if let Err(e) = sync_dir(&self.path) {
                // The rename is done either way; the chain links across files regardless.
                tracing::warn!(error = %e, "audit log rotation: directory fsync failed");
            }
        }
        self.file = file;
        self.bytes = 0;
        self.first_seq = None;
        self.body_records = 0;
        self.records = 0;
        tracing::info!(path = %self.path.display(), rotated = %target.display(), "audit log rotated");
        Ok(Some(self.seal(rotated_event(
            &target,
            first,
            self.last_seq,
        ))))
    }
}

/// The `log_rotated` event naming the file that holds `first..=last`.
pub(crate) fn rotated_event(previous: &Path, first: u64, last: u64) -> AuditEvent {
    let name = previous
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    AuditEvent::new(kinds::LOG_ROTATED).details(json!({
        "previous_file": name,
        "previous_first_seq": first,
        "previous_last_seq": last,
    }))
}
