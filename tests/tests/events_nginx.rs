//! `GET /api/v1/events` through the shipped nginx front door: each event arrives as it happens
//! (the backend's `X-Accel-Buffering: no` turns nginx's response buffering off for the stream),
//! not when a buffer fills or the stream ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::VIEWER_TOKEN;
use agentmesh_e2e::fleet;
use agentmesh_e2e::nginx::{self, Nginx};
use agentmesh_e2e::sse::SseStream;
use agentmesh_e2e::{agent, init_logging, Pki, TestAgent, TestHub};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pass_through_nginx_as_they_happen() {
    let Some(bin) = nginx::binary() else {
        return;
    };
    init_logging();
    let pki = Pki::new();
    let _ = nginx::front_door_certs(&pki);
    let (edge, edge_dir) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let front = Nginx::start(&bin, pki.path(), hub.hub, hub.http).await;

    let mut events = SseStream::open_tls(
        front.listen,
        pki.ca.cert_pem(),
        "/api/v1/events",
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(events.status, 200, "{}\n{}", events.headers, front.errors());

    // The agent dials the hub directly; its connect reaches the reader through nginx while
    // the stream stays open (a buffering proxy would hold these few hundred bytes back).
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let agent = TestAgent::start(cfg);
    agent.wait_connected(&hub, "edge-01").await;
    events
        .until("edge-01 connected through nginx", |e| {
            e.kind == "agent_connected" && e.data["agent_id"] == "edge-01"
        })
        .await;
    let r = fleet::run(
        &hub,
        "edge-01",
        json!({"verb": "ping", "args": {}, "wait": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    let seen = events
        .until("ping ok through nginx", |e| {
            e.kind == "command_status" && e.data["command_id"] == id && e.data["status"] == "ok"
        })
        .await;
    assert!(seen
        .iter()
        .any(|e| e.data["command_id"] == id && e.data["status"] == "dispatched"));

    agent.stop().await;
    hub.stop().await;
    drop(front);
}
