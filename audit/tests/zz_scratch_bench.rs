#![allow(clippy::unwrap_used, clippy::expect_used)]
use agentmesh_audit::*;
use serde_json::json;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore]
async fn bench() {
    for fsync in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, AuditOptions { fsync, ..Default::default() }).unwrap();
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..64 {
            let log = log.clone();
            set.spawn(async move {
                for i in 0..500 {
                    log.append_durable(AuditEvent::new("command_requested").actor("a").agent("web-01").command(format!("{w}-{i}")).details(json!({"verb":"ping","params":{"x":"y".repeat(100)}}))).await.unwrap();
                }
            });
        }
        while set.join_next().await.is_some() {}
        let el = t.elapsed();
        println!("fsync={fsync}: 32000 durable appends by 64 tasks in {el:?} = {:.0}/s, {} fsyncs", 32000.0 / el.as_secs_f64(), log.fsync_count());
        log.close().await.unwrap();
    }
    // query cost on a 64 MiB file
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(&path, AuditOptions { fsync: false, ..Default::default() }).unwrap();
    let mut n = 0u64;
    loop {
        match log.append(AuditEvent::new("command_requested").actor("a").agent("web-01").command(format!("{n}")).details(json!({"verb":"ping","params":{"x":"y".repeat(200)}}))) {
            Ok(()) => n += 1,
            Err(AuditError::Overloaded) => { log.flush().await.unwrap(); }
            Err(e) => panic!("{e}"),
        }
        if n == 200_000 { break; }
    }
    log.close().await.unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let t = Instant::now();
    let r = query(&path, &AuditFilter { kind: Some("nope".into()), ..Default::default() }).unwrap();
    println!("query full scan of {} MiB: {:?} ({} hits)", size >> 20, t.elapsed(), r.len());
    let t = Instant::now();
    let s = verify_files(&log_files(&path).unwrap()).unwrap();
    println!("verify {} records: {:?}", s.records, t.elapsed());
    let t = Instant::now();
    let (_log, rep) = AuditLog::open(&path, AuditOptions::default()).unwrap();
    println!("open (repair scan) {} records: {:?}", rep.records, t.elapsed());
}
