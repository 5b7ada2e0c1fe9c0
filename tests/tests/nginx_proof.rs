//! The agent knows it reached the hub through real nginx: nginx's certificate is checked as a
//! front door (CA or `front_door_pins`), the hub's by its signature on `welcome` against
//! `server_pins`. Needs nginx: skipped with a message when it is missing, a failure when
//! `AGENTMESH_REQUIRE_EXTERNAL=1` (CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentmesh_e2e::backend::HubOptions;
use agentmesh_e2e::nginx::{self, Nginx};
use agentmesh_e2e::{agent, eventually, fleet, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use mesh_certs::{Issued, Validity};
use serde_json::json;

/// `text.replace(from, to)`, failing loudly when the text no longer has `from`.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no longer has {from:?}");
    text.replace(from, to)
}

/// A hub behind real nginx: nginx's public certificate (`front`) and its mesh identity.
struct FrontDoor {
    hub: TestHub,
    front: Issued,
    listen: SocketAddr,
    _nginx: Nginx,
}

async fn front_door(nginx_bin: &Path, pki: &Pki, agents: &[(&str, &str)]) -> FrontDoor {
    let (proxy, front) = nginx::front_door_certs(pki);
    let mut hub = TestHub::start_with(pki, agents, HubOptions::default()).await;
    let text = std::fs::read_to_string(&hub.config_path).unwrap();
    let text = replace(
        &text,
        "handshake_timeout_secs",
        &format!(
            "trusted_proxy_pins = [\"{}\"]\nhandshake_timeout_secs",
            proxy.pin
        ),
    );
    std::fs::write(&hub.config_path, text).unwrap();
    hub.restart_from_file().await;
    // The shared renderer and process handling of every nginx test (tests/src/nginx.rs).
    let nginx = Nginx::start(nginx_bin, pki.path(), hub.hub, hub.http).await;
    FrontDoor {
        hub,
        front,
        listen: nginx.listen,
        _nginx: nginx,
    }
}

/// An agent config dialing nginx with `server_pins` and, if any, `front_door_pins`.
fn agent_config(
    pki: &Pki,
    id: &str,
    dir: &Path,
    door: &FrontDoor,
    server_pins: &[&str],
    front_door_pins: &[&str],
) -> PathBuf {
    let path = agent::write_config(pki.path(), id, dir, door.listen, server_pins, "");
    if !front_door_pins.is_empty() {
        let list: Vec<String> = front_door_pins.iter().map(|p| format!("\"{p}\"")).collect();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = replace(
            &text,
            "reconnect_min_ms",
            &format!("front_door_pins = [{}]\nreconnect_min_ms", list.join(", ")),
        );
        std::fs::write(&path, text).unwrap();
    }
    path
}

#[tokio::test]
async fn an_agent_refuses_a_hub_whose_key_it_has_not_pinned_though_nginx_is_valid() {
    init_logging();
    let Some(nginx) = nginx::binary() else { return };
    let pki = Pki::new();
    let (a, a_dir) = pki.agent("edge-01");
    let (b, b_dir) = pki.agent("edge-02");
    let door = front_door(&nginx, &pki, &[("edge-01", &a.pin), ("edge-02", &b.pin)]).await;
    let hub_pin = door.hub.server_pin.clone();
    let front_pin = door.front.pin.clone();
    // edge-01 pins nginx's certificate as if it were the hub (the old layout); edge-02 pins
    // nginx as its front door and some other hub. nginx's certificate is valid for both.
    let other_hub = pki
        .ca
        .issue_server("localhost", &[], Validity::days(2))
        .unwrap();
    let cfg_a = agent_config(&pki, "edge-01", &a_dir, &door, &[&front_pin], &[]);
    let cfg_b = agent_config(
        &pki,
        "edge-02",
        &b_dir,
        &door,
        &[&other_hub.pin],
        &[&front_pin],
    );
    let agents = [TestAgent::start(cfg_a), TestAgent::start(cfg_b)];
    for agent in &agents {
        eventually(
            "the hub's key refused twice (retried with backoff)",
            PATIENCE,
            || async { agent.state.snapshot().pin_mismatches >= 2 },
        )
        .await;
        let snap = agent.state.snapshot();
        assert!(!snap.connected);
        assert_eq!(snap.connects, 0);
        assert_eq!(
            snap.last_presented_pin.as_deref(),
            Some(hub_pin.as_str()),
            "the refused pin is the hub key's, seen through nginx"
        );
        let err = snap.last_error.unwrap_or_default();
        assert!(err.contains(&hub_pin), "{err}");
    }
    assert!(!door.hub.is_connected("edge-01"));
    assert!(!door.hub.is_connected("edge-02"));
    // The agent's audit log records the refusal.
    let audit = std::fs::read_to_string(pki.path().join("state-edge-01/gateway-audit.log"))
        .unwrap_or_default();
    assert!(audit.contains(&hub_pin), "refusal audited: {audit}");
    for agent in agents {
        agent.stop().await;
    }
    door.hub.stop().await;
}

#[tokio::test]
async fn agents_pinning_the_hub_work_end_to_end_through_nginx() {
    init_logging();
    let Some(nginx) = nginx::binary() else { return };
    let pki = Pki::new();
    let (a, a_dir) = pki.agent("edge-01");
    let (b, b_dir) = pki.agent("edge-02");
    let (c, c_dir) = pki.agent("edge-03");
    let enrolled = [
        ("edge-01", &*a.pin),
        ("edge-02", &*b.pin),
        ("edge-03", &*c.pin),
    ];
    let door = front_door(&nginx, &pki, &enrolled).await;
    let hub_pin = door.hub.server_pin.clone();
    let front_pin = door.front.pin.clone();
    let wrong = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    // edge-01: nginx checked against the CA; edge-02: nginx pinned; edge-03: front_door_pins
    // that nginx does not match, so TLS to nginx is refused.
    let agents = [
        TestAgent::start(agent_config(
            &pki,
            "edge-01",
            &a_dir,
            &door,
            &[&hub_pin],
            &[],
        )),
        TestAgent::start(agent_config(
            &pki,
            "edge-02",
            &b_dir,
            &door,
            &[&hub_pin],
            &[&front_pin],
        )),
        TestAgent::start(agent_config(
            &pki,
            "edge-03",
            &c_dir,
            &door,
            &[&hub_pin],
            &[wrong],
        )),
    ];
    for id in ["edge-01", "edge-02"] {
        eventually(
            &format!("{id} connected through nginx"),
            PATIENCE,
            || async { door.hub.is_connected(id) },
        )
        .await;
        let body = json!({"verb": "echo", "args": {"message": id}, "wait": true});
        let resp = fleet::run(&door.hub, id, body).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let record = resp.json();
        assert_eq!(record["status"], "ok", "{record}");
        assert_eq!(record["stdout"], format!("{id}\n"));
        // The hub saw the forwarded agent certificate, proven held.
        let view = door.hub.backend().registry.get(id).unwrap();
        let pin = if id == "edge-01" { &a.pin } else { &b.pin };
        assert_eq!(view.pin.as_deref(), Some(pin.as_str()));
    }
    eventually("edge-03 refuses nginx at TLS", PATIENCE, || async {
        agents[2].state.snapshot().pin_mismatches >= 1
    })
    .await;
    let snap = agents[2].state.snapshot();
    assert_eq!(snap.last_presented_pin.as_deref(), Some(front_pin.as_str()));
    assert!(!door.hub.is_connected("edge-03"));
    assert_eq!(
        door.hub
            .backend()
            .metrics
            .hub_rejected_count("challenge_failed")
            + door
                .hub
                .backend()
                .metrics
                .hub_rejected_count("challenge_timeout"),
        0
    );
    for agent in agents {
        agent.stop().await;
    }
    door.hub.stop().await;
}
