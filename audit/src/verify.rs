//! Checking a chain: one line at a time ([`Chain`]), whole files ([`verify_files`]) and the
//! `audit verify FILE...` command ([`run_verify_cli`]).

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::files::chain_order;
use crate::record::{canonical_json, is_hash_hex, sha256_hex, GENESIS_PREV};
use crate::ResultSignature;

/// The first broken record: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line} seq {}: {reason}", file.display(), seq.map_or_else(|| "?".to_owned(), |s| s.to_string()))]
pub struct VerifyError {
    /// The file holding the record.
    pub file: PathBuf,
    /// 1-based line number in that file (0 when the file could not be read at all).
    pub line: u64,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// What broke.
    pub reason: BreakReason,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakReason {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// The line is not JSON (a torn write, a flipped byte, an inserted newline...).
    #[error("bad JSON: {0}")]
    BadJson(String),
    /// The line is JSON but lacks a field or has one of the wrong type.
    #[error("bad record: {0}")]
    BadRecord(String),
    /// The stored `hash` is not the hash of the record.
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch {
        /// The record's `hash` field.
        stored: String,
        /// The hash of its canonical form.
        computed: String,
    },
    /// The hash matches but the line is not byte-for-byte the canonical form the writer writes.
    #[error("line is not in canonical form")]
    NotCanonical,
    /// `prev` is not the previous record's `hash` (a deleted or inserted record, or files
    /// joined out of order).
    #[error("prev mismatch: expected {expected}, found {found}")]
    PrevMismatch {
        /// The previous record's hash.
        expected: String,
        /// This record's `prev`.
        found: String,
    },
    /// `seq` does not follow the previous record's (a gap, duplicate or reordering).
    #[error("seq out of order: expected {expected}, found {found}")]
    SeqOutOfOrder {
        /// Previous seq + 1.
        expected: u64,
        /// This record's seq.
        found: u64,
    },
    /// A signed record's signature, key or pin does not check out.
    #[error("bad signature: {0}")]
    BadSignature(String),
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Files read.
    pub files: usize,
    /// Records checked.
    pub records: u64,
    /// Result signatures checked.
    pub signatures_checked: u64,
    /// Seq of the first record (0 if there were none). If it is not 1, the chain's start could
    /// not be checked against the genesis value.
    pub first_seq: u64,
    /// Seq of the last record (0 if there were none).
    pub last_seq: u64,
    /// Hash of the last record (64 zeros if there were none); keep it elsewhere to detect a
    /// later truncation of the log.
    pub last_hash: String,
}

/// A line that passed the per-record checks.
#[derive(Debug, Clone)]
pub(crate) struct CheckedLine {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) kind: String,
}

/// The running state of a chain: the last good record, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chain {
    /// `(seq, hash)` of the last record; `None` before the first.
    pub(crate) last: Option<(u64, String)>,
    pub(crate) records: u64,
    pub(crate) signatures: u64,
    pub(crate) first_seq: Option<u64>,
}

/// Parses and checks one line on its own: JSON, fields, hash, canonical form.
pub(crate) fn check_record(
    line: &[u8],
) -> Result<(CheckedLine, Value), (Option<u64>, BreakReason)> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| (None, BreakReason::BadJson(e.to_string())))?;
    let canonical = canonical_json(&value);
    let Value::Object(mut map) = value else {
        return Err((None, BreakReason::BadRecord("not a JSON object".into())));
    };
    let seq = map.get("seq").and_then(Value::as_u64);
    let bad = |msg: &str| (seq, BreakReason::BadRecord(msg.to_owned()));
    let stored = match map.remove("hash") {
        Some(Value::String(h)) => h,
        _ => return Err(bad("`hash` is missing or not a string")),
    };
    let body = Value::Object(map);
    // Fast path: a canonical line minus its `"hash":"…",` is the canonical body (docs/audit.md,
    // "Shortcut"), so the common case canonicalizes once.
    // A fast-path miss falls back to the definition rather than trusting the text search.
    let fast = body_of_canonical_line(line, &canonical, &stored).map(|b| sha256_hex(&b));
    let computed = match fast {
        Some(hash) if hash == stored => hash,
        _ => sha256_hex(canonical_json(&body).as_bytes()),
    };
    if stored != computed {
        return Err((seq, BreakReason::HashMismatch { stored, computed }));
    }
    if canonical.as_bytes() != line {
        return Err((seq, BreakReason::NotCanonical));
    }
    let seq_value = seq.ok_or_else(|| bad("`seq` is missing or not an unsigned integer"))?;
    let field_ok = |key: &str, ok: fn(&Value) -> bool| body.get(key).is_some_and(ok);
    for key in ["ts", "kind", "prev"] {
        if !field_ok(key, Value::is_string) {
            return Err(bad(&format!("`{key}` is missing or not a string")));
        }
    }
    for key in ["actor", "agent_id", "command_id"] {
        if !field_ok(key, |v| v.is_string() || v.is_null()) {
            return Err(bad(&format!("`{key}` is missing or not a string or null")));
        }
    }
    if !field_ok("details", Value::is_object) {
        return Err(bad("`details` is missing or not an object"));
    }
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((
        CheckedLine {
            seq: seq_value,
            hash: stored,
            kind,
        },
        body,
    ))
}

/// The line without its top-level `"hash":"<stored>",`, if the line is canonical. The key is
/// the last `"hash":"` in a canonical line: only `kind`, `prev`, `seq` and `ts` follow it.
fn body_of_canonical_line(line: &[u8], canonical: &str, stored: &str) -> Option<Vec<u8>> {
    if canonical.as_bytes() != line {
        return None;
    }
    let needle = format!("\"hash\":{},", serde_json::to_string(stored).ok()?);
    let at = canonical.rfind(&needle)?;
    let mut body = Vec::with_capacity(line.len() - needle.len());
    body.extend_from_slice(&line[..at]);
    body.extend_from_slice(&line[at + needle.len()..]);
    Some(body)
}

impl Chain {
    /// Checks one line against the chain and, when it is good, advances the chain.
    pub(crate) fn check(
        &mut self,
        line: &[u8],
        check_signatures: bool,
    ) -> Result<CheckedLine, (Option<u64>, BreakReason)> {
        self.check_returning_body(line, check_signatures)
            .map(|(checked, _)| checked)
    }

    /// [`Chain::check`], also returning the record without its `hash`.
    pub(crate) fn check_returning_body(
        &mut self,
        line: &[u8],
        check_signatures: bool,
    ) -> Result<(CheckedLine, Value), (Option<u64>, BreakReason)> {
        let (checked, body) = check_record(line)?;
        let seq = Some(checked.seq);
        let prev = body.get("prev").and_then(Value::as_str).unwrap_or_default();
        let (expected_seq, expected_prev) = match &self.last {
            Some((s, h)) => (s.saturating_add(1), Some(h.as_str())),
            // A chain seen from its start must start at genesis; one seen from the middle
            // (a rotated-away head) can only be checked from here on.
            None if checked.seq == 1 => (1, Some(GENESIS_PREV)),
            None => (checked.seq, None),
        };
        if checked.seq != expected_seq {
            return Err((
                seq,
                BreakReason::SeqOutOfOrder {
                    expected: expected_seq,
                    found: checked.seq,
                },
            ));
        }
        match expected_prev {
            Some(expected) if expected != prev => {
                return Err((
                    seq,
                    BreakReason::PrevMismatch {
                        expected: expected.to_owned(),
                        found: prev.to_owned(),
                    },
                ));
            }
            None if !is_hash_hex(prev) => {
                return Err((
                    seq,
                    BreakReason::BadRecord("`prev` is not a hex hash".into()),
                ));
            }
            _ => {}
        }
        if check_signatures {
            if let Some(sig) = body.get("details").and_then(ResultSignature::from_details) {
                sig.and_then(|s| s.verify())
                    .map_err(|e| (seq, BreakReason::BadSignature(e)))?;
                self.signatures += 1;
            }
        }
        self.last = Some((checked.seq, checked.hash.clone()));
        self.records += 1;
        self.first_seq.get_or_insert(checked.seq);
        Ok((checked, body))
    }
}

/// Verifies the files of one chain, oldest first: every record's hash and canonical form, the
/// seq and prev links within and between files, and every result signature. Stops at the first
/// broken record.
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifySummary, VerifyError> {
    verify_files_visiting(paths, &mut |_, _| {})
}

/// [`verify_files`], calling `visit` with each good record and its body.
pub(crate) fn verify_files_visiting(
    paths: &[PathBuf],
    visit: &mut dyn FnMut(&CheckedLine, &Value),
) -> Result<VerifySummary, VerifyError> {
    let mut chain = Chain::default();
    for path in paths {
        verify_file(path, &mut chain, visit)?;
    }
    let (last_seq, last_hash) = chain
        .last
        .clone()
        .unwrap_or_else(|| (0, GENESIS_PREV.to_owned()));
    Ok(VerifySummary {
        files: paths.len(),
        records: chain.records,
        signatures_checked: chain.signatures,
        first_seq: chain.first_seq.unwrap_or(0),
        last_seq,
        last_hash,
    })
}

fn verify_file(
    path: &Path,
    chain: &mut Chain,
    visit: &mut dyn FnMut(&CheckedLine, &Value),
) -> Result<(), VerifyError> {
    let broken = |line: u64, seq: Option<u64>, reason: BreakReason| VerifyError {
        file: path.to_path_buf(),
        line,
        seq,
        reason,
    };
    let file = File::open(path).map_err(|e| broken(0, None, BreakReason::Io(e.to_string())))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| broken(line_no + 1, None, BreakReason::Io(e.to_string())))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let (checked, body) = chain
            .check_returning_body(line, true)
            .map_err(|(seq, reason)| broken(line_no, seq, reason))?;
        visit(&checked, &body);
    }
}

/// `audit verify FILE...`: verifies the files (put in chain order, so `audit.jsonl*` works),
/// prints `ok: N records, M signatures` and a `tail unanchored` note to stdout or `BROKEN: <file>:<line> seq <n>: <reason>`
/// to stderr, and returns the exit code: 0 ok, 1 broken, 64 no files given.
pub fn run_verify_cli(paths: &[PathBuf]) -> i32 {
    if paths.is_empty() {
        eprintln!("usage: audit verify FILE...  (rotated files and the current file, any order)");
        return 64;
    }
    match verify_files(&chain_order(paths)) {
        Ok(summary) => {
            println!(
                "ok: {} records, {} signatures",
                summary.records, summary.signatures_checked
            );
            println!(
                "tail unanchored: records cut off the end are not detected without a \
                 checkpoint (the backend's log: `backend-agent audit verify --config FILE`)"
            );
            0
        }
        Err(e) => {
            eprintln!("BROKEN: {e}");
            1
        }
    }
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records in {} files (seq {}..={}), {} signatures, last hash {}",
            self.records,
            self.files,
            self.first_seq,
            self.last_seq,
            self.signatures_checked,
            self.last_hash
        )
    }
}
