//! SQLite-specific behaviour: files, reopening, bad files and corrupt rows.

use std::sync::{Arc, Barrier};

use super::*;
use crate::store::enrolment::tests::{conformance as enrolment_conformance, token};
use crate::store::tests::{command, conformance};
use crate::store::{EnrolmentStore, PinRecord, PinState, Redeem};

#[test]
fn passes_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&SqliteStore::open(&dir.path().join("store.db")).expect("open"));
}

#[test]
fn passes_enrolment_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    enrolment_conformance(&SqliteStore::open(&dir.path().join("store.db")).expect("open"));
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

#[test]
fn enrolment_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let expires = "2025-01-02T00:00:00Z";
    let (pins, used) = {
        let store = SqliteStore::open(&path).expect("open");
        store
            .upsert_pin("edge-01", "p1", PinState::Active, PinRecord::SOURCE_CONFIG)
            .expect("p1");
        store
            .upsert_pin("edge-02", "p2", PinState::Active, PinRecord::SOURCE_API)
            .expect("p2");
        assert_eq!(store.revoke_agent("edge-02").expect("revoke"), 1);
        store
            .insert_join_token(&token("used", "edge-03", expires))
            .expect("token");
        store
            .insert_join_token(&token("fresh", "edge-04", expires))
            .expect("token");
        let Redeem::Ok(used) = store
            .redeem_join_token("used", "edge-03", "2025-01-01T00:00:00Z")
            .expect("redeem")
        else {
            panic!("token should redeem");
        };
        (store.all_pins().expect("pins"), used)
    };
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.all_pins().expect("pins"), pins);
    assert_eq!(store.revoked_agents().expect("revoked"), ["edge-02"]);
    let now = "2025-01-01T01:00:00Z";
    assert_eq!(
        store
            .redeem_join_token("used", "edge-03", now)
            .expect("replay"),
        Redeem::AlreadyUsed
    );
    assert!(used.used_at.is_some());
    assert!(matches!(
        store
            .redeem_join_token("fresh", "edge-04", now)
            .expect("redeem"),
        Redeem::Ok(_)
    ));
}

#[test]
fn version_1_file_migrates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let rec = command("cmd-1", "edge-01", CommandState::Ok);
    {
        // What a build before enrolment wrote: migration 1 only, with a command in it.
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(schema::MIGRATIONS[0])
            .expect("v1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        drop(conn);
        let store = SqliteStore {
            path: path.clone(),
            conn: Mutex::new(Connection::open(&path).expect("raw open")),
        };
        store.insert_command(&rec).expect("insert");
    }
    let store = SqliteStore::open(&path).expect("migrate");
    let version: i32 = store
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(store.get_command("cmd-1").expect("get"), Some(rec));
    store
        .upsert_pin("edge-01", "p1", PinState::Active, PinRecord::SOURCE_CONFIG)
        .expect("pins table");
    assert_eq!(store.pins("edge-01").expect("pins").len(), 1);
    enrolment_conformance(&SqliteStore::open(&dir.path().join("fresh.db")).expect("open"));
}

#[test]
fn concurrent_redeems_consume_a_token_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    SqliteStore::open(&path)
        .expect("open")
        .insert_join_token(&token("t", "edge-01", "2025-01-02T00:00:00Z"))
        .expect("token");
    // Separate connections, as two processes on one file would have.
    let racers = 8;
    let barrier = Arc::new(Barrier::new(racers));
    let handles: Vec<_> = (0..racers)
        .map(|_| {
            let store = SqliteStore::open(&path).expect("open");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .redeem_join_token("t", "edge-01", "2025-01-01T00:00:00Z")
                    .expect("redeem")
            })
        })
        .collect();
    let outcomes: Vec<Redeem> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let won = outcomes
        .iter()
        .filter(|r| matches!(r, Redeem::Ok(_)))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|r| matches!(r, Redeem::Ok(_) | Redeem::AlreadyUsed)));
}

#[test]
fn corrupt_enrolment_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open");
    store
        .upsert_pin("edge-01", "p1", PinState::Active, PinRecord::SOURCE_API)
        .expect("pin");
    for hash in ["garbled", "typed"] {
        store
            .insert_join_token(&token(hash, "edge-01", "2025-01-02T00:00:00Z"))
            .expect("token");
    }
    {
        let conn = store.conn();
        conn.execute("UPDATE pins SET state = 'bogus'", [])
            .expect("corrupt state");
        conn.execute(
            "UPDATE join_tokens SET expires_at = 'soon' WHERE token_sha256 = 'garbled'",
            [],
        )
        .expect("corrupt expiry");
        conn.execute(
            "UPDATE join_tokens SET expires_at = 42 WHERE token_sha256 = 'typed'",
            [],
        )
        .expect("corrupt type");
    }
    let corrupt = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Corrupt(_)));
    assert!(corrupt(store.pins("edge-01").map(drop)));
    assert!(corrupt(store.all_pins().map(drop)));
    assert!(corrupt(store.upsert_pin(
        "edge-01",
        "p1",
        PinState::Retired,
        PinRecord::SOURCE_API
    )));
    let now = "2025-01-01T00:00:00Z";
    assert!(corrupt(
        store.redeem_join_token("garbled", "edge-01", now).map(drop)
    ));
    assert!(corrupt(
        store.redeem_join_token("typed", "edge-01", now).map(drop)
    ));
    // Tokens that can never be redeemed are pruned rather than blocking the prune.
    assert_eq!(store.prune_join_tokens(now).expect("prune"), 2);
}
