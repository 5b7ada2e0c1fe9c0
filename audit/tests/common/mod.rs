//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use agentmesh_audit::{AuditEvent, AuditLog, AuditOptions};
use serde_json::json;

/// Options without fsync, for tests that do not measure durability.
pub fn fast() -> AuditOptions {
    AuditOptions {
        fsync: false,
        ..AuditOptions::default()
    }
}

/// An event numbered `i`, alternating agents and actors.
pub fn event(i: u64) -> AuditEvent {
    AuditEvent::new("command_requested")
        .actor(if i.is_multiple_of(2) { "alice" } else { "bob" })
        .agent(format!("web-{:02}", i % 3))
        .command(format!("c-{i}"))
        .details(json!({"verb": "ping", "n": i, "text": "tab\there \"quoted\" é"}))
}

/// A fresh log at `dir/audit.jsonl` with `n` records, closed (dropping the handle drains it).
pub fn write_log(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    assert_eq!(report.last_seq, 0);
    for i in 1..=n {
        log.append(event(i)).unwrap();
    }
    drop(log);
    path
}

/// The file's lines (without newlines).
pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes `lines` back, each with a newline.
pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}
