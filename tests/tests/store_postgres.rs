//! The store conformance suites (the same functions the unit tests run against SQLite and
//! memory) against a real PostgreSQL, plus what only a shared server can show: two stores —
//! two replicas — racing on one join token or one command status, and migrating at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Barrier};

use agentmesh_audit::Checkpoint;
use agentmesh_e2e::postgres::TestPostgres;
use backend_agent::config::DatabaseUrl;
use backend_agent::store::enrolment::tests as enrolment_suite;
use backend_agent::store::tests as command_suite;
use backend_agent::store::{
    CheckpointStore, CommandState, CommandStore, EnrolmentStore, PostgresStore, Redeem, StoreError,
    CHECKPOINTS_KEPT,
};

fn open(url: &str) -> PostgresStore {
    PostgresStore::open(&DatabaseUrl::new(url), 4).expect("open the PostgreSQL store")
}

fn checkpoint(seq: u64) -> Checkpoint {
    Checkpoint {
        seq,
        hash: format!("{seq:064x}"),
        ts: "2026-01-01T00:00:00.000Z".into(),
        file: "audit.log".into(),
        public_key: "pk".into(),
        key_pin: "pin".into(),
        signature: "sig".into(),
    }
}

#[test]
fn the_store_conformance_suites_pass_against_postgres() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    command_suite::conformance(&open(&pg.create_database()));
    command_suite::prune_by_age_and_lists_without_output(&open(&pg.create_database()));
    command_suite::labels_round_trip(&open(&pg.create_database()));
    enrolment_suite::conformance(&open(&pg.create_database()));

    // Checkpoints: the latest wins, older ones beyond the bound are deleted, across reopen.
    let url = pg.create_database();
    let store = open(&url);
    assert_eq!(store.latest_checkpoint().unwrap(), None);
    let last = CHECKPOINTS_KEPT as u64 + 5;
    for seq in 1..=last {
        store.put_checkpoint(&checkpoint(seq)).unwrap();
    }
    drop(store);
    assert_eq!(
        open(&url).latest_checkpoint().unwrap(),
        Some(checkpoint(last))
    );
    let rows = TestPostgres::query_strings(&url, "SELECT COUNT(*) FROM audit_checkpoints");
    assert_eq!(rows, [Some(CHECKPOINTS_KEPT.to_string())]);
}

#[test]
fn output_with_nul_bytes_and_unicode_round_trips() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = open(&pg.create_database());
    let mut rec = command_suite::command("cmd-nul", "edge-01", CommandState::Pending);
    store.insert_command(&rec).unwrap();
    rec.status = CommandState::Ok;
    rec.stdout = "a\0b ✓ \u{1F600}".to_owned();
    rec.stderr = "\0".to_owned();
    rec.error = Some(backend_agent::store::ErrorInfo {
        code: "x".into(),
        message: "nul \0 here".into(),
    });
    store.update_command(&rec).unwrap();
    assert_eq!(store.get_command("cmd-nul").unwrap(), Some(rec));
}

#[test]
fn two_replicas_redeeming_one_join_token_at_once_exactly_one_wins() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    // Two stores with their own pools: as two backend replicas would be.
    let replicas = [Arc::new(open(&url)), Arc::new(open(&url))];
    let now = "2026-01-01T00:00:00Z";
    for round in 0..20 {
        let hash = format!("token-{round}");
        replicas[0]
            .insert_join_token(&enrolment_suite::token(
                &hash,
                "edge-07",
                "2030-01-01T00:00:00Z",
            ))
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let outcomes: Vec<Redeem> = std::thread::scope(|s| {
            let handles: Vec<_> = replicas
                .iter()
                .enumerate()
                .map(|(i, store)| {
                    let (barrier, hash) = (barrier.clone(), hash.clone());
                    s.spawn(move || {
                        barrier.wait();
                        if round % 2 == 0 {
                            // The enrolment path: token spent and pin enrolled together.
                            store
                                .redeem_join_token_for_pin(
                                    &hash,
                                    "edge-07",
                                    now,
                                    &format!("pin-{round}-{i}"),
                                )
                                .unwrap()
                        } else {
                            store.redeem_join_token(&hash, "edge-07", now).unwrap()
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wins = outcomes
            .iter()
            .filter(|o| matches!(o, Redeem::Ok(_)))
            .count();
        assert_eq!(wins, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.contains(&Redeem::AlreadyUsed),
            "round {round}: the loser is told the token was used: {outcomes:?}"
        );
    }
    // Exactly one pin per enrolment round (the even ones) was enrolled.
    let pins = replicas[1].pins("edge-07").unwrap();
    assert_eq!(pins.len(), 10, "{pins:?}");
}

#[test]
fn compare_and_set_is_atomic_across_replicas() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    let replicas = [Arc::new(open(&url)), Arc::new(open(&url))];
    for round in 0..20 {
        let id = format!("cmd-{round:02}");
        let rec = command_suite::command(&id, "edge-01", CommandState::Pending);
        replicas[0].insert_command(&rec).unwrap();
        let barrier = Arc::new(Barrier::new(4));
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let (store, barrier) = (replicas[i % 2].clone(), barrier.clone());
                    let mut next = rec.clone();
                    next.status = if i % 2 == 0 {
                        CommandState::Cancelled
                    } else {
                        CommandState::Dispatched
                    };
                    s.spawn(move || {
                        barrier.wait();
                        store
                            .update_command_if(&next, CommandState::Pending)
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
        let events = replicas[1].command_events(&id).unwrap();
        assert_eq!(events.len(), 2, "one transition recorded: {events:?}");
    }
}

#[test]
fn replicas_migrating_at_once_and_a_newer_schema_is_refused() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    let barrier = Arc::new(Barrier::new(4));
    let opened: Vec<Result<PostgresStore, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (barrier, url) = (barrier.clone(), url.clone());
                s.spawn(move || {
                    barrier.wait();
                    PostgresStore::open(&DatabaseUrl::new(url), 2)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &opened {
        assert!(o.is_ok(), "{o:?}");
    }
    drop(opened);
    let version = TestPostgres::query_strings(&url, "SELECT version FROM schema_version");
    assert_eq!(
        version,
        [Some(
            backend_agent::store::postgres::SCHEMA_VERSION.to_string()
        )]
    );
    let newer = backend_agent::store::postgres::SCHEMA_VERSION + 1;
    TestPostgres::query_strings(
        &url,
        &format!("UPDATE schema_version SET version = {newer} RETURNING version"),
    );
    let err = PostgresStore::open(&DatabaseUrl::new(url.clone()), 1).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn an_unreachable_server_is_a_clear_error_and_the_password_is_not_in_it() {
    let Some(mut pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    let store = open(&url);
    store.check_writable().unwrap();
    pg.stop();
    let err = store.check_writable().unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Postgres(_)),
        "{err:?}"
    );
    let secret = url.replace("postgres@", "postgres:hunter2@");
    let err = PostgresStore::open(&DatabaseUrl::new(secret), 1).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("127.0.0.1") && !text.contains("hunter2"),
        "{text}"
    );
}
