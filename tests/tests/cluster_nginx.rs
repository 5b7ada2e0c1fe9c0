//! Issue 10, "Done means": three replicas on one PostgreSQL store and a real nats-server, behind
//! real nginx with the shipped `nginx/cluster.conf` (an upstream of the three hubs). Thirty
//! agents connect through nginx, each from its own address, and spread over the replicas; a
//! command to every agent through every replica's API succeeds, and a fan-out over all thirty
//! from one replica completes. Skipped (with a message) when nginx, nats-server or PostgreSQL
//! is missing, unless AGENTMESH_REQUIRE_EXTERNAL=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::backend::VIEWER_TOKEN;
use agentmesh_e2e::cluster::{ClusterBase, HubCluster};
use agentmesh_e2e::fleet::{assert_echo, fan_out, VERBS};
use agentmesh_e2e::nginx::{self, client_ip, relay, Nginx};
use agentmesh_e2e::{agent, eventually, http, TestAgent, TestHub};
use serde_json::json;

const REPLICAS: usize = 3;
const AGENTS: usize = 30;
/// Generous: thirty agents connecting through nginx on a slow, shared 2-core machine.
const FLEET_PATIENCE: Duration = Duration::from_secs(180);

/// Which replica holds `id`, if any.
fn holder(hubs: &[TestHub], id: &str) -> Option<usize> {
    hubs.iter().position(|h| h.is_connected(id))
}

#[tokio::test]
async fn thirty_agents_through_nginx_over_three_replicas_answer_every_replica() {
    let Some(nginx_bin) = nginx::binary() else {
        return;
    };
    let Some(base) = ClusterBase::start(AGENTS).await else {
        return;
    };
    let (proxy, _front) = nginx::front_door_certs(&base.pki);
    let mut hubs = Vec::new();
    for n in 0..REPLICAS {
        let mut options = base.options(n);
        // One operator token drives every command here: a generous rate, not the default.
        options.limits = "[limits]\nhub_connects_per_ip_per_sec = 0\noperator_commands_per_sec = 1000\noperator_burst = 1000\n".to_owned();
        hubs.push(nginx::hub_behind_nginx(&base.pki, &base.enrolment(), &proxy, options).await);
    }
    let m = HubCluster::from_parts(base, hubs);
    let (pki, ids, hubs) = (&m.pki, &m.ids, &m.replicas);
    let hub_addrs: Vec<_> = hubs.iter().map(|h| h.hub).collect();
    let api_addrs: Vec<_> = hubs.iter().map(|h| h.http).collect();
    let front_door = Nginx::start_cluster(&nginx_bin, pki.path(), &hub_addrs, &api_addrs).await;

    // Every agent reaches nginx from its own address and pins the hubs' key (the same on
    // every replica), whichever replica nginx hands it to.
    let started = std::time::Instant::now();
    let mut agents = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let via = relay(front_door.listen, vec![client_ip(i)]).await;
        let dir = &m.issued[i].1;
        let cfg = agent::write_config(pki.path(), id, dir, via, &[&hubs[0].server_pin], VERBS);
        agents.push(TestAgent::start(cfg));
    }
    eventually("all thirty agents connected", FLEET_PATIENCE, || async {
        ids.iter().all(|id| holder(hubs, id).is_some())
    })
    .await;
    let mut held = [0usize; REPLICAS];
    for id in ids.iter() {
        held[holder(hubs, id).unwrap()] += 1;
    }
    eprintln!(
        "{AGENTS} agents connected through nginx in {:.2}s, held per replica: {held:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        held.iter().all(|n| *n > 0),
        "nginx spreads the agents over every replica: {held:?}\n{}",
        front_door.errors()
    );
    m.wait_peers().await;

    // A command to every agent through every replica's API.
    for (r, hub) in hubs.iter().enumerate() {
        for id in ids.iter() {
            assert_echo(hub, id, &format!("r{r}-{id}")).await;
        }
        let list = http::get(
            hub.http,
            "/api/v1/agents?connected=true",
            Some(VIEWER_TOKEN),
        )
        .await;
        assert_eq!(list.json()["count"], AGENTS, "r{r} lists the fleet");
    }

    // A fan-out over all thirty from one replica.
    let body = json!({
        "selector": {"ids": ids},
        "verb": "echo",
        "args": {"message": "all"},
        "max_concurrency": 10,
    });
    let j = fan_out(&hubs[2], body).await;
    assert_eq!(j["summary"]["targets"], AGENTS, "{j}");
    assert_eq!(j["summary"]["ok"], AGENTS, "{j}");
}
