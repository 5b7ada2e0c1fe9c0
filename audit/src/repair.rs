//! Opening a log: checking the current file, cutting a torn tail, and finding where the chain
//! continues.
//!
//! A crash can leave only one kind of damage: the end of the last write missing (a line without
//! its newline), or garbage in place of the last line (a filesystem that had extended the file
//! but not written the data). Both are cut, the file is fsynced, and a `log_repaired` record
//! says how many bytes went and why. Anything else wrong — a bad record followed by good ones,
//! a last record that is well-formed but does not link — is tampering, not a crash: it is
//! reported in [`OpenReport::broken`] and left in place as evidence.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use serde_json::{json, Value};

use crate::files::{create_dir, last_line, open_log_file, parent_dir, rotated_files, sync_dir};
use crate::record::{kinds, sha256_hex, GENESIS_PREV};
use crate::segment::{rotated_event, Segment};
use crate::verify::{check_record, BreakReason, Chain};
use crate::{AuditError, AuditEvent, AuditOptions, VerifyError};

/// What `AuditLog::open` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Records in the current file once open returned (including any it wrote itself).
    pub records: u64,
    /// Seq of the last record of the chain (0 for a new log).
    pub last_seq: u64,
    /// Set when a torn tail was cut: what was cut and why (also in the `log_repaired` record).
    pub repaired: Option<String>,
    /// Set when the current file does not verify for another reason than a torn tail; the log
    /// is still open and continues the chain from the last record.
    pub broken: Option<VerifyError>,
}

/// The result of reading the current file.
struct Scan {
    /// Bytes to keep.
    keep: usize,
    /// Why the rest is cut.
    cut_reason: Option<String>,
    broken: Option<VerifyError>,
    chain: Chain,
    /// Complete lines kept, and the seq and kind of the first one.
    lines: u64,
    first: Option<(u64, String)>,
}

/// Opens the log at `path` and repairs it; the returned [`Segment`] is positioned to continue
/// the chain and has already written (and synced) any `log_rotated`/`log_repaired` record.
pub(crate) fn recover(
    path: &Path,
    options: &AuditOptions,
    fsyncs: &AtomicU64,
) -> Result<(Segment, OpenReport), AuditError> {
    create_dir(&parent_dir(path))?;
    let (mut file, created) = open_log_file(path)?;
    if created {
        sync_dir(path)?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| AuditError::io(format!("read {}", path.display()), e))?;

    let (anchor, mut broken) = anchor(path)?;
    let scan = scan(path, &bytes, anchor.as_ref().map(|a| (a.1, a.2.clone())));
    broken = broken.or(scan.broken);

    let mut events = Vec::new();
    if scan.lines == 0 {
        if let Some((previous, last, _, first)) = &anchor {
            // The crash came between renaming the old file and writing the new one's header.
            events.push(rotated_event(previous, *first, *last));
        }
    }
    let mut repaired = None;
    if let Some(reason) = scan.cut_reason {
        let cut = &bytes[scan.keep..];
        let summary = format!("cut {} bytes: {reason}", cut.len());
        tracing::warn!(path = %path.display(), cut_bytes = cut.len(), %reason, "audit log repaired");
        file.set_len(scan.keep as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| AuditError::io(format!("truncate {}", path.display()), e))?;
        events.push(AuditEvent::new(kinds::LOG_REPAIRED).details(json!({
            "cut_bytes": cut.len(),
            "cut_sha256": sha256_hex(cut),
            "file_bytes_before": bytes.len(),
            "reason": reason,
        })));
        repaired = Some(summary);
    }
    if let Some(e) = &broken {
        tracing::error!(
            path = %path.display(),
            error = %e,
            "audit log does not verify; continuing the chain from its last record"
        );
    }

    let (last_seq, last_hash) = scan
        .chain
        .last
        .clone()
        .unwrap_or_else(|| (0, GENESIS_PREV.to_owned()));
    let header = matches!(&scan.first, Some((_, kind)) if kind == kinds::LOG_ROTATED);
    let mut segment = Segment {
        // What open read was on disk already.
        synced: (last_seq, last_hash.clone()),
        path: path.to_path_buf(),
        file,
        options: options.clone(),
        bytes: scan.keep as u64,
        first_seq: scan.first.as_ref().map(|f| f.0),
        body_records: scan.lines - u64::from(header),
        records: scan.lines,
        last_seq,
        last_hash,
        dirty: false,
        rotation_blocked: false,
        #[cfg(test)]
        fault: Default::default(),
    };
    if !events.is_empty() {
        segment.write_events(events, fsyncs)?;
        segment.sync(true, fsyncs)?;
    }
    let report = OpenReport {
        records: segment.records,
        last_seq: segment.last_seq,
        repaired,
        broken,
    };
    Ok((segment, report))
}

/// The newest rotated file's name, last seq, last hash and first seq, if there is one.
type Anchor = (PathBuf, u64, String, u64);

/// Where the current file's chain must start: the newest rotated file's last record.
fn anchor(path: &Path) -> Result<(Option<Anchor>, Option<VerifyError>), AuditError> {
    let Some((first, _, rotated)) = rotated_files(path)?.pop() else {
        return Ok((None, None));
    };
    let broken = |reason: BreakReason, seq: Option<u64>| VerifyError {
        file: rotated.clone(),
        line: 0,
        seq,
        reason,
    };
    let line = match last_line(&rotated) {
        Ok(Some(line)) => line,
        Ok(None) => {
            let reason = BreakReason::BadRecord("rotated file is empty".into());
            return Ok((None, Some(broken(reason, None))));
        }
        Err(e) => return Ok((None, Some(broken(BreakReason::Io(e.to_string()), None)))),
    };
    match check_record(&line) {
        Ok((checked, _)) => Ok((Some((rotated, checked.seq, checked.hash, first)), None)),
        Err((seq, reason)) => Ok((None, Some(broken(reason, seq)))),
    }
}

fn scan(path: &Path, bytes: &[u8], anchor: Option<(u64, String)>) -> Scan {
    let mut chain = Chain {
        last: anchor,
        ..Chain::default()
    };
    let complete_end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes[..complete_end].iter().enumerate() {
        if b == b'\n' {
            spans.push((start, i));
            start = i + 1;
        }
    }
    let mut errors: Vec<(usize, Option<u64>, BreakReason)> = Vec::new();
    let mut before_last = chain.clone();
    for (i, &(s, e)) in spans.iter().enumerate() {
        if i + 1 == spans.len() {
            before_last = chain.clone();
        }
        let line = &bytes[s..e];
        if let Err((seq, reason)) = chain.check(line, false) {
            errors.push((i, seq, reason));
            resync(&mut chain, line);
        }
    }

    let mut keep = bytes.len();
    let mut reasons = Vec::new();
    if complete_end < bytes.len() {
        keep = complete_end;
        reasons.push(format!(
            "torn last line: {} bytes without a trailing newline",
            bytes.len() - complete_end
        ));
    }
    let mut lines = spans.len();
    if let [(i, _, reason)] = errors.as_slice() {
        let integrity = matches!(
            reason,
            BreakReason::BadJson(_)
                | BreakReason::BadRecord(_)
                | BreakReason::HashMismatch { .. }
                | BreakReason::NotCanonical
        );
        if *i + 1 == spans.len() && integrity {
            keep = spans[*i].0;
            reasons.push(format!("last line {} is damaged: {reason}", i + 1));
            chain = before_last;
            lines -= 1;
            errors.clear();
        }
    }
    let broken = errors
        .into_iter()
        .next()
        .map(|(i, seq, reason)| VerifyError {
            file: path.to_path_buf(),
            line: i as u64 + 1,
            seq,
            reason,
        });
    let first = spans
        .first()
        .filter(|_| lines > 0)
        .map(|&(s, e)| first_of(&bytes[s..e]));
    Scan {
        keep,
        cut_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        broken,
        chain,
        lines: lines as u64,
        first: first.flatten(),
    }
}

/// After a bad line, continue from its stored seq and hash when it has them, so one damaged
/// record is reported once instead of breaking every link after it.
fn resync(chain: &mut Chain, line: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    let seq = value.get("seq").and_then(Value::as_u64);
    let hash = value.get("hash").and_then(Value::as_str);
    if let (Some(seq), Some(hash)) = (seq, hash) {
        chain.last = Some((seq, hash.to_owned()));
    }
}

/// Seq and kind of a line, leniently.
fn first_of(line: &[u8]) -> Option<(u64, String)> {
    let value = serde_json::from_slice::<Value>(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    let kind = value.get("kind")?.as_str()?.to_owned();
    Some((seq, kind))
}
