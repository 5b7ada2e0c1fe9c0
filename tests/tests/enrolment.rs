//! Issue "guardrails", enrolment lifecycle: join tokens, renewal, revocation, persistence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::{ADMIN_TOKEN, OPERATOR_TOKEN};
use agentmesh_e2e::fleet::join_token;
use agentmesh_e2e::{
    agent, eventually, http, init_logging, raw, Pki, TestAgent, TestHub, PATIENCE,
};
use mesh_certs::Issued;
use serde_json::{json, Value};

async fn post(hub: &TestHub, token: Option<&str>, path: &str, body: Value) -> http::Response {
    http::request(hub.http, "POST", path, token, Some(&body.to_string())).await
}

/// Redeems a join token with a fresh key; returns the identity as an `Issued`.
async fn redeem(hub: &TestHub, token: &str, id: &str) -> Result<Issued, http::Response> {
    let (csr, key_pem) = mesh_certs::generate_csr(id).unwrap();
    let r = post(
        hub,
        None,
        "/api/v1/enroll",
        json!({"token": token, "agent_id": id, "csr": csr}),
    )
    .await;
    if r.status != 200 {
        return Err(r);
    }
    let v = r.json();
    assert_eq!(v["hub_pins"][0], hub.server_pin.as_str());
    Ok(raw::issued(&v, key_pem))
}

/// Whether `hub` admits `identity` as `id`: the `welcome`, or the close code and reason.
async fn admitted(
    hub: &TestHub,
    pki: &Pki,
    id: &str,
    identity: &Issued,
) -> Result<(), (u16, String)> {
    raw::admitted(hub.hub, pki.ca.cert_pem(), identity, id).await
}

#[tokio::test]
async fn a_join_token_enrols_once_and_expires() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    // Only admins create tokens.
    let r = post(
        &hub,
        Some(OPERATOR_TOKEN),
        "/api/v1/enrollments",
        json!({"agent_id": "edge-07", "ttl_secs": 60}),
    )
    .await;
    assert_eq!(r.status, 403);
    let token = join_token(hub.http, "edge-07", 60).await;
    // Wrong agent id does not consume the token.
    let wrong = redeem(&hub, &token, "edge-08").await.unwrap_err();
    assert_eq!(wrong.status, 401);
    let identity = redeem(&hub, &token, "edge-07").await.expect("redeemed");
    assert_eq!(
        mesh_certs::inspect_pem(&identity.cert_pem)
            .unwrap()
            .common_name
            .as_deref(),
        Some("edge-07")
    );
    admitted(&hub, &pki, "edge-07", &identity)
        .await
        .expect("enrolled identity connects");
    let reused = redeem(&hub, &token, "edge-07").await.unwrap_err();
    assert_eq!(reused.status, 401, "{}", reused.body);

    let r = post(
        &hub,
        Some(ADMIN_TOKEN),
        "/api/v1/enrollments",
        json!({"agent_id": "edge-09", "ttl_secs": 1}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let short = r.json()["token"].as_str().unwrap().to_owned();
    let expires_at = time::OffsetDateTime::parse(
        r.json()["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    // Wait for the token's own expiry time to pass (same clock as the hub's), not a guess.
    eventually("the join token's expiry passed", PATIENCE, || async {
        time::OffsetDateTime::now_utc() > expires_at + time::Duration::milliseconds(10)
    })
    .await;
    let expired = redeem(&hub, &short, "edge-09").await.unwrap_err();
    assert_eq!(expired.status, 401);
    assert!(expired.body.contains("expired"), "{}", expired.body);
    hub.stop().await;
}

#[tokio::test]
async fn gateway_enroll_command_end_to_end() {
    init_logging();
    let pki = Pki::new();
    let hub = TestHub::start(&pki, &[]).await;
    let token = join_token(hub.http, "edge-10", 300).await;
    let out = pki.path().join("enrolled-edge-10");
    let opts = gateway_agent::enroll::EnrollOptions {
        api: format!("http://{}", hub.http),
        token: token.clone(),
        id: "edge-10".into(),
        ca: pki.path().join("ca/ca.pem"),
        server_pin: None,
        out: out.clone(),
    };
    let enrolled = gateway_agent::enroll::enroll(&opts).await.unwrap();
    assert_eq!(enrolled.hub_pins, vec![hub.server_pin.clone()]);
    use std::os::unix::fs::PermissionsExt;
    for f in ["key.pem", "cert.pem", "ca.pem"] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let cfg = agent::write_config(
        pki.path(),
        "edge-10",
        &out,
        hub.hub,
        &[&enrolled.hub_pins[0]],
        "",
    );
    let agent = TestAgent::start(cfg);
    eventually("enrolled agent connected", PATIENCE, || async {
        hub.is_connected("edge-10")
    })
    .await;
    // The token is spent.
    let again = gateway_agent::enroll::enroll(&opts).await.unwrap_err();
    assert!(again.to_string().contains("401"), "{again}");
    // Plain http to a non-loopback address is refused before anything is sent.
    let remote = gateway_agent::enroll::EnrollOptions {
        api: "http://192.0.2.1:8080".into(),
        ..opts
    };
    // Refused as a usage error before any network I/O (192.0.2.1 is TEST-NET, unroutable:
    // a connect attempt would show up as a Connect error, not this one).
    match gateway_agent::enroll::enroll(&remote).await {
        Err(gateway_agent::enroll::EnrollError::Usage(msg)) => {
            assert!(msg.contains("loopback"), "{msg}")
        }
        other => panic!("expected a usage error, got {other:?}"),
    }
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn revocation_disconnects_at_once_and_the_agent_stays_out_across_restarts() {
    init_logging();
    let pki = Pki::new();
    let (edge, edge_dir) = pki.agent("edge-01");
    let mut hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    // A live session, driven by hand so the close code it gets is observable.
    let (mut session, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let r = http::request(
        hub.http,
        "DELETE",
        "/api/v1/agents/edge-01",
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "only admins revoke");
    let r = http::request(
        hub.http,
        "DELETE",
        "/api/v1/agents/edge-01",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], true);
    // The live session is closed with 4004 mid-session (not left to time out).
    let (code, reason) = session.close_code(PATIENCE).await.expect("closed");
    assert_eq!(code, 4004, "{reason}");
    eventually("the registry shows it disconnected", PATIENCE, || async {
        !hub.is_connected("edge-01")
    })
    .await;
    // A real agent keeps trying and keeps being refused, also after a restart (the static
    // [[agents]] entry does not bring it back).
    let cfg = agent::write_config(
        pki.path(),
        "edge-01",
        &edge_dir,
        hub.hub,
        &[&hub.server_pin],
        "",
    );
    let agent = TestAgent::start(cfg);
    eventually("refused as revoked", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("revoked") >= 1
    })
    .await;
    assert!(!hub.is_connected("edge-01"));
    hub.restart(&pki).await;
    let (code, _) = admitted(&hub, &pki, "edge-01", &edge).await.unwrap_err();
    assert_eq!(code, 4004);
    assert!(!hub.is_connected("edge-01"));
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn renewal_over_the_session_rotates_the_pin() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let (mut c, _) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let new_identity = c.renew("edge-01").await;
    assert_ne!(new_identity.pin, edge.pin);
    // Both pins are enrolled until the agent switches.
    let pins = hub.backend().registry.active_pins("edge-01");
    assert!(
        pins.contains(&edge.pin) && pins.contains(&new_identity.pin),
        "{pins:?}"
    );
    drop(c);
    admitted(&hub, &pki, "edge-01", &new_identity)
        .await
        .expect("new certificate connects");
    eventually("old pin retired", PATIENCE, || async {
        !hub.backend()
            .registry
            .active_pins("edge-01")
            .contains(&edge.pin)
    })
    .await;
    let (code, reason) = admitted(&hub, &pki, "edge-01", &edge).await.unwrap_err();
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("retired"), "{reason}");
    hub.stop().await;
}
