#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What `AuditLog::open` does with the file it finds.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;

use agentmesh_audit::{query, verify_files, AuditFilter, AuditLog, BreakReason};
use common::{event, fast, lines, write_lines, write_log};

fn kinds(path: &std::path::Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn new_log_is_private_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/audit.jsonl");
    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(report.last_seq, 0);
    assert!(report.repaired.is_none() && report.broken.is_none());
    drop(log);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    assert_eq!((report.records, report.last_seq), (3, 3));
    assert!(report.repaired.is_none() && report.broken.is_none());
    log.append(event(4)).unwrap();
    drop(log);
    assert_eq!(verify_files(&[path]).unwrap().last_seq, 4);
}

#[test]
fn torn_last_line_is_cut_and_the_cut_is_chained() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let good_len = fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    let torn = br#"{"actor":"alice","agent_id":"web"#;
    f.write_all(torn).unwrap();
    drop(f);
    assert!(verify_files(std::slice::from_ref(&path)).is_err());

    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    let repaired = report.repaired.clone().expect("repaired");
    assert!(
        repaired.contains(&format!("cut {} bytes", torn.len())),
        "{repaired}"
    );
    assert!(
        repaired.contains("without a trailing newline"),
        "{repaired}"
    );
    assert!(report.broken.is_none());
    assert_eq!((report.records, report.last_seq), (4, 4));
    log.append(event(5)).unwrap();
    drop(log);

    let summary = verify_files(std::slice::from_ref(&path)).unwrap();
    assert_eq!(summary.last_seq, 5);
    assert_eq!(kinds(&path)[3], "log_repaired");
    let records = query(
        &path,
        &AuditFilter {
            kind: Some("log_repaired".into()),
            ..AuditFilter::default()
        },
    )
    .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].details["cut_bytes"], torn.len());
    assert_eq!(
        records[0].details["file_bytes_before"],
        good_len + torn.len() as u64
    );
}

#[test]
fn garbage_last_line_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let mut lines = lines(&path);
    // A newline-terminated last line whose content changed (hash mismatch)...
    lines[2] = lines[2].replace("bob", "eve");
    write_lines(&path, &lines);
    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    let repaired = report.repaired.clone().expect("repaired");
    assert!(repaired.contains("last line 3"), "{repaired}");
    assert!(report.broken.is_none());
    assert_eq!(report.last_seq, 3, "seq 3 is reused by log_repaired");
    drop(log);
    verify_files(std::slice::from_ref(&path)).unwrap();
    assert_eq!(
        kinds(&path),
        ["command_requested", "command_requested", "log_repaired"]
    );

    // ...and NUL blocks a filesystem can leave behind.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    assert!(report.repaired.unwrap().contains("cut 4096 bytes"));
    drop(log);
    assert_eq!(verify_files(&[path]).unwrap().last_seq, 4);
}

#[test]
fn damage_in_the_middle_is_reported_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 5);
    let mut lines = lines(&path);
    lines[1] = lines[1].replace("alice", "mallory");
    write_lines(&path, &lines);
    let before = fs::read(&path).unwrap();

    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    assert!(report.repaired.is_none());
    let broken = report.broken.clone().expect("broken");
    assert_eq!((broken.line, broken.seq), (2, Some(2)));
    assert!(matches!(broken.reason, BreakReason::HashMismatch { .. }));
    assert_eq!(report.last_seq, 5);
    log.append(event(6)).unwrap();
    drop(log);

    let after = fs::read(&path).unwrap();
    assert_eq!(&after[..before.len()], &before[..], "evidence kept");
    let err = verify_files(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!(err.line, 2);
    // The new record continues from the last one.
    let last: serde_json::Value = serde_json::from_str(lines_last(&path).as_str()).unwrap();
    assert_eq!(last["seq"], 6);
}

fn lines_last(path: &std::path::Path) -> String {
    lines(path).pop().unwrap()
}

#[test]
fn a_well_formed_last_record_that_does_not_link_is_not_cut() {
    // Deleting the second-to-last record leaves a last line with a valid hash but a broken
    // link: that is tampering, and cutting it would hide the deletion.
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 4);
    let mut lines = lines(&path);
    lines.remove(2);
    write_lines(&path, &lines);
    let (log, report) = AuditLog::open(&path, fast()).unwrap();
    assert!(report.repaired.is_none());
    let broken = report.broken.expect("broken");
    assert_eq!(broken.line, 3);
    assert_eq!(report.last_seq, 4);
    drop(log);
    assert_eq!(verify_files(&[path]).unwrap_err().line, 3);
}
