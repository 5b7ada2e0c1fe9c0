//! Opening the store: every record loaded, the ones left running finished as `interrupted`.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

use agentmesh_protocol::{CommandStatus, ErrorBody, ResultFrame};
use tracing::warn;

use super::record::read_record;
use super::{lock, now_ms, valid_command_id, Entry, LoadReport, Stage, Store};
use crate::exec::outcome;

impl Store {
    pub(super) fn load(&self) -> io::Result<LoadReport> {
        let mut report = LoadReport::default();
        let now = now_ms();
        let mut entries = HashMap::new();
        for dirent in std::fs::read_dir(&self.dir)? {
            let Ok(dirent) = dirent else { continue };
            let path = dirent.path();
            let name = dirent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write the previous process did not finish; the old record (if any) stands.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match read_record(&path) {
                Ok(record) if record.command_id == id && valid_command_id(id) => {
                    entries.insert(id.to_owned(), Entry::of(&record));
                    report.loaded += 1;
                }
                Ok(_) => {
                    report.skipped += 1;
                    self.skip(&path, now, "the record names another command id");
                }
                Err(e) => {
                    report.skipped += 1;
                    self.skip(&path, now, &e.to_string());
                }
            }
        }
        lock(&self.index).entries = entries;
        Ok(report)
    }

    /// Logs an unreadable file; removes it once it is older than the retention period.
    fn skip(&self, path: &Path, now: u64, why: &str) {
        let age_ms = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        if age_ms.is_some_and(|age| age > self.retention_ms) {
            warn!(file = %path.display(), error = why, "removing an old unreadable command record");
            let _ = std::fs::remove_file(path);
        } else {
            warn!(file = %path.display(), error = why, "skipping an unreadable command record");
        }
    }

    pub(super) fn started_ids(&self) -> Vec<String> {
        lock(&self.index)
            .entries
            .iter()
            .filter(|(_, e)| e.stage == Stage::Started)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn finish_interrupted(&self, id: &str) -> io::Result<()> {
        let _io = lock(&self.io);
        let mut record = read_record(&self.path(id))?;
        let started_at = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(record.started_ms) * 1_000_000,
        )
        .ok()
        .map(outcome::rfc3339);
        record.result = Some(ResultFrame {
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
        });
        record.finished_ms = Some(now_ms());
        self.write(&record)
    }
}
