//! Issue "commands run end to end": real TLS, real child processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::backend::{OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::{json, Value};

const VERBS: &str = r#"
[[verbs]]
name = "sleep"
description = "sleeps"
program = "/bin/sleep"
args = ["{secs}"]
timeout_secs = 30
params.secs = { type = "string", pattern = "[0-9]+(\\.[0-9]+)?", required = true }

[[verbs]]
name = "fail"
description = "always fails"
program = "/bin/false"
args = []
timeout_secs = 5

[[verbs]]
name = "mkunique"
description = "creates one new unique directory under a fixed parent"
program = "/usr/bin/mktemp"
args = ["-d", "-p", "{parent}"]
timeout_secs = 5
params.parent = { type = "string", max_len = 4096, required = true }

[[verbs]]
name = "typed"
description = "schema test"
program = "/bin/echo"
args = ["{name}", "{count}", "{flag}", "{color}"]
timeout_secs = 5
params.name = { type = "string", pattern = "[a-z]{3,8}", required = true }
params.count = { type = "integer", min = 1, max = 10 }
params.flag = { type = "boolean" }
params.color = { type = "enum", values = ["red", "blue"] }
"#;

struct Fleet {
    pki: Pki,
    hub: TestHub,
    agents: Vec<TestAgent>,
}

async fn fleet(ids: &[(&str, &str)]) -> Fleet {
    init_logging();
    let pki = Pki::new();
    let issued: Vec<_> = ids
        .iter()
        .map(|(id, _)| (id.to_string(), pki.agent(id)))
        .collect();
    let enrol: Vec<(&str, &str)> = issued
        .iter()
        .map(|(id, (c, _))| (id.as_str(), c.pin.as_str()))
        .collect();
    let hub = TestHub::start(&pki, &enrol).await;
    let mut agents = Vec::new();
    for ((id, role), (_, (_, dir))) in ids.iter().zip(issued.iter()) {
        let cfg = agent::write_config(pki.path(), id, dir, hub.hub, &[&hub.server_pin], VERBS);
        // Per-agent role label.
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("role = \"panel\"", &format!("role = \"{role}\""));
        std::fs::write(&cfg, text).unwrap();
        agents.push(TestAgent::start(cfg));
    }
    for (id, _) in ids {
        eventually(&format!("{id} connected"), PATIENCE, || async {
            hub.is_connected(id)
        })
        .await;
    }
    Fleet { pki, hub, agents }
}

async fn run(hub: &TestHub, agent: &str, body: Value) -> http::Response {
    http::request(
        hub.http,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await
}

async fn get_command(hub: &TestHub, id: &str) -> Value {
    http::get(
        hub.http,
        &format!("/api/v1/commands/{id}"),
        Some(VIEWER_TOKEN),
    )
    .await
    .json()
}

async fn wait_final(hub: &TestHub, id: &str) -> Value {
    poll(hub, id, |v| {
        !matches!(
            v["status"].as_str(),
            Some("pending" | "dispatched" | "running")
        )
    })
    .await
}

/// Polls `GET /api/v1/commands/{id}` until `done` holds.
async fn poll(hub: &TestHub, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let v = get_command(hub, id).await;
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out polling {id}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ping_and_sysinfo_sync_and_async() {
    let f = fleet(&[("edge-01", "panel")]).await;
    let r = run(&f.hub, "edge-01", json!({"verb": "ping", "wait": true})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = r.json();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["agent_id"], "edge-01");
    assert_eq!(rec["requested_by"], "test-operator");
    assert!(rec["stdout"].as_str().unwrap().contains("version"), "{rec}");

    let r = run(&f.hub, "edge-01", json!({"verb": "sysinfo"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    let rec = wait_final(&f.hub, &id).await;
    assert_eq!(rec["status"], "ok", "{rec}");
    let info: Value = serde_json::from_str(rec["stdout"].as_str().unwrap()).unwrap();
    assert!(
        info["hostname"].is_string() && info["kernel"].is_string(),
        "{info}"
    );
}

#[tokio::test]
async fn arguments_arrive_literally_without_a_shell() {
    let f = fleet(&[("edge-01", "panel")]).await;
    let hostile = "a;b $(id) `x` && rm -rf / | cat\nnext";
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "echo", "args": {"message": hostile}, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = r.json();
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(rec["stdout"], format!("{hostile}\n"));
}

fn processes_with_arg(arg: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c.split(|b| *b == 0).any(|part| part == arg.as_bytes()))
        .count()
}

#[tokio::test]
async fn a_timeout_kills_the_process_group() {
    let f = fleet(&[("edge-01", "panel")]).await;
    let secs = "31.4159"; // unique, so we can look for it in /proc
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "sleep", "args": {"secs": secs}, "timeout_ms": 1000, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = r.json();
    assert_eq!(rec["status"], "timeout", "{rec}");
    eventually("no sleep left behind", PATIENCE, || async {
        processes_with_arg(secs) == 0
    })
    .await;
}

#[tokio::test]
async fn cancel_stops_a_running_command() {
    let f = fleet(&[("edge-01", "panel")]).await;
    let secs = "27.1828";
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "sleep", "args": {"secs": secs}}),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    eventually("sleep running", PATIENCE, || async {
        processes_with_arg(secs) == 1
    })
    .await;
    let c = http::request(
        f.hub.http,
        "DELETE",
        &format!("/api/v1/commands/{id}"),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(c.status, 202, "{}", c.body);
    let rec = wait_final(&f.hub, &id).await;
    assert_eq!(rec["status"], "cancelled", "{rec}");
    eventually("sleep gone", PATIENCE, || async {
        processes_with_arg(secs) == 0
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_the_contract_status_codes() {
    let f = fleet(&[("edge-01", "panel")]).await;
    let cases = [
        (json!({"verb": "reboot"}), 422, "verb_not_advertised"),
        (json!({"verb": "typed", "args": {}}), 422, "invalid_args"),
        (
            json!({"verb": "typed", "args": {"name": "ABC"}}),
            422,
            "invalid_args",
        ),
        (
            json!({"verb": "typed", "args": {"name": "abc", "count": "3"}}),
            422,
            "invalid_args",
        ),
        (
            json!({"verb": "typed", "args": {"name": "abc", "count": 11}}),
            422,
            "invalid_args",
        ),
        (
            json!({"verb": "typed", "args": {"name": "abc", "flag": "yes"}}),
            422,
            "invalid_args",
        ),
        (
            json!({"verb": "typed", "args": {"name": "abc", "color": "green"}}),
            422,
            "invalid_args",
        ),
        (
            json!({"verb": "typed", "args": {"name": "abc", "extra": 1}}),
            422,
            "invalid_args",
        ),
    ];
    for (body, status, code) in cases {
        let r = run(&f.hub, "edge-01", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{body}");
    }
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "typed", "args": {"name": "abc", "extra": 1}}),
    )
    .await;
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("extra"));
    let r = http::request(
        f.hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some("{not json"),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = run(&f.hub, "nope", json!({"verb": "ping"})).await;
    assert_eq!(r.status, 404);
    let r = http::request(
        f.hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(VIEWER_TOKEN),
        Some(r#"{"verb":"ping"}"#),
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn an_offline_agent_is_409_unless_queued_then_expired() {
    let mut f = fleet(&[("edge-01", "panel")]).await;
    f.agents.pop().unwrap().stop().await;
    eventually("disconnected", PATIENCE, || async {
        !f.hub.is_connected("edge-01")
    })
    .await;
    let r = run(&f.hub, "edge-01", json!({"verb": "ping"})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "ping", "queue_ttl_ms": 300}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    let rec = wait_final(&f.hub, &id).await;
    assert_eq!(rec["status"], "expired");
}

#[tokio::test]
async fn a_queued_command_runs_when_the_agent_comes_back() {
    let mut f = fleet(&[("edge-01", "panel")]).await;
    let agent = f.agents.pop().unwrap();
    let cfg = agent.config_path.clone();
    agent.stop().await;
    eventually("disconnected", PATIENCE, || async {
        !f.hub.is_connected("edge-01")
    })
    .await;
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "ping", "queue_ttl_ms": 60000}),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    f.agents.push(TestAgent::start(cfg));
    let rec = wait_final(&f.hub, &id).await;
    assert_eq!(rec["status"], "ok", "{rec}");
}

#[tokio::test]
async fn the_same_command_id_delivered_twice_executes_once() {
    let f = fleet(&[("edge-01", "panel")]).await;
    let parent = f.pki.path().join("unique-parent");
    std::fs::create_dir_all(&parent).unwrap();
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "mkunique", "args": {"parent": parent}, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.json();
    assert_eq!(first["status"], "ok", "{first}");
    // Deliver the very same command frame again, as a retrying hub would.
    let session = f.hub.backend().registry.session("edge-01").unwrap();
    let frame = agentmesh_protocol::HubFrame::Command(agentmesh_protocol::CommandFrame {
        command_id: first["command_id"].as_str().unwrap().to_owned(),
        verb: "mkunique".into(),
        args: json!({"parent": parent}).as_object().unwrap().clone(),
        timeout_ms: Some(5000),
        requested_by: "test".into(),
        issued_at: "2026-01-01T00:00:00Z".into(),
    });
    session.tx.send(frame).await.unwrap();
    let metrics = &f.hub.backend().metrics;
    eventually("the duplicate was answered", PATIENCE, || async {
        metrics
            .results_duplicate
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let made = std::fs::read_dir(&parent).unwrap().count();
    assert_eq!(made, 1, "the side effect happened {made} times");
}

#[tokio::test]
async fn a_result_produced_while_the_backend_was_down_reaches_the_history() {
    let mut f = fleet(&[("edge-01", "panel")]).await;
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "sleep", "args": {"secs": "1.5"}}),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    f.hub.kill();
    // The command finishes on the agent while no backend is there.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    f.hub.restart(&f.pki).await;
    let rec = wait_final(&f.hub, &id).await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["exit_code"], 0);
}

#[tokio::test]
async fn history_survives_a_restart_and_is_listable() {
    let mut f = fleet(&[("edge-01", "panel")]).await;
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "echo", "args": {"message": "keep me"}, "wait": true}),
    )
    .await;
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    f.hub.restart(&f.pki).await;
    let rec = get_command(&f.hub, &id).await;
    assert_eq!(rec["stdout"], "keep me\n");
    let list = http::get(
        f.hub.http,
        "/api/v1/commands?agent=edge-01&status=ok&limit=5",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(list.status, 200);
    assert!(list.json()["commands"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["command_id"] == id.as_str()));
    let bad = http::get(
        f.hub.http,
        "/api/v1/commands?status=bogus",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(bad.status, 400);
}

async fn job(hub: &TestHub, body: Value) -> Value {
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/commands",
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.json()["job_id"].as_str().unwrap().to_owned();
    poll(hub, &job_id, |v| v["summary"]["pending"] == 0).await
}

fn ms(rfc3339: &str) -> i128 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    t.unix_timestamp_nanos() / 1_000_000
}

#[tokio::test]
async fn fan_out_reaches_exactly_the_label_and_honours_concurrency_and_errors() {
    let f = fleet(&[
        ("db-01", "db"),
        ("web-01", "web"),
        ("web-02", "web"),
        ("web-03", "web"),
    ])
    .await;
    let j = job(&f.hub, json!({"selector": {"labels": {"role": "web"}}, "verb": "sleep", "args": {"secs": "0.4"}, "max_concurrency": 1})).await;
    assert_eq!(j["summary"]["targets"], 3, "{j}");
    assert_eq!(j["summary"]["ok"], 3, "{j}");
    let mut agents: Vec<&str> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    agents.sort();
    assert_eq!(agents, ["web-01", "web-02", "web-03"]);
    // max_concurrency 1: no two executions overlap.
    let mut spans: Vec<(i128, i128)> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let start = ms(r["started_at"].as_str().unwrap());
            (start, start + r["duration_ms"].as_u64().unwrap() as i128)
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlapping executions: {spans:?}");
    }

    let j = job(&f.hub, json!({"selector": {"labels": {"role": "web"}}, "verb": "fail", "max_concurrency": 1, "max_errors": 2})).await;
    assert_eq!(j["summary"]["failed"], 2, "{j}");
    assert_eq!(j["summary"]["skipped"], 1, "{j}");
    assert_eq!(j["summary"]["ok"], 0, "{j}");

    let j = job(
        &f.hub,
        json!({"selector": {"ids": ["db-01", "web-01"]}, "verb": "ping"}),
    )
    .await;
    assert_eq!(j["summary"]["ok"], 2, "{j}");
}

#[tokio::test]
async fn a_wait_that_outlives_the_timeout_is_504_and_the_late_result_is_still_recorded() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    // A hand-driven agent that receives the command and answers only after the wait gave up.
    let (mut client, _) =
        agentmesh_e2e::raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let body = json!({"verb": "ping", "timeout_ms": 200, "wait": true}).to_string();
    let http_addr = hub.http;
    let waiting = tokio::spawn(async move {
        http::request(
            http_addr,
            "POST",
            "/api/v1/agents/edge-01/commands",
            Some(OPERATOR_TOKEN),
            Some(&body),
        )
        .await
    });
    let command = client.next_json(PATIENCE).await.expect("command frame");
    assert_eq!(command["type"], "command");
    let id = command["command_id"].as_str().unwrap().to_owned();
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "wait_timeout");
    client
        .send_json(
            &json!({"type": "result", "command_id": id, "status": "ok", "exit_code": 0,
            "stdout": "late", "stderr": "", "truncated": false}),
        )
        .await;
    let rec = wait_final(&hub, &id).await;
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["stdout"], "late");
    hub.stop().await;
}
