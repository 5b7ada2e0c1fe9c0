//! Issue 10, "Audit across replicas": two real backend processes on one PostgreSQL store and a
//! real nats-server. Each keeps its own chain with its own checkpoints (a replica restarting
//! in a running cluster does not take another's checkpoint for its tail), `GET
//! /api/v1/audit` on either replica lists both replicas' records (each with `replica`), and
//! `audit verify --config --replica ID=PATH` verifies both chains.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;

use agentmesh_e2e::backend::{HubOptions, ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::fleet::VERBS;
use agentmesh_e2e::nats::NatsServer;
use agentmesh_e2e::postgres::TestPostgres;
use agentmesh_e2e::process::{backend_binary, BackendProcess};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use serde_json::{json, Value};

/// Every record `GET /api/v1/audit` on `addr` lists, following `next_since`.
async fn fleet_records(addr: SocketAddr) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = "/api/v1/audit?limit=500".to_owned();
    for _ in 0..100 {
        let page = http::get(addr, &path, Some(ADMIN_TOKEN)).await.json();
        out.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["next_since"].as_str() {
            Some(next) => path = format!("/api/v1/audit?limit=500&since={next}"),
            None => break,
        }
    }
    out
}

fn max_seq_of(records: &[Value], replica: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["replica"] == replica)
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

async fn connected_on(p: &BackendProcess, id: &str) -> bool {
    let r = http::get(p.http, &format!("/api/v1/agents/{id}"), Some(VIEWER_TOKEN)).await;
    r.json()["connected"] == true
}

#[tokio::test]
async fn each_replica_keeps_its_chain_and_any_replica_lists_and_verifies_the_fleets() {
    init_logging();
    let pki = Pki::new();
    let Some(nats) = NatsServer::start(pki.path()).await else {
        return;
    };
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.create_database();
    let id = "node-00";
    let (cert, dir) = pki.agent(id);
    let mut replicas = Vec::new();
    for n in 0..2 {
        let extra = format!(
            "[store]\nurl = \"{db}\"\npool_size = 4\n\n[cluster]\nnats_url = \"{}\"\nreplica_id = \"r{n}\"\n",
            nats.url()
        );
        let options = HubOptions {
            extra,
            ..HubOptions::default()
        };
        let config = TestHub::write_process_config(&pki, &[(id, &cert.pin)], options);
        replicas.push(BackendProcess::start(&config).await);
    }
    // The agent is held by r1; its command arrives at r0 and is routed.
    let cfg = agent::write_config(
        pki.path(),
        id,
        &dir,
        replicas[1].hub,
        &[&pki.server.pin],
        VERBS,
    );
    let _agent = TestAgent::start(cfg);
    eventually("the agent is held by r1", PATIENCE, || async {
        connected_on(&replicas[1], id).await
    })
    .await;
    let body = json!({"verb": "echo", "args": {"message": "hi"}, "wait": true}).to_string();
    let r = http::request(
        replicas[0].http,
        "POST",
        &format!("/api/v1/agents/{id}/commands"),
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let command_id = r.json()["command_id"].as_str().unwrap().to_owned();

    // Either replica lists both chains' records; the command's request is in r1's chain.
    for p in &replicas {
        eventually("the fleet's records on every replica", PATIENCE, || async {
            let all = fleet_records(p.http).await;
            let requested = all.iter().any(|r| {
                r["kind"] == "command_requested"
                    && r["command_id"] == command_id.as_str()
                    && r["replica"] == "r1"
            });
            requested && all.iter().any(|r| r["replica"] == "r0")
        })
        .await;
    }

    // r1 crashes and comes back while r0 keeps writing checkpoints: r1's tail is checked
    // against r1's own checkpoint, so nothing is reported missing.
    let before = max_seq_of(&fleet_records(replicas[0].http).await, "r1");
    replicas[1].kill_9().await;
    replicas[1].restart().await;
    eventually(
        "r1's records after the restart are listed",
        PATIENCE,
        || async { max_seq_of(&fleet_records(replicas[0].http).await, "r1") > before },
    )
    .await;
    let all = fleet_records(replicas[0].http).await;
    let missing: Vec<_> = all
        .iter()
        .filter(|r| r["kind"] == "audit_tail_missing")
        .collect();
    assert!(missing.is_empty(), "no false tail alarm: {missing:?}");

    // Both chains verify from r0's config: its own log, r1's given by path.
    let out = Command::new(backend_binary())
        .arg("--config")
        .arg(&replicas[0].config_path)
        .args(["audit", "verify", "--replica"])
        .arg(format!("r1={}", replicas[1].audit_path().display()))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok: replica \"r1\""), "{text}");
    // Without the path, r1's checkpoint is still checked (signature and key).
    let out = Command::new(backend_binary())
        .arg("--config")
        .arg(&replicas[0].config_path)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("signed by the hub key"), "{text}");
}
