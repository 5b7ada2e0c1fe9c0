//! Reading the audit log back at open: which commands it admitted to run after a given seq.
//!
//! A `start` line is written but not fsynced when the audit log is on (its durable
//! `command_requested` record is the marker), so after a power loss the journal can lack a
//! command that ran. Files are read newest first, line by line, until one starts at or before
//! the seq the journal vouches for; only `command_requested` lines are parsed.

use std::io::{self, BufRead as _};
use std::path::Path;

use agentmesh_audit::kinds;
use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A command the audit log admitted (no `duplicate` or `rejected` note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Admitted {
    pub(super) id: String,
    pub(super) verb: String,
    pub(super) by: String,
    pub(super) seq: u64,
    /// Its record's time, ms since the epoch.
    pub(super) ms: u64,
}

#[derive(Deserialize)]
struct Line {
    seq: u64,
    ts: String,
    kind: String,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    details: Value,
}

/// Commands admitted by the log at `path` (and its rotated files) with a seq above `after`.
pub(super) fn admitted_after(path: &Path, after: u64) -> io::Result<Vec<Admitted>> {
    let files = agentmesh_audit::log_files(path).map_err(io::Error::other)?;
    let needle = format!("\"kind\":\"{}\"", kinds::COMMAND_REQUESTED);
    let mut out = Vec::new();
    for file in files.iter().rev() {
        let mut reader = io::BufReader::new(std::fs::File::open(file)?);
        let mut first_seq = None;
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            if reader.read_until(b'\n', &mut bytes)? == 0 {
                break;
            }
            // Garbage (a torn tail, tampering) is not a command; the audit log reports it.
            let Ok(line) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if first_seq.is_none() {
                first_seq = serde_json::from_str::<Line>(line).ok().map(|l| l.seq);
            }
            if !line.contains(&needle) {
                continue;
            }
            if let Some(admitted) = admitted(line, after) {
                out.push(admitted);
            }
        }
        if first_seq.is_some_and(|s| s <= after.saturating_add(1)) {
            break;
        }
    }
    Ok(out)
}

fn admitted(line: &str, after: u64) -> Option<Admitted> {
    let line: Line = serde_json::from_str(line).ok()?;
    if line.seq <= after
        || line.kind != kinds::COMMAND_REQUESTED
        || line.details.get("duplicate").is_some()
        || line.details.get("rejected").is_some()
    {
        return None;
    }
    let ms = OffsetDateTime::parse(&line.ts, &Rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .unwrap_or(0);
    Some(Admitted {
        id: line.command_id?,
        verb: line.details.get("verb")?.as_str()?.to_owned(),
        by: line.actor.unwrap_or_default(),
        seq: line.seq,
        ms,
    })
}
