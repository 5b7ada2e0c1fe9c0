//! The writer rides out failed writes and fsyncs (injected with [`crate::fault::Fault`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{log_files, verify_files, AuditError, AuditEvent, AuditLog, AuditOptions};

/// Generous: the box running the tests may be slow; only a hang should hit it.
const PATIENCE: Duration = Duration::from_secs(30);

async fn until_healthy(log: &AuditLog) {
    let deadline = Instant::now() + PATIENCE;
    while !log.is_healthy() {
        assert!(Instant::now() < deadline, "the log did not recover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn records(path: &Path) -> Vec<Value> {
    let files = log_files(path).unwrap();
    verify_files(&files).expect("the log verifies");
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn kinds(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_failed_write_refuses_durable_appends_then_resumes_the_same_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let acked = log.append_durable(AuditEvent::new("before")).await.unwrap();
    assert!(log.is_healthy());

    log.fault().fail_writes.store(true, Ordering::SeqCst);
    let err = log
        .append_durable(AuditEvent::new("refused-in-flight"))
        .await;
    assert!(matches!(err, Err(AuditError::Unavailable(_))), "{err:?}");
    assert!(!log.is_healthy());
    // While it cannot write: durable work fails at once, plain appends wait in the backlog.
    let err = log.append_durable(AuditEvent::new("refused-fast")).await;
    assert!(matches!(err, Err(AuditError::Unavailable(_))), "{err:?}");
    assert!(matches!(log.flush().await, Err(AuditError::Unavailable(_))));
    log.append(AuditEvent::new("kept-1")).unwrap();
    log.append(AuditEvent::new("kept-2")).unwrap();

    log.fault().fail_writes.store(false, Ordering::SeqCst);
    until_healthy(&log).await;
    let after = log.append_durable(AuditEvent::new("after")).await.unwrap();
    log.close().await.unwrap();

    let all = records(&path);
    assert_eq!(
        kinds(&all),
        ["before", "kept-1", "kept-2", "log_resumed", "after"],
        "refused records are not written, kept ones are, once"
    );
    assert_eq!(all[0]["hash"], acked.hash.as_str());
    assert_eq!(all[4]["seq"], after.seq);
    let resumed = &all[3]["details"];
    assert_eq!(
        resumed["refused_durable"], 3,
        "two appends and a flush: {resumed}"
    );
    assert_eq!(resumed["dropped"], 0, "{resumed}");
    assert!(
        resumed["first_error"]
            .as_str()
            .unwrap()
            .contains("no space"),
        "{resumed}"
    );
}

#[tokio::test]
async fn a_full_backlog_refuses_plain_appends_and_counts_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let options = AuditOptions {
        queue_capacity: 3,
        ..AuditOptions::default()
    };
    let (log, _) = AuditLog::open(&path, options).unwrap();
    log.fault().fail_writes.store(true, Ordering::SeqCst);
    assert!(log.append_durable(AuditEvent::new("x")).await.is_err());
    let mut refused = false;
    for i in 0..10_000 {
        match log.append(AuditEvent::new(format!("p{i}"))) {
            Ok(()) | Err(AuditError::Overloaded) => {}
            Err(AuditError::Unavailable(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "a full backlog refuses plain appends");
    assert!(log.backlog_len() <= 3);
    log.fault().fail_writes.store(false, Ordering::SeqCst);
    until_healthy(&log).await;
    log.close().await.unwrap();
    let all = records(&path);
    let k = kinds(&all);
    assert_eq!(k.len(), 4, "three kept, then log_resumed: {k:?}");
    assert_eq!(k[3], "log_resumed");
    assert!(all[3]["details"]["dropped"].as_u64().unwrap() >= 1, "{k:?}");
}

#[tokio::test]
async fn a_failed_fsync_is_not_acknowledged_and_the_record_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.fault().fail_syncs.store(true, Ordering::SeqCst);
    let err = log.append_durable(AuditEvent::new("unsynced")).await;
    assert!(matches!(err, Err(AuditError::Unavailable(_))), "{err:?}");
    assert!(!log.is_healthy());
    log.fault().fail_syncs.store(false, Ordering::SeqCst);
    until_healthy(&log).await;
    log.close().await.unwrap();
    // Written before the fsync failed, so it is in the log (not acknowledged, not repeated).
    assert_eq!(kinds(&records(&path)), ["unsynced", "log_resumed"]);
}

#[tokio::test]
async fn closing_while_unable_to_write_reports_it_and_leaves_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append_durable(AuditEvent::new("kept")).await.unwrap();
    log.fault().fail_writes.store(true, Ordering::SeqCst);
    assert!(log.append_durable(AuditEvent::new("x")).await.is_err());
    log.append(AuditEvent::new("lost")).unwrap();
    assert!(matches!(log.close().await, Err(AuditError::Unavailable(_))));
    assert_eq!(kinds(&records(&path)), ["kept"]);
    // Reopening continues the chain from what is on disk.
    let (log, report) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert!(
        report.repaired.is_none() && report.broken.is_none(),
        "{report:?}"
    );
    log.append_durable(AuditEvent::new("next")).await.unwrap();
    log.close().await.unwrap();
    assert_eq!(kinds(&records(&path)), ["kept", "next"]);
}

#[tokio::test]
async fn a_failure_across_rotation_keeps_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let options = AuditOptions {
        max_file_bytes: 600,
        ..AuditOptions::default()
    };
    let (log, _) = AuditLog::open(&path, options).unwrap();
    for i in 0..5 {
        log.append_durable(AuditEvent::new(format!("a{i}")))
            .await
            .unwrap();
    }
    log.fault().fail_writes.store(true, Ordering::SeqCst);
    assert!(log.append_durable(AuditEvent::new("x")).await.is_err());
    for i in 0..5 {
        log.append(AuditEvent::new(format!("b{i}"))).unwrap();
    }
    log.fault().fail_writes.store(false, Ordering::SeqCst);
    until_healthy(&log).await;
    log.close().await.unwrap();
    let k: Vec<String> = kinds(&records(&path))
        .into_iter()
        .filter(|k| k != "log_rotated")
        .collect();
    assert_eq!(
        k,
        [
            "a0",
            "a1",
            "a2",
            "a3",
            "a4",
            "b0",
            "b1",
            "b2",
            "b3",
            "b4",
            "log_resumed"
        ]
    );
    assert!(log_files(&path).unwrap().len() > 1, "the test rotated");
}
