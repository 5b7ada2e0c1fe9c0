#![allow(clippy::unwrap_used)]

use super::*;
use crate::exec::outcome;
use agentmesh_protocol::CommandStatus;

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
    Store::open(dir, DAY, MAX_ENTRIES).unwrap()
}

#[test]
fn a_reopened_store_knows_everything_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, report) = open(dir.path());
        assert_eq!(report.loaded, 0);
        store.record_started(&meta("c-1")).unwrap();
        store
            .record_finished(&meta("c-1"), 1, &ok("c-1", "one"))
            .unwrap();
        store.record_started(&meta("c-2")).unwrap();
        store
            .record_finished(&meta("c-2"), 2, &ok("c-2", "two"))
            .unwrap();
        assert!(store.mark_delivered("c-2").unwrap());
        assert_eq!(store.undelivered(), ["c-1"]);
    }
    let (store, report) = open(dir.path());
    assert_eq!(report.loaded, 2);
    assert!(report.interrupted.is_empty());
    assert_eq!(store.stage("c-1"), Some(Stage::Finished));
    assert_eq!(store.result("c-1").unwrap().unwrap().stdout, "one");
    assert_eq!(store.undelivered(), ["c-1"]);
    assert!(store.is_delivered("c-2"));
    assert!(store.last_delivery_ms().is_some());
    assert_eq!(store.delivered_since(0), ["c-2"]);
    assert_eq!(store.stage("c-3"), None);
    // Files are private: results may hold sensitive output.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("results/c-1.json"))
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
        store.record_started(&meta("crashed")).unwrap();
        assert_eq!(store.stage("crashed"), Some(Stage::Started));
    }
    let (store, report) = open(dir.path());
    assert_eq!(report.interrupted, ["crashed"]);
    assert_eq!(store.stage("crashed"), Some(Stage::Finished));
    let r = store.result("crashed").unwrap().unwrap();
    assert_eq!(r.status, CommandStatus::Failed);
    assert_eq!(r.error.unwrap().code, "interrupted");
    assert!(r.started_at.is_some());
    // It waits for delivery like any other result.
    assert_eq!(store.undelivered(), ["crashed"]);
    // And stays finished across further restarts.
    drop(store);
    let (_, report) = open(dir.path());
    assert!(report.interrupted.is_empty());
}

#[test]
fn corrupted_and_foreign_files_are_skipped_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        store.record_started(&meta("good")).unwrap();
        store
            .record_finished(&meta("good"), 1, &ok("good", "x"))
            .unwrap();
    }
    let results = dir.path().join(RESULTS_DIR);
    std::fs::write(results.join("torn.json"), b"{\"format\":1,\"comm").unwrap();
    std::fs::write(results.join("binary.json"), [0xff, 0x00, 0x13]).unwrap();
    std::fs::write(results.join("future.json"), br#"{"format":99}"#).unwrap();
    // A record whose content names another id.
    let good = std::fs::read(results.join("good.json")).unwrap();
    std::fs::write(results.join("impostor.json"), good).unwrap();
    std::fs::write(results.join(".good.json.tmp"), b"half").unwrap();
    std::fs::write(results.join("README"), b"not a record").unwrap();

    let (store, report) = open(dir.path());
    assert_eq!(report.loaded, 1);
    assert_eq!(report.skipped, 4);
    assert_eq!(store.len(), 1);
    assert_eq!(store.stage("torn"), None);
    assert_eq!(store.stage("impostor"), None);
    assert!(!results.join(".good.json.tmp").exists());
    assert_eq!(store.result("good").unwrap().unwrap().stdout, "x");
}

#[test]
fn retention_removes_old_records_and_bounds_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), Duration::from_secs(60), 3).unwrap();
    for id in ["a", "b", "c"] {
        store.record_started(&meta(id)).unwrap();
        store.record_finished(&meta(id), 1, &ok(id, id)).unwrap();
    }
    store.record_started(&meta("running")).unwrap();
    // Over the count: the oldest finished go first; the running one stays.
    assert_eq!(store.len(), 3);
    assert_eq!(store.stage("a"), None);
    assert_eq!(store.stage("running"), Some(Stage::Started));
    assert!(!dir.path().join("results/a.json").exists());
    // Past the retention period every finished record goes.
    let removed = store.prune_at(now_ms() + 61_000);
    assert_eq!(removed, 2);
    assert_eq!(store.len(), 1);
    assert_eq!(store.stage("running"), Some(Stage::Started));
}

#[test]
fn ids_that_could_escape_the_directory_are_refused() {
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
    assert!(store.record_started(&meta("../evil")).is_err());
    assert!(store.result("../evil").unwrap().is_none());
}
