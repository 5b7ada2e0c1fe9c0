//! SQLite-specific behaviour: files, reopening, bad files and corrupt rows.

use super::*;
use crate::store::tests::{command, conformance};

#[test]
fn passes_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&SqliteStore::open(&dir.path().join("store.db")).expect("open"));
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let mut rec = command("cmd-1", "edge-01", CommandState::Pending);
    {
        let store = SqliteStore::open(&path).expect("open");
        store.insert_command(&rec).expect("insert");
        rec.status = CommandState::Ok;
        rec.exit_code = Some(0);
        store.update_command(&rec).expect("update");
    }
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.get_command("cmd-1").expect("get"), Some(rec));
    assert_eq!(store.command_events("cmd-1").expect("events").len(), 2);
    let version: i32 = store
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn open_creates_missing_directories_and_uses_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/store.db");
    let store = SqliteStore::open(&path).expect("open");
    assert!(path.is_file());
    let mode: String = store
        .conn()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    store.check_writable().expect("writable");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::metadata(&path).expect("metadata").permissions();
        assert_eq!(perms.mode() & 0o777, 0o600);
    }
}

fn assert_open_error_names(path: &Path) {
    match SqliteStore::open(path) {
        Err(e @ StoreError::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("expected an open error, got {other:?}"),
    }
}

#[test]
fn garbage_file_is_a_clear_open_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x5a_u8; 8192]).expect("write");
    assert_open_error_names(&path);
}

#[test]
fn unusable_paths_are_clear_open_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be, and a file where a directory should be.
    assert_open_error_names(dir.path());
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").expect("write");
    assert_open_error_names(&file.join("store.db"));
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).expect("open"));
    let conn = Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    drop(conn);
    let err = SqliteStore::open(&path).expect_err("newer schema");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn corrupted_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open");
    store
        .insert_command(&command("cmd-1", "edge-01", CommandState::Pending))
        .expect("insert");
    store
        .insert_command(&command("cmd-2", "edge-01", CommandState::Pending))
        .expect("insert");
    {
        let conn = store.conn();
        conn.execute(
            "UPDATE commands SET status = 'bogus' WHERE command_id = 'cmd-1'",
            [],
        )
        .expect("corrupt status");
        conn.execute(
            "UPDATE commands SET args = '{not json' WHERE command_id = 'cmd-2'",
            [],
        )
        .expect("corrupt args");
        conn.execute("UPDATE command_events SET status = 'bogus'", [])
            .expect("corrupt events");
    }
    let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt(_)));
    assert!(corrupt(store.get_command("cmd-1").map(drop)));
    assert!(corrupt(store.get_command("cmd-2").map(drop)));
    assert!(corrupt(
        store.list_commands(&CommandQuery::default()).map(drop)
    ));
    assert!(corrupt(store.command_events("cmd-1").map(drop)));
}
