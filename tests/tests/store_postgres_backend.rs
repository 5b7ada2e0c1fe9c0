//! A real `backend-agent` process with `[store] url` pointing at a real PostgreSQL: a command
//! run on a real agent is recorded in PostgreSQL (not in a SQLite file), survives `kill -9`
//! and a restart, and `audit verify --config` finds the audit checkpoint there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use agentmesh_e2e::backend::{HubOptions, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::cluster::{command_record, connected_on, store_toml};
use agentmesh_e2e::fleet::VERBS;
use agentmesh_e2e::postgres::TestPostgres;
use agentmesh_e2e::process::{backend_binary, BackendProcess};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::json;

async fn connected(http_addr: SocketAddr) -> bool {
    connected_on(http_addr, "edge-01").await
}

/// Hub options with `[store] url` on PostgreSQL (the SQLite `path` stays in the file).
fn on_postgres(url: &str) -> HubOptions {
    HubOptions {
        extra: store_toml(url),
        ..HubOptions::default()
    }
}

fn sqlite_path(config: &Path) -> String {
    let doc: toml::Table = std::fs::read_to_string(config).unwrap().parse().unwrap();
    doc["store"]["path"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_backend_on_postgres_records_commands_there_and_keeps_them_across_a_crash() {
    init_logging();
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let config = TestHub::write_process_config(&pki, &[("edge-01", &edge.pin)], on_postgres(&url));
    let mut backend = BackendProcess::start(&config).await;
    let agent_cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        backend.hub,
        &[&pki.server.pin],
        VERBS,
    );
    let agent = TestAgent::start(agent_cfg.clone());
    eventually("agent connected", PATIENCE, || async {
        agent.assert_running();
        connected(backend.http).await
    })
    .await;

    let r = http::request(
        backend.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&json!({"verb": "typed", "args": {"name": "pgstore"}}).to_string()),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    let http_addr = backend.http;
    eventually("the command finished ok", PATIENCE, || async {
        command_record(http_addr, &id).await["status"] == "ok"
    })
    .await;

    // The record is in PostgreSQL, with its output and transitions; no SQLite file exists.
    let row = TestPostgres::query_strings(
        &url,
        &format!(
            "SELECT status || ' ' || convert_from(stdout, 'UTF8') FROM commands \
             WHERE command_id = '{id}'"
        ),
    );
    let row = row.first().cloned().flatten().expect("the command row");
    assert!(row.starts_with("ok pgstore"), "{row:?}");
    let events = TestPostgres::query_strings(
        &url,
        &format!("SELECT status FROM command_events WHERE command_id = '{id}' ORDER BY seq"),
    );
    assert!(events.len() >= 2, "each transition is an event: {events:?}");
    assert_eq!(
        events.last().cloned().flatten().as_deref(),
        Some("ok"),
        "{events:?}"
    );
    let sqlite = sqlite_path(&config);
    assert!(!Path::new(&sqlite).exists(), "{sqlite} was created");

    // kill -9 and restart: the history comes back from PostgreSQL.
    agent.stop().await;
    backend.kill_9().await;
    backend.restart().await;
    let rec = command_record(backend.http, &id).await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert!(
        rec["stdout"].as_str().unwrap().starts_with("pgstore"),
        "{rec}"
    );

    // The audit checkpoint the backend writes at start lives in PostgreSQL and anchors the log.
    let checkpoints = TestPostgres::query_strings(&url, "SELECT COUNT(*) FROM audit_checkpoints");
    assert_ne!(checkpoints, [Some("0".to_owned())]);
    drop(backend);
    let out = Command::new(backend_binary())
        .arg("--config")
        .arg(&config)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn ready_follows_postgres_down_and_back_without_a_backend_restart() {
    init_logging();
    let Some(mut pg) = TestPostgres::start() else {
        return;
    };
    let url = pg.create_database();
    let pki = Pki::new();
    let config = TestHub::write_process_config(&pki, &[], on_postgres(&url));
    let backend = BackendProcess::start(&config).await;
    let ready = |addr| async move { http::get(addr, "/ready", None).await };
    assert_eq!(ready(backend.http).await.status, 200);

    pg.stop();
    let http_addr = backend.http;
    eventually(
        "/ready is 503 while PostgreSQL is down",
        PATIENCE,
        || async {
            let r = ready(http_addr).await;
            r.status == 503 && r.json()["store_writable"] == false
        },
    )
    .await;
    let r = ready(http_addr).await;
    let error = r.json()["store_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.to_lowercase().contains("postgres"),
        "a clear error: {error}"
    );
    let list = http::get(http_addr, "/api/v1/commands", Some(VIEWER_TOKEN)).await;
    assert_eq!(list.status, 503, "reads fail clearly: {}", list.body);
    assert_eq!(
        list.json()["error"]["code"],
        "store_unavailable",
        "{}",
        list.body
    );
    assert!(list.header("retry-after").is_some(), "{}", list.headers);

    pg.restart();
    eventually(
        "/ready is 200 again once PostgreSQL is back",
        PATIENCE,
        || async { ready(http_addr).await.status == 200 },
    )
    .await;
    let list = http::get(http_addr, "/api/v1/commands", Some(VIEWER_TOKEN)).await;
    assert_eq!(list.status, 200, "{}", list.body);
}
