#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rotation keeps one chain across files.

mod common;

use std::fs;

use agentmesh_audit::{
    log_files, query, run_verify_cli, verify_files, AuditFilter, AuditLog, AuditOptions,
};
use common::{event, lines};

fn small() -> AuditOptions {
    AuditOptions {
        fsync: true,
        max_file_bytes: 2048,
        queue_capacity: 1024,
    }
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, small()).unwrap();
    for i in 1..=40 {
        log.append(event(i)).unwrap();
    }
    drop(log);

    let files = log_files(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(files.last(), Some(&path));
    for file in &files[..files.len() - 1] {
        assert!(
            fs::metadata(file).unwrap().len() <= 2048,
            "{}",
            file.display()
        );
    }
    let summary = verify_files(&files).unwrap();
    assert_eq!(summary.files, files.len());
    assert_eq!(summary.first_seq, 1);
    // 40 events plus one log_rotated per new file.
    assert_eq!(summary.last_seq, 40 + files.len() as u64 - 1);

    // Each later file starts with log_rotated naming its predecessor, linked by prev.
    for pair in files.windows(2) {
        let first: serde_json::Value = serde_json::from_str(&lines(&pair[1])[0]).unwrap();
        assert_eq!(first["kind"], "log_rotated");
        assert_eq!(
            first["details"]["previous_file"],
            pair[0].file_name().unwrap().to_str().unwrap()
        );
        let prev_last: serde_json::Value =
            serde_json::from_str(&lines(&pair[0]).pop().unwrap()).unwrap();
        assert_eq!(first["prev"], prev_last["hash"]);
        assert_eq!(first["seq"], prev_last["seq"].as_u64().unwrap() + 1);
    }

    // The CLI orders a shell glob (current file first) by itself.
    let mut glob = files.clone();
    glob.sort();
    assert_eq!(glob[0], path);
    assert_eq!(run_verify_cli(&glob), 0);
    // Out of order on purpose: broken.
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    assert!(verify_files(&swapped).is_err());

    // Reopen continues after the current file, and query reads across files.
    let (log, report) = AuditLog::open(&path, small()).unwrap();
    assert!(report.broken.is_none());
    assert_eq!(report.last_seq, summary.last_seq);
    drop(log);
    let all = query(
        &path,
        &AuditFilter {
            kind: Some("command_requested".into()),
            limit: 1000,
            ..AuditFilter::default()
        },
    )
    .unwrap();
    assert_eq!(all.len(), 40);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn a_crash_between_rename_and_header_is_healed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, small()).unwrap();
    for i in 1..=5 {
        log.append(event(i)).unwrap();
    }
    drop(log);
    // Simulate: the current file was renamed away and the process died.
    let rotated = dir.path().join("audit.jsonl.000000000001-000000000005");
    fs::rename(&path, &rotated).unwrap();

    let (log, report) = AuditLog::open(&path, small()).unwrap();
    assert!(report.broken.is_none(), "{:?}", report.broken);
    assert_eq!((report.records, report.last_seq), (1, 6));
    drop(log);
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(first["kind"], "log_rotated");
    verify_files(&log_files(&path).unwrap()).unwrap();
}

#[test]
fn an_oversized_record_does_not_rotate_forever() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, small()).unwrap();
    let big = "x".repeat(5000);
    for _ in 0..3 {
        log.append(agentmesh_audit::AuditEvent::new("k").details(serde_json::json!({"big": big})))
            .unwrap();
    }
    drop(log);
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    verify_files(&files).unwrap();
}
