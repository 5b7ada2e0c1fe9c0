//! The command service against an in-memory store: expiry of unanswered commands, late
//! results, pruning and cancel scope, without sockets (the e2e suite covers those).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_protocol::ResultFrame;
use serde_json::json;

use super::*;
use crate::auth::Role;
use crate::config::{AuditConfig, LimitsConfig};
use crate::store::tests::command;

/// A [`CommandService`] on an in-memory store with its audit log; the temp dir and the stop
/// switch live as long as it does.
pub(super) struct Fixture {
    /// The service under test.
    pub(super) service: Arc<CommandService>,
    /// Its audit log (in the temp dir).
    pub(super) audit: Arc<crate::audit::Audit>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Starts a service over `registry` with `settings`, an in-memory store, default limits and
/// an audit log in a fresh temp dir.
pub(super) fn start_service(registry: Arc<Registry>, settings: Settings) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, _) = crate::audit::Audit::open(&AuditConfig {
        path: dir.path().join("audit.log"),
        ..AuditConfig::default()
    })
    .expect("audit");
    let audit = Arc::new(audit);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let service = CommandService::start(
        registry,
        Store::memory(),
        Arc::new(Metrics::default()),
        Arc::new(crate::reload::Swap::new(crate::limits::RateLimits::new(
            &LimitsConfig::default(),
        ))),
        audit.clone(),
        Arc::new(Authz::new(audit.clone())),
        settings,
        stop_rx,
    );
    Fixture {
        service,
        audit,
        _dir: dir,
        _stop: stop,
    }
}

fn fixture(settings: Settings) -> Fixture {
    start_service(Arc::new(Registry::default()), settings)
}

fn no_background() -> Settings {
    Settings {
        result_grace: Duration::from_secs(1),
        retention: None,
        max_records: None,
        prune_interval: Duration::from_secs(3600),
        ..Settings::default()
    }
}

async fn kinds(f: &Fixture) -> Vec<String> {
    f.audit.flush().await;
    let filter = agentmesh_audit::AuditFilter {
        limit: 1000,
        ..Default::default()
    };
    agentmesh_audit::query(f.audit.path(), &filter)
        .expect("query")
        .into_iter()
        .map(|r| r.kind)
        .collect()
}

#[tokio::test]
async fn an_overdue_dispatched_command_expires_and_a_late_result_does_not_overwrite_it() {
    let f = fixture(no_background());
    let store = f.service.store();
    let mut old = command("cmd-old", "edge-01", CommandState::Dispatched);
    old.created_at = "2020-01-01T00:00:00Z".into();
    old.timeout_ms = 1000;
    store.insert_command(&old).await.expect("insert");
    let mut fresh = command("cmd-new", "edge-01", CommandState::Dispatched);
    fresh.created_at = clock::now_rfc3339();
    store.insert_command(&fresh).await.expect("insert");

    f.service.expire_unanswered().await;
    let old = store.get_command("cmd-old").await.unwrap().unwrap();
    assert_eq!(old.status, CommandState::Expired);
    assert_eq!(old.error.unwrap().code, "no_result");
    let fresh = store.get_command("cmd-new").await.unwrap().unwrap();
    assert_eq!(fresh.status, CommandState::Dispatched);

    let late: ResultFrame = serde_json::from_value(json!({
        "command_id": "cmd-old", "status": "ok", "exit_code": 0, "stdout": "late"
    }))
    .unwrap();
    f.service.on_result("edge-01", b"spki", late).await;
    let after = store.get_command("cmd-old").await.unwrap().unwrap();
    assert_eq!(after.status, CommandState::Expired, "not overwritten");
    assert!(after.stdout.is_empty());
    let kinds = kinds(&f).await;
    assert!(kinds.iter().any(|k| k == "command_expired"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "late_result"), "{kinds:?}");
}

#[tokio::test]
async fn pruning_keeps_max_records_finished_commands_and_every_unfinished_one() {
    let f = fixture(Settings {
        max_records: Some(3),
        ..no_background()
    });
    let store = f.service.store();
    for i in 0..6 {
        let status = if i == 0 {
            CommandState::Dispatched
        } else {
            CommandState::Ok
        };
        let mut c = command(&format!("cmd-{i}"), "edge-01", status);
        c.created_at = clock::now_rfc3339();
        store.insert_command(&c).await.expect("insert");
    }
    f.service.prune_history().await;
    let left = store
        .list_commands(&crate::store::CommandQuery::default())
        .await
        .unwrap();
    let ids: Vec<&str> = left.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, ["cmd-5", "cmd-4", "cmd-3", "cmd-0"]);
    assert!(kinds(&f).await.iter().any(|k| k == "history_pruned"));
}

#[tokio::test]
async fn cancel_outside_the_scope_is_unknown_and_not_recorded() {
    let f = fixture(no_background());
    let store = f.service.store();
    store
        .insert_command(&command("cmd-1", "edge-01", CommandState::Pending))
        .await
        .expect("insert");
    let scoped = Principal {
        name: "ops".into(),
        role: Role::Operator,
        verbs: vec!["sysinfo".into()],
        labels: Default::default(),
    };
    let err = f.service.cancel(&scoped, "cmd-1").await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Denied(AuthzError::NotFound(_))),
        "{err:?}"
    );
    let unscoped = Principal {
        verbs: vec!["*".into()],
        ..scoped
    };
    let rec = f.service.cancel(&unscoped, "cmd-1").await.expect("cancel");
    assert_eq!(rec.status, CommandState::Cancelled);
    let kinds = kinds(&f).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "command_cancelled").count(),
        1,
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_results_are_all_recorded_and_shutdown_waits_for_them() {
    let f = fixture(no_background());
    let store = f.service.store();
    let n = super::results::RESULT_BATCH * 2 + 7;
    for i in 0..n {
        let rec = command(&format!("q{i:04}"), "edge-01", CommandState::Dispatched);
        store.insert_command(&rec).await.expect("insert");
    }
    let tasks = crate::hub::TaskCounter::default();
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..n {
        let (service, task) = (f.service.clone(), tasks.enter());
        senders.spawn(async move {
            let result: ResultFrame = serde_json::from_value(json!({
                "type": "result", "command_id": format!("q{i:04}"), "status": "ok",
                "exit_code": 0, "stdout": "pong"
            }))
            .expect("frame");
            service
                .queue_result("edge-01", b"spki", result, Some(task))
                .await;
        });
    }
    while senders.join_next().await.is_some() {}
    // Every guard is released only once its result is recorded, none dropped.
    tokio::time::timeout(Duration::from_secs(30), tasks.wait_idle())
        .await
        .expect("every queued result recorded");
    for i in 0..n {
        let rec = store
            .get_command(&format!("q{i:04}"))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(rec.status, CommandState::Ok, "{}", rec.command_id);
        assert_eq!(rec.stdout, "pong");
    }
}

#[tokio::test]
async fn a_replica_restarting_in_a_cluster_leaves_pending_commands_other_replicas_may_hold() {
    let f = fixture(no_background());
    let store = f.service.store.clone();
    let mut held = command("held-elsewhere", "web-1", CommandState::Pending);
    held.created_at = clock::now_rfc3339();
    store.insert_command(&held).await.expect("insert");
    let mut orphan = command("orphan", "web-1", CommandState::Pending);
    orphan.created_at = "2020-01-01T00:00:00Z".into();
    store.insert_command(&orphan).await.expect("insert");

    f.service.recover_as(true).await.expect("recover");
    let status = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .get_command(id)
                .await
                .expect("get")
                .expect("rec")
                .status
        }
    };
    assert_eq!(status("held-elsewhere").await, CommandState::Pending);
    assert_eq!(status("orphan").await, CommandState::Expired);

    // A single node expires every pending record it finds at start (they were its own).
    f.service.recover().await.expect("recover");
    assert_eq!(status("held-elsewhere").await, CommandState::Expired);
}
