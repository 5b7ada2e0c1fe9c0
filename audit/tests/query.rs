#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `query` filters.

mod common;

use std::fs::OpenOptions;
use std::io::Write;

use agentmesh_audit::{query, AuditError, AuditFilter};
use common::write_log;

#[test]
fn filters_combine_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 30);
    // A torn line at the end is skipped, not an error.
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"seq\":")
        .unwrap();

    let all = query(&path, &AuditFilter::default()).unwrap();
    assert_eq!(all.len(), 30);
    assert_eq!(all[0].seq, 1);

    let page = query(
        &path,
        &AuditFilter {
            since_seq: Some(10),
            limit: 5,
            ..AuditFilter::default()
        },
    )
    .unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );

    let alice_web0 = query(
        &path,
        &AuditFilter {
            actor: Some("alice".into()),
            agent: Some("web-00".into()),
            ..AuditFilter::default()
        },
    )
    .unwrap();
    // Even i and i % 3 == 0: 6, 12, 18, 24, 30.
    assert_eq!(
        alice_web0.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [6, 12, 18, 24, 30]
    );

    let none = query(
        &path,
        &AuditFilter {
            kind: Some("revoked".into()),
            ..AuditFilter::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());

    let clamped = query(
        &path,
        &AuditFilter {
            limit: 0,
            ..AuditFilter::default()
        },
    )
    .unwrap();
    assert_eq!(clamped.len(), 1);
}

#[test]
fn since_ts_compares_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let all = query(&path, &AuditFilter::default()).unwrap();
    let past = AuditFilter {
        since_ts: Some("2000-01-01T00:00:00Z".into()),
        ..AuditFilter::default()
    };
    assert_eq!(query(&path, &past).unwrap().len(), 3);
    let exact = AuditFilter {
        since_ts: Some(all[2].ts.clone()),
        ..AuditFilter::default()
    };
    assert!(query(&path, &exact).unwrap().iter().any(|r| r.seq == 3));
    let future = AuditFilter {
        since_ts: Some("2999-01-01T00:00:00+02:00".into()),
        ..AuditFilter::default()
    };
    assert!(query(&path, &future).unwrap().is_empty());
    let bad = AuditFilter {
        since_ts: Some("yesterday".into()),
        ..AuditFilter::default()
    };
    assert!(matches!(
        query(&path, &bad),
        Err(AuditError::InvalidFilter(_))
    ));
}

#[test]
fn a_missing_log_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let records = query(&dir.path().join("none.jsonl"), &AuditFilter::default()).unwrap();
    assert!(records.is_empty());
}
