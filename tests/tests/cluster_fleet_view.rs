//! Issue 10: what one replica knows of the agents other replicas hold.
//! - Label lists, label fan-out selectors and label-scoped tokens are fleet-wide: a replica
//!   learns the labels of agents held elsewhere from each `attached` announcement, from a
//!   fleet gather when it (re)connects to NATS (so a replica started after the agents
//!   connected knows them too), and before every label fan-out.
//! - Its event stream says when agents connect to and leave other replicas, and how the
//!   commands it routed to them end; a cancel asked there reaches the agent's holder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::ADMIN_TOKEN;
use agentmesh_e2e::cluster::{wait_peers, ClusterBase};
use agentmesh_e2e::fleet::poll;
use agentmesh_e2e::sse::SseStream;
use agentmesh_e2e::{http, TestAgent, TestHub, PATIENCE};
use backend_agent::auth::token_sha256_hex;
use serde_json::{json, Value};

/// Operator scoped to `region=eu` (every verb).
const EU_OPS: &str = "amt_test_cluster_eu_ops";

/// Replica `r{n}` of `base`, with the `eu-ops` token.
async fn replica(base: &ClusterBase, n: usize) -> TestHub {
    let mut options = base.options(n);
    options.extra += &format!(
        "\n[[tokens]]\nname = \"eu-ops\"\nsha256 = \"{}\"\nrole = \"operator\"\nlabels = {{ region = \"eu\" }}\n",
        token_sha256_hex(EU_OPS)
    );
    TestHub::start_with(&base.pki, &base.enrolment(), options).await
}

/// Identity `i` of `base` on `hub`, claiming `region` in its `hello`.
async fn agent_in(base: &ClusterBase, hub: &TestHub, i: usize, region: &str) -> TestAgent {
    let cfg = base.agent_config(i, &[hub.hub]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace("region = \"eu\"", &format!("region = \"{region}\""));
    std::fs::write(&cfg, text).unwrap();
    let a = TestAgent::start(cfg);
    a.wait_connected(hub, &base.ids[i]).await;
    a
}

async fn call(hub: &TestHub, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let r = http::request(hub.http, method, path, Some(token), body.as_deref()).await;
    json!({"status": r.status, "body": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null)})
}

fn ids(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn labels_of_agents_held_by_other_replicas_match_lists_selectors_and_scopes() {
    // node-00 and node-02 claim region=eu, node-01 region=us.
    let Some(base) = ClusterBase::start(3).await else {
        return;
    };
    // r0 holds node-00 and node-01 before r1 exists: r1 learns them when it joins.
    let r0 = replica(&base, 0).await;
    let _eu1 = agent_in(&base, &r0, 0, "eu").await;
    let _us1 = agent_in(&base, &r0, 1, "us").await;
    let r1 = replica(&base, 1).await;
    // node-02 connects to r1 after both run: r0 learns it from the `attached` announcement.
    let _eu2 = agent_in(&base, &r1, 2, "eu").await;
    let hubs = [&r0, &r1];
    wait_peers(hubs.iter().map(|h| h.http), 2).await;

    let echo = |m: &str| json!({"verb": "echo", "args": {"message": m}, "wait": true});
    for (n, hub) in hubs.iter().enumerate() {
        // A scoped command to an agent the other replica holds, before any list on this
        // replica: the labels are already known (learned at join or announced).
        let other = if n == 0 { "node-02" } else { "node-00" };
        let path = format!("/api/v1/agents/{other}/commands");
        let deadline = std::time::Instant::now() + PATIENCE;
        let last = loop {
            let r = call(hub, "POST", &path, EU_OPS, Some(echo(&format!("r{n}")))).await;
            if r["status"] == 200 || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(last["status"], 200, "r{n} → {other}: {last}");
        assert_eq!(last["body"]["status"], "ok", "r{n} → {other}: {last}");
        assert_eq!(last["body"]["stdout"], format!("r{n}\n"), "{last}");

        // Out of scope stays out of scope, wherever the agent is held.
        let r = call(
            hub,
            "POST",
            "/api/v1/agents/node-01/commands",
            EU_OPS,
            Some(echo("no")),
        )
        .await;
        assert_eq!(
            r["status"], 403,
            "r{n}: node-01 is outside region=eu (as on one node): {r}"
        );

        // Lists: by label (admin), and what the scoped token sees.
        let list = call(
            hub,
            "GET",
            "/api/v1/agents?label=region=eu",
            ADMIN_TOKEN,
            None,
        )
        .await;
        assert_eq!(ids(&list["body"]), ["node-00", "node-02"], "r{n}: {list}");
        let list = call(
            hub,
            "GET",
            "/api/v1/agents?label=region=us",
            ADMIN_TOKEN,
            None,
        )
        .await;
        assert_eq!(ids(&list["body"]), ["node-01"], "r{n}: {list}");
        let list = call(hub, "GET", "/api/v1/agents?connected=true", EU_OPS, None).await;
        assert_eq!(ids(&list["body"]), ["node-00", "node-02"], "r{n}: {list}");
        for a in list["body"]["agents"].as_array().unwrap() {
            let holder = if a["id"] == "node-02" { "r1" } else { "r0" };
            assert_eq!(a["replica"], holder, "{a}");
        }

        // A label fan-out from either replica reaches both eu agents.
        let body = json!({"selector": {"labels": {"region": "eu"}}, "verb": "echo", "args": {"message": "fan"}});
        let r = call(hub, "POST", "/api/v1/commands", EU_OPS, Some(body)).await;
        assert_eq!(r["status"], 202, "r{n}: {r}");
        assert_eq!(
            r["body"]["targets"],
            json!(["node-00", "node-02"]),
            "r{n}: {r}"
        );
        let job = r["body"]["job_id"].as_str().unwrap().to_owned();
        let j = poll(hub, &job, |v| v["summary"]["pending"] == 0).await;
        assert_eq!(j["summary"]["ok"], 2, "r{n}: {j}");
    }
}

#[tokio::test]
async fn a_replicas_event_stream_and_cancels_follow_agents_on_other_replicas() {
    let Some(base) = ClusterBase::start(1).await else {
        return;
    };
    let hubs = [replica(&base, 0).await, replica(&base, 1).await];
    wait_peers(hubs.iter().map(|h| h.http), 2).await;
    let mut stream = SseStream::open(hubs[0].http, "/api/v1/events", Some(ADMIN_TOKEN)).await;
    assert_eq!(stream.status, 200);

    // The agent joins r1; r0's stream says so.
    let agent = agent_in(&base, &hubs[1], 0, "eu").await;
    stream
        .until("agent_connected from r1", |e| {
            e.kind == "agent_connected" && e.data["agent_id"] == "node-00"
        })
        .await;

    // A command through r0 runs on r1; r0's stream shows it dispatched, then its outcome.
    let body = json!({"verb": "echo", "args": {"message": "hi"}, "wait": true});
    let r = call(
        &hubs[0],
        "POST",
        "/api/v1/agents/node-00/commands",
        ADMIN_TOKEN,
        Some(body),
    )
    .await;
    assert_eq!(r["status"], 200, "{r}");
    let id = r["body"]["command_id"].as_str().unwrap().to_owned();
    let seen = stream
        .until("the routed command's outcome", |e| {
            e.kind == "command_status" && e.data["command_id"] == id && e.data["status"] == "ok"
        })
        .await;
    assert!(
        seen.iter().any(|e| e.kind == "command_status"
            && e.data["command_id"] == id
            && e.data["status"] == "dispatched"),
        "{seen:?}"
    );

    // A cancel asked on r0 reaches the agent held by r1.
    let body = json!({"verb": "sleep", "args": {"secs": "29.4242"}});
    let r = call(
        &hubs[0],
        "POST",
        "/api/v1/agents/node-00/commands",
        ADMIN_TOKEN,
        Some(body),
    )
    .await;
    assert_eq!(r["status"], 202, "{r}");
    let id = r["body"]["command_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/commands/{id}");
    let c = call(&hubs[0], "DELETE", &path, ADMIN_TOKEN, None).await;
    assert_eq!(c["status"], 202, "{c}");
    let rec = poll(&hubs[0], &id, |v| v["status"] == "cancelled").await;
    assert_eq!(rec["status"], "cancelled", "{rec}");

    // The agent leaves r1; r0's stream says so.
    agent.stop().await;
    stream
        .until("agent_disconnected from r1", |e| {
            e.kind == "agent_disconnected" && e.data["agent_id"] == "node-00"
        })
        .await;
}
