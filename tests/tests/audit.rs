//! Issue "guardrails", audit: the backend's log verifies, tampering is detected, a kill -9
//! during a command stream leaves a log that verifies and holds every answered command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::{json, Value};

fn verify(path: &Path) -> Result<(), String> {
    agentmesh_audit::verify_files(&agentmesh_audit::log_files(path).unwrap())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_audit_trail_records_and_verifies_and_detects_tampering() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    let body = json!({"verb": "echo", "args": {"message": "audited"}, "wait": true}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let command_id = r.json()["command_id"].as_str().unwrap().to_owned();
    let _ = http::get(hub.http, "/api/v1/agents", Some("amt_wrong")).await;
    let _ = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(VIEWER_TOKEN),
        Some(&body),
    )
    .await;

    let list = http::get(
        hub.http,
        "/api/v1/audit?agent=edge-01&limit=1000",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let records = list.json()["records"].as_array().unwrap().clone();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "agent_connected",
        "command_requested",
        "command_dispatched",
        "command_result",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let result = records
        .iter()
        .find(|r| r["kind"] == "command_result" && r["command_id"] == command_id.as_str())
        .unwrap();
    assert_eq!(
        result["details"]["agent_pin"],
        edge.pin.as_str(),
        "the result is signed by the agent's key: {result}"
    );
    let all = http::get(hub.http, "/api/v1/audit?limit=1000", Some(ADMIN_TOKEN))
        .await
        .json();
    let kinds: Vec<String> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in ["auth_failed", "forbidden", "token_used"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    agent.stop().await;
    hub.stop().await;

    let path = audit_path_of(&pki);
    verify(&path).expect("the chain verifies");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6);
    let tampered = pki.path().join("tampered.log");
    // Flip one byte.
    let mut bytes = text.clone().into_bytes();
    let at = lines[0].len() + 1 + 30;
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    std::fs::write(&tampered, &bytes).unwrap();
    assert!(verify(&tampered).is_err(), "flipped byte not detected");
    // Delete a record.
    let mut v = lines.clone();
    v.remove(2);
    std::fs::write(&tampered, v.join("\n") + "\n").unwrap();
    assert!(verify(&tampered).is_err(), "deleted record not detected");
    // Reorder two.
    let mut v = lines.clone();
    v.swap(2, 3);
    std::fs::write(&tampered, v.join("\n") + "\n").unwrap();
    assert!(verify(&tampered).is_err(), "reordering not detected");
    // The CLI agrees and exits non-zero naming the broken record.
    let out = Command::new(backend_binary())
        .args(["audit", "verify"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BROKEN"));
    let out = Command::new(backend_binary())
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn audit_path_of(pki: &Pki) -> PathBuf {
    let dir = std::fs::read_dir(pki.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("backend-"))
        .unwrap()
        .path();
    dir.join("audit.log")
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

#[tokio::test]
async fn a_kill_9_during_a_command_stream_leaves_a_verifiable_log_with_every_answered_command() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    // Start the hub in-process once to write a config, then run the real binary from it.
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let config_path = hub.config_path.clone();
    let (http_addr, hub_addr, server_pin) = (hub.http, hub.hub, hub.server_pin.clone());
    hub.stop().await;
    let text = std::fs::read_to_string(&config_path).unwrap().replace(
        "[limits]\n",
        "[limits]\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\n",
    );
    std::fs::write(&config_path, text).unwrap();
    let mut child = Command::new(backend_binary())
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    eventually("backend process up", PATIENCE, || async {
        http::try_get(http_addr, "/health").await.is_some()
    })
    .await;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub_addr,
        &[&server_pin],
        "",
    );
    let agent = TestAgent::start(cfg);
    eventually("agent connected", PATIENCE, || async {
        let r = http::get(http_addr, "/api/v1/agents/edge-01", Some(VIEWER_TOKEN)).await;
        r.status == 200 && r.json()["connected"] == true
    })
    .await;

    // Several concurrent streams of commands; kill -9 the backend in the middle.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut streams = Vec::new();
    for _ in 0..4 {
        let answered = answered.clone();
        streams.push(tokio::spawn(async move {
            let body = json!({"verb": "ping"}).to_string();
            loop {
                let r = match tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    try_post(http_addr, "/api/v1/agents/edge-01/commands", &body),
                )
                .await
                {
                    Ok(Some(r)) => r,
                    _ => break,
                };
                if r.status != 202 {
                    break;
                }
                let v: Value = serde_json::from_str(&r.body).unwrap();
                answered
                    .lock()
                    .unwrap()
                    .push(v["command_id"].as_str().unwrap().to_owned());
            }
        }));
    }
    eventually("some commands answered", PATIENCE, || async {
        answered.lock().unwrap().len() >= 50
    })
    .await;
    Command::new("kill")
        .arg("-9")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let _ = child.wait();
    for s in streams {
        let _ = s.await;
    }
    agent.stop().await;
    let answered = answered.lock().unwrap().clone();

    // Restart: the log is repaired if the kill tore a line, then verifies.
    let mut child = Command::new(backend_binary())
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    eventually("backend back", PATIENCE, || async {
        http::try_get(http_addr, "/health").await.is_some()
    })
    .await;
    let log = config_path.parent().unwrap().join("audit.log");
    let requested: std::collections::HashSet<String> = {
        let mut ids = std::collections::HashSet::new();
        let mut since: Option<u64> = None;
        loop {
            let q = match since {
                Some(s) => format!("/api/v1/audit?kind=command_requested&limit=1000&since={s}"),
                None => "/api/v1/audit?kind=command_requested&limit=1000".to_owned(),
            };
            let page = http::get(http_addr, &q, Some(ADMIN_TOKEN)).await.json();
            let recs = page["records"].as_array().unwrap().clone();
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                ids.insert(r["command_id"].as_str().unwrap().to_owned());
            }
            since = recs.last().and_then(|r| r["seq"].as_u64());
        }
        ids
    };
    let _ = child.kill();
    let _ = child.wait();
    verify(&log).expect("the log verifies after kill -9 and restart");
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !requested.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered commands missing from the audit log: {missing:?}",
        missing.len()
    );
    eprintln!("{} answered commands, all in the audit log", answered.len());
}

async fn try_post(addr: std::net::SocketAddr, path: &str, body: &str) -> Option<http::Response> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let r = http::request(addr, "POST", path, Some(OPERATOR_TOKEN), Some(body)).await;
    (r.status != 0).then_some(r)
}
