//! Issue 10, "Losing a replica loses nothing": two real backend processes on one PostgreSQL store
//! and a real nats-server; agents whose `backend_url` lists both hubs. kill -9 of the replica
//! holding agents with running commands: the agents reconnect to the other, every command
//! acknowledged before the kill gets its result recorded through the survivor, a caller
//! waiting on the dead replica gets an error (not a hang), and both audit chains verify.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{OPERATOR_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::cluster::{command_record as command, connected_agents, ProcessCluster};
use agentmesh_e2e::process::{audit_verify, BackendProcess};
use agentmesh_e2e::{eventually, http, PATIENCE};
use serde_json::json;

const AGENTS: usize = 4;

async fn agents_on(p: &BackendProcess) -> Vec<(String, String)> {
    connected_agents(p.http).await
}

#[tokio::test]
async fn kill_9_of_a_replica_loses_no_acknowledged_command() {
    let t0 = std::time::Instant::now();
    let Some(mut m) = ProcessCluster::start_processes(2, AGENTS).await else {
        return;
    };
    // Every agent knows both hubs and picks one at random.
    for i in 0..AGENTS {
        m.start_agent(i, &[0, 1]);
    }
    let replicas = &mut m.replicas;
    eventually("every agent connected somewhere", PATIENCE, || async {
        agents_on(&replicas[0]).await.len() == AGENTS
            && agents_on(&replicas[1]).await.len() == AGENTS
    })
    .await;
    eprintln!("connected at {:?}", t0.elapsed());
    let held = agents_on(&replicas[0]).await;
    let victim_id = held[0].1.clone();
    let victim = usize::from(victim_id == "r1");
    let survivor = 1 - victim;
    let doomed: Vec<String> = held
        .iter()
        .filter(|(_, r)| *r == victim_id)
        .map(|(id, _)| id.clone())
        .collect();
    // Commands acknowledged (202) through the survivor, running on agents of the victim.
    let mut acknowledged = Vec::new();
    for id in &doomed {
        let body = json!({"verb": "sleep", "args": {"secs": "1.5"}}).to_string();
        let r = http::request(
            replicas[survivor].http,
            "POST",
            &format!("/api/v1/agents/{id}/commands"),
            Some(OPERATOR_TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        acknowledged.push(r.json()["command_id"].as_str().unwrap().to_owned());
    }
    for cid in &acknowledged {
        eventually("the command runs", PATIENCE, || async {
            command(replicas[survivor].http, cid).await["status"] == "running"
                || command(replicas[survivor].http, cid).await["status"] == "dispatched"
        })
        .await;
    }
    // A caller waiting on the victim: its request ends with an error when the victim dies.
    let victim_http = replicas[victim].http;
    let first = doomed[0].clone();
    let waiting = tokio::spawn(async move {
        let body = json!({"verb": "sleep", "args": {"secs": "5"}, "wait": true}).to_string();
        let path = format!("/api/v1/agents/{first}/commands");
        http::try_request(
            victim_http,
            "POST",
            &path,
            Some(OPERATOR_TOKEN),
            Some(&body),
        )
        .await
    });
    eventually(
        "the waiting caller's command is dispatched",
        PATIENCE,
        || async {
            let r = http::get(
                replicas[survivor].http,
                "/api/v1/commands?limit=50",
                Some(VIEWER_TOKEN),
            )
            .await;
            r.body.matches("\"verb\":\"sleep\"").count() > acknowledged.len()
        },
    )
    .await;
    eprintln!("before kill at {:?}", t0.elapsed());
    replicas[victim].kill_9().await;
    let answer = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("no hang")
        .unwrap();
    assert!(
        answer.as_ref().is_none_or(|r| r.status != 200),
        "a caller on the dead replica gets an error: {:?}",
        answer.map(|r| r.body)
    );
    eprintln!("waiter answered at {:?}", t0.elapsed());
    // Every agent of the victim is listed on the survivor, held there.
    eventually(
        "the victim's agents reconnect to the survivor",
        PATIENCE,
        || async {
            let now = agents_on(&replicas[survivor]).await;
            let here = format!("r{survivor}");
            doomed
                .iter()
                .all(|id| now.iter().any(|(a, r)| a == id && *r == here))
        },
    )
    .await;
    eprintln!("reconnected at {:?}", t0.elapsed());
    for cid in &acknowledged {
        eventually(
            "the held result is recorded through the survivor",
            PATIENCE,
            || async { command(replicas[survivor].http, cid).await["status"] == "ok" },
        )
        .await;
    }
    eprintln!("results recorded at {:?}", t0.elapsed());
    for p in replicas.iter() {
        audit_verify(&p.audit_path()).unwrap();
    }
}
