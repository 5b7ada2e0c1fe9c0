//! Drain and reconnect against the real hub (with client authentication), not only the fake
//! one of the agent's unit tests: a graceful backend stop sends `drain`, the agent leaves
//! without an error and comes back to the restarted backend by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::{eventually, init_logging, raw, Pki, TestAgent, TestHub, PATIENCE};

#[tokio::test]
async fn a_graceful_stop_drains_the_session_and_the_agent_comes_back() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let (probe, _) = pki.agent("probe-01");
    let mut hub = TestHub::start(&pki, &[("edge-01", &edge.pin), ("probe-01", &probe.pin)]).await;
    let agent = TestAgent::connect(&pki, &hub, "edge-01", &edge_dir).await;
    // A hand-driven session sees the `drain` frame itself, with its reconnect hint.
    let (mut session, _) = raw::session(hub.hub, pki.ca.cert_pem(), &probe, "probe-01").await;
    let stopping = tokio::spawn(async move {
        let drain = session.next_json(PATIENCE).await;
        let close = session.close_code(PATIENCE).await;
        (drain, close)
    });
    // Graceful stop and start again from the same file, on the same ports.
    hub.restart_from_file().await;
    let (drain, close) = stopping.await.unwrap();
    let drain = drain.expect("drain frame");
    assert_eq!(drain["type"], "drain", "{drain}");
    assert!(drain["reconnect_after_ms"].is_u64(), "{drain}");
    assert_eq!(close.map(|c| c.0), Some(1001), "closed as going away");
    // The real agent reconnects to the new instance by itself. The hub lists it as soon as it
    // sends `welcome`, a moment before the agent has read it: wait for both sides.
    eventually("agent back on the restarted hub", PATIENCE, || async {
        agent.assert_running();
        hub.is_connected("edge-01") && agent.state.snapshot().connects >= 2
    })
    .await;
    let state = agent.state.snapshot();
    assert!(state.connects >= 2, "{state:?}");
    agent.stop().await;
    hub.stop().await;
}
