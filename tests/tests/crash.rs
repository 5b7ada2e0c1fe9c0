//! Crash claims, made with real processes and `kill -9` (an in-process abort is not a crash:
//! its tasks and audit writer outlive it). After every restart the audit log must pass
//! `backend-agent audit verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::fleet::VERBS;
use agentmesh_e2e::process::{self, BackendProcess, ChildGuard};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::{json, Value};

async fn submit(http_addr: std::net::SocketAddr, body: Value) -> String {
    let r = http::request(
        http_addr,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["command_id"].as_str().unwrap().to_owned()
}

async fn command(http_addr: std::net::SocketAddr, id: &str) -> Value {
    let r = http::get(
        http_addr,
        &format!("/api/v1/commands/{id}"),
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The agent's record of command `id` from its journal (`<checksum> <json>` lines:
/// `start`, `finish`, `delivered`), as `started_ms`/`finished_ms`/`delivered_ms`/`result`;
/// None until its `start` is there.
fn agent_record(state_dir: &Path, id: &str) -> Option<Value> {
    let text = std::fs::read_to_string(state_dir.join("results").join("journal")).ok()?;
    let mut record: Option<serde_json::Map<String, Value>> = None;
    for line in text.lines() {
        let Some(op) = line
            .get(17..)
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
        else {
            continue;
        };
        if op["id"] != id {
            continue;
        }
        let r = record.get_or_insert_with(Default::default);
        match op["op"].as_str() {
            Some("start") => r.insert("started_ms".into(), op["ms"].clone()),
            Some("finish") => {
                r.insert("result".into(), op["result"].clone());
                r.insert("finished_ms".into(), op["ms"].clone())
            }
            Some("delivered") => r.insert("delivered_ms".into(), op["ms"].clone()),
            _ => None,
        };
    }
    record.map(Value::Object)
}

async fn connected(http_addr: std::net::SocketAddr) -> bool {
    let r = http::get(http_addr, "/api/v1/agents/edge-01", Some(VIEWER_TOKEN)).await;
    r.status == 200 && r.json()["connected"] == true
}

/// A backend process and an agent config with the command-test verbs.
async fn setup(pki: &Pki) -> (BackendProcess, PathBuf, PathBuf) {
    let (edge, edge_dir) = pki.agent("edge-01");
    let config =
        TestHub::write_process_config(pki, &[("edge-01", &edge.pin)], HubOptions::default());
    let backend = BackendProcess::start(&config).await;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        backend.hub,
        &[&pki.server.pin],
        VERBS,
    );
    let state_dir = pki.path().join("state-edge-01");
    (backend, cfg, state_dir)
}

#[tokio::test]
async fn a_result_produced_while_the_backend_was_down_survives_an_agent_restart_too() {
    init_logging();
    let pki = Pki::new();
    let (mut backend, cfg, state_dir) = setup(&pki).await;
    let agent = TestAgent::start(cfg.clone());
    eventually("agent connected", PATIENCE, || async {
        agent.assert_running();
        connected(backend.http).await
    })
    .await;
    let id = submit(
        backend.http,
        json!({"verb": "sleep", "args": {"secs": "1"}}),
    )
    .await;
    eventually("the agent started it", PATIENCE, || async {
        agent_record(&state_dir, &id).is_some()
    })
    .await;
    backend.kill_9().await;
    // Poll the agent's own record: the command finishes while no backend exists.
    eventually(
        "the agent finished it with no backend",
        PATIENCE,
        || async { agent_record(&state_dir, &id).is_some_and(|r| r["finished_ms"].is_u64()) },
    )
    .await;
    let record = agent_record(&state_dir, &id).unwrap();
    assert!(
        record["delivered_ms"].is_null(),
        "delivered to whom? {record}"
    );
    // The agent restarts too before the backend is back: the result lives on disk only.
    agent.stop().await;
    backend.restart().await;
    process::audit_verify(&backend.audit_path()).expect("audit verifies after kill -9");
    let agent = TestAgent::start(cfg);
    let http_addr = backend.http;
    eventually("the result reached the history", PATIENCE, || async {
        agent.assert_running();
        command(http_addr, &id).await["status"] == "ok"
    })
    .await;
    let rec = command(http_addr, &id).await;
    assert_eq!(rec["exit_code"], 0, "{rec}");
    agent.stop().await;
    let log = backend.audit_path();
    drop(backend);
    process::audit_verify(&log).expect("audit verifies at the end");
}

/// Pids of processes with `arg` in their command line.
fn pids_with_arg(arg: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|part| part == arg.as_bytes())
                .then_some(pid)
        })
        .collect()
}

#[tokio::test]
async fn a_gateway_agent_killed_mid_command_reports_it_interrupted_after_restart() {
    init_logging();
    let pki = Pki::new();
    let (mut backend, cfg, state_dir) = setup(&pki).await;
    let spawn_agent = || {
        ChildGuard(Some(
            Command::new(process::gateway_binary())
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    };
    let mut gateway = spawn_agent();
    eventually("agent connected", PATIENCE, || async {
        connected(backend.http).await
    })
    .await;
    let secs = "29.0719"; // unique, to find (and clean up) the orphaned sleep by its pid
    let id = submit(
        backend.http,
        json!({"verb": "sleep", "args": {"secs": secs}}),
    )
    .await;
    eventually("sleep running", PATIENCE, || async {
        !pids_with_arg(secs).is_empty() && agent_record(&state_dir, &id).is_some()
    })
    .await;
    gateway.signal("-9");
    gateway.wait_exit(PATIENCE).await;
    for pid in pids_with_arg(secs) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    // Restarted, the agent finds the record it left `started` and reports it, never re-runs it.
    let _gateway = spawn_agent();
    let http_addr = backend.http;
    eventually("interrupted reported", PATIENCE, || async {
        command(http_addr, &id).await["status"] == "failed"
    })
    .await;
    let rec = command(http_addr, &id).await;
    assert!(rec.to_string().contains("interrupted"), "{rec}");
    assert!(pids_with_arg(secs).is_empty(), "the command ran again");
    // And the backend survives its own kill -9 with a verifiable log.
    backend.kill_9().await;
    backend.restart().await;
    process::audit_verify(&backend.audit_path()).expect("audit verifies after kill -9");
}
