//! Issue 10, "Routing over NATS": three replicas on one PostgreSQL store and a real nats-server,
//! agents spread over them. Commands reach every agent through every replica, fan-out spans
//! replicas, supersede and revocation reach the replica holding the session, and a replica
//! that loses NATS says so (`/ready` 503, `cluster_unavailable`) and recovers by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{ADMIN_TOKEN, VIEWER_TOKEN};
use agentmesh_e2e::cluster::HubCluster;
use agentmesh_e2e::fleet::{assert_echo, fan_out, run};
use agentmesh_e2e::{eventually, http, raw, TestHub, PATIENCE};
use serde_json::{json, Value};

const REPLICAS: usize = 3;

/// Three replicas, `agents` gateway agents (agent i on replica i % 3) plus `spare` enrolled
/// identities without an agent, every replica seeing its peers; `None` when nats-server or
/// PostgreSQL is not installed.
async fn mesh(agents: usize, spare: usize) -> Option<HubCluster> {
    let mut m = HubCluster::start(REPLICAS, agents + spare).await?;
    m.connect_agents(agents).await;
    m.wait_peers().await;
    Some(m)
}

/// Waits until `/ready` on `hub` answers `status`.
async fn ready_becomes(hub: &TestHub, status: u16, what: &str) {
    eventually(what, PATIENCE, || async {
        http::get(hub.http, "/ready", None).await.status == status
    })
    .await;
}

fn echo(message: &str) -> Value {
    json!({"verb": "echo", "args": {"message": message}, "wait": true})
}

#[tokio::test]
async fn every_replica_runs_a_command_on_every_agent_and_lists_the_whole_fleet() {
    let Some(m) = mesh(6, 0).await else { return };
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for (r, hub) in m.replicas.iter().enumerate() {
        for (i, id) in m.ids.iter().enumerate() {
            let started = std::time::Instant::now();
            assert_echo(hub, id, &format!("r{r}-{id}")).await;
            let took = started.elapsed();
            if i % REPLICAS == r {
                &mut same
            } else {
                &mut cross
            }
            .push(took);
        }
        let list = http::get(
            hub.http,
            "/api/v1/agents?connected=true",
            Some(VIEWER_TOKEN),
        )
        .await;
        let list = list.json();
        assert_eq!(list["count"], 6, "r{r} lists the fleet: {list}");
        for a in list["agents"].as_array().unwrap() {
            let id = a["id"].as_str().unwrap();
            let holder = m.ids.iter().position(|i| i == id).unwrap() % REPLICAS;
            assert_eq!(a["replica"], format!("r{holder}"), "{a}");
            let one = http::get(
                hub.http,
                &format!("/api/v1/agents/{id}"),
                Some(VIEWER_TOKEN),
            )
            .await;
            let one = one.json();
            assert_eq!(one["connected"], true, "r{r} shows {id}: {one}");
            assert_eq!(one["replica"], format!("r{holder}"), "{one}");
        }
    }
    // Reported, not asserted (numbers belong to the bench; CI boxes are noisy).
    same.sort();
    cross.sort();
    eprintln!(
        "wait=true echo, median: same replica {:?} ({} runs), routed {:?} ({} runs)",
        same[same.len() / 2],
        same.len(),
        cross[cross.len() / 2],
        cross.len()
    );
}

#[tokio::test]
async fn a_fan_out_from_one_replica_reaches_agents_on_all_of_them() {
    let Some(m) = mesh(6, 0).await else { return };
    let body = json!({"selector": {"ids": m.ids}, "verb": "echo", "args": {"message": "all"}, "max_concurrency": 2});
    let j = fan_out(&m.replicas[1], body).await;
    assert_eq!(j["summary"]["targets"], 6, "{j}");
    assert_eq!(j["summary"]["ok"], 6, "{j}");
}

#[tokio::test]
async fn a_revocation_on_one_replica_closes_the_session_held_by_another() {
    let Some(m) = mesh(0, 1).await else { return };
    let id = &m.ids[0];
    let (mut session, _) =
        raw::session(m.replicas[2].hub, m.pki.ca.cert_pem(), &m.issued[0].0, id).await;
    let resp = http::request(
        m.replicas[0].http,
        "DELETE",
        &format!("/api/v1/agents/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let started = std::time::Instant::now();
    let code = session.close_code(PATIENCE).await;
    assert_eq!(code.map(|c| c.0), Some(4004), "closed as revoked");
    // Typically well under a second; reported, not asserted (a loaded CI box may be slower).
    eprintln!(
        "revocation reached the holding replica in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_session_on_another_replica_supersedes_the_older_one() {
    let Some(m) = mesh(0, 1).await else { return };
    let id = &m.ids[0];
    let ca = m.pki.ca.cert_pem();
    let (mut first, _) = raw::session(m.replicas[0].hub, ca, &m.issued[0].0, id).await;
    let (_second, _) = raw::session(m.replicas[1].hub, ca, &m.issued[0].0, id).await;
    let code = first.close_code(PATIENCE).await;
    assert_eq!(code.map(|c| c.0), Some(4003), "superseded across replicas");
    eventually(
        "the first replica forgets the session",
        PATIENCE,
        || async { !m.replicas[0].is_connected(id) },
    )
    .await;
    assert!(m.replicas[1].is_connected(id));
}

#[tokio::test]
async fn without_nats_a_replica_is_not_ready_and_refuses_remote_commands_then_recovers() {
    let Some(mut m) = mesh(2, 0).await else {
        return;
    };
    // node-01 is held by r1; ask r0.
    let remote = m.ids[1].clone();
    assert_eq!(
        run(&m.replicas[0], &remote, echo("before")).await.status,
        200
    );
    m.nats.stop().await;
    ready_becomes(&m.replicas[0], 503, "r0 not ready without NATS").await;
    let refused = run(&m.replicas[0], &remote, echo("during")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "cluster_unavailable");
    // A command for an agent held here still runs.
    let local = run(&m.replicas[0], &m.ids[0], echo("local")).await;
    assert_eq!(local.status, 200, "{}", local.body);
    m.nats.restart().await;
    ready_becomes(&m.replicas[0], 200, "r0 ready again").await;
    // Subscriptions come back with the link; no backend restart.
    eventually("a remote command runs again", PATIENCE, || async {
        run(&m.replicas[0], &remote, echo("after")).await.status == 200
    })
    .await;
}

#[tokio::test]
async fn without_postgres_a_replica_is_not_ready_and_refuses_commands_then_recovers() {
    let Some(mut m) = mesh(2, 0).await else {
        return;
    };
    let remote = m.ids[1].clone();
    assert_eq!(
        run(&m.replicas[0], &remote, echo("before")).await.status,
        200
    );
    m.pg.stop();
    ready_becomes(&m.replicas[0], 503, "r0 not ready without PostgreSQL").await;
    // Nothing can be recorded: refused with an error, never a hang or a 2xx.
    let refused = run(&m.replicas[0], &remote, echo("during")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.json()["error"]["code"],
        "store_unavailable",
        "{}",
        refused.body
    );
    assert!(
        refused.header("retry-after").is_some(),
        "{}",
        refused.headers
    );
    m.pg.restart();
    ready_becomes(&m.replicas[0], 200, "r0 ready again").await;
    eventually("commands run again without a restart", PATIENCE, || async {
        run(&m.replicas[0], &remote, echo("after")).await.status == 200
    })
    .await;
}
