//! Issue 7, "identity and revocation are final": a revocation reaches connections that are
//! half-way through the handshake, live sessions and outstanding join tokens, and only an
//! admin's explicit enrolment lifts it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::backend::ADMIN_TOKEN;
use agentmesh_e2e::{http, init_logging, raw, Pki, TestHub, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use mesh_certs::Issued;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn admin(hub: &TestHub, method: &str, path: &str, body: Option<Value>) -> http::Response {
    let body = body.map(|b| b.to_string());
    http::request(hub.http, method, path, Some(ADMIN_TOKEN), body.as_deref()).await
}

async fn agent_view(hub: &TestHub, id: &str) -> Value {
    let r = http::get(hub.http, &format!("/api/v1/agents/{id}"), Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Redeems `token` with a fresh P-256 key.
async fn redeem(hub: &TestHub, token: &str, id: &str) -> Result<Issued, http::Response> {
    let (csr, key_pem) = mesh_certs::generate_csr(id).unwrap();
    let body = json!({"token": token, "agent_id": id, "csr": csr}).to_string();
    let r = http::request(hub.http, "POST", "/api/v1/enroll", None, Some(&body)).await;
    if r.status != 200 {
        return Err(r);
    }
    let v = r.json();
    Ok(Issued {
        cert_pem: v["certificate"].as_str().unwrap().to_owned(),
        key_pem,
        ca_pem: v["ca"].as_str().unwrap().to_owned(),
        pin: v["pin"].as_str().unwrap().to_owned(),
    })
}

#[tokio::test]
async fn a_connection_admitted_before_a_revocation_is_closed_4004_at_hello_and_never_listed() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    // TLS and upgrade pass; no hello yet.
    let mut c = raw::connect(hub.hub, pki.ca.cert_pem(), &edge)
        .await
        .unwrap();
    // A ping answered proves the hub is past the identity check and waiting for hello.
    c.ws.send(Message::Ping(b"sync".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await;
    assert_eq!(
        pong,
        Ok(true),
        "the hub answers pings while waiting for hello"
    );

    let r = admin(&hub, "DELETE", "/api/v1/agents/edge-01", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], false, "nothing was attached yet");

    // The late hello is refused: closed 4004, no welcome.
    c.send_json(&raw::hello("edge-01", 1)).await;
    let (code, reason) = c.next_or_close(PATIENCE).await.unwrap_err();
    assert_eq!(code, 4004, "{reason}");
    let metrics = &hub.backend().metrics;
    assert_eq!(metrics.hub_rejected_count("revoked_before_hello"), 1);
    assert_eq!(
        metrics
            .hub_sessions_started
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let view = agent_view(&hub, "edge-01").await;
    assert_eq!(view["connected"], false, "{view}");
    assert_eq!(view["revoked"], true, "{view}");
    assert_eq!(view["session_id"], Value::Null, "{view}");
    hub.stop().await;
}

#[tokio::test]
async fn revoking_a_live_session_closes_it_with_4004() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let (mut c, _welcome) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    let r = admin(&hub, "DELETE", "/api/v1/agents/edge-01", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], true);
    let (code, _) = c.close_code(PATIENCE).await.expect("closed by the hub");
    assert_eq!(code, 4004);
    assert_eq!(agent_view(&hub, "edge-01").await["connected"], false);
    hub.stop().await;
}

#[tokio::test]
async fn a_join_token_issued_before_a_revocation_is_refused_after_it_and_lifts_nothing() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    let r = admin(
        &hub,
        "POST",
        "/api/v1/enrollments",
        Some(json!({"agent_id": "edge-01", "ttl_secs": 600})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();

    let r = admin(&hub, "DELETE", "/api/v1/agents/edge-01", None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The token died with the revocation, and trying it changes nothing.
    let refused = redeem(&hub, &token, "edge-01").await.unwrap_err();
    assert_eq!(refused.status, 401, "{}", refused.body);
    let view = agent_view(&hub, "edge-01").await;
    assert_eq!(view["revoked"], true, "{view}");
    assert_eq!(view["enrolled_pins"], json!([]), "{view}");
    // Nor can a new token be made for a revoked agent.
    let r = admin(
        &hub,
        "POST",
        "/api/v1/enrollments",
        Some(json!({"agent_id": "edge-01", "ttl_secs": 600})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // Only an admin's explicit enrolment of a fresh pin lifts it, and says so in the trail.
    let fresh = pki
        .ca
        .issue_agent("edge-01", mesh_certs::Validity::days(2))
        .unwrap();
    let r = admin(
        &hub,
        "POST",
        "/api/v1/enrollments",
        Some(json!({"agent_id": "edge-01", "pin": fresh.pin})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(agent_view(&hub, "edge-01").await["revoked"], false);
    let (_c, welcome) = raw::session(hub.hub, pki.ca.cert_pem(), &fresh, "edge-01").await;
    assert_eq!(welcome["type"], "welcome");
    let mut old = raw::connect(hub.hub, pki.ca.cert_pem(), &edge)
        .await
        .unwrap();
    let _ = old.send_text(&raw::hello("edge-01", 1).to_string()).await;
    let (code, _) = old.next_or_close(PATIENCE).await.unwrap_err();
    assert_eq!(code, 4004, "the revoked pin stays revoked");

    let audit = http::get(
        hub.http,
        "/api/v1/audit?agent=edge-01&limit=1000",
        Some(ADMIN_TOKEN),
    )
    .await
    .json();
    let records = audit["records"].as_array().unwrap();
    let created = records
        .iter()
        .find(|r| r["kind"] == "join_token_created")
        .expect("creating a join token is audited");
    assert_eq!(created["actor"], "test-admin", "{created}");
    let lifted = records
        .iter()
        .find(|r| r["kind"] == "enrolled" && r["details"]["lifted_revocation"] == true)
        .expect("lifting a revocation is audited");
    assert_eq!(lifted["actor"], "test-admin", "{lifted}");
    hub.stop().await;
}
