//! Crash consistency: torn tails, replay, the previous format, and commands only the audit
//! log remembers.

use std::io::Write as _;

use super::*;
use crate::audit::AgentAudit;
use agentmesh_protocol::{CommandFrame, VerbSpec};

fn append_raw(dir: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal(dir))
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_torn_last_record_is_cut_and_appends_after_it_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        run(&store, "kept", "k");
    }
    let intact = std::fs::metadata(journal(dir.path())).unwrap().len();
    // Half a line (a write the crash cut short).
    let line = journal::encode(&journal::Op::Delivered {
        id: "kept".into(),
        ms: 1,
    })
    .unwrap();
    append_raw(dir.path(), &line[..line.len() / 2]);
    {
        let (store, report) = open(dir.path());
        assert_eq!(report.skipped, 1);
        assert!(!store.is_delivered("kept"), "the torn mark is ignored");
        assert_eq!(store.result("kept").unwrap().unwrap().frame.stdout, "k");
        run(&store, "after", "a");
    }
    let (store, report) = open(dir.path());
    assert_eq!(report.skipped, 0, "the file was cut at the tear");
    assert_eq!(store.result("after").unwrap().unwrap().frame.stdout, "a");
    assert!(std::fs::metadata(journal(dir.path())).unwrap().len() > intact);
}

#[test]
fn a_complete_line_that_does_not_check_out_ends_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        run(&store, "good", "g");
    }
    // Garbage where the filesystem had extended the file but not written the data.
    append_raw(dir.path(), b"0000000000000000 {\"op\":\"start\"}\n");
    append_raw(dir.path(), &[0u8; 40]);
    let (store, report) = open(dir.path());
    assert_eq!(report.skipped, 1);
    assert_eq!(store.len(), 1);
    assert_eq!(store.stage("good"), Some(Stage::Finished));
    assert!(journal::decode(b"0123456789abcdef {}").is_none());
}

#[test]
fn replay_gives_each_command_its_last_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        run(&store, "delivered", "d");
        store.mark_delivered("delivered").unwrap();
        run(&store, "pending", "p");
        store.record_started(&meta("running"), None).unwrap();
        // Killed: no drop, no flush of the in-memory delivery mark.
        store.flush().unwrap();
        std::mem::forget(store);
    }
    let (store, report) = open(dir.path());
    assert_eq!(report.interrupted, ["running"]);
    assert!(store.is_delivered("delivered"));
    assert_eq!(store.undelivered(), ["pending", "running"]);
    assert_eq!(store.stage("running"), Some(Stage::Finished));
}

#[test]
fn records_of_the_previous_format_are_imported_and_their_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join(RESULTS_DIR);
    std::fs::create_dir_all(&results).unwrap();
    let write = |id: &str, finished: bool, delivered: bool| {
        let record = record::Record {
            format: record::FORMAT,
            command_id: id.into(),
            verb: "echo".into(),
            requested_by: "ops".into(),
            started_ms: now_ms(),
            finished_ms: finished.then(now_ms),
            delivered_ms: delivered.then(now_ms),
            result: finished.then(|| ok(id, id)),
        };
        let bytes = serde_json::to_vec(&record).unwrap();
        std::fs::write(results.join(format!("{id}.json")), bytes).unwrap();
    };
    write("old-delivered", true, true);
    write("old-pending", true, false);
    write("old-running", false, false);
    std::fs::write(results.join("torn.json"), b"{\"format\":1,\"comm").unwrap();
    std::fs::write(results.join("future.json"), br#"{"format":99}"#).unwrap();
    std::fs::copy(
        results.join("old-pending.json"),
        results.join("impostor.json"),
    )
    .unwrap();
    std::fs::write(results.join(".old-pending.json.tmp"), b"half").unwrap();
    {
        let (store, report) = open(dir.path());
        assert_eq!(report.migrated, 3);
        assert_eq!(report.skipped, 3);
        assert_eq!(report.interrupted, ["old-running"]);
        assert!(store.is_delivered("old-delivered"));
        assert_eq!(store.undelivered(), ["old-pending", "old-running"]);
        let stored = store.result("old-pending").unwrap().unwrap();
        assert_eq!(
            (stored.frame.stdout.as_str(), stored.sealed),
            ("old-pending", None)
        );
        assert_eq!(store.stage("impostor"), None);
    }
    for gone in [
        "old-delivered.json",
        "old-pending.json",
        ".old-pending.json.tmp",
    ] {
        assert!(!results.join(gone).exists(), "{gone}");
    }
    // Unreadable files stay for an operator to look at; nothing is imported twice.
    assert!(results.join("torn.json").exists());
    let (store, report) = open(dir.path());
    assert_eq!((report.migrated, report.interrupted.len()), (0, 0));
    assert_eq!(store.len(), 3);
}

fn command(id: &str) -> CommandFrame {
    CommandFrame {
        command_id: id.into(),
        verb: "echo".into(),
        args: serde_json::Map::new(),
        timeout_ms: None,
        requested_by: "ops".into(),
        issued_at: String::new(),
    }
}

fn spec() -> VerbSpec {
    VerbSpec {
        name: "echo".into(),
        description: String::new(),
        params: Default::default(),
        timeout_ms: 1000,
    }
}

fn hint(audit: &AgentAudit) -> Option<AuditHint> {
    Some(AuditHint {
        path: audit.path().to_path_buf(),
        durable_seq: audit.durable_seq(),
    })
}

#[tokio::test]
async fn a_command_the_audit_log_admitted_but_the_journal_lost_is_never_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("gateway-audit.log");
    let audit = AgentAudit::open(&audit_path, "edge-01").unwrap();
    // History from before the journal existed is not taken for lost commands.
    audit
        .requested_durable(&command("ancient"), &spec())
        .await
        .unwrap();
    let (store, _) = Store::open(dir.path(), DAY, MAX_ENTRIES, hint(&audit)).unwrap();
    assert_eq!(store.stage("ancient"), None);
    // A command admitted (durable audit record) and started; then one whose `start` line the
    // power loss took; and a duplicate and a refusal, which never ran.
    let seq = audit
        .requested_durable(&command("ran"), &spec())
        .await
        .unwrap();
    let started = store.record_started(&meta("ran"), Some(seq)).unwrap();
    store
        .record_finished(&meta("ran"), started, &ok("ran", "r"), None)
        .unwrap();
    audit
        .requested_durable(&command("lost"), &spec())
        .await
        .unwrap();
    audit.requested(&command("ran"), Some(&spec()), ("duplicate", "stored"));
    audit.requested(
        &command("refused"),
        Some(&spec()),
        ("rejected", "rate_limited"),
    );
    audit.flush().await;
    // Bytes that are not even text do not stop the agent from starting.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&audit_path)
        .unwrap();
    f.write_all(b"\xff\xfe{\"kind\":\"command_requested\"\n")
        .unwrap();
    drop(store);
    let (store, report) = Store::open(dir.path(), DAY, MAX_ENTRIES, hint(&audit)).unwrap();
    assert_eq!(report.interrupted, ["lost"]);
    let lost = store.result("lost").unwrap().unwrap().frame;
    assert_eq!(lost.error.unwrap().code, "interrupted");
    assert_eq!(store.result("ran").unwrap().unwrap().frame.stdout, "r");
    assert_eq!(store.stage("refused"), None);
    assert_eq!(store.stage("ancient"), None);
    // The mark written at open covers it all: nothing is found again.
    drop(store);
    let (_, report) = Store::open(dir.path(), DAY, MAX_ENTRIES, hint(&audit)).unwrap();
    assert!(report.interrupted.is_empty());
}

#[tokio::test]
async fn no_mark_vouches_for_a_command_between_its_audit_record_and_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let audit = AgentAudit::open(&dir.path().join("a.log"), "edge-01").unwrap();
    let (store, _) = Store::open(dir.path(), DAY, MAX_ENTRIES, hint(&audit)).unwrap();
    let store = Arc::new(store);
    let slow = store.admitting();
    let slow_seq = audit
        .requested_durable(&command("slow"), &spec())
        .await
        .unwrap();
    let seq = audit
        .requested_durable(&command("fast"), &spec())
        .await
        .unwrap();
    let started = store.record_started(&meta("fast"), Some(seq)).unwrap();
    store
        .record_finished(&meta("fast"), started, &ok("fast", "f"), None)
        .unwrap();
    // "slow" never got its start written (the power went): no mark may cover its seq.
    drop(slow);
    assert!(lock(&store.inner).mark < slow_seq);
    drop(store);
    let (store, report) = Store::open(dir.path(), DAY, MAX_ENTRIES, hint(&audit)).unwrap();
    assert_eq!(report.interrupted, ["slow"]);
    assert_eq!(store.stage("fast"), Some(Stage::Finished));
}
