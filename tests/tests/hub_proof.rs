//! The hub proves itself in `welcome`, and a certificate forwarded by a trusted proxy is proven
//! held with a `challenge` before the session exists (real TLS, raw clients playing the proxy).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::backend::HubOptions;
use agentmesh_e2e::raw::{self, RawClient};
use agentmesh_e2e::{eventually, fleet, init_logging, Pki, TestHub, PATIENCE};
use agentmesh_protocol::proof;
use agentmesh_protocol::{close, WelcomeFrame};
use gateway_agent::session::{proof::check_welcome, ProofKey};
use gateway_agent::tls::Route;
use mesh_certs::Issued;
use serde_json::{json, Value};

const NONCE: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const WAIT: Duration = Duration::from_secs(20);

/// `$ssl_client_escaped_cert`-style encoding of a PEM.
fn escaped(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A hub that trusts `proxy` to forward certificates, with `edge-01` enrolled.
async fn hub_trusting(pki: &Pki, proxy: &Issued, edge: &Issued) -> TestHub {
    let options = HubOptions {
        hello_timeout_secs: 5,
        ..HubOptions::default()
    };
    let mut hub = TestHub::start_with(pki, &[("edge-01", &edge.pin)], options).await;
    let text = std::fs::read_to_string(&hub.config_path).unwrap().replace(
        "handshake_timeout_secs",
        &format!(
            "trusted_proxy_pins = [\"{}\"]\nhandshake_timeout_secs",
            proxy.pin
        ),
    );
    std::fs::write(&hub.config_path, text).unwrap();
    hub.restart_from_file().await;
    hub
}

/// The proxy connects with its own certificate, forwarding `edge`'s, and says `hello`.
async fn forwarded_hello(hub: &TestHub, pki: &Pki, proxy: &Issued, edge: &Issued) -> RawClient {
    let header = ("x-agentmesh-client-cert", escaped(&edge.cert_pem));
    let mut client = raw::connect_with_headers(hub.hub, pki.ca.cert_pem(), proxy, &[header])
        .await
        .unwrap();
    let mut hello = raw::hello("edge-01", 1);
    hello["nonce"] = json!(NONCE);
    client.send_json(&hello).await;
    client
}

/// Reads `welcome` (checked against the hub's pin) and `challenge`.
async fn welcome_and_challenge(client: &mut RawClient, hub_pin: &str) -> (String, String) {
    let welcome = client.next_json(WAIT).await.expect("welcome");
    assert_eq!(welcome["challenge_follows"], true, "{welcome}");
    let frame: WelcomeFrame = serde_json::from_value(welcome).unwrap();
    let signer = check_welcome(
        &frame,
        NONCE,
        "edge-01",
        &[hub_pin.to_owned()],
        Route::FrontDoor,
    )
    .expect("welcome signed by the hub's pinned key");
    assert_eq!(signer.as_deref(), Some(hub_pin));
    let challenge = client.next_json(WAIT).await.expect("challenge");
    assert_eq!(challenge["type"], "challenge", "{challenge}");
    let nonce = challenge["nonce"].as_str().unwrap().to_owned();
    (frame.session_id, nonce)
}

fn response(key_pem: &str, nonce: &str, session_id: &str) -> Value {
    let key = ProofKey::from_pem(key_pem).unwrap();
    let signature = key.sign_challenge(nonce, "edge-01", session_id).unwrap();
    json!({"type": "challenge_response", "signature": signature})
}

#[tokio::test]
async fn a_proxy_replaying_a_certificate_it_cannot_sign_for_gets_no_session_and_no_command() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let (proxy, _) = pki.agent("front-door");
    let hub = hub_trusting(&pki, &proxy, &edge).await;

    let mut client = forwarded_hello(&hub, &pki, &proxy, &edge).await;
    let (session_id, nonce) = welcome_and_challenge(&mut client, &hub.server_pin).await;
    // Not a session yet: no listing, and a command finds the agent offline.
    assert!(!hub.is_connected("edge-01"));
    let resp = fleet::run(&hub, "edge-01", json!({"verb": "ping", "args": {}})).await;
    assert_ne!(resp.status / 100, 2, "{}", resp.body);
    // The proxy holds only its own key: its answer does not verify against edge-01's.
    client
        .send_json(&response(&proxy.key_pem, &nonce, &session_id))
        .await;
    match client.next_or_close(WAIT).await {
        Err((code, reason)) => {
            assert_eq!(code, close::UNAUTHORISED, "{reason}");
            assert!(reason.contains("challenge_response"), "{reason}");
        }
        Ok(frame) => panic!("the unproven session got a frame: {frame}"),
    }
    eventually("refusal counted", PATIENCE, || async {
        hub.backend().metrics.hub_rejected_count("challenge_failed") == 1
    })
    .await;
    assert!(!hub.is_connected("edge-01"));
    let audit_path = hub.config_path.with_file_name("audit.log");
    eventually("the refusal audited", PATIENCE, || async {
        let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
        audit.contains("agent_rejected") && audit.contains("challenge_failed")
    })
    .await;
    hub.stop().await;
}

#[tokio::test]
async fn a_proxy_that_ignores_the_challenge_is_closed_4001() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let (proxy, _) = pki.agent("front-door");
    let hub = hub_trusting(&pki, &proxy, &edge).await;
    let mut client = forwarded_hello(&hub, &pki, &proxy, &edge).await;
    welcome_and_challenge(&mut client, &hub.server_pin).await;
    // An old agent answers an unknown frame with `error`: that is no proof either.
    client
        .send_json(&json!({"type": "error", "code": "unknown_type", "message": "challenge"}))
        .await;
    let (code, _) = client.close_code(WAIT).await.expect("closed");
    assert_eq!(code, close::UNAUTHORISED);
    assert!(!hub.is_connected("edge-01"));
    hub.stop().await;
}

#[tokio::test]
async fn a_forwarded_certificate_proven_held_gets_a_session_and_commands() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let (proxy, _) = pki.agent("front-door");
    let hub = hub_trusting(&pki, &proxy, &edge).await;
    let mut client = forwarded_hello(&hub, &pki, &proxy, &edge).await;
    let (session_id, nonce) = welcome_and_challenge(&mut client, &hub.server_pin).await;
    client
        .send_json(&response(&edge.key_pem, &nonce, &session_id))
        .await;
    eventually("edge-01 listed", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;
    let hub_ref = &hub;
    let submit = tokio::spawn({
        let (http, body) = (
            hub_ref.http,
            json!({"verb": "ping", "args": {}, "wait": false}),
        );
        async move {
            agentmesh_e2e::http::request(
                http,
                "POST",
                "/api/v1/agents/edge-01/commands",
                Some(agentmesh_e2e::backend::OPERATOR_TOKEN),
                Some(&body.to_string()),
            )
            .await
        }
    });
    let command = client.next_json(WAIT).await.expect("a command");
    assert_eq!(command["type"], "command", "{command}");
    assert_eq!(command["verb"], "ping");
    assert_eq!(submit.await.unwrap().status, 202);
    hub.stop().await;
}

#[tokio::test]
async fn direct_sessions_sign_welcome_only_for_a_nonce_and_are_never_challenged() {
    init_logging();
    let pki = Pki::new();
    let (edge, _) = pki.agent("edge-01");
    let hub = TestHub::start(&pki, &[("edge-01", &edge.pin)]).await;
    // A peer from the design contract: no nonce, no signature, no challenge.
    let (_old, welcome) = raw::session(hub.hub, pki.ca.cert_pem(), &edge, "edge-01").await;
    for field in ["signature", "hub_key", "challenge_follows"] {
        assert!(welcome.get(field).is_none(), "{welcome}");
    }
    eventually("old agent listed", PATIENCE, || async {
        hub.is_connected("edge-01")
    })
    .await;
    // With a nonce: signed by the hub's pinned key over this session.
    let mut client = raw::connect(hub.hub, pki.ca.cert_pem(), &edge)
        .await
        .unwrap();
    let mut hello = raw::hello("edge-01", 1);
    hello["nonce"] = json!(NONCE);
    client.send_json(&hello).await;
    let welcome = client.next_json(WAIT).await.expect("welcome");
    assert!(welcome.get("challenge_follows").is_none(), "{welcome}");
    let frame: WelcomeFrame = serde_json::from_value(welcome).unwrap();
    let pins = [hub.server_pin.clone()];
    check_welcome(&frame, NONCE, "edge-01", &pins, Route::Direct).expect("verifies");
    // Another nonce (a replayed welcome) does not verify.
    let other = proof::encode_nonce(&[9u8; proof::NONCE_BYTES]);
    assert!(check_welcome(&frame, &other, "edge-01", &pins, Route::Direct).is_err());
    // A malformed nonce is a protocol error.
    let mut bad = raw::connect(hub.hub, pki.ca.cert_pem(), &edge)
        .await
        .unwrap();
    let mut hello = raw::hello("edge-01", 1);
    hello["nonce"] = json!("short");
    bad.send_json(&hello).await;
    let (code, _) = bad.close_code(WAIT).await.expect("closed");
    assert_eq!(code, close::PROTOCOL_ERROR);
    hub.stop().await;
}
