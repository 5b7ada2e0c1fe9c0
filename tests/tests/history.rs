//! Issue 7, "Bounded under abuse" for the command history: pruning by count, output only on
//! request, `queue_ttl_ms` capped, and dispatched commands that never get a result end
//! `expired` even across a kill -9 of a real backend process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command};

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::{eventually, http, init_logging, raw, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::{json, Value};

const NO_RATE_LIMITS: &str = "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\n";

async fn hub_with_agent(pki: &Pki) -> (TestHub, TestAgent) {
    let (edge, edge_dir) = pki.agent("edge-01");
    let options = HubOptions {
        limits: NO_RATE_LIMITS.to_owned(),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(pki, &[("edge-01", &edge.pin)], options).await;
    let agent = TestAgent::connect(pki, &hub, "edge-01", &edge_dir).await;
    (hub, agent)
}

async fn run(hub: &TestHub, body: Value) -> http::Response {
    http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await
}

async fn history(hub: &TestHub, query: &str) -> Value {
    let r = http::get(
        hub.http,
        &format!("/api/v1/commands{query}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[tokio::test]
async fn history_is_pruned_to_max_records() {
    init_logging();
    let pki = Pki::new();
    let (mut hub, agent) = hub_with_agent(&pki).await;
    let text = std::fs::read_to_string(&hub.config_path).unwrap().replace(
        "[store]\n",
        "[store]\nmax_records = 50\nprune_interval_secs = 1\n",
    );
    std::fs::write(&hub.config_path, text).unwrap();
    hub.restart_from_file().await;
    eventually("agent back", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;

    for i in 0..80 {
        let r = run(
            &hub,
            json!({"verb": "echo", "args": {"message": format!("n{i}")}, "wait": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    eventually("history pruned to 50", PATIENCE, || async {
        history(&hub, "?limit=1000").await["count"]
            .as_u64()
            .unwrap()
            <= 50
    })
    .await;
    let list = history(&hub, "?limit=1000").await;
    assert!(list["count"].as_u64().unwrap() > 0, "the newest are kept");
    // The newest command survived; pruning took the oldest.
    assert!(list["commands"][0]["args"]["message"] == "n79", "{list}");
    let audit = http::get(
        hub.http,
        "/api/v1/audit?kind=history_pruned&limit=1000",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(
        !audit.json()["records"].as_array().unwrap().is_empty(),
        "{}",
        audit.body
    );
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn output_is_listed_only_on_request_and_queue_ttl_is_capped() {
    init_logging();
    let pki = Pki::new();
    let (hub, agent) = hub_with_agent(&pki).await;
    let r = run(
        &hub,
        json!({"verb": "echo", "args": {"message": "visible"}, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();

    let plain = history(&hub, "?agent=edge-01").await;
    let rec = &plain["commands"][0];
    assert_eq!(rec["command_id"], id.as_str());
    assert!(
        rec.get("stdout").is_none() && rec.get("stderr").is_none(),
        "{rec}"
    );
    let full = history(&hub, "?agent=edge-01&include=output").await;
    assert_eq!(full["commands"][0]["stdout"], "visible\n");
    let bad = http::get(
        hub.http,
        "/api/v1/commands?include=secrets",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // One command by id is the full record.
    let one = http::get(
        hub.http,
        &format!("/api/v1/commands/{id}"),
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(one.json()["stdout"], "visible\n");

    let r = run(&hub, json!({"verb": "ping", "queue_ttl_ms": 3_600_001u64})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queue_ttl_ms"));
    let r = run(&hub, json!({"verb": "ping", "queue_ttl_ms": 3_600_000u64})).await;
    assert_eq!(r.status, 202, "at the cap: {}", r.body);
    agent.stop().await;
    hub.stop().await;
}

/// The `backend-agent` binary next to this test binary (built by `cargo test --workspace`).
fn backend_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("backend-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p backend-agent` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A backend child process, killed when dropped so a failing test leaves no process behind.
struct BackendProcess(Child);

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_backend(config: &std::path::Path) -> BackendProcess {
    BackendProcess(
        Command::new(backend_binary())
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_dispatched_command_whose_agent_vanished_ends_expired_after_a_kill_9_and_restart() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    // Write a config in-process, then run the real binary from it.
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let config_path = hub.config_path.clone();
    let (http_addr, hub_addr) = (hub.http, hub.hub);
    hub.stop().await;
    // The first process never expires it (a grace of an hour) ...
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        original.replace("[limits]\n", "[limits]\nresult_grace_secs = 3600\n"),
    )
    .unwrap();
    let child = spawn_backend(&config_path);
    eventually("backend process up", PATIENCE, || async {
        http::try_get(http_addr, "/health").await.is_some()
    })
    .await;
    // A hand-driven agent that takes the command and never answers.
    let (mut client, _) = raw::session(hub_addr, pki.ca.cert_pem(), &edge, "edge-01").await;
    let body = json!({"verb": "ping", "timeout_ms": 200}).to_string();
    let r = http::request(
        http_addr,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    let frame = client.next_json(PATIENCE).await.expect("command frame");
    assert_eq!(frame["command_id"], id.as_str());

    Command::new("kill")
        .arg("-9")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    drop(child); // reaps it
    drop(client);

    // ... the restarted one does, from the stored record (a grace of one second).
    std::fs::write(
        &config_path,
        original.replace("[limits]\n", "[limits]\nresult_grace_secs = 1\n"),
    )
    .unwrap();
    let child = spawn_backend(&config_path);
    eventually("backend back", PATIENCE, || async {
        http::try_get(http_addr, "/health").await.is_some()
    })
    .await;
    let path = format!("/api/v1/commands/{id}");
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        last = http::get(http_addr, &path, Some(VIEWER_TOKEN)).await.json();
        if last["status"] == "expired" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(child);
    assert_eq!(last["status"], "expired", "{last}");
    assert_eq!(last["error"]["code"], "no_result", "{last}");
}
