//! Issue 10, "Audit across replicas": two real backend processes on one PostgreSQL store and a
//! real nats-server. Each keeps its own chain with its own checkpoints (a replica restarting
//! in a running cluster does not take another's checkpoint for its tail), `GET
//! /api/v1/audit` on either replica lists both replicas' records (each with `replica`), and
//! `audit verify --config --replica ID=PATH` verifies both chains.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use agentmesh_e2e::backend::OPERATOR_TOKEN;
use agentmesh_e2e::cluster::{connected_on, fleet_audit, ProcessCluster};
use agentmesh_e2e::process::backend_binary;
use agentmesh_e2e::{eventually, http, PATIENCE};
use serde_json::{json, Value};

fn max_seq_of(records: &[Value], replica: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["replica"] == replica)
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn each_replica_keeps_its_chain_and_any_replica_lists_and_verifies_the_fleets() {
    let Some(mut m) = ProcessCluster::start_processes(2, 1).await else {
        return;
    };
    let id = "node-00";
    // The agent is held by r1; its command arrives at r0 and is routed.
    m.start_agent(0, &[1]);
    eventually("the agent is held by r1", PATIENCE, || async {
        connected_on(m.replicas[1].http, id).await
    })
    .await;
    m.wait_peers().await;
    let replicas = &mut m.replicas;
    // Until r1's subscription for the agent has reached the NATS server, r0 may still
    // answer 409 agent_offline (nothing recorded): retried, not a failure.
    let body = json!({"verb": "echo", "args": {"message": "hi"}, "wait": true}).to_string();
    let command_id = std::sync::Mutex::new(String::new());
    eventually("a command routed from r0 to r1 runs", PATIENCE, || async {
        let r = http::request(
            replicas[0].http,
            "POST",
            &format!("/api/v1/agents/{id}/commands"),
            Some(OPERATOR_TOKEN),
            Some(&body),
        )
        .await;
        assert!(
            r.status == 200 || r.json()["error"]["code"] == "agent_offline",
            "{} {}",
            r.status,
            r.body
        );
        if r.status == 200 {
            *command_id.lock().unwrap() = r.json()["command_id"].as_str().unwrap().to_owned();
        }
        r.status == 200
    })
    .await;
    let command_id = command_id.into_inner().unwrap();

    // Either replica lists both chains' records; the command's request is in r1's chain.
    for p in replicas.iter() {
        eventually("the fleet's records on every replica", PATIENCE, || async {
            let all = fleet_audit(p.http, "").await;
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
    let before = max_seq_of(&fleet_audit(replicas[0].http, "").await, "r1");
    replicas[1].kill_9().await;
    replicas[1].restart().await;
    eventually(
        "r1's records after the restart are listed",
        PATIENCE,
        || async { max_seq_of(&fleet_audit(replicas[0].http, "").await, "r1") > before },
    )
    .await;
    let all = fleet_audit(replicas[0].http, "").await;
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
