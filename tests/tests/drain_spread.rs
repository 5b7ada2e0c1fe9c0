//! Drain that spreads the herd: on shutdown each live session's `drain` frame carries its own
//! `reconnect_after_ms`, uniform over a window of N ÷ `hub_handshakes_per_sec` after
//! `drain_reconnect_after_ms`. Asserted on the values handed out, never on wall time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::HubOptions;
use agentmesh_e2e::{fleet, init_logging, raw, Pki, TestHub, PATIENCE};

const AGENTS: usize = 40;
const RATE: u64 = 20;
const BASE_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_slots_are_spread_uniformly_over_n_divided_by_the_admission_rate() {
    init_logging();
    let pki = Pki::new();
    let issued: Vec<_> = (0..AGENTS)
        .map(|i| {
            let id = format!("drain-{i:02}");
            let (cert, _) = pki.agent(&id);
            (id, cert)
        })
        .collect();
    let enrol: Vec<(&str, &str)> = issued
        .iter()
        .map(|(id, c)| (id.as_str(), c.pin.as_str()))
        .collect();
    let options = HubOptions {
        limits: format!(
            "[limits]\nhub_connects_per_ip_per_sec = 0\nhub_handshakes_per_sec = {RATE}\n\
             hub_handshake_burst = 1000\n"
        ),
        ..HubOptions::default()
    };
    let hub = TestHub::start_with(&pki, &enrol, options).await;
    let text = std::fs::read_to_string(&hub.config_path).unwrap().replace(
        "[hub]\n",
        &format!("[hub]\ndrain_reconnect_after_ms = {BASE_MS}\ndrain_grace_secs = 0\n"),
    );
    std::fs::write(&hub.config_path, text).unwrap();
    // `[hub]` drain keys are in the file now; start again from it.
    let mut hub = hub;
    hub.restart_from_file().await;

    let ca = pki.ca.cert_pem();
    let mut clients = Vec::new();
    for (id, cert) in &issued {
        let (client, _welcome) = raw::session(hub.hub, ca, cert, id).await;
        clients.push(client);
    }
    agentmesh_e2e::eventually("all sessions listed", PATIENCE, || async {
        issued.iter().all(|(id, _)| hub.is_connected(id))
    })
    .await;

    let stopping = tokio::spawn(hub.stop());
    let mut slots = Vec::new();
    for client in &mut clients {
        let frame = client.next_json(PATIENCE).await.expect("a drain frame");
        assert_eq!(frame["type"], "drain", "{frame}");
        slots.push(
            frame["reconnect_after_ms"]
                .as_u64()
                .expect("reconnect_after_ms"),
        );
    }
    stopping.await.unwrap();

    slots.sort_unstable();
    let step = 1000 / RATE;
    let expected: Vec<u64> = (0..AGENTS as u64).map(|k| BASE_MS + k * step).collect();
    assert_eq!(
        slots, expected,
        "one slot per admission interval, none shared, the window N ÷ rate"
    );
    let window = slots[AGENTS - 1] - slots[0];
    assert_eq!(window, (AGENTS as u64 - 1) * 1000 / RATE);
    // Uniform: each quarter of the window holds a quarter of the fleet.
    for quarter in 0..4u64 {
        let lo = BASE_MS + quarter * AGENTS as u64 * step / 4;
        let hi = lo + AGENTS as u64 * step / 4;
        let n = slots.iter().filter(|s| (lo..hi).contains(*s)).count();
        assert_eq!(n, AGENTS / 4, "quarter {quarter}: {slots:?}");
    }
}

/// A verb that runs until `go` exists.
fn hold_verb(go: &std::path::Path) -> String {
    format!(
        r#"
[[verbs]]
name = "hold"
description = "runs until the test lets it finish"
program = "/bin/sh"
args = ["-c", "while [ ! -e {} ]; do sleep 0.05; done"]
timeout_secs = 120
"#,
        go.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_flight_report_before_sessions_are_drained() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let text = std::fs::read_to_string(&hub.config_path)
        .unwrap()
        .replace("[hub]\n", "[hub]\ndrain_grace_secs = 300\n");
    std::fs::write(&hub.config_path, text).unwrap();
    let mut hub = hub;
    hub.restart_from_file().await;
    let go = pki.path().join("go");
    let cfg = agentmesh_e2e::agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub.hub,
        &[&hub.server_pin],
        &hold_verb(&go),
    );
    let _agent = agentmesh_e2e::TestAgent::start(cfg);
    agentmesh_e2e::eventually("edge-01 connected", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;

    let r = fleet::run(
        &hub,
        "edge-01",
        serde_json::json!({"verb": "hold", "args": {}}),
    )
    .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.status);
    let id = r.json()["command_id"].as_str().unwrap().to_owned();
    fleet::poll(&hub, &id, |v| {
        v["status"] == "running" || v["status"] == "dispatched"
    })
    .await;

    let live = hub.backend().live();
    let registry = hub.backend().registry.clone();
    let store = hub.backend().commands.clone();
    let stopping = tokio::spawn(hub.stop());
    agentmesh_e2e::eventually("shutdown began", PATIENCE, || async { live.draining() }).await;
    assert!(
        registry.session("edge-01").is_some(),
        "the session stays while its command is in flight"
    );

    std::fs::write(&go, b"").unwrap();
    stopping.await.unwrap();
    let record = store.store().get_command(&id).await.unwrap().unwrap();
    assert_eq!(
        record.status,
        backend_agent::store::CommandState::Ok,
        "the result landed before the backend stopped"
    );
}
