//! The conformance suite every [`CommandStore`] implementation must pass, plus type tests.

use serde_json::json;

use super::*;

/// A pending command with fixed fields; ids sort like the UUIDv7 ids used in production.
pub fn command(id: &str, agent: &str, status: CommandState) -> CommandRecord {
    CommandRecord {
        command_id: id.to_owned(),
        agent_id: agent.to_owned(),
        verb: "ping".to_owned(),
        args: json!({"count": 1, "token": "sha256:abcd"}),
        requested_by: "ops".to_owned(),
        status,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        created_at: "2025-01-01T00:00:00Z".to_owned(),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        error: None,
        timeout_ms: 30_000,
        job_id: None,
    }
}

fn ids(recs: &[CommandRecord]) -> Vec<&str> {
    recs.iter().map(|r| r.command_id.as_str()).collect()
}

fn job(id: &str) -> JobRecord {
    JobRecord {
        job_id: id.to_owned(),
        verb: "ping".to_owned(),
        args: json!({}),
        requested_by: "ops".to_owned(),
        selector: json!({"labels": {"region": "eu"}}),
        max_concurrency: 4,
        max_errors: 1,
        created_at: "2025-01-01T00:00:00Z".to_owned(),
        targets: vec!["edge-01".to_owned(), "edge-02".to_owned()],
    }
}

/// Runs every behaviour the trait documents against a fresh, empty `store`.
pub fn conformance(store: &dyn CommandStore) {
    // Insert, get, duplicate.
    let mut c1 = command("cmd-01", "edge-01", CommandState::Pending);
    store.insert_command(&c1).expect("insert");
    assert_eq!(store.get_command("cmd-01").expect("get"), Some(c1.clone()));
    assert_eq!(store.get_command("nope").expect("get missing"), None);
    assert!(matches!(
        store.insert_command(&c1),
        Err(StoreError::Duplicate(id)) if id == "cmd-01"
    ));

    // Update replaces the mutable fields only and records transitions.
    c1.status = CommandState::Dispatched;
    store.update_command(&c1).expect("dispatched");
    store.update_command(&c1).expect("same status again");
    c1.status = CommandState::Failed;
    c1.exit_code = Some(-3);
    c1.stdout = "out ✓".to_owned();
    c1.stderr = "err".to_owned();
    c1.truncated = true;
    c1.started_at = Some("2025-01-01T00:00:01Z".to_owned());
    c1.finished_at = Some("2025-01-01T00:00:02Z".to_owned());
    c1.duration_ms = Some(1000);
    c1.error = Some(ErrorInfo {
        code: "exit_status".to_owned(),
        message: "exited with 3".to_owned(),
    });
    let mut attempt = c1.clone();
    attempt.verb = "changed".to_owned();
    attempt.agent_id = "elsewhere".to_owned();
    store.update_command(&attempt).expect("failed");
    assert_eq!(store.get_command("cmd-01").expect("get"), Some(c1.clone()));
    let events = store.command_events("cmd-01").expect("events");
    let states: Vec<CommandState> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        states,
        [
            CommandState::Pending,
            CommandState::Dispatched,
            CommandState::Failed
        ]
    );
    assert_eq!(events[0].1, c1.created_at);
    assert!(events.iter().all(|(_, at)| !at.is_empty()));
    assert!(store.command_events("nope").expect("no events").is_empty());
    assert!(matches!(
        store.update_command(&command("nope", "edge-01", CommandState::Ok)),
        Err(StoreError::NotFound(_))
    ));

    // More commands for listing.
    for (id, agent, status) in [
        ("cmd-02", "edge-02", CommandState::Ok),
        ("cmd-03", "edge-01", CommandState::Running),
        ("cmd-04", "edge-02", CommandState::Pending),
        ("cmd-05", "edge-01", CommandState::Ok),
    ] {
        let mut rec = command(id, agent, status);
        if agent == "edge-02" {
            rec.job_id = Some("job-1".to_owned());
        }
        store.insert_command(&rec).expect("insert more");
    }
    let list = |q: CommandQuery| store.list_commands(&q).expect("list");
    assert_eq!(
        ids(&list(CommandQuery::default())),
        ["cmd-05", "cmd-04", "cmd-03", "cmd-02", "cmd-01"]
    );
    let agent = |a: &str| CommandQuery {
        agent: Some(a.to_owned()),
        ..Default::default()
    };
    assert_eq!(ids(&list(agent("edge-01"))), ["cmd-05", "cmd-03", "cmd-01"]);
    assert!(list(agent("ghost")).is_empty());
    let by_status = CommandQuery {
        status: Some(CommandState::Ok),
        ..Default::default()
    };
    assert_eq!(ids(&list(by_status)), ["cmd-05", "cmd-02"]);
    let by_job = CommandQuery {
        job_id: Some("job-1".to_owned()),
        ..Default::default()
    };
    let job_cmds = list(by_job);
    assert_eq!(ids(&job_cmds), ["cmd-04", "cmd-02"]);
    assert_eq!(job_cmds[0].job_id.as_deref(), Some("job-1"));
    let combined = CommandQuery {
        status: Some(CommandState::Ok),
        ..agent("edge-01")
    };
    assert_eq!(ids(&list(combined)), ["cmd-05"]);

    // Limit clamps to at least one; the cursor pages backwards.
    let limited = |limit| CommandQuery {
        limit,
        ..Default::default()
    };
    assert_eq!(ids(&list(limited(2))), ["cmd-05", "cmd-04"]);
    assert_eq!(ids(&list(limited(0))), ["cmd-05"]);
    let page2 = CommandQuery {
        before: Some("cmd-04".to_owned()),
        ..limited(2)
    };
    assert_eq!(ids(&list(page2)), ["cmd-03", "cmd-02"]);

    // Unfinished: oldest first.
    assert_eq!(
        ids(&store.unfinished_commands().expect("unfinished")),
        ["cmd-03", "cmd-04"]
    );

    // Jobs.
    let j = job("job-1");
    store.insert_job(&j).expect("insert job");
    assert_eq!(store.get_job("job-1").expect("get job"), Some(j.clone()));
    assert_eq!(store.get_job("nope").expect("get missing job"), None);
    assert!(matches!(
        store.insert_job(&j),
        Err(StoreError::Duplicate(_))
    ));
    store.insert_job(&job("job-fresh")).expect("fresh job");

    // Prune keeps the newest finished and every unfinished command. Finished: 05, 02, 01.
    assert_eq!(store.prune(10).expect("prune nothing"), 0);
    assert_eq!(store.prune(1).expect("prune"), 2);
    assert_eq!(
        ids(&list(CommandQuery::default())),
        ["cmd-05", "cmd-04", "cmd-03"]
    );
    assert!(store.command_events("cmd-01").expect("events").is_empty());
    // job-1 still has cmd-04; a job with no commands yet is not touched.
    assert!(store.get_job("job-1").expect("job").is_some());
    assert!(store.get_job("job-fresh").expect("job").is_some());
    let mut c4 = command("cmd-04", "edge-02", CommandState::Cancelled);
    c4.job_id = Some("job-1".to_owned());
    store.update_command(&c4).expect("cancel");
    assert_eq!(store.prune(0).expect("prune all finished"), 2);
    assert_eq!(ids(&list(CommandQuery::default())), ["cmd-03"]);
    assert_eq!(store.get_job("job-1").expect("job"), None);
    assert!(store.get_job("job-fresh").expect("job").is_some());

    store.check_writable().expect("writable");

    // Compare-and-set: only from the expected status.
    let mut cas = command("cmd-cas", "edge-01", CommandState::Pending);
    store.insert_command(&cas).expect("insert cas");
    cas.status = CommandState::Cancelled;
    assert!(!store
        .update_command_if(&cas, CommandState::Dispatched)
        .expect("cas miss"));
    assert_eq!(
        store.get_command("cmd-cas").expect("get").map(|r| r.status),
        Some(CommandState::Pending)
    );
    assert!(store
        .update_command_if(&cas, CommandState::Pending)
        .expect("cas hit"));
    assert_eq!(
        store.get_command("cmd-cas").expect("get").map(|r| r.status),
        Some(CommandState::Cancelled)
    );
}

#[test]
fn states_round_trip_and_finality() {
    for state in CommandState::ALL {
        assert_eq!(state.as_str().parse::<CommandState>(), Ok(state));
        let json = serde_json::to_string(&state).expect("serialize");
        assert_eq!(json, format!("\"{}\"", state.as_str()));
    }
    assert!("OK".parse::<CommandState>().is_err());
    let unfinished: Vec<_> = CommandState::ALL
        .into_iter()
        .filter(|s| !s.is_final())
        .collect();
    assert_eq!(
        unfinished,
        [
            CommandState::Pending,
            CommandState::Dispatched,
            CommandState::Running
        ]
    );
}

#[test]
fn record_serialises_with_contract_field_names() {
    let mut rec = command("cmd-1", "edge-01", CommandState::Timeout);
    let v = serde_json::to_value(&rec).expect("serialize");
    for key in [
        "command_id",
        "agent_id",
        "verb",
        "args",
        "requested_by",
        "status",
        "exit_code",
        "stdout",
        "stderr",
        "truncated",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "error",
        "timeout_ms",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["status"], "timeout");
    assert!(v.get("job_id").is_none());
    rec.job_id = Some("job-1".to_owned());
    let v = serde_json::to_value(&rec).expect("serialize");
    assert_eq!(v["job_id"], "job-1");
    let back: CommandRecord = serde_json::from_value(v).expect("deserialize");
    assert_eq!(back, rec);
}

#[test]
fn query_limit_is_clamped() {
    let q = |limit| CommandQuery {
        limit,
        ..Default::default()
    };
    assert_eq!(CommandQuery::default().effective_limit(), 100);
    assert_eq!(q(0).effective_limit(), 1);
    assert_eq!(q(5000).effective_limit(), CommandQuery::MAX_LIMIT);
}

#[tokio::test]
async fn async_wrapper_runs_on_the_blocking_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(dir.path().join("s.db"))
        .await
        .expect("open");
    let rec = command("cmd-1", "edge-01", CommandState::Pending);
    store.insert_command(&rec).await.expect("insert");
    assert_eq!(store.get_command("cmd-1").await.expect("get"), Some(rec));
    assert_eq!(
        store
            .list_commands(&CommandQuery::default())
            .await
            .expect("list")
            .len(),
        1
    );
    store.check_writable().await.expect("writable");
    let mem = Store::memory();
    assert!(mem.get_command("x").await.expect("get").is_none());
}

/// Pruning by age and listing without output, against `store` (fresh and empty).
pub fn prune_by_age_and_lists_without_output(store: &dyn CommandStore) {
    let finished = |id: &str, at: &str| {
        let mut c = command(id, "edge-01", CommandState::Ok);
        c.stdout = "big output".to_owned();
        c.finished_at = Some(at.to_owned());
        c
    };
    store
        .insert_command(&finished("cmd-01", "2025-01-01T00:00:00Z"))
        .expect("old");
    store
        .insert_command(&finished("cmd-02", "2025-03-01T00:00:00Z"))
        .expect("new");
    store
        .insert_command(&command("cmd-03", "edge-01", CommandState::Dispatched))
        .expect("unfinished");
    let plain = store
        .list_commands(&CommandQuery {
            with_output: false,
            ..Default::default()
        })
        .expect("list");
    assert!(plain.iter().all(|c| c.stdout.is_empty()));
    let full = store.list_commands(&CommandQuery::default()).expect("list");
    assert_eq!(full[1].stdout, "big output");

    assert_eq!(
        store
            .prune_finished_before("2025-02-01T00:00:00Z")
            .expect("prune"),
        1
    );
    assert_eq!(
        ids(&store.list_commands(&CommandQuery::default()).expect("list")),
        ["cmd-03", "cmd-02"]
    );
    // Unfinished commands are never pruned, however old.
    assert_eq!(
        store
            .prune_finished_before("2099-01-01T00:00:00Z")
            .expect("prune"),
        1
    );
    assert_eq!(
        ids(&store.list_commands(&CommandQuery::default()).expect("list")),
        ["cmd-03"]
    );
}

#[test]
fn memory_prunes_by_age() {
    prune_by_age_and_lists_without_output(&MemoryStore::new());
}

#[test]
fn sqlite_prunes_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
    prune_by_age_and_lists_without_output(&store);
}

/// Labels are stored, replaced and listed per agent, against `store` (fresh and empty).
pub fn labels_round_trip(store: &dyn CommandStore) {
    assert!(store.agent_labels().expect("none").is_empty());
    let eu: Labels = [("region".to_owned(), "eu".to_owned())].into();
    let us: Labels = [("region".to_owned(), "us".to_owned())].into();
    store.set_agent_labels("edge-01", &eu).expect("set");
    store.set_agent_labels("edge-01", &us).expect("replace");
    store.set_agent_labels("edge-02", &eu).expect("set");
    let mut all = store.agent_labels().expect("all");
    all.sort();
    assert_eq!(
        all,
        [("edge-01".to_owned(), us), ("edge-02".to_owned(), eu)]
    );
}

#[test]
fn memory_keeps_agent_labels() {
    labels_round_trip(&MemoryStore::new());
}

#[test]
fn sqlite_keeps_agent_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    labels_round_trip(&SqliteStore::open(&dir.path().join("s.db")).expect("open"));
}
