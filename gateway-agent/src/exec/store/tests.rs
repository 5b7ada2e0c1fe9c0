#![allow(clippy::unwrap_used)]

use super::*;
use crate::exec::outcome;
use agentmesh_protocol::CommandStatus;

mod crash;

const DAY: Duration = Duration::from_secs(86_400);

fn meta(id: &str) -> Meta {
    Meta {
        command_id: id.to_owned(),
        verb: "echo".to_owned(),
        requested_by: "ops".to_owned(),
    }
}

fn ok(id: &str, stdout: &str) -> ResultFrame {
    outcome::ok_stdout(id, stdout.to_owned())
}

fn open(dir: &Path) -> (Store, LoadReport) {
    Store::open(dir, DAY, MAX_ENTRIES, None).unwrap()
}

/// Runs `id` through start and finish, without an audit log.
fn run(store: &Store, id: &str, stdout: &str) {
    let started = store.record_started(&meta(id), None).unwrap();
    store
        .record_finished(&meta(id), started, &ok(id, stdout), Some(("pin-1", 1000)))
        .unwrap();
}

fn journal(dir: &Path) -> PathBuf {
    dir.join(RESULTS_DIR).join(JOURNAL)
}

#[test]
fn a_reopened_store_knows_everything_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, report) = open(dir.path());
        assert_eq!(report.loaded, 0);
        run(&store, "c-1", "one");
        run(&store, "c-2", "two");
        assert!(store.mark_delivered("c-2").unwrap());
        assert!(!store.mark_delivered("unknown").unwrap());
        assert_eq!(store.undelivered(), ["c-1"]);
        let stored = store.result("c-1").unwrap().unwrap();
        assert_eq!(stored.frame.stdout, "one");
        assert_eq!(stored.sealed, Some(("pin-1".to_owned(), 1000)));
        // Dropping the store writes the delivery mark it kept in memory.
    }
    let (store, report) = open(dir.path());
    assert_eq!(report.loaded, 2);
    assert!(report.interrupted.is_empty());
    assert_eq!(store.stage("c-1"), Some(Stage::Finished));
    assert_eq!(store.result("c-1").unwrap().unwrap().frame.stdout, "one");
    assert_eq!(store.undelivered(), ["c-1"]);
    assert!(store.is_delivered("c-2"));
    assert!(store.last_delivery_ms().is_some());
    assert_eq!(store.delivered_since(0), ["c-2"]);
    assert_eq!(store.stage("c-3"), None);
    // The journal is private: results may hold sensitive output.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(journal(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_command_left_started_is_finished_as_interrupted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        store.record_started(&meta("crashed"), None).unwrap();
        assert_eq!(store.stage("crashed"), Some(Stage::Started));
    }
    let (store, report) = open(dir.path());
    assert_eq!(report.interrupted, ["crashed"]);
    assert_eq!(store.stage("crashed"), Some(Stage::Finished));
    let r = store.result("crashed").unwrap().unwrap();
    assert_eq!(r.sealed, None, "signed when it is sent");
    assert_eq!(r.frame.status, CommandStatus::Failed);
    assert_eq!(r.frame.error.unwrap().code, "interrupted");
    assert!(r.frame.started_at.is_some());
    // It waits for delivery like any other result.
    assert_eq!(store.undelivered(), ["crashed"]);
    // And stays finished across further restarts.
    drop(store);
    let (_, report) = open(dir.path());
    assert!(report.interrupted.is_empty());
}

#[test]
fn retention_drops_old_records_bounds_the_count_and_compaction_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), Duration::from_secs(60), 3, None).unwrap();
    for id in ["a", "b", "c"] {
        run(&store, id, id);
    }
    store.record_started(&meta("running"), None).unwrap();
    // Over the count: the oldest finished go first; the running one stays.
    assert_eq!(store.len(), 3);
    assert_eq!(store.stage("a"), None);
    assert_eq!(store.stage("running"), Some(Stage::Started));
    // Past the retention period every finished record goes.
    let removed = store.prune_at(now_ms() + 61_000);
    assert_eq!(removed, 2);
    assert_eq!(store.len(), 1);
    assert_eq!(store.stage("running"), Some(Stage::Started));
}

#[test]
fn a_journal_mostly_garbage_is_compacted_and_what_is_live_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), DAY, 4, None).unwrap();
    let big = "x".repeat(64 * 1024);
    // 80 × 64 KiB through a store that keeps 4: well past COMPACT_MIN_BYTES of garbage.
    for i in 0..80 {
        let id = format!("c-{i}");
        run(&store, &id, &big);
        assert!(store.mark_delivered(&id).unwrap());
    }
    assert!(store.journal_bytes() < COMPACT_MIN_BYTES + 8 * 70 * 1024);
    assert_eq!(store.len(), 4);
    assert_eq!(store.result("c-79").unwrap().unwrap().frame.stdout, big);
    drop(store);
    let (store, report) = Store::open(dir.path(), DAY, 4, None).unwrap();
    assert!(report.loaded >= 4, "{report:?}");
    // Opening prunes too, leaving room for the next record.
    assert_eq!(store.len(), 3);
    for i in 77..80 {
        let id = format!("c-{i}");
        assert_eq!(store.result(&id).unwrap().unwrap().frame.stdout, big);
        assert!(store.is_delivered(&id));
    }
}

#[test]
fn ids_that_are_not_plain_are_refused() {
    for id in [
        "../x",
        "a/b",
        "",
        ".",
        "..",
        "a b",
        "a.json",
        &"x".repeat(129),
    ] {
        assert!(!valid_command_id(id), "{id:?}");
    }
    for id in [
        "01936f3a-7b1c-7cc0-9a5e-2f1b8d1e4a10",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "c_1",
    ] {
        assert!(valid_command_id(id), "{id:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    assert!(store.record_started(&meta("../evil"), None).is_err());
    assert!(store.result("../evil").unwrap().is_none());
}
