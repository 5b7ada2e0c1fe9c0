//! Issue "guardrails", audit: the backend's log verifies, tampering is detected, a kill -9
//! during a command stream leaves a log that verifies and holds every answered command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::process::{self, backend_binary, BackendProcess};
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
    let r = http::get(hub.http, "/api/v1/agents", Some("amt_wrong")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(VIEWER_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

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

/// Most pages the audit listing is read in; a server that never returns an empty page (or
/// never advances `since`) fails the test instead of looping forever.
const MAX_PAGES: usize = 1000;

/// Every `command_requested` command id in the audit log, read page by page.
async fn requested_ids(http_addr: std::net::SocketAddr) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut since: Option<u64> = None;
    for _ in 0..MAX_PAGES {
        let q = match since {
            Some(s) => format!("/api/v1/audit?kind=command_requested&limit=1000&since={s}"),
            None => "/api/v1/audit?kind=command_requested&limit=1000".to_owned(),
        };
        let page = http::get(http_addr, &q, Some(ADMIN_TOKEN)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let recs = page.json()["records"].as_array().unwrap().clone();
        let Some(last) = recs.last().and_then(|r| r["seq"].as_u64()) else {
            return ids;
        };
        assert!(since.is_none_or(|s| last > s), "paging did not advance");
        for r in &recs {
            ids.insert(r["command_id"].as_str().unwrap().to_owned());
        }
        since = Some(last);
    }
    panic!("the audit listing did not end within {MAX_PAGES} pages");
}

#[tokio::test]
async fn a_kill_9_during_a_command_stream_leaves_a_verifiable_log_with_every_answered_command() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let options = HubOptions {
        limits: "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 0\nagent_commands_per_sec = 0\n".into(),
        ..HubOptions::default()
    };
    // The real binary on :0 (it reports its ports), killed on drop if the test fails.
    let config_path = TestHub::write_process_config(&pki, &[("edge-01", &edge.pin)], options);
    let mut backend = BackendProcess::start(&config_path).await;
    let http_addr = backend.http;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        backend.hub,
        &[&pki.server.pin],
        "",
    );
    let agent = TestAgent::start(cfg);
    eventually("agent connected", PATIENCE, || async {
        agent.assert_running();
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
            // Ends when the backend is gone (refused connect or no answer).
            while let Some(r) = try_post(http_addr, "/api/v1/agents/edge-01/commands", &body).await
            {
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
    backend.kill_9().await;
    for s in streams {
        s.await.unwrap();
    }
    agent.stop().await;
    let answered = answered.lock().unwrap().clone();
    // The log left by the crash verifies (a torn last line is the only allowed damage, and
    // the CLI reports it as such rather than as tampering)...
    let log = backend.audit_path();

    // ...and after a restart (which repairs a torn tail) it verifies with the CLI too.
    backend.restart().await;
    process::audit_verify(&log).expect("the log verifies after kill -9 and restart");
    let requested = requested_ids(backend.http).await;
    drop(backend);
    verify(&log).expect("the chain verifies");
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
    let r = http::try_request(addr, "POST", path, Some(OPERATOR_TOKEN), Some(body)).await?;
    (r.status != 0).then_some(r)
}
