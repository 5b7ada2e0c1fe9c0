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
    /// Set when the rotation target already exists; the file then just grows.
    pub(crate) rotation_blocked: bool,
}

impl Segment {
    /// Seals `events` in order and writes them (rotating when the file would outgrow
    /// `max_file_bytes`); one `write` per file touched. Does not fsync.
    pub(crate) fn write_events(
        &mut self,
        events: Vec<AuditEvent>,
        fsyncs: &AtomicU64,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let mut buf = String::new();
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let mut record = self.seal(event);
            let mut line = record.to_line();
            if self.should_rotate(buf.len() + line.len()) {
                self.write_buf(&buf)?;
                buf.clear();
                if let Some(rotated) = self.rotate(fsyncs)? {
                    buf.push_str(&rotated.to_line());
                    self.advance(&rotated);
                    record.relink(self.last_seq.saturating_add(1), self.last_hash.clone());
                    line = record.to_line();
                }
            }
            buf.push_str(&line);
            self.advance(&record);
            out.push(record);
        }
        self.write_buf(&buf)?;
        Ok(out)
    }

    /// fsyncs the file if anything is unsynced (and `force` or the `fsync` option says so).
    pub(crate) fn sync(&mut self, force: bool, fsyncs: &AtomicU64) -> Result<(), AuditError> {
        if !self.dirty || !(force || self.options.fsync) {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| AuditError::io(format!("fsync {}", self.path.display()), e))?;
        fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
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
        if let Err(e) = self.file.write_all(buf.as_bytes()) {
            // Best effort: do not leave half a batch behind; open repairs it otherwise.
            let _ = self.file.set_len(self.bytes);
            return Err(AuditError::io(format!("write {}", self.path.display()), e));
        }
        self.bytes += buf.len() as u64;
        self.dirty = true;
        Ok(())
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
        let (file, _) = open_log_file(&self.path)?;
        if self.options.fsync {
            sync_dir(&self.path)?;
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
