//! `GET /api/v1/events`: connects and command status changes in order, scope and family
//! filters, `Last-Event-ID` resume (and `reset` when the id is too old), a stalled reader
//! dropped while commands go on, and streams ended by shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::fleet::{self, fleet_with};
use agentmesh_e2e::sse::{SseEvent, SseOptions, SseStream};
use agentmesh_e2e::{agent, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use serde_json::json;

const DB_VIEWER: &str = "amt_test_db_viewer";

fn is_final_status(e: &SseEvent, command_id: &str) -> bool {
    e.kind == "command_status"
        && e.data["command_id"] == command_id
        && matches!(e.data["status"].as_str(), Some("ok" | "failed" | "timeout"))
}

fn statuses(events: &[SseEvent], command_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "command_status" && e.data["command_id"] == command_id)
        .map(|e| e.data["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn ping(hub: &TestHub, agent: &str) -> String {
    let r = fleet::run(
        hub,
        agent,
        json!({"verb": "ping", "args": {}, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "ok", "{}", r.body);
    r.json()["command_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_status_changes_in_order_with_scope_and_resume() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let (db, db_dir) = pki.agent("db-01");
    let extra = format!(
        "[[tokens]]\nname = \"db-viewer\"\nsha256 = \"{}\"\nrole = \"viewer\"\nlabels = {{ role = \"db\" }}\n",
        token_sha256_hex(DB_VIEWER)
    );
    let options = HubOptions {
        extra,
        ..HubOptions::default()
    };
    let enrol = [("edge-01", edge.pin.as_str()), ("db-01", db.pin.as_str())];
    let hub = TestHub::start_with(&pki, &enrol, options).await;

    let r = http::get(hub.http, "/api/v1/events", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let mut bad = SseStream::open(
        hub.http,
        "/api/v1/events?types=agent,bogus",
        Some(VIEWER_TOKEN),
    )
    .await;
    let status = bad.status;
    assert_eq!(status, 400, "{}", bad.body_text());

    let mut all = SseStream::open(hub.http, "/api/v1/events", Some(VIEWER_TOKEN)).await;
    assert_eq!(all.status, 200);
    assert!(
        all.headers
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        all.headers
    );
    let mut scoped = SseStream::open(hub.http, "/api/v1/events", Some(DB_VIEWER)).await;
    let mut agents_only =
        SseStream::open(hub.http, "/api/v1/events?types=agent", Some(VIEWER_TOKEN)).await;

    let edge_cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let edge_agent = TestAgent::start(edge_cfg);
    edge_agent.wait_connected(&hub, "edge-01").await;
    let db_cfg = agent::write_config(
        pki.path(),
        "db-01",
        &db_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let text = std::fs::read_to_string(&db_cfg)
        .unwrap()
        .replace("role = \"panel\"", "role = \"db\"");
    std::fs::write(&db_cfg, text).unwrap();
    let db_agent = TestAgent::start(db_cfg);
    db_agent.wait_connected(&hub, "db-01").await;

    // The connect, with what the agent said in its hello.
    let seen = all
        .until("edge-01 connected", |e| {
            e.kind == "agent_connected" && e.data["agent_id"] == "edge-01"
        })
        .await;
    let connected = seen.last().unwrap().clone();
    assert_eq!(connected.data["labels"]["role"], "panel", "{:?}", connected);
    assert_eq!(connected.data["site"], "test-site");
    assert!(connected.data["hostname"].is_string() && connected.data["at"].is_string());
    assert!(connected.data["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1")));
    let connect_id = connected.id.unwrap();

    // A command's status changes, in order, after the connect.
    let edge_cmd = ping(&hub, "edge-01").await;
    let mut seen = all
        .until("edge-01 ping final", |e| is_final_status(e, &edge_cmd))
        .await;
    assert_eq!(statuses(&seen, &edge_cmd), ["dispatched", "ok"], "{seen:?}");
    let db_cmd = ping(&hub, "db-01").await;
    seen.extend(
        all.until("db-01 ping final", |e| is_final_status(e, &db_cmd))
            .await,
    );
    assert_eq!(statuses(&seen, &db_cmd), ["dispatched", "ok"]);
    let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    assert!(ids[0] > connect_id);
    let job = seen
        .iter()
        .find(|e| e.data["command_id"] == edge_cmd)
        .unwrap();
    assert_eq!(job.data["job_id"], serde_json::Value::Null);
    assert_eq!(job.data["verb"], "ping");

    // The scoped viewer sees db-01 and nothing of edge-01.
    let scoped_seen = scoped
        .until("db-01 ping final", |e| is_final_status(e, &db_cmd))
        .await;
    assert!(
        scoped_seen.iter().all(|e| e.data["agent_id"] != "edge-01"),
        "scoped stream leaked edge-01: {scoped_seen:?}"
    );
    assert_eq!(statuses(&scoped_seen, &db_cmd), ["dispatched", "ok"]);

    // Resume after the connect: the same events again, nothing before, no reset.
    for (path, last) in [
        ("/api/v1/events".to_owned(), Some(connect_id)),
        (format!("/api/v1/events?last_event_id={connect_id}"), None),
    ] {
        let options = SseOptions {
            last_event_id: last,
            ..SseOptions::default()
        };
        let mut resumed = SseStream::open_with(hub.http, &path, Some(VIEWER_TOKEN), options).await;
        let again = resumed
            .until("replayed db-01 ping", |e| is_final_status(e, &db_cmd))
            .await;
        assert!(again
            .iter()
            .all(|e| e.kind != "reset" && e.id.unwrap() > connect_id));
        assert_eq!(statuses(&again, &edge_cmd), ["dispatched", "ok"], "{path}");
        let replay_ids: Vec<u64> = again.iter().map(|e| e.id.unwrap()).collect();
        assert!(replay_ids.windows(2).all(|w| w[0] < w[1]));
    }
    // An id from before the buffer (or another process): `reset` first.
    let options = SseOptions {
        last_event_id: Some(1),
        ..SseOptions::default()
    };
    let mut stale =
        SseStream::open_with(hub.http, "/api/v1/events", Some(VIEWER_TOKEN), options).await;
    let first = stale.next(PATIENCE).await.expect("reset");
    assert_eq!(first.kind, "reset", "{first:?}");
    assert!(first.data["reason"].is_string() && first.data["at"].is_string());

    // The disconnect; the agent-only stream saw connects and disconnects and nothing else.
    edge_agent.stop().await;
    let gone = all
        .until("edge-01 disconnected", |e| {
            e.kind == "agent_disconnected" && e.data["agent_id"] == "edge-01"
        })
        .await;
    assert!(gone.last().unwrap().data["reason"].is_string());
    let only = agents_only
        .until("edge-01 disconnected", |e| {
            e.kind == "agent_disconnected" && e.data["agent_id"] == "edge-01"
        })
        .await;
    assert!(
        only.iter().all(|e| e.kind.starts_with("agent_")),
        "{only:?}"
    );
    assert!(only
        .iter()
        .any(|e| e.kind == "agent_connected" && e.data["agent_id"] == "db-01"));

    // Shutdown ends open streams (they would otherwise hold the HTTP server's drain).
    db_agent.stop().await;
    hub.stop().await;
    assert!(
        all.ends_within(PATIENCE).await,
        "stream still open after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_dropped_and_commands_go_on() {
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 0\n\
                 agent_commands_per_sec = 0\n"
            .to_owned(),
        ..HubOptions::default()
    };
    let f = fleet_with(
        &[("edge-01", "web"), ("edge-02", "web"), ("edge-03", "web")],
        options,
    )
    .await;
    let hub = &f.hub;
    let bus = hub.backend().registry.events.clone();

    // A reader with a tiny socket buffer that reads the headers and then nothing.
    let stall = SseOptions {
        tiny_window: true,
        ..SseOptions::default()
    };
    let mut stalled =
        SseStream::open_with(hub.http, "/api/v1/events", Some(VIEWER_TOKEN), stall).await;
    assert_eq!(stalled.status, 200);
    // A reader that keeps up, in its own task.
    let mut healthy =
        SseStream::open(hub.http, "/api/v1/events?types=job", Some(VIEWER_TOKEN)).await;
    let (last_job_tx, last_job_rx) = tokio::sync::watch::channel(String::new());
    let reader = tokio::spawn(async move {
        let mut finished = std::collections::HashSet::new();
        loop {
            let want = last_job_rx.borrow().clone();
            if !want.is_empty() && finished.contains(&want) {
                return finished.len();
            }
            match healthy.next(Duration::from_millis(200)).await {
                Some(e) if e.data["finished"] == true => {
                    finished.insert(e.data["job_id"].as_str().unwrap_or_default().to_owned());
                }
                Some(_) => {}
                None if healthy.ends_within(Duration::ZERO).await => panic!("healthy stream ended"),
                None => {}
            }
        }
    });
    assert_eq!(bus.subscribers(), 2);

    // Fan-outs (about ten events each) until the stalled reader is dropped, then a few more:
    // nothing waits for the dropped reader. One at a time, so the agents' own concurrency
    // limit (4) never refuses a target.
    let mut jobs = Vec::new();
    let body =
        json!({"selector": {"labels": {"role": "web"}}, "verb": "ping", "args": {}}).to_string();
    let mut after_drop = 0;
    while after_drop < 5 {
        assert!(jobs.len() < 1000, "the stalled reader was never dropped");
        if bus.dropped() > 0 {
            if after_drop == 0 {
                eprintln!("stalled reader dropped after {} fan-outs", jobs.len());
            }
            after_drop += 1;
        }
        let r = http::request(
            hub.http,
            "POST",
            "/api/v1/commands",
            Some(OPERATOR_TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let job = r.json()["job_id"].as_str().unwrap().to_owned();
        let v = fleet::poll(hub, &job, |v| v["summary"]["pending"] == 0).await;
        assert_eq!(v["summary"]["ok"], 3, "every command completes: {v}");
        jobs.push(job);
    }
    last_job_tx.send(jobs.last().unwrap().clone()).unwrap();
    let finished = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("healthy reader")
        .unwrap();
    assert!(finished >= 1);
    assert_eq!(bus.dropped(), 1, "only the stalled reader is dropped");

    // The stalled stream, read at last, has been ended by the server.
    assert!(
        stalled.ends_within(PATIENCE).await,
        "the stalled stream was not closed"
    );
    let metrics = http::get(hub.http, "/metrics", None).await.body;
    assert!(
        metrics.contains("agentmesh_events_dropped_total 1"),
        "{metrics}"
    );
}
