//! Issue 10, commands held for an offline agent in a cluster: two replicas on one PostgreSQL
//! store and a real nats-server. A command held on replica r0 (`queue_ttl_ms`) follows the
//! agent to r1 when it connects there: it runs once, with its id, its result is recorded and
//! a caller waiting on r0 is answered; several held commands keep their order; one that
//! expired or was cancelled before the agent came never runs; one whose handover was missed
//! while NATS was down is handed over by the sweep once NATS is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Deref;
use std::path::{Path, PathBuf};

use agentmesh_e2e::backend::VIEWER_TOKEN;
use agentmesh_e2e::cluster::{ClusterBase, HubCluster};
use agentmesh_e2e::fleet::{get_command, run, wait_final};
use agentmesh_e2e::sse::SseStream;
use agentmesh_e2e::{eventually, http, TestAgent, PATIENCE};
use serde_json::{json, Value};

const ID: &str = "edge-01";

struct Pair {
    /// Replicas `r0`, `r1`; the one identity is [`ID`].
    cluster: HubCluster,
    /// Every run of the `mark` verb appends its `n` here, one per line.
    marks: PathBuf,
}

impl Deref for Pair {
    type Target = HubCluster;
    fn deref(&self) -> &HubCluster {
        &self.cluster
    }
}

/// A verb that appends its argument to `marks`: how often and in which order it ran.
fn mark_verb(marks: &Path) -> String {
    format!(
        r#"
[[verbs]]
name = "mark"
description = "appends n to a file"
program = "/bin/sh"
args = ["-c", "echo {{n}} >> {0}"]
timeout_secs = 10
params.n = {{ type = "string", pattern = "[0-9]+", required = true }}

[[verbs]]
name = "stall"
description = "appends n to a file, then sleeps"
program = "/bin/sh"
args = ["-c", "echo {{n}} >> {0}; exec sleep 60"]
timeout_secs = 90
params.n = {{ type = "string", pattern = "[0-9]+", required = true }}
"#,
        marks.display()
    )
}

/// Two replicas `r0`, `r1`; agent `edge-01` connected to r0 once (so r0 knows its verbs),
/// then stopped. `None` when nats-server or PostgreSQL is not installed.
async fn pair() -> Option<Pair> {
    let base = ClusterBase::start_with_ids(vec![ID.to_owned()]).await?;
    let cluster = HubCluster::start_on(base, 2, "").await;
    cluster.wait_peers().await;
    let marks = cluster.pki.path().join("marks.log");
    let p = Pair { cluster, marks };
    let first = p.agent_on(0);
    first.wait_connected(&p.replicas[0], ID).await;
    first.stop().await;
    eventually("r0 sees the agent go", PATIENCE, || async {
        !p.replicas[0].is_connected(ID)
    })
    .await;
    Some(p)
}

impl Pair {
    /// Starts the agent with replica `n` as its only hub.
    fn agent_on(&self, n: usize) -> TestAgent {
        let hub = self.replicas[n].hub;
        let cfg = self.agent_config_with(0, &[hub], &mark_verb(&self.marks));
        TestAgent::start(cfg)
    }

    /// Submits `mark n` on r0 with `queue_ttl_ms`; returns its id (held: `pending`).
    async fn hold(&self, n: u32, ttl_ms: u64) -> String {
        self.hold_verb("mark", n, ttl_ms).await
    }

    /// Submits `verb n` on r0 with `queue_ttl_ms`; returns its id (held: `pending`).
    async fn hold_verb(&self, verb: &str, n: u32, ttl_ms: u64) -> String {
        let body = json!({"verb": verb, "args": {"n": n.to_string()}, "queue_ttl_ms": ttl_ms});
        let r = run(&self.replicas[0], ID, body).await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.json()["status"], "pending", "{}", r.body);
        r.json()["command_id"].as_str().unwrap().to_owned()
    }

    /// The lines `mark` wrote so far.
    fn marks(&self) -> Vec<String> {
        std::fs::read_to_string(&self.marks)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Commands for the agent in `status` as r0 lists them.
    async fn count(&self, status: &str) -> usize {
        let path = format!("/api/v1/commands?agent={ID}&status={status}&limit=100");
        let list = http::get(self.replicas[0].http, &path, Some(VIEWER_TOKEN)).await;
        list.json()["commands"].as_array().map_or(0, Vec::len)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_command_follows_the_agent_to_another_replica_and_wakes_the_waiter() {
    let Some(p) = pair().await else { return };
    let held = p.hold(1, 60_000).await;
    // A caller waiting on r0 for a held command (wait=true with queue_ttl_ms).
    let r0 = p.replicas[0].http;
    let waiter = tokio::spawn(async move {
        let body =
            json!({"verb": "mark", "args": {"n": "2"}, "queue_ttl_ms": 60_000, "wait": true});
        http::request(
            r0,
            "POST",
            &format!("/api/v1/agents/{ID}/commands"),
            Some(agentmesh_e2e::backend::OPERATOR_TOKEN),
            Some(&body.to_string()),
        )
        .await
    });
    eventually("both commands held on r0", PATIENCE, || async {
        p.count("pending").await == 2
    })
    .await;

    let agent = p.agent_on(1);
    agent.wait_connected(&p.replicas[1], ID).await;
    assert!(!p.replicas[0].is_connected(ID), "the agent is on r1 only");

    let rec = wait_final(&p.replicas[0], &held).await;
    assert_eq!(rec["status"], "ok", "r0 shows the result: {rec}");
    assert_eq!(
        rec["command_id"],
        held.as_str(),
        "the same command id: {rec}"
    );
    assert_eq!(get_command(&p.replicas[1], &held).await["status"], "ok");

    let answered = waiter.await.unwrap();
    assert_eq!(answered.status, 200, "{}", answered.body);
    let done = answered.json();
    assert_eq!(done["status"], "ok", "the waiter on r0 is answered: {done}");

    // Each ran exactly once (the dispatch order is checked through r1's events below).
    let mut ran = p.marks();
    ran.sort();
    assert_eq!(ran, ["1", "2"]);
    assert_eq!(p.count("pending").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_commands_keep_their_order_and_expired_or_cancelled_ones_never_run() {
    let Some(p) = pair().await else { return };
    // Expired on r0 before the agent comes.
    let expired = p.hold(0, 1).await;
    let rec = wait_final(&p.replicas[0], &expired).await;
    assert_eq!(rec["status"], "expired", "{rec}");
    assert_eq!(rec["error"]["code"], "queue_ttl_expired", "{rec}");
    // Cancelled on r0 while held there.
    let cancelled = p.hold(9, 60_000).await;
    let r = http::request(
        p.replicas[0].http,
        "DELETE",
        &format!("/api/v1/commands/{cancelled}"),
        Some(agentmesh_e2e::backend::OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["status"], "cancelled", "{}", r.body);
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(p.hold(n, 60_000).await);
    }

    // r1's event stream shows the order in which it dispatched them.
    let mut events =
        SseStream::open(p.replicas[1].http, "/api/v1/events", Some(VIEWER_TOKEN)).await;
    assert_eq!(events.status, 200);
    let agent = p.agent_on(1);
    agent.wait_connected(&p.replicas[1], ID).await;

    for id in &ids {
        let rec = wait_final(&p.replicas[0], id).await;
        assert_eq!(rec["status"], "ok", "{rec}");
    }
    let last = ids.last().unwrap().clone();
    let seen = events
        .until("the last command dispatched on r1", |e| {
            e.kind == "command_status"
                && e.data["command_id"] == last.as_str()
                && dispatched(&e.data)
        })
        .await;
    let order: Vec<String> = seen
        .iter()
        .filter(|e| e.kind == "command_status" && dispatched(&e.data))
        .map(|e| e.data["command_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(order, ids, "dispatched on r1 in the order held on r0");

    // Each ran once; the expired and the cancelled one never ran and stay as they were.
    let mut ran = p.marks();
    ran.sort();
    assert_eq!(ran, ["1", "2", "3", "4", "5"]);
    assert_eq!(
        get_command(&p.replicas[1], &expired).await["status"],
        "expired"
    );
    assert_eq!(
        get_command(&p.replicas[1], &cancelled).await["status"],
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_missed_while_nats_was_down_happens_once_it_is_back() {
    let Some(mut p) = pair().await else { return };
    let held = p.hold(7, 60_000).await;
    p.cluster.nats.stop().await;
    for hub in &p.replicas {
        eventually("not ready without NATS", PATIENCE, || async {
            http::get(hub.http, "/ready", None).await.status == 503
        })
        .await;
    }
    // The agent attaches on r1 while r0 cannot hear about it.
    let agent = p.agent_on(1);
    agent.wait_connected(&p.replicas[1], ID).await;
    assert_eq!(
        get_command(&p.replicas[0], &held).await["status"],
        "pending"
    );
    p.cluster.nats.restart().await;
    let rec = wait_final(&p.replicas[0], &held).await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(p.marks(), ["7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_command_is_cancelled_through_the_replica_that_held_it() {
    let Some(p) = pair().await else { return };
    let held = p.hold_verb("stall", 3, 60_000).await;
    let agent = p.agent_on(1);
    agent.wait_connected(&p.replicas[1], ID).await;
    eventually(
        "the handed-over command runs on the agent",
        PATIENCE,
        || async { p.marks() == ["3"] },
    )
    .await;
    // r0 does not hold the agent: the cancel goes to r1, which holds its session.
    let r = http::request(
        p.replicas[0].http,
        "DELETE",
        &format!("/api/v1/commands/{held}"),
        Some(agentmesh_e2e::backend::OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let rec = wait_final(&p.replicas[0], &held).await;
    assert_eq!(rec["status"], "cancelled", "{rec}");
}

fn dispatched(data: &Value) -> bool {
    data["status"] == "dispatched"
}
