#![allow(clippy::unwrap_used, clippy::expect_used)]
//! kill -9 in the middle of a stream of durable appends: after reopening, the log verifies
//! and holds every record whose `append_durable` had returned.
//!
//! The child is this test binary re-run with `--exact crash_child --ignored` and
//! `AGENTMESH_AUDIT_CRASH_LOG` set; it prints `ACK <seq> <hash>` after each durable append.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentmesh_audit::{log_files, verify_files, AuditEvent, AuditLog, AuditOptions};
use serde_json::json;

const LOG_ENV: &str = "AGENTMESH_AUDIT_CRASH_LOG";
const ROUNDS: usize = 3;
const ACKS_BEFORE_KILL: usize = 1500;

fn options() -> AuditOptions {
    AuditOptions {
        fsync: true,
        max_file_bytes: 64 * 1024,
        queue_capacity: 1024,
    }
}

#[test]
#[ignore = "helper process for kill_9_loses_nothing_acknowledged"]
fn crash_child() {
    let Some(path) = std::env::var_os(LOG_ENV).map(PathBuf::from) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (log, _) = AuditLog::open(&path, options()).unwrap();
        let mut tasks = Vec::new();
        for worker in 0..8u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let event = AuditEvent::new("command_requested")
                        .actor("crash")
                        .command(format!("w{worker}-{i}"))
                        .details(json!({"padding": "p".repeat(200)}));
                    let record = log.append_durable(event).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {}", record.seq, record.hash).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Runs the child until it has acknowledged enough records, kills it with SIGKILL, and
/// returns every acknowledgement it printed.
fn run_and_kill(path: &Path) -> HashMap<u64, String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env(LOG_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            // A line cut by the kill has no newline and was never a complete acknowledgement.
            if line.ends_with('\n') && tx.send(line.clone()).is_err() {
                break;
            }
            line.clear();
        }
    });

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acks = HashMap::new();
    let record = |line: &str, acks: &mut HashMap<u64, String>| {
        if let Some(rest) = line.trim_end().strip_prefix("ACK ") {
            let (seq, hash) = rest.split_once(' ').unwrap();
            acks.insert(seq.parse::<u64>().unwrap(), hash.to_owned());
        }
    };
    while acks.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => record(&line, &mut acks),
            Err(e) => {
                let _ = child.kill();
                panic!("child stalled after {} acks: {e}", acks.len());
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    for line in rx.try_iter() {
        record(&line, &mut acks);
    }
    acks
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut acked: HashMap<u64, String> = HashMap::new();
    for round in 0..ROUNDS {
        let acks = run_and_kill(&path);
        assert!(acks.len() >= ACKS_BEFORE_KILL);
        acked.extend(acks);
        if round == 1 {
            lose_unsynced_tail(&path, &acked);
        }

        let (log, report) = AuditLog::open(&path, options()).unwrap();
        assert!(
            report.broken.is_none(),
            "round {round}: {:?}",
            report.broken
        );
        if let Some(repaired) = &report.repaired {
            println!("round {round}: repaired: {repaired}");
        }
        drop(log);

        let files = log_files(&path).unwrap();
        let summary = verify_files(&files).unwrap();
        let on_disk = hashes(&files);
        assert_eq!(on_disk.len() as u64, summary.records);
        for (seq, hash) in &acked {
            assert_eq!(
                on_disk.get(seq),
                Some(hash),
                "round {round}: acknowledged seq {seq} missing or changed"
            );
        }
        println!(
            "round {round}: {} acknowledged, {} on disk in {} files",
            acked.len(),
            summary.records,
            files.len()
        );
    }
}

/// Simulates a power loss of data that was written but never acknowledged: cuts the current
/// file in the middle of what follows the last acknowledged record, leaving a torn line.
fn lose_unsynced_tail(path: &Path, acked: &HashMap<u64, String>) {
    let bytes = std::fs::read(path).unwrap();
    let mut end_of_acked = 0;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            let v: serde_json::Value = serde_json::from_slice(&bytes[start..i]).unwrap();
            if acked.contains_key(&v["seq"].as_u64().unwrap()) {
                end_of_acked = i + 1;
            }
            start = i + 1;
        }
    }
    let unacked = bytes.len() - end_of_acked;
    if end_of_acked > 0 && unacked > 1 {
        let keep = end_of_acked + unacked / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(keep as u64)
            .unwrap();
        println!("cut {} unacknowledged bytes", bytes.len() - keep);
    }
}

fn hashes(files: &[PathBuf]) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for file in files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.insert(
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
            );
        }
    }
    out
}
