//! Issue "guardrails", renewal: an agent whose certificate is about to expire renews it over
//! its authenticated session by itself, reconnects at once with the new key, the hub retires
//! the old pin, and the agent stays connected and keeps signing results with the new key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN};
use agentmesh_e2e::{agent, eventually, http, init_logging, Pki, TestAgent, TestHub, PATIENCE};
use mesh_certs::Validity;
use serde_json::{json, Value};
use time::OffsetDateTime;

#[tokio::test]
async fn an_expiring_certificate_is_renewed_over_the_session_and_the_agent_stays_connected() {
    init_logging();
    let pki = Pki::new();
    // One day left of an eleven-day certificate: inside renew_before_days (15) and inside the
    // last third of its lifetime, so it is due right after the first welcome. (A fresh
    // one-day certificate is not: renewal waits for the last third of a certificate's life,
    // so a hub issuing short certificates cannot put the agent in a renewal loop.)
    let now = OffsetDateTime::now_utc();
    let old = pki
        .ca
        .issue_agent(
            "edge-01",
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now + time::Duration::days(1),
            },
        )
        .unwrap();
    let cert_dir = pki.path().join("agents").join("edge-01");
    old.save(&cert_dir).unwrap();
    let hub = TestHub::start(&pki, &[("edge-01", &old.pin)]).await;
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &cert_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = agentmesh_e2e::backend::merge_toml(&text, "[agent]\nrenew_before_days = 15\n");
    std::fs::write(&cfg, text).unwrap();
    let agent = TestAgent::start(cfg);

    // The agent renews by itself and comes back with a new pin; the old one is retired.
    let registry = hub.backend().registry.clone();
    eventually("the agent reconnected with a new pin", PATIENCE, || async {
        registry
            .get("edge-01")
            .is_some_and(|a| a.connected && a.pin.as_deref().is_some_and(|p| p != old.pin))
    })
    .await;
    let new_pin = registry.get("edge-01").unwrap().pin.unwrap();
    eventually("the old pin is retired", PATIENCE, || async {
        let pins = registry.active_pins("edge-01");
        pins.contains(&new_pin) && !pins.contains(&old.pin)
    })
    .await;
    // Connected again within seconds, after exactly one renewal and one reconnect.
    let state = tokio::time::timeout(
        PATIENCE,
        agent.state.wait_for(|s| s.connected && s.renewals == 1),
    )
    .await
    .expect("connected again after the renewal");
    assert_eq!(state.connects, 2, "{state:?}");
    assert_eq!(state.last_error, None, "{state:?}");

    // The new key and certificate are on disk, and they belong together.
    let cert = std::fs::read_to_string(cert_dir.join("cert.pem")).unwrap();
    let key = std::fs::read_to_string(cert_dir.join("key.pem")).unwrap();
    assert_ne!(cert, old.cert_pem);
    assert_ne!(key, old.key_pem);
    assert_eq!(mesh_certs::pin_from_pem(&cert).unwrap(), new_pin);
    assert!(gateway_agent::signing::key_matches_cert(&key, &cert));
    let info = mesh_certs::inspect_pem(&cert).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("edge-01"));
    assert!(!cert_dir.join("key.pem.new").exists());

    // Commands still run, and their results are signed with the new key.
    let body = json!({"verb": "echo", "args": {"message": "renewed"}, "wait": true}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stdout"], "renewed\n");
    let command_id = r.json()["command_id"].as_str().unwrap().to_owned();
    let audit = http::get(
        hub.http,
        "/api/v1/audit?agent=edge-01&limit=1000",
        Some(ADMIN_TOKEN),
    )
    .await
    .json();
    let records = audit["records"].as_array().unwrap();
    let result = records
        .iter()
        .find(|r| r["kind"] == "command_result" && r["command_id"] == command_id.as_str())
        .expect("command_result recorded");
    assert_eq!(result["details"]["agent_pin"], new_pin.as_str(), "{result}");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "enrolled" && r["details"].to_string().contains(&new_pin)),
        "the hub audited the renewal: {records:?}"
    );

    // No renewal loop: the fresh certificate is not due, the session stays up. A further
    // round trip through the agent (instead of a sleep) shows the session still serving.
    let body = json!({"verb": "ping", "wait": true}).to_string();
    let r = http::request(
        hub.http,
        "POST",
        "/api/v1/agents/edge-01/commands",
        Some(OPERATOR_TOKEN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let state = agent.state.snapshot();
    assert!(
        state.connected && state.renewals == 1 && state.connects == 2,
        "{state:?}"
    );
    assert!(registry.get("edge-01").unwrap().connected);

    agent.stop().await;
    hub.stop().await;

    // The agent's own audit log has the renewal and verifies, signatures included.
    let log = pki.path().join("state-edge-01").join("gateway-audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let enrolled = records
        .iter()
        .find(|r| r["kind"] == "enrolled")
        .expect("enrolled in the agent's log");
    assert_eq!(enrolled["details"]["source"], "renewal");
    assert_eq!(enrolled["details"]["pin"], new_pin.as_str());
    assert_eq!(enrolled["details"]["previous_pin"], old.pin.as_str());
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "agent_connected",
        "agent_disconnected",
        "command_requested",
        "command_result",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let summary =
        agentmesh_audit::verify_files(&agentmesh_audit::log_files(&log).unwrap()).unwrap();
    assert!(summary.signatures_checked >= 1, "{summary:?}");
}
