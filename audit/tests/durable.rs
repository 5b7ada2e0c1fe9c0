#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Durable appends, group commit, flush, close and back-pressure.

mod common;

use std::sync::Arc;

use agentmesh_audit::{verify_files, AuditError, AuditEvent, AuditLog, AuditOptions};
use common::{event, fast};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_durable_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=200 {
        let log = log.clone();
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            log.append_durable(event(i)).await.unwrap()
        });
    }
    let mut seqs = Vec::new();
    while let Some(record) = tasks.join_next().await {
        seqs.push(record.unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let fsyncs = log.fsync_count();
    println!("200 durable appends, {fsyncs} fsyncs");
    // How many fsyncs the batches share depends on scheduling (a performance property the
    // bench measures); what must hold on any machine is that no durable append costs more
    // than one fsync and that at least one happened.
    assert!(
        (1..=200).contains(&fsyncs),
        "{fsyncs} fsyncs for 200 records"
    );
    log.close().await.unwrap();
    assert_eq!(verify_files(&[path]).unwrap().records, 200);
}

#[tokio::test]
async fn durable_append_returns_the_record_and_it_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let record = log
        .append_durable(AuditEvent::new("enrolled").agent("web-01"))
        .await
        .unwrap();
    assert_eq!(record.seq, 1);
    assert_eq!(record.kind, "enrolled");
    assert_eq!(record.agent_id.as_deref(), Some("web-01"));
    assert_eq!(record.ts.len(), 24);
    assert!(record.ts.ends_with('Z'));
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert_eq!(on_disk, record.to_line());
    assert_eq!(log.fsync_count(), 1);
    // Nothing new to sync: a flush costs nothing.
    log.flush().await.unwrap();
    assert_eq!(log.fsync_count(), 1);
    log.append(event(2)).unwrap();
    log.flush().await.unwrap();
    assert_eq!(log.fsync_count(), 2);
}

#[tokio::test]
async fn records_keep_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, fast()).unwrap();
    // Futures enqueue when called, not when first polled.
    let a = log.append_durable(event(1));
    log.append(event(2)).unwrap();
    let c = log.append_durable(event(3));
    assert_eq!(c.await.unwrap().seq, 3);
    assert_eq!(a.await.unwrap().seq, 1);
}

#[tokio::test]
async fn close_drains_and_refuses_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let other = log.clone();
    for i in 1..=50 {
        log.append(event(i)).unwrap();
    }
    log.close().await.unwrap();
    assert!(matches!(other.append(event(51)), Err(AuditError::Closed)));
    assert!(matches!(
        other.append_durable(event(51)).await,
        Err(AuditError::Closed)
    ));
    assert!(matches!(other.flush().await, Err(AuditError::Closed)));
    assert_eq!(verify_files(&[path]).unwrap().records, 50);
    other.close().await.unwrap();
}

#[test]
fn a_full_queue_is_reported_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let options = AuditOptions {
        queue_capacity: 1,
        ..fast()
    };
    let (log, _) = AuditLog::open(&path, options).unwrap();
    let mut accepted = 0u64;
    let mut overloaded = 0u64;
    for i in 0..100_000 {
        match log.append(event(i)) {
            Ok(()) => accepted += 1,
            Err(AuditError::Overloaded) => overloaded += 1,
            Err(e) => panic!("{e}"),
        }
    }
    drop(log);
    assert!(overloaded > 0, "the queue never filled");
    assert_eq!(verify_files(&[path]).unwrap().records, accepted);
}

#[test]
fn plain_appends_are_fsynced_soon_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append(event(1)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.fsync_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "never fsynced");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(log.fsync_count(), 1);
}
