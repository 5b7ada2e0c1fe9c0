//! Issue "commands run end to end": real TLS, real child processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::fleet::{fleet, get_command, run, wait_final};
use agentmesh_e2e::{eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::{json, Value};

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
                          // A shell with a background sleep and a foreground one: killing only the shell (or only
                          // the foreground child) would leave a sleep behind.
    let r = run(
        &f.hub,
        "edge-01",
        json!({"verb": "group", "args": {"secs": secs}, "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    let rec = wait_final(&f.hub, &id).await;
    assert_eq!(rec["status"], "timeout", "{rec}");
    eventually("no sleep of the group left behind", PATIENCE, || async {
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
    session.tx.send(Box::new(frame)).await.unwrap();
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

// "A result produced while the backend was down" is a crash claim: see crash.rs.

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
